"""llguidance's grammar object (its TopLevelGrammar, as mistral.rs passes it through) → one grammar.

    {"grammars": [{"name"?: str, "lark_grammar": str} | {"name"?: str, "json_schema": {...}}, ...],
     "max_tokens"?: N}

The first grammar is the start. A Lark rule refers to another grammar of the list as `@name` and embeds a
JSON schema inline as `%json {...}` (lark.py reads both); each becomes rule calls into that grammar's rules,
renamed apart (`@name/...`), so a JSON-schema automaton runs inside a Lark grammar and a grammar may be
referred to from several places, or recursively. `max_tokens` caps the constrained output (the request's
`max_tokens` still applies). A grammar that cannot be compiled raises `ConstraintError` whose `path` names
it (`grammars[1].json_schema`).
"""
from __future__ import annotations

from .expr import Call, ConstraintError, Grammar, rename_calls
from .json_schema import schema_grammar
from .json_style import JsonStyle
from .lark import lark_grammar

GRAMMAR_KEYS = ("name", "lark_grammar", "json_schema")


def llguidance_grammar(value, style: JsonStyle) -> tuple[Grammar, int | None]:
    """(the composed grammar, its max_tokens or None)."""
    if not isinstance(value, dict):
        raise ConstraintError("an llguidance grammar must be an object with 'grammars'", keyword="llguidance")
    for key in value:
        if key not in ("grammars", "max_tokens"):
            raise ConstraintError(f"unknown field {key!r} (an llguidance grammar has 'grammars' and "
                                  "'max_tokens')", keyword="llguidance", path=key)
    grammars = value.get("grammars")
    if not isinstance(grammars, list) or not grammars:
        raise ConstraintError("'grammars' must be a non-empty list", keyword="llguidance", path="grammars")
    max_tokens = value.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        raise ConstraintError("'max_tokens' must be a positive integer", keyword="llguidance", path="max_tokens")
    return _Composer(grammars, style).grammar(), max_tokens


class _Composer:
    def __init__(self, grammars: list, style: JsonStyle):
        self.grammars = grammars
        self.style = style
        self.names: dict[str, int] = {}
        for i, entry in enumerate(grammars):
            path = f"grammars[{i}]"
            if not isinstance(entry, dict):
                raise ConstraintError("each grammar must be an object", keyword="llguidance", path=path)
            for key in entry:
                if key not in GRAMMAR_KEYS:
                    raise ConstraintError(f"unknown grammar field {key!r} (one of {', '.join(GRAMMAR_KEYS)})",
                                          keyword="llguidance", path=f"{path}.{key}")
            if (entry.get("lark_grammar") is None) == (entry.get("json_schema") is None):
                raise ConstraintError("a grammar has exactly one of 'lark_grammar' and 'json_schema'",
                                      keyword="llguidance", path=path)
            name = entry.get("name")
            if name is not None:
                if not isinstance(name, str) or name in self.names:
                    raise ConstraintError(f"grammar names must be distinct strings ({name!r})",
                                          keyword="llguidance", path=f"{path}.name")
                self.names[name] = i
        self.rules: dict[str, object] = {}
        self.inline_schemas = 0

    def grammar(self) -> Grammar:
        return Grammar(self.entry(0), self.rules)

    def entry(self, i: int):
        """A call of grammar i (compiled the first time it is referred to)."""
        rule = f"@{i}"
        if rule not in self.rules:
            entry = self.grammars[i]
            kind = "lark_grammar" if entry.get("lark_grammar") is not None else "json_schema"
            self.rules[rule] = Call(rule)                  # placeholder while building (recursion)
            try:
                if kind == "lark_grammar":
                    if not isinstance(entry[kind], str):
                        raise ConstraintError("a lark grammar must be a string", keyword="lark")
                    built = lark_grammar(entry[kind], embed=_Embed(self, i))
                else:
                    built = schema_grammar(entry[kind], self.style)
            except ConstraintError as e:
                if e.path is not None:                     # an error inside a grammar it refers to
                    raise
                raise ConstraintError(e.message, keyword=e.keyword, path=f"grammars[{i}].{kind}") from None
            except RecursionError:
                raise ConstraintError("the grammar is nested too deeply", keyword="size",
                                      path=f"grammars[{i}].{kind}") from None
            self.rules[rule] = self.merge(built, f"{rule}/")
        return Call(rule)

    def merge(self, built: Grammar, prefix: str):
        """`built`'s rules into the composed grammar under `prefix`; its start expression, renamed."""
        def rename(name: str) -> str:              # calls of the list's grammars ("@...") are already apart
            return name if name.startswith("@") else prefix + name
        memo: dict = {}
        for name, tree in built.rules.items():
            self.rules[rename(name)] = rename_calls(tree, rename, memo)
        return rename_calls(built.start, rename, memo)


class _Embed:
    """What lark.py asks of the list while reading grammar i: `@name` and `%json {...}`."""

    def __init__(self, composer: _Composer, index: int):
        self.composer = composer
        self.index = index

    def grammar(self, name: str):
        if name not in self.composer.names:
            raise ConstraintError(f"lark grammar: @{name} names no grammar of the list", keyword="lark")
        return self.composer.entry(self.composer.names[name])

    def json(self, schema):
        composer = self.composer
        composer.inline_schemas += 1
        return composer.merge(schema_grammar(schema, composer.style), f"@{self.index}/json{composer.inline_schemas}/")


def lark_with_json(text, style: JsonStyle) -> Grammar:
    """A plain Lark grammar (the `lark` constraint kind), `%json {...}` included."""
    if not isinstance(text, str):
        raise ConstraintError("a lark grammar must be a string", keyword="lark")
    try:
        return llguidance_grammar({"grammars": [{"lark_grammar": text}]}, style)[0]
    except ConstraintError as e:
        raise ConstraintError(e.message, keyword=e.keyword) from None
