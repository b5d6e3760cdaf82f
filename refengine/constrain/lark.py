"""Lark grammar text → grammar (expression tree with rules).

Supported Lark syntax: rules (`name: ...`, with `?`/`!` prefixes), terminals (`NAME: ...`, priorities
ignored), alternatives `|`, aliases `-> name` (ignored), groups `( )`, optionals `[ ]` and `?`, `*`, `+`,
`~ n` and `~ n..m`, string literals (with the `i` flag), regex literals `/.../` (no flags), character
ranges `"a".."z"`, `%import common.NAME` (the usual common.lark terminals), `%ignore` (ignored terminals may
come before every token and at the end), comments. The start rule is `start`.

Rules become automaton rules, so recursive grammars work, nested up to the automaton's return-stack
bound. The grammar is matched on characters, without Lark's lexer: where Lark's longest-match tokenizing
would reject a text that the grammar's rules derive, this accepts it. Templates, `%declare`,
`%override`/`%extend` and regex flags raise `ConstraintError`.
"""
from __future__ import annotations

import json
import re

from . import regex
from .expr import (EMPTY, Call, ConstraintError, Grammar, alt, char_set, chars_of, lit, opt, repeat, seq, star)

COMMON = {
    "DIGIT": r"[0-9]", "HEXDIGIT": r"[a-fA-F0-9]", "INT": r"[0-9]+", "SIGNED_INT": r"[+-]?[0-9]+",
    "DECIMAL": r"[0-9]+\.[0-9]*|\.[0-9]+",
    "FLOAT": r"[0-9]+[eE][+-]?[0-9]+|([0-9]+\.[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?",
    "SIGNED_FLOAT": r"[+-]?([0-9]+[eE][+-]?[0-9]+|([0-9]+\.[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?)",
    "NUMBER": r"[0-9]+[eE][+-]?[0-9]+|([0-9]+\.[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[0-9]+",
    "SIGNED_NUMBER": r"[+-]?([0-9]+[eE][+-]?[0-9]+|([0-9]+\.[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[0-9]+)",
    "LCASE_LETTER": r"[a-z]", "UCASE_LETTER": r"[A-Z]", "LETTER": r"[a-zA-Z]", "WORD": r"[a-zA-Z]+",
    "CNAME": r"[_a-zA-Z][_a-zA-Z0-9]*", "WS_INLINE": r"[ \t]+", "WS": r"[ \t\f\r\n]+", "CR": r"\r", "LF": r"\n",
    "NEWLINE": r"(\r?\n)+", "ESCAPED_STRING": r'"([^"\\\n]|\\[^\n])*"',
    "SH_COMMENT": r"#[^\n]*", "CPP_COMMENT": r"//[^\n]*", "C_COMMENT": r"/\*([^*]|\*+[^*/])*\*+/",
}

_TOKEN = re.compile(r"""
    (?P<ws>[ \t]+|\\\n) | (?P<comment>(?://|\#)[^\n]*) | (?P<newline>\r?\n)
  | (?P<string>"(?:[^"\\\n]|\\.)*"i?) | (?P<regexp>/(?:[^/\\\n]|\\.)+/[imslux]*)
  | (?P<directive>%[a-z]+) | (?P<range>\.\.) | (?P<arrow>->) | (?P<grammar>@[_a-zA-Z][_a-zA-Z0-9-]*)
  | (?P<special><\|?[^<>\s]*\|?>)
  | (?P<name>[?!]?[_a-zA-Z][_a-zA-Z0-9]*(?:\.[_a-zA-Z][_a-zA-Z0-9]*)*) | (?P<number>-?[0-9]+)
  | (?P<op>[:|()\[\]?*+~{},.])
""", re.VERBOSE)


def _tokens(text: str) -> list[list[tuple[str, str]]]:
    """Statements (lists of (kind, text)); a line starting with `|` or inside brackets continues one."""
    statements: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    depth = 0
    line_start = True
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ConstraintError(f"lark grammar: cannot read {text[pos:pos + 20]!r}", keyword="lark")
        pos = m.end()
        kind, value = m.lastgroup, m.group()
        if kind in ("ws", "comment"):
            continue
        if kind == "directive" and value in JSON_DIRECTIVES:      # %json {...} / %llguidance {...}
            value, pos = _json_argument(text, pos, value)
            kind = "json"
        if kind == "newline":
            line_start = True
            continue
        if line_start and depth == 0 and not (kind == "op" and value == "|") and current:
            statements.append(current)
            current = []
        line_start = False
        if kind == "op" and value in "([{":
            depth += 1
        elif kind == "op" and value in ")]}":
            depth -= 1
        current.append((kind, value))
    if current:
        statements.append(current)
    return statements


def _literal(token: str):
    insensitive = token.endswith("i")
    body = token[:-1] if insensitive else token
    try:
        text = eval(body, {"__builtins__": {}})          # a Python-style string literal, as Lark reads it
    except Exception:
        raise ConstraintError(f"lark grammar: bad string {token}", keyword="lark") from None
    if not insensitive:
        return lit(text) if text else EMPTY
    return seq(*(chars_of(c.lower() + c.upper()) if c.lower() != c.upper() else lit(c) for c in text))


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], resolve, before_literal=EMPTY, embed=None):
        self.tokens = tokens
        self.pos = 0
        self.resolve = resolve                             # name -> expression
        self.before_literal = before_literal               # what may precede a literal token (%ignore)
        self.embed = embed                                 # %json / @grammar -> expression (None: in terminals)

    def peek(self):
        return self.tokens[self.pos] if self.pos < len(self.tokens) else (None, None)

    def take(self, kind=None, value=None):
        token = self.peek()
        if token[0] is None or (kind and token[0] != kind) or (value and token[1] != value):
            raise ConstraintError(f"lark grammar: expected {value or kind}, got {token[1]!r}", keyword="lark")
        self.pos += 1
        return token

    def expansions(self):
        branches = [self.alias()]
        while self.peek() == ("op", "|"):
            self.pos += 1
            branches.append(self.alias())
        return alt(*branches)

    def alias(self):
        items = []
        while self.peek()[0] is not None and self.peek() not in (("op", "|"), ("op", ")"), ("op", "]")) \
                and self.peek()[0] != "arrow":
            items.append(self.expr())
        if self.peek()[0] == "arrow":
            self.pos += 1
            self.take("name")
        return seq(*items) if items else EMPTY

    def expr(self):
        atom = self.atom()
        kind, value = self.peek()
        if kind == "op" and value in "?*+":
            self.pos += 1
            return {"?": opt, "*": star, "+": lambda x: repeat(x, 1, None)}[value](atom)
        if kind == "op" and value == "~":
            self.pos += 1
            lo = int(self.take("number")[1])
            hi = lo
            if self.peek()[0] == "range":
                self.pos += 1
                hi = int(self.take("number")[1])
            return repeat(atom, lo, hi)
        if kind == "op" and value == "{":                  # llguidance's expr{M,N}, {N}, {M,}, {,N}
            self.pos += 1
            lo = int(self.take("number")[1]) if self.peek()[0] == "number" else 0
            hi = lo
            if self.peek() == ("op", ","):
                self.pos += 1
                hi = int(self.take("number")[1]) if self.peek()[0] == "number" else None
            self.take("op", "}")
            return repeat(atom, lo, hi)
        return atom

    def atom(self):
        kind, value = self.take()
        if kind == "op" and value == "(":
            inner = self.expansions()
            self.take("op", ")")
            return inner
        if kind == "op" and value == "[":
            inner = self.expansions()
            self.take("op", "]")
            return opt(inner)
        if kind == "string":
            if self.peek()[0] == "range":
                self.pos += 1
                end = self.take("string")[1]
                lo, hi = eval(value, {"__builtins__": {}}), eval(end, {"__builtins__": {}})
                if len(lo) != 1 or len(hi) != 1:
                    raise ConstraintError("lark grammar: a range needs single characters", keyword="lark")
                return seq(self.before_literal, char_set([(ord(lo), ord(hi))]))
            return seq(self.before_literal, _literal(value))
        if kind == "regexp":
            body, _, flags = value[1:].rpartition("/")
            if flags:
                raise ConstraintError(f"lark grammar: regex flags {flags!r} are not supported", keyword="lark")
            return seq(self.before_literal, regex.full_match(body.replace("\\/", "/")))
        if kind == "name":
            if self.peek() == ("op", "{") and self.tokens[self.pos + 1][0] not in ("number", "op"):
                raise ConstraintError("lark grammar: templates are not supported", keyword="lark")
            return self.resolve(value)
        if kind in ("json", "grammar") and self.embed is None:
            raise ConstraintError(f"lark grammar: {'%json' if kind == 'json' else value} cannot be part of a "
                                  "terminal", keyword="lark")
        if kind == "json" and value[0] == "%json":
            return seq(self.before_literal, self.embed.json(value[1]))
        if kind == "grammar":
            return seq(self.before_literal, self.embed.grammar(value[1:]))
        if kind == "special":
            raise ConstraintError(f"lark grammar: special tokens such as {value} are not supported (the "
                                  "constrained output is text)", keyword="lark")
        raise ConstraintError(f"lark grammar: unexpected {value!r}", keyword="lark")


def lark_grammar(text: str, start: str = "start", embed=None) -> Grammar:
    """The grammar of Lark text. `embed` (None: neither is allowed) turns `%json {schema}` and `@name`
    into expressions: `embed.json(schema)`, `embed.grammar(name)` (llguidance.py)."""
    rules: dict[str, list] = {}                 # rule name -> tokens of its expansions
    terminals: dict[str, list] = {}
    ignored: list[str] = []
    skip_once = False                           # %llguidance {"skip_repetition": "once"}
    for statement in _tokens(text):
        kind, value = statement[0]
        if kind == "json":                      # %llguidance {...} (a %json outside a rule is an error)
            if value[0] != "%llguidance" or len(statement) > 1:
                raise ConstraintError("lark grammar: %json belongs in a rule's body", keyword="lark")
            skip_once |= _llguidance_options(value[1])
            continue
        if kind == "directive":
            if value == "%ignore":
                ignored.append(statement[1:])
            elif value == "%import":
                _import(statement[1:], terminals)
            else:
                raise ConstraintError(f"lark grammar: {value} is not supported", keyword="lark")
            continue
        if kind != "name":
            raise ConstraintError(f"lark grammar: a definition cannot start with {value!r}", keyword="lark")
        name = value.lstrip("?!")
        body = statement[1:]
        if body and body[0] == ("op", "."):            # priority
            body = body[2:]
        if not body or body[0] != ("op", ":"):
            raise ConstraintError(f"lark grammar: expected ':' after {name}", keyword="lark")
        (terminals if name.lstrip("_")[:1].isupper() else rules)[name] = body[1:]
    if start not in rules:
        raise ConstraintError(f"lark grammar: no '{start}' rule", keyword="lark")

    terminal_exprs: dict[str, object] = {}

    def is_terminal(name: str) -> bool:
        return name.lstrip("?!").lstrip("_")[:1].isupper()

    def terminal(name: str, active=()):
        if name not in terminal_exprs:
            if name not in terminals:
                raise ConstraintError(f"lark grammar: undefined terminal {name}", keyword="lark")
            if name in active:
                raise ConstraintError(f"lark grammar: recursive terminal {name}", keyword="lark")
            body = terminals[name]
            if isinstance(body, str):                   # imported: a regex
                terminal_exprs[name] = regex.full_match(body)
            else:
                def inner(n: str):
                    if not is_terminal(n):
                        raise ConstraintError(f"lark grammar: terminal {name} refers to rule {n}", keyword="lark")
                    return terminal(n, active + (name,))
                terminal_exprs[name] = _parse_all(_Parser(body, inner))
        return terminal_exprs[name]

    skipped = alt(*(_parse_all(_Parser(t, terminal)) for t in ignored)) if ignored else None
    ignore = EMPTY if skipped is None else opt(skipped) if skip_once else star(skipped)

    def in_rule(name: str):
        name = name.lstrip("?!")
        if is_terminal(name):
            return seq(ignore, terminal(name))
        if name not in rules:
            raise ConstraintError(f"lark grammar: undefined rule {name}", keyword="lark")
        return Call(name)

    compiled = {name: _parse_all(_Parser(body, in_rule, ignore, embed)) for name, body in rules.items()}
    return Grammar(seq(Call(start), ignore), compiled)


def _parse_all(parser: _Parser):
    tree = parser.expansions()
    if parser.pos != len(parser.tokens):
        raise ConstraintError(f"lark grammar: unexpected {parser.peek()[1]!r}", keyword="lark")
    return tree


def _import(tokens: list[tuple[str, str]], terminals: dict) -> None:
    """%import common.NAME [-> ALIAS] and %import common (A, B, ...)."""
    names = [v for k, v in tokens if k == "name"]
    if not names or not names[0].startswith("common"):
        raise ConstraintError("lark grammar: only %import common... is supported", keyword="lark")
    if names[0] == "common":
        imported = [(n, n) for n in names[1:]]
    else:
        source = names[0].split(".", 1)[1]
        imported = [(source, names[1] if len(names) > 1 else source)]
    for source, alias in imported:
        if source not in COMMON:
            raise ConstraintError(f"lark grammar: common.{source} is not known", keyword="lark")
        terminals[alias] = COMMON[source]


JSON_DIRECTIVES = ("%json", "%llguidance")


def _json_argument(text: str, pos: int, directive: str):
    """The JSON object after `%json` / `%llguidance` at `pos`: ((directive, object), position after it)."""
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    try:
        value, end = json.JSONDecoder().raw_decode(text, pos)
    except ValueError as e:
        raise ConstraintError(f"lark grammar: {directive} needs a JSON object ({e})", keyword="lark") from None
    if not isinstance(value, (dict, bool)) or (directive == "%llguidance" and not isinstance(value, dict)):
        raise ConstraintError(f"lark grammar: {directive} needs a JSON object", keyword="lark")
    return (directive, value), end


def _llguidance_options(options: dict) -> bool:
    """Whether `%ignore` matches once per gap (`skip_repetition: "once"`). `no_forcing` is how this
    constrainer always works (it masks, never forces tokens); an option that cannot hold here is an error."""
    skip_once = False
    for key, value in options.items():
        if key == "no_forcing" and isinstance(value, bool):
            continue
        if key == "allow_invalid_utf8" and value is False:
            continue
        if key == "skip_repetition" and value == "once":
            skip_once = True
            continue
        raise ConstraintError(f"%llguidance option {key!r}: {json.dumps(value)} is not supported here "
                              f"(supported: no_forcing, allow_invalid_utf8 false, skip_repetition once)",
                              keyword="%llguidance")
    return skip_once
