"""JSON Schema → grammar (expression tree with rules) accepting exactly the JSON texts of valid instances.

Text shape and reading (json_style.py): `json.dumps` output (separators ", " and ": ") is always accepted,
with bounded whitespace besides. Declared properties come in schema order; properties with other names
(allowed unless `additionalProperties: false`, as the spec says, or unless the style closes objects that
declare properties) may come in any gap between them.

Supported: type (and lists), enum / const (a finite schema: its listed values the whole schema accepts),
anyOf, allOf (merged, merge.py), local $ref (`#`, `#/$defs/..`, `#/definitions/..`, any JSON pointer;
recursion through the automaton's bounded return stack), the logic keywords (json_logic.py: not, oneOf,
if/then/else), the object keywords (json_objects.py: properties, required, additionalProperties,
patternProperties, propertyNames, min/maxProperties, dependencies, dependentRequired, dependentSchemas), the
array keywords (json_arrays.py: items, prefixItems, additionalItems, min/maxItems, uniqueItems), min/maxLength,
pattern (several: intersected), formats (date-time, date, time, uuid, email, hostname, ipv4, ipv6, uri,
uri-reference), minimum / maximum / exclusive bounds (exact), multipleOf 1 and 10^-k. Anything else that
would constrain an instance (contains, unevaluated*, other multipleOf, what `not` cannot exclude exactly,
...) raises `ConstraintError` naming the keyword; annotations and keywords that are not JSON Schema's are
ignored, as the spec says.
"""
from __future__ import annotations

import json
import math
from functools import cached_property
from decimal import Decimal
from urllib.parse import unquote

from . import regex
from .expr import (NOTHING, Alt, Call, Chars, ConstraintError, Divisible, Grammar, Intersect, Lit, Members, Repeat,
                   Seq, alt, call_free, char_set, lit, opt, repeat, seq, star)
from .json_arrays import compile_array
from .json_keywords import CONDITIONAL, DEPENDENCY_KEYS, TYPES, UNSUPPORTED, VALIDATION
from .json_logic import conditional, finite, listed_values, negation, one_of, root_validator
from .json_objects import compile_object, dependency_cases
from .json_style import SPEC_STYLE, JsonStyle, json_text, with_x_guidance
from .json_text import FORMATS, STRING_CHAR, UNSUPPORTED_FORMATS, json_content, json_string, length_bounds
from .numbers import INTEGER, NUMBER, decimal_range, integer_range


MAX_COUNTED_LENGTH = 1000
MAX_DIVISOR = 10_000                 # multipleOf k: one automaton node per remainder




def schema_grammar(schema, style: JsonStyle = SPEC_STYLE) -> Grammar:
    if isinstance(schema, dict) and "x-guidance" in schema:
        style = with_x_guidance(style, schema["x-guidance"])
    compiler = SchemaCompiler(schema, style)
    start = compiler.compile(schema)
    if start == NOTHING:
        raise ConstraintError("the schema accepts no instance", keyword="schema")
    return Grammar(start, compiler.rules)


def json_object_grammar(style: JsonStyle = SPEC_STYLE) -> Grammar:
    """Any JSON object (json_object response format); nesting bounded by the automaton's stack."""
    compiler = SchemaCompiler({"type": "object"}, style)
    return Grammar(compiler.compile({"type": "object"}), compiler.rules)


class SchemaCompiler:
    def __init__(self, root, style: JsonStyle):
        if not isinstance(root, (dict, bool)):
            raise ConstraintError("a JSON schema must be an object or a boolean", keyword="schema")
        self.root = root
        self.style = style
        text = json_text(style)
        self.open, self.close = text.open, text.close          # whitespace inside brackets
        self.item_sep, self.key_sep = text.item_sep, text.key_sep
        self.rules: dict[str, object] = {}
        self.ref_rules: dict[str, str] = {}
        self.merged_rules: dict[str, str] = {}

    @cached_property
    def validator(self):
        """The `jsonschema` validator of the root schema (judges the listed values of finite schemas)."""
        return root_validator(self.root)

    # --- rules -----------------------------------------------------------------------------------------

    def any_value(self):
        if "json_value" not in self.rules:
            self.rules["json_value"] = NOTHING        # placeholder while building (recursive)
            sep = self.item_sep
            member = seq(json_string(), self.key_sep, Call("json_value"))
            self.rules["json_object"] = seq(lit("{"), self.open, opt(seq(member, star(seq(sep, member)), self.close)),
                                            lit("}"))
            self.rules["json_array"] = seq(lit("["), self.open,
                                           opt(seq(Call("json_value"), star(seq(sep, Call("json_value"))), self.close)),
                                           lit("]"))
            self.rules["json_value"] = alt(Call("json_object"), Call("json_array"), json_string(), NUMBER,
                                           lit("true"), lit("false"), lit("null"))
        return Call("json_value")

    def ref_rule(self, ref: str):
        """A rule per referenced schema, built once (so recursive references work)."""
        name = self.ref_rules.get(ref)
        if name is None:
            name = f"ref{len(self.ref_rules)}:{ref}"
            self.ref_rules[ref] = name
            self.rules[name] = NOTHING                # placeholder while building (recursive)
            self.rules[name] = self.compile(self.resolve(ref))
        return Call(name)

    def merged_rule(self, schema: dict, merged) -> object:
        """A schema that needs merging (allOf, $ref with siblings) becomes a rule keyed by its text, so
        a recursive one (its merge reaching itself again) is a rule call, not an endless inlining."""
        key = json.dumps(schema, sort_keys=True)
        name = self.merged_rules.get(key)
        if name is None:
            name = f"merged{len(self.merged_rules)}"
            self.merged_rules[key] = name
            self.rules[name] = NOTHING                # placeholder while building (recursive)
            tree = self.compile(merged())
            if _weight(tree) <= 40 and call_free(tree):
                self.rules[name] = tree
                return tree
            self.rules[name] = tree
        return Call(name)

    def as_rule(self, tree):
        """Large subtrees used in several places become rules (no copying)."""
        if _weight(tree) <= 40:
            return tree
        name = f"sub{len(self.rules)}"
        self.rules[name] = tree
        return Call(name)

    def resolve(self, ref: str):
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise ConstraintError(f"only local $refs are supported, not {ref!r}", keyword="$ref")
        node = self.root
        pointer = unquote(ref[1:])
        if pointer and not pointer.startswith("/"):
            raise ConstraintError(f"unsupported $ref {ref!r} (anchors are not supported)", keyword="$ref")
        for part in pointer.split("/")[1:] if pointer else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise ConstraintError(f"$ref {ref!r} does not resolve", keyword="$ref")
        return node

    # --- schemas ---------------------------------------------------------------------------------------

    def compile(self, schema):
        if schema is True or schema == {}:
            return self.any_value()
        if schema is False:
            return NOTHING
        if not isinstance(schema, dict):
            raise ConstraintError(f"a schema must be an object or a boolean, not {schema!r}", keyword="schema")
        for key in UNSUPPORTED:
            if key in schema and not _trivial(key, schema[key]):
                raise ConstraintError(f"the JSON Schema keyword {key!r} is not supported", keyword=key)
        values = listed_values(self, schema)
        if values is not None:
            return finite(self, schema, values)
        if any(key in schema for key in DEPENDENCY_KEYS):
            rest = {k: v for k, v in schema.items() if k not in DEPENDENCY_KEYS}
            cases = dependency_cases(schema)
            return self.compile({**rest, "allOf": [*rest.get("allOf", []), *cases]} if cases else rest)
        if any(key in schema for key in CONDITIONAL):
            return self.compile(conditional(schema))
        if "not" in schema:
            return negation(self, {k: v for k, v in schema.items() if k != "not"}, schema["not"])
        if "$ref" in schema:
            ref = schema["$ref"]
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            if not any(k in VALIDATION for k in rest):
                return self.ref_rule(ref)
            return self.merged_rule(schema, lambda: merge(self, self.resolve(ref), rest))
        if "allOf" in schema:
            parts = schema["allOf"]
            if not isinstance(parts, list):
                raise ConstraintError("allOf must be a list", keyword="allOf")

            def merged():
                out = {k: v for k, v in schema.items() if k != "allOf"}
                for part in parts:
                    out = merge(self, out, part)
                return out
            return self.merged_rule(schema, merged)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                branches = schema[key]
                if not isinstance(branches, list) or not branches:
                    raise ConstraintError(f"{key} must be a non-empty list", keyword=key)
                rest = {k: v for k, v in schema.items() if k != key}
                merged = [merge(self, rest, b) for b in branches]
                if key == "oneOf":
                    return one_of(self, merged, branches)
                return alt(*(self.compile(b) for b in merged))
        types = self.types(schema)
        return alt(*(self.typed(t, schema) for t in types))

    def types(self, schema) -> list[str]:
        declared = schema.get("type")
        if declared is None:
            return list(TYPES)
        names = [declared] if isinstance(declared, str) else declared
        if not isinstance(names, list) or not all(isinstance(t, str) for t in names):
            raise ConstraintError(f"bad type {declared!r}", keyword="type")
        for t in names:
            if t not in TYPES and t != "integer":
                raise ConstraintError(f"unknown type {t!r}", keyword="type")
        if "number" in names:
            names = [t for t in names if t != "integer"]
        return list(dict.fromkeys(names))

    def typed(self, t: str, schema):
        if t == "null":
            return lit("null")
        if t == "boolean":
            return alt(lit("true"), lit("false"))
        if t == "string":
            return self.string(schema)
        if t in ("integer", "number"):
            return self.number(schema, integer=(t == "integer"))
        if t == "array":
            return self.array(schema)
        return self.object(schema)

    def string(self, schema):
        """A JSON string; its content must satisfy the length bounds, the format and every pattern (an
        intersection of automata when there is more than one such constraint)."""
        lo = _count(schema, "minLength", 0)
        hi = _count(schema, "maxLength", None)
        if hi is not None and hi < lo:
            return NOTHING
        contents = []                                   # regex trees over characters
        fmt = schema.get("format")
        if fmt is not None:
            if fmt in FORMATS:
                contents.append(regex.full_match(FORMATS[fmt]))
            elif fmt in UNSUPPORTED_FORMATS:
                raise ConstraintError(f"the string format {fmt!r} is not supported", keyword="format")
        patterns = schema.get("pattern", [])
        for pattern in patterns if isinstance(patterns, list) else [patterns]:
            if not isinstance(pattern, str):
                raise ConstraintError("pattern must be a string", keyword="pattern")
            contents.append(regex.search(pattern))
        if not contents:
            return json_string(lo, hi)
        if len(contents) == 1:
            min_len, max_len = length_bounds(contents[0])
            if min_len >= lo and (hi is None or (max_len is not None and max_len <= hi)):
                return seq(lit('"'), json_content(contents[0]), lit('"'))     # the bounds add nothing
        operands = [json_content(c) for c in contents]
        if lo or hi is not None:
            if hi is not None and hi > MAX_COUNTED_LENGTH and any(_counts(c) for c in contents):
                # states would multiply: (length so far) x (the pattern's own counters)
                raise ConstraintError(f"maxLength {hi} together with a pattern with counted repeats is not "
                                      "supported", keyword="maxLength")
            operands.append(repeat(STRING_CHAR, lo, hi))
        return seq(lit('"'), Intersect(tuple(operands)), lit('"'))

    def number(self, schema, integer: bool):
        lo, lo_strict = _bound(schema, "minimum", "exclusiveMinimum", lower=True)
        hi, hi_strict = _bound(schema, "maximum", "exclusiveMaximum", lower=False)
        step = schema.get("multipleOf")
        decimals = divisor = None
        if step is not None:
            if not isinstance(step, (int, float)) or isinstance(step, bool) or step <= 0:
                raise ConstraintError("multipleOf must be a positive number", keyword="multipleOf")
            step_dec = Decimal(str(step))
            if step_dec == step_dec.to_integral_value() and step_dec == 1:
                integer = True
            elif not integer and step_dec.as_tuple().digits == (1,) and step_dec.as_tuple().exponent < 0:
                decimals = -step_dec.as_tuple().exponent
            elif integer and step_dec < 1 and (1 / step_dec) == (1 / step_dec).to_integral_value():
                pass                                  # every integer is a multiple of 1/k
            elif step_dec == step_dec.to_integral_value() and step_dec <= MAX_DIVISOR:
                divisor = int(step_dec)               # integers (also written "6.0") divisible by it
            else:
                raise ConstraintError(f"multipleOf {step} is not supported", keyword="multipleOf")
        if divisor is not None:
            multiples = Divisible(divisor) if integer else \
                seq(Divisible(divisor), opt(seq(lit("."), repeat(lit("0"), 1, None))))
            if lo is None and hi is None:
                return multiples
            return Intersect((multiples, self.number({k: v for k, v in schema.items() if k != "multipleOf"},
                                                     integer)))
        if integer:
            ilo = None if lo is None else (math.floor(lo) + 1 if lo_strict and lo == math.floor(lo)
                                           else math.ceil(lo))
            ihi = None if hi is None else (math.ceil(hi) - 1 if hi_strict and hi == math.ceil(hi)
                                           else math.floor(hi))
            if ilo is None and ihi is None:
                return INTEGER
            return integer_range(ilo, ihi)
        if decimals is not None:
            if lo is not None or hi is not None:
                raise ConstraintError("multipleOf together with bounds is not supported", keyword="multipleOf")
            return seq(INTEGER, opt(seq(lit("."), repeat(char_set([(0x30, 0x39)]), 1, decimals))))
        if lo is None and hi is None:
            return NUMBER
        return decimal_range(lo, lo_strict, hi, hi_strict)

    def array(self, schema):
        return compile_array(self, schema)

    def object(self, schema):
        return compile_object(self, schema)

    count = staticmethod(lambda schema, key, default: _count(schema, key, default))


def _counts(tree) -> bool:
    """Whether a regex tree has a bounded repeat with more than a few copies."""
    if isinstance(tree, Repeat):
        return (tree.max is not None and tree.max > 4) or _counts(tree.item)
    if isinstance(tree, (Seq, Alt)):
        return any(_counts(item) for item in tree.items)
    return False


def _weight(tree, limit: int = 41) -> int:
    """Rough size of a tree, counted up to `limit`."""
    if isinstance(tree, (Chars, Call)):
        return 1
    if isinstance(tree, Lit):
        return len(tree.data)
    if isinstance(tree, (Seq, Alt)):
        total = 1
        for item in tree.items:
            total += _weight(item, limit)
            if total >= limit:
                return limit
        return total
    if isinstance(tree, Repeat):
        return min(limit, _weight(tree.item, limit) * max(1, tree.max or tree.min or 1) + 1)
    if isinstance(tree, Members):
        return limit
    return 1


def _count(schema, key: str, default):
    value = schema.get(key, default)
    if value is default:
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConstraintError(f"{key} must be a non-negative integer", keyword=key)
    return value


def _bound(schema, inclusive_key: str, exclusive_key: str, lower: bool):
    """(bound as Decimal or None, strict) from inclusive / exclusive keywords (draft 4's boolean form too)."""
    def number(key):
        value = schema[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConstraintError(f"{key} must be a number", keyword=key)
        return Decimal(str(value)) if isinstance(value, float) else Decimal(value)

    candidates = []
    if inclusive_key in schema:
        strict = schema.get(exclusive_key) is True
        candidates.append((number(inclusive_key), strict))
    if exclusive_key in schema and not isinstance(schema[exclusive_key], bool):
        candidates.append((number(exclusive_key), True))
    if not candidates:
        return None, False
    # the tighter bound wins; at equal values the strict one
    if lower:
        return max(candidates, key=lambda c: (c[0], c[1]))
    return min(candidates, key=lambda c: (c[0], not c[1]))


def _trivial(key: str, value) -> bool:
    """Unsupported keywords whose value constrains nothing."""
    if key in ("unevaluatedProperties", "unevaluatedItems"):
        return value is True or value == {}
    return False


from .merge import merge  # noqa: E402  (merge needs SchemaCompiler.resolve only)
