"""Lark grammar → grammar (placeholder until the Lark front end lands)."""
from __future__ import annotations

from .expr import ConstraintError, Grammar


def lark_grammar(text: str) -> Grammar:
    raise ConstraintError("lark grammars are not supported yet", keyword="lark")
