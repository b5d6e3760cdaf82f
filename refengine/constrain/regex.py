"""Regex text → expression tree (expr.py).

The dialect is the common subset of Python `re` and ECMAScript (JSON Schema's `pattern`): alternation,
groups (capturing, `(?:`, named), greedy/lazy/possessive quantifiers, classes with ranges, `.`, the escapes
\\d \\w \\s (and negations), \\n \\t \\r \\f \\v \\0 \\xHH \\uHHHH \\u{H…} \\UHHHHHHHH, and `^`/`$` at the ends.
Features a finite automaton cannot honour (back-references, lookaround, word boundaries, inline flags,
Unicode properties) raise `ConstraintError` naming the feature rather than being ignored.

`.` is any character but "\\n" (Python's rule). `\\s` is Python's Unicode whitespace set, `\\w` and `\\d` are
ASCII (ECMAScript's rule, and what JSON Schema patterns are written for).
"""
from __future__ import annotations

from functools import lru_cache

from .expr import (ANY_CHAR, EMPTY, Alt, Anchor, Chars, ConstraintError, Repeat, Seq, alt, char_set, chars_of,
                   negate, repeat, seq, star, union)

DIGIT = char_set([(0x30, 0x39)])
WORD = char_set([(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)])
SPACE = char_set([(0x09, 0x0D), (0x1C, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A),
                  (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000)])
DOT = negate(chars_of("\n"))
CLASS_ESCAPES = {"d": DIGIT, "D": negate(DIGIT), "w": WORD, "W": negate(WORD), "s": SPACE, "S": negate(SPACE)}
CHAR_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "a": "\a", "0": "\0"}
MAX_REPEAT = 100_000


def parse_regex(text: str) -> object:
    """Parse `text`; the tree may still hold `Anchor`s (see `full_match` / `search`)."""
    return _Parser(text).parse()


@lru_cache(maxsize=1024)                 # schemas repeat their patterns (oneOf negates each branch's)
def full_match(text: str) -> object:
    """The language of strings the whole of which match `text` (like `re.fullmatch`)."""
    return apply_anchors(parse_regex(text), search=False)


@lru_cache(maxsize=1024)
def search(text: str) -> object:
    """The language of strings containing a match of `text` (like `re.search`; JSON Schema's `pattern`)."""
    return apply_anchors(parse_regex(text), search=True)


def apply_anchors(tree, search: bool) -> object:
    """Remove leading `^` / trailing `$`; where a branch is not anchored and `search`, pad it with `.*`
    (any character, newlines included, since a search may start anywhere)."""
    free = star(ANY_CHAR)
    tree = _apply_end(_apply_start(tree, search, free), search, free)
    if _has_anchor(tree):
        raise ConstraintError("'^' and '$' are only supported at the start and end of a regex", keyword="anchor")
    return tree


def _apply_start(tree, search, free):
    if isinstance(tree, Anchor) and tree.kind == "^":
        return EMPTY
    if isinstance(tree, Alt):
        return alt(*(_apply_start(item, search, free) for item in tree.items))
    if isinstance(tree, Seq) and tree.items:
        return seq(_apply_start(tree.items[0], search, free), *tree.items[1:])
    return seq(free, tree) if search else tree


def _apply_end(tree, search, free):
    if isinstance(tree, Anchor) and tree.kind == "$":
        return EMPTY
    if isinstance(tree, Alt):
        return alt(*(_apply_end(item, search, free) for item in tree.items))
    if isinstance(tree, Seq) and tree.items:
        return seq(*tree.items[:-1], _apply_end(tree.items[-1], search, free))
    return seq(tree, free) if search else tree


def _has_anchor(tree) -> bool:
    if isinstance(tree, Anchor):
        return True
    if isinstance(tree, (Seq, Alt)):
        return any(_has_anchor(item) for item in tree.items)
    if isinstance(tree, Repeat):
        return _has_anchor(tree.item)
    return False


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def error(self, message: str, keyword: str = "regex") -> ConstraintError:
        return ConstraintError(f"regex {self.text!r}: {message} (at offset {self.pos})", keyword=keyword)

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos:self.pos + n]

    def take(self) -> str:
        if self.pos >= len(self.text):
            raise self.error("unexpected end")
        c = self.text[self.pos]
        self.pos += 1
        return c

    def accept(self, s: str) -> bool:
        if self.text.startswith(s, self.pos):
            self.pos += len(s)
            return True
        return False

    def parse(self):
        tree = self.alternation()
        if self.pos != len(self.text):
            raise self.error(f"unbalanced {self.peek()!r}")
        return tree

    def alternation(self):
        branches = [self.concatenation()]
        while self.accept("|"):
            branches.append(self.concatenation())
        return alt(*branches) if len(branches) > 1 else branches[0]

    def concatenation(self):
        items = []
        while self.pos < len(self.text) and self.peek() not in "|)":
            items.append(self.quantified())
        return seq(*items) if items else EMPTY

    def quantified(self):
        atom = self.atom()
        while True:
            bounds = self.quantifier()
            if bounds is None:
                return atom
            if isinstance(atom, Anchor):
                raise self.error("quantified anchor")
            self.accept("?") or self.accept("+")   # lazy / possessive: same language
            atom = repeat(atom, *bounds)

    def quantifier(self):
        c = self.peek()
        if c == "*":
            self.pos += 1
            return 0, None
        if c == "+":
            self.pos += 1
            return 1, None
        if c == "?":
            self.pos += 1
            return 0, 1
        if c == "{":
            start = self.pos
            self.pos += 1
            lo = self.number()
            hi = lo
            if self.accept(","):
                hi = self.number()
            if not self.accept("}") or (lo is None and hi is None):
                self.pos = start           # a literal "{" (both dialects allow it)
                return None
            lo = lo or 0
            if hi is not None and hi < lo:
                raise self.error(f"bad repeat {{{lo},{hi}}}")
            if max(lo, hi or 0) > MAX_REPEAT:
                raise self.error(f"repeat count over {MAX_REPEAT}")
            return lo, hi
        return None

    def number(self):
        start = self.pos
        while self.peek().isdigit():
            self.pos += 1
        return int(self.text[start:self.pos]) if self.pos > start else None

    def atom(self):
        c = self.take()
        if c == "(":
            return self.group()
        if c == "[":
            return self.char_class()
        if c == ".":
            return DOT
        if c == "^":
            return Anchor("^")
        if c == "$":
            return Anchor("$")
        if c == "\\":
            result = self.escape(in_class=False)
            return chars_of(result) if isinstance(result, str) else result
        if c in "*+?":
            raise self.error(f"nothing to repeat before {c!r}")
        if c == ")":
            raise self.error("unbalanced ')'")
        return chars_of(c)

    def group(self):
        if self.accept("?"):
            if self.accept(":"):
                pass
            elif self.accept("P<") or (self.peek() == "<" and self.peek(2) not in ("<=", "<!") and self.accept("<")):
                while self.peek() and self.peek() != ">":
                    self.pos += 1
                if not self.accept(">"):
                    raise self.error("unterminated group name")
            elif self.peek() in ("=", "!") or self.peek(2) in ("<=", "<!"):
                raise self.error("lookaround assertions are not supported", keyword="lookaround")
            elif self.peek() == "#":
                while self.peek() and self.peek() != ")":
                    self.pos += 1
                self.accept(")")
                return EMPTY
            else:
                raise self.error(f"group extension (?{self.peek()} is not supported", keyword="regex flags")
        inner = self.alternation()
        if not self.accept(")"):
            raise self.error("missing ')'")
        return inner

    def char_class(self):
        negated = self.accept("^")
        parts: list[Chars] = []
        first = True
        while True:
            if self.pos >= len(self.text):
                raise self.error("unterminated character class")
            if self.peek() == "]" and not first:
                self.pos += 1
                break
            first = False
            if self.accept("[:"):
                raise self.error("POSIX classes are not supported", keyword="regex")
            low = self.class_atom()
            if self.peek() == "-" and self.text[self.pos + 1:self.pos + 2] not in ("]", ""):
                self.pos += 1
                high = self.class_atom()
                if not (isinstance(low, str) and isinstance(high, str)):
                    raise self.error("class escape in a range")
                if ord(low) > ord(high):
                    raise self.error(f"bad range {low!r}-{high!r}")
                parts.append(char_set([(ord(low), ord(high))]))
            else:
                parts.append(chars_of(low) if isinstance(low, str) else low)
        chars = union(*parts) if parts else char_set([])
        return negate(chars) if negated else chars

    def class_atom(self):
        """A single character (str) or a class escape (Chars)."""
        c = self.take()
        return self.escape(in_class=True) if c == "\\" else c

    def escape(self, in_class: bool):
        """A single character (str), a class (Chars) or an anchor."""
        c = self.take()
        if c in CLASS_ESCAPES:
            return CLASS_ESCAPES[c]
        if c in CHAR_ESCAPES and not (c == "0" and self.peek().isdigit()):
            return CHAR_ESCAPES[c]
        if c == "b" and in_class:
            return "\b"
        if c == "x":
            return self.hex_char(2)
        if c == "u":
            if self.accept("{"):
                end = self.text.find("}", self.pos)
                if end < 0:
                    raise self.error("bad \\u{...} escape")
                digits, self.pos = self.text[self.pos:end], end + 1
                return self.code_point(digits)
            return self.hex_char(4)
        if c == "U":
            return self.hex_char(8)
        if c == "c" and self.peek().isalpha():
            return chr(ord(self.take()) % 32)
        if c == "A" and not in_class:
            return Anchor("^")
        if c in "zZ" and not in_class:
            return Anchor("$")
        if c in "bB":
            raise self.error("word boundaries are not supported", keyword="word boundary")
        if c in "pP":
            raise self.error("Unicode property escapes are not supported", keyword="unicode property")
        if c.isdigit() or c == "k":
            raise self.error("back-references are not supported", keyword="backreference")
        if c.isalnum():
            raise self.error(f"unknown escape \\{c}")
        return c

    def hex_char(self, n: int):
        digits = self.text[self.pos:self.pos + n]
        if len(digits) != n or any(d not in "0123456789abcdefABCDEF" for d in digits):
            raise self.error("bad hex escape")
        self.pos += n
        return self.code_point(digits)

    def code_point(self, digits: str):
        try:
            value = int(digits, 16)
        except ValueError:
            raise self.error("bad hex escape") from None
        if value > 0x10FFFF:
            raise self.error("code point out of range")
        return chr(value)


def literal(text: str) -> object:
    """A regex-free literal (for callers that build trees from strings)."""
    return seq(*(chars_of(c) for c in text)) if text else EMPTY


__all__ = ["parse_regex", "full_match", "search", "apply_anchors", "literal", "DIGIT", "WORD", "SPACE", "DOT",
           "ANY_CHAR"]
