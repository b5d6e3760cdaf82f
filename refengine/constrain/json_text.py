"""The JSON text of values as expressions: strings and their escapes, string formats, constants.

Shared by the schema compiler (json_schema.py), its object keywords (json_objects.py) and the automaton's
object-key tries (properties.py).
"""
from __future__ import annotations

import json
from functools import lru_cache

from .expr import (ANY_CHAR, NOTHING, Alt, Chars, ConstraintError, Lit, Repeat, Seq, alt, char_set, chars_of,
                   contains, intersect, lit, repeat, seq, subtract, union)

CONTROL = char_set([(0, 0x1F)])
PLAIN = subtract(ANY_CHAR, union(chars_of('"\\'), CONTROL))
HEX = chars_of("0123456789abcdefABCDEF")
ESCAPE = seq(lit("\\"), alt(chars_of('"\\/bfnrt'), seq(lit("u"), repeat(HEX, 4, 4))))
STRING_CHAR = alt(PLAIN, ESCAPE)
SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
                 "\t": "\\t"}
CONTROL_ESCAPE = seq(lit("\\u00"), chars_of("01"), HEX)

_DATE = (r"(\d{4}-((0[13578]|1[02])-(0[1-9]|[12]\d|3[01])|(0[469]|11)-(0[1-9]|[12]\d|30)|02-(0[1-9]|1\d|2[0-8]))"
         r"|(\d\d(0[48]|[2468][048]|[13579][26])|([02468][048]|[13579][26])00)-02-29)")   # month lengths, leap years
_TIME = r"([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d+)?([zZ]|[+-]([01]\d|2[0-3]):[0-5]\d)"
FORMATS = {
    "date": _DATE,
    "time": _TIME,
    "date-time": _DATE + "[tT]" + _TIME,
    "uuid": r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
    "email": r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
             r"@[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*",
    "hostname": r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*",
    "ipv4": r"((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)",
    "ipv6": r"(([0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,7}:|"
            r"([0-9a-fA-F]{1,4}:){1,6}:[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,5}(:[0-9a-fA-F]{1,4}){1,2}|"
            r"([0-9a-fA-F]{1,4}:){1,4}(:[0-9a-fA-F]{1,4}){1,3}|([0-9a-fA-F]{1,4}:){1,3}(:[0-9a-fA-F]{1,4}){1,4}|"
            r"([0-9a-fA-F]{1,4}:){1,2}(:[0-9a-fA-F]{1,4}){1,5}|[0-9a-fA-F]{1,4}:(:[0-9a-fA-F]{1,4}){1,6}|"
            r":((:[0-9a-fA-F]{1,4}){1,7}|:))",
    "uri": r"[A-Za-z][A-Za-z0-9+.-]*:[^\s<>\"{}|\\^`]*",
    "uri-reference": r"[^\s<>\"{}|\\^`]*",
}
# Standard formats we do not implement: refused (the spec lets a validator assert them).
UNSUPPORTED_FORMATS = {"duration", "idn-email", "idn-hostname", "iri", "iri-reference", "uri-template",
                       "json-pointer", "relative-json-pointer", "regex"}


def json_string(min_len: int = 0, max_len: int | None = None):
    return seq(lit('"'), repeat(STRING_CHAR, min_len, max_len), lit('"'))


@lru_cache(maxsize=4096)
def json_chars(c: Chars):
    """The JSON-string encodings of one character of `c`: the character itself where JSON allows it raw,
    its short escape, or (for control characters) \\u00XX."""
    parts = [intersect(c, PLAIN)]
    parts += [lit(esc) for ch, esc in SHORT_ESCAPES.items() if contains(c, ord(ch))]
    controls = intersect(c, CONTROL)
    if controls == CONTROL:
        parts.append(CONTROL_ESCAPE)
    else:
        for lo, hi in controls.ranges:
            for code in range(lo, hi + 1):
                parts += [lit(f"\\u{code:04x}"), lit(f"\\u{code:04X}")]
    parts = [p for p in parts if not (isinstance(p, Chars) and not p.ranges)]
    return alt(*parts) if parts else NOTHING


def json_content(tree):
    """A regex tree over characters → the same language written inside a JSON string."""
    if isinstance(tree, Chars):
        return json_chars(tree)
    if isinstance(tree, Lit):
        return seq(*(json_chars(chars_of(c)) for c in tree.data.decode("utf-8")))
    if isinstance(tree, Seq):
        return seq(*(json_content(item) for item in tree.items))
    if isinstance(tree, Alt):
        return alt(*(json_content(item) for item in tree.items))
    if isinstance(tree, Repeat):
        return repeat(json_content(tree.item), tree.min, tree.max)
    raise TypeError(tree)


def length_bounds(tree) -> tuple[int, int | None]:
    """Fewest and most characters a regex tree matches (None: unbounded)."""
    if isinstance(tree, Chars):
        return (1, 1) if tree.ranges else (0, 0)
    if isinstance(tree, Lit):
        n = len(tree.data.decode("utf-8"))
        return n, n
    if isinstance(tree, Seq):
        lo, hi = 0, 0
        for item in tree.items:
            a, b = length_bounds(item)
            lo, hi = lo + a, (None if hi is None or b is None else hi + b)
        return lo, hi
    if isinstance(tree, Alt):
        bounds = [length_bounds(item) for item in tree.items]
        if not bounds:
            return 0, 0
        return min(a for a, _ in bounds), (None if any(b is None for _, b in bounds) else max(b for _, b in bounds))
    if isinstance(tree, Repeat):
        a, b = length_bounds(tree.item)
        return a * tree.min, (None if tree.max is None or b is None else b * tree.max)
    raise TypeError(tree)


def literal(value) -> object:
    """The JSON text of a constant, as json.dumps writes it; numbers also in their other spellings."""
    text = json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return lit(text)
    spellings = {text}
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        spellings.add(str(int(value)))
    if isinstance(value, int) and abs(value) < 1e16:
        spellings.add(f"{value}.0")
    return alt(*(lit(s) for s in sorted(spellings)))


def json_type_of(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    raise ConstraintError(f"not a JSON value: {value!r}", keyword="enum")


def name_units(name: str) -> list[str]:
    """The JSON-string spelling of `name`, one unit (a character or one escape sequence) at a time."""
    return [json.dumps(c, ensure_ascii=False)[1:-1] for c in name]
