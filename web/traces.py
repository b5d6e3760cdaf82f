"""A requested trace on the HTTP side: started with what the client sent, answered as the body's `trace`
object or, streamed, as a last `event: trace` before `[DONE]` (the document: refengine/trace.py)."""
from __future__ import annotations

from typing import Iterator

from refengine.trace import RequestTrace

from . import sse


def traced_input(top_k: int | None, **received) -> RequestTrace | None:
    """A trace of `top_k` candidates per stage holding what the client sent (None: no trace asked)."""
    if top_k is None:
        return None
    trace = RequestTrace(top_k)
    trace.input = {key: value for key, value in received.items() if value is not None}
    return trace


def _trace(handles: list):
    return handles[0].request.trace if handles else None


def with_trace(body: dict, handles: list) -> dict:
    """The JSON body, with the request's trace when it asked for one."""
    trace = _trace(handles)
    return body if trace is None else {**body, "trace": trace.document()}


def trace_event(handles: list) -> Iterator[bytes]:
    """The stream's last event before [DONE], when the request asked for a trace."""
    trace = _trace(handles)
    if trace is not None:
        yield sse.event(trace.document(), name="trace")
