"""Structured output: a regex, JSON Schema or Lark grammar → a token-level automaton over the vocabulary.

    compiler = ConstraintCompiler(Vocab.from_tokenizer(tokenizer))
    constraint = compiler.compile("json_schema", schema)     # LRU-cached by (kind, canonical text, style)
    state = constraint.initial_state
    mask = constraint.allowed(state)                         # bool [V]; EOS only where accepting
    state = constraint.advance(state, token_id)

Pipeline: front end (regex.py, json_schema.py, lark.py) → expression tree (expr.py) → byte NFA with rule
calls (nfa.py) → lazily determinised automaton with a bounded return stack (automaton.py) → per-state
token sets (index.py; its vocabulary walk compiled with numba in compiled_walk.py).
User errors raise `ConstraintError(message, keyword=...)`. A JSON schema is read in a `JsonStyle`
(json_style.py): by its letter when validating (`SPEC_STYLE`, the default of `build_grammar`), with
objects closed and whitespace bounded when generating (`GENERATION_STYLE`, the compiler's default).
"""
from __future__ import annotations

import json

from ..lru import LRUCache
from .automaton import Automaton
from .expr import ConstraintError, Grammar
from .index import Constraint
from .json_schema import json_object_grammar, schema_grammar
from .json_style import GENERATION_STYLE, JSON_SCHEMA_MODES, SPEC_STYLE, JsonStyle
from .llguidance import lark_with_json, llguidance_grammar
from .regex import full_match
from .vocab import Vocab

KINDS = ("regex", "json_schema", "json_object", "lark", "llguidance")


def build_grammar(kind: str, value, style: JsonStyle = SPEC_STYLE) -> Grammar:
    """The grammar of a constraint request, vocabulary-independent (`style`: JSON text options)."""
    return build_grammar_capped(kind, value, style)[0]


def build_grammar_capped(kind: str, value, style: JsonStyle = SPEC_STYLE) -> tuple[Grammar, int | None]:
    """(the grammar, the most tokens the constrained output may take: an llguidance grammar's max_tokens)."""
    if kind == "llguidance":
        return llguidance_grammar(value, style)
    return _build(kind, value, style), None


def _build(kind: str, value, style: JsonStyle) -> Grammar:
    if kind == "regex":
        if not isinstance(value, str):
            raise ConstraintError("a regex constraint must be a string", keyword="regex")
        return Grammar(full_match(value))
    if kind == "json_schema":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as e:
                raise ConstraintError(f"the JSON schema is not valid JSON: {e}", keyword="json_schema") from None
        return schema_grammar(value, style)
    if kind == "json_object":
        return json_object_grammar(style)
    if kind == "lark":
        return lark_with_json(value, style)
    raise ConstraintError(f"unknown constraint kind {kind!r} (one of {', '.join(KINDS)})", keyword="type")


def canonical_text(kind: str, value) -> str:
    if kind == "json_object":
        return ""
    if isinstance(value, str):
        return value
    # property order is meaningful (schema order), so keys are not sorted
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def compile_constraint(kind: str, value, vocab: Vocab, style: JsonStyle = SPEC_STYLE) -> Constraint:
    """Compile without caching (see `ConstraintCompiler` for the cached form)."""
    try:
        grammar, max_tokens = build_grammar_capped(kind, value, style)
        return Constraint(Automaton(grammar), vocab, max_tokens=max_tokens)
    except RecursionError:
        raise ConstraintError("the constraint is nested too deeply", keyword="size") from None


class ConstraintCompiler:
    """Compiles constraints for generation over one vocabulary and keeps the last `max_entries` (least
    recently used out); safe across request threads. `style`: how JSON schemas are read unless a request
    says otherwise."""

    def __init__(self, vocab: Vocab, max_entries: int = 32, style: JsonStyle = GENERATION_STYLE):
        self.vocab = vocab
        self.style = style
        self._cache = LRUCache(max_entries)          # (kind, canonical text, style) -> Constraint

    def warm_up(self) -> None:
        """Build the vocabulary's tries and load (the first time: compile) the vocabulary walk now, ~1 s,
        so that the first constrained request does not wait for them. Safe beside requests: at worst both
        build a trie, the same one."""
        compile_constraint("regex", "a", self.vocab).warm(limit=1)

    def compile(self, kind: str, value, style: JsonStyle | None = None) -> Constraint:
        """The cached constraint (its indexed states kept with it, for the next request with this schema);
        a new one is warmed: its first masks are indexed here, in the caller's thread."""
        style = style or self.style

        def build() -> Constraint:
            constraint = compile_constraint(kind, value, self.vocab, style)
            constraint.warm()
            return constraint
        return self._cache.get_or_build((kind, canonical_text(kind, value), style), build)


__all__ = ["GENERATION_STYLE", "JSON_SCHEMA_MODES", "KINDS", "SPEC_STYLE", "Constraint", "ConstraintCompiler",
           "ConstraintError", "Grammar", "JsonStyle", "Vocab", "build_grammar", "build_grammar_capped",
           "canonical_text", "compile_constraint"]
