"""JSON Schema's array keywords → a JSON array: positional items (`prefixItems`, draft 7's tuple `items`),
the rest (`items` / `additionalItems`), `minItems` / `maxItems`, and `uniqueItems`.

`uniqueItems` holds exactly when the items come from a finite set of values (an `enum`, booleans, a small
integer range): the array is intersected with "no value twice", one automaton per value. Over other items
(any string, objects) "all different" is not a regular language, so the array is narrowed to at most one
item — an approximation that never accepts a repeated item, documented in the README.
"""
from __future__ import annotations

from .expr import EMPTY, NOTHING, ConstraintError, Intersect, alt, lit, opt, repeat, seq, star
from .json_logic import json_equal, listed_values
from .json_text import literal

MAX_UNIQUE_VALUES = 16               # more distinct item values: too many "seen" sets to track


def compile_array(c, schema: dict):
    lo = c.count(schema, "minItems", 0)
    hi = c.count(schema, "maxItems", None)
    items = schema.get("items", True)
    prefix = schema.get("prefixItems", [])
    rest = items
    if isinstance(items, list):                   # draft 4-7 tuple form
        prefix, rest = items, schema.get("additionalItems", True)
    if not isinstance(prefix, list):
        raise ConstraintError("prefixItems must be a list", keyword="prefixItems")
    if schema.get("uniqueItems") is True and (hi is None or hi > 1):
        values = None if prefix else item_values(c, rest)
        if values is not None:
            return unique_array(c, values, lo, hi)
        hi = 1                                     # the approximation: one item is always unique
    if hi is not None and hi < lo:
        return NOTHING
    positional = [c.as_rule(c.compile(p)) for p in prefix[:hi]]
    repeated = c.as_rule(c.compile(rest))
    return brackets(c, positional, repeated, lo, hi)


def brackets(c, positional: list, repeated, lo: int, hi: int | None):
    """`[` positional items, then repeated ones, lo..hi of them in all `]`."""
    def element(i: int):
        return positional[i] if i < len(positional) else repeated

    def after(i: int):
        """What may follow once i >= 1 elements are present."""
        if hi is not None and i >= hi:
            return EMPTY
        if i >= len(positional):
            if repeated == NOTHING:
                return EMPTY if i >= lo else NOTHING
            return repeat(seq(c.item_sep, repeated), max(lo - i, 0), None if hi is None else hi - i)
        step = seq(c.item_sep, element(i), after(i + 1))
        return step if i < lo else opt(step)

    if hi == 0 or element(0) == NOTHING:
        body = EMPTY if lo == 0 else NOTHING
    else:
        nonempty = seq(element(0), after(1), c.close)
        body = nonempty if lo > 0 else opt(nonempty)
    return seq(lit("["), c.open, body, lit("]"))


def item_values(c, schema) -> list | None:
    """The values an item may take when they are few (None otherwise), each valid under `schema`."""
    if schema is True or not isinstance(schema, dict):
        return None
    values = listed_values(c, schema)
    if values is None:
        types = c.types(schema) if "type" in schema else None
        if types == ["boolean"]:
            values = [False, True]
        elif types == ["null"]:
            values = [None]
        elif types == ["integer"] and isinstance(schema.get("minimum"), int) and \
                isinstance(schema.get("maximum"), int) and schema["maximum"] - schema["minimum"] < MAX_UNIQUE_VALUES:
            values = list(range(schema["minimum"], schema["maximum"] + 1))
    if values is None:
        return None
    validator = c.validator.evolve(schema=schema)
    values = [v for v in values if validator.is_valid(v)]
    distinct = []
    for value in values:
        if not any(json_equal(value, seen) for seen in distinct):
            distinct.append(value)
    return distinct if len(distinct) <= MAX_UNIQUE_VALUES else None


def unique_array(c, values: list, lo: int, hi: int | None):
    """Arrays of `values` with no value twice: the plain array minus, for each value, "it comes twice"."""
    hi = len(values) if hi is None else min(hi, len(values))
    if hi < lo:
        return NOTHING
    item = alt(*(literal(v) for v in values))
    plain = brackets(c, [], item, lo, hi)
    if hi <= 1:
        return plain
    any_items = star(seq(item, c.item_sep))
    twice = [seq(lit("["), c.open, any_items, literal(v), c.item_sep, any_items, literal(v),
                 star(seq(c.item_sep, item)), c.close, lit("]")) for v in values]
    return Intersect((plain,), tuple(twice))

