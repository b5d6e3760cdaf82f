"""Conformance suite: test any OpenAI-compatible server against the OpenAI contract, over HTTP only.

    python -m conformance --base-url http://127.0.0.1:8000/v1 [--html report.html]

Independent of `refengine` and `web` by design: it must judge any server, ours included.
"""
from .cli import main

__all__ = ["main"]
