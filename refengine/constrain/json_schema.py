"""JSON Schema → grammar (expression tree with rules) accepting exactly the JSON texts of valid instances.

Text shape and reading (json_style.py): `json.dumps` output (separators ", " and ": ") is always accepted,
with bounded whitespace besides. Declared properties come in schema order; properties with other names
(allowed unless `additionalProperties: false`, as the spec says, or unless the style closes objects that
declare properties) may come in any gap between them.

Supported: type (and lists), properties, required, additionalProperties (bool or schema),
patternProperties (each key case an automaton intersection / complement), min/maxProperties, enum, const,
anyOf, oneOf (disjoint branches as alternatives, overlapping ones as "this and not those" where `not` can
be compiled), allOf (merged), not (by type; scalar types by automaton complement; "some required name is
absent"), local $ref (`#`, `#/$defs/..`, `#/definitions/..`, any JSON pointer; recursion through the
automaton's bounded return stack), items / prefixItems / additionalItems, min/maxItems, min/maxLength,
pattern (several: intersected), formats (date-time, date, time, uuid, email, hostname, ipv4, ipv6, uri,
uri-reference), minimum / maximum / exclusive bounds (exact), multipleOf 1 and 10^-k. Anything else that
would constrain an instance (uniqueItems, dependencies, if/then/else, propertyNames, contains, other
multipleOf, not of objects/arrays by content, ...) raises `ConstraintError` naming the keyword; annotations
and keywords that are not JSON Schema's are ignored, as the spec says.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from decimal import Decimal
from urllib.parse import unquote

from . import regex
from .expr import (ANY_CHAR, EMPTY, NOTHING, Alt, Call, Chars, ConstraintError, Grammar, Intersect, Lit, Members,
                   Properties, Repeat, Seq, alt, call_free, char_set, chars_of, contains, intersect, lit, opt,
                   repeat, seq, star, subtract, union)
from .json_style import SPEC_STYLE, JsonStyle, json_text, with_x_guidance
from .numbers import INTEGER, NUMBER, decimal_range, integer_range

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

TYPES = ("null", "boolean", "object", "array", "string", "number")
ANNOTATIONS = {"title", "description", "default", "examples", "example", "$comment", "$schema", "$id", "id",
               "readOnly", "writeOnly", "deprecated", "contentMediaType", "contentEncoding", "contentSchema",
               "$anchor", "$dynamicAnchor", "$vocabulary", "definitions", "$defs", "format_hint", "nullable",
               "discriminator", "xml", "externalDocs", "markdownDescription", "enumDescriptions"}
UNSUPPORTED = ("if", "then", "else", "dependencies", "dependentRequired", "dependentSchemas",
               "unevaluatedProperties", "unevaluatedItems", "contains", "minContains", "maxContains",
               "$dynamicRef", "$recursiveRef", "propertyNames")
OBJECT_KEYS = {"properties", "required", "additionalProperties", "patternProperties", "minProperties",
               "maxProperties"}
ARRAY_KEYS = {"items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems"}
STRING_KEYS = {"minLength", "maxLength", "pattern", "format"}
NUMBER_KEYS = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}
VALIDATION = OBJECT_KEYS | ARRAY_KEYS | STRING_KEYS | NUMBER_KEYS | set(UNSUPPORTED) | {
    "type", "enum", "const", "allOf", "anyOf", "oneOf", "$ref", "not"}
TYPE_KEYS = {"object": OBJECT_KEYS, "array": ARRAY_KEYS, "string": STRING_KEYS, "number": NUMBER_KEYS,
             "integer": NUMBER_KEYS, "boolean": set(), "null": set()}
MAX_BRANCHES = 128
MAX_COUNTED_LENGTH = 1000


def json_string(min_len: int = 0, max_len: int | None = None):
    return seq(lit('"'), repeat(STRING_CHAR, min_len, max_len), lit('"'))


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
        if "not" in schema:
            return self.negation(schema)
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
                    return self.one_of(merged, branches)
                return alt(*(self.compile(b) for b in merged))
        if "const" in schema or "enum" in schema:
            return self.constants(schema)
        types = self.types(schema)
        return alt(*(self.typed(t, schema) for t in types))

    def one_of(self, branches: list, own: list):
        """Exactly one branch: branches that provably exclude each other compile as alternatives; a branch
        that may overlap others becomes "this one and not those" (where `not` can be compiled).
        `branches` include the sibling keywords, `own` are the branches as written (what is negated)."""
        overlapping = overlaps(self, branches)
        compiled = []
        for i, branch in enumerate(branches):
            for j in overlapping[i]:
                try:
                    branch = merge(self, branch, {"not": own[j]})
                except ConstraintError:
                    raise ConstraintError("oneOf whose branches may overlap is not supported (use anyOf)",
                                          keyword="oneOf") from None
            try:
                compiled.append(self.compile(branch))
            except ConstraintError as e:
                if not overlapping[i] or e.keyword != "not":
                    raise
                raise ConstraintError("oneOf whose branches may overlap is not supported (use anyOf)",
                                      keyword="oneOf") from None
        return alt(*compiled)

    def negation(self, schema):
        """`not`, type by type: a type the negated schema says nothing about is excluded whole; otherwise
        the instances of that type the negated schema accepts are removed by automaton intersection
        (possible for scalar types; objects and arrays there are refused)."""
        rest = {k: v for k, v in schema.items() if k != "not"}
        negated = schema["not"]
        if negated is True or negated == {}:
            return NOTHING
        if negated is False:
            return self.compile(rest)
        if not isinstance(negated, dict):
            raise ConstraintError("not must be a schema", keyword="not")
        negated = expand(self, negated, 0)
        if negated is False:
            return self.compile(rest)
        negated_types = set(self.types(negated)) if "type" in negated else set(TYPES) | {"integer"}
        if "number" in negated_types:
            negated_types.add("integer")
        keys = {k for k in negated if k in VALIDATION and k != "type"}
        branches = []
        for t in self.types(rest) if "type" in rest else list(TYPES):
            kinds = {t, "integer"} if t == "number" else {t}
            if not kinds & negated_types:
                branches.append(self.compile({**rest, "type": t}))          # not excluded at all
                continue
            applicable = {k for k in keys if k not in set().union(*(TYPE_KEYS[x] for x in TYPES))
                          or k in TYPE_KEYS[t]}
            if not applicable and kinds <= negated_types:
                continue                                                  # excluded whole
            if t == "number" and "integer" in negated_types and "number" not in negated_types:
                raise ConstraintError("not: numbers that are not integers are not supported", keyword="not")
            if t == "object" and applicable == {"required"}:
                # some required name is absent
                for name in dict.fromkeys(negated["required"]):
                    branches.append(self.compile(merge(self, {**rest, "type": t}, {"properties": {name: False}})))
                continue
            kept = self.compile({**rest, "type": t})
            removed = self.compile({**negated, "type": t})
            if kept == NOTHING or removed == NOTHING:
                branches.append(kept)
                continue
            if not (call_free(kept) and call_free(removed)):
                raise ConstraintError(f"not: excluding {t}s by their contents is not supported", keyword="not")
            branches.append(Intersect((kept,), (removed,)))
        return alt(*branches) if branches else NOTHING

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

    def constants(self, schema):
        values = [schema["const"]] if "const" in schema else schema["enum"]
        if not isinstance(values, list):
            raise ConstraintError("enum must be a list", keyword="enum")
        if "const" in schema and "enum" in schema:
            values = [v for v in values if any(_json_equal(v, e) for e in schema["enum"])]
        types = self.types(schema)
        keep = []
        for value in values:
            t = json_type_of(value)
            if t in types or (t == "integer" and "number" in types):
                keep.append(value)
        rest = {k: v for k, v in schema.items() if k in VALIDATION and k not in ("enum", "const", "type")}
        if rest:
            keep = [v for v in keep if _valid(v, rest)]
        return alt(*(literal(v) for v in keep)) if keep else NOTHING

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
        decimals = None
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
            else:
                raise ConstraintError(f"multipleOf {step} is not supported", keyword="multipleOf")
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
        lo = _count(schema, "minItems", 0)
        hi = _count(schema, "maxItems", None)
        if schema.get("uniqueItems") is True:
            raise ConstraintError("uniqueItems is not supported", keyword="uniqueItems")
        items = schema.get("items", True)
        prefix = schema.get("prefixItems", [])
        rest = items
        if isinstance(items, list):                   # draft 4-7 tuple form
            prefix, rest = items, schema.get("additionalItems", True)
        if not isinstance(prefix, list):
            raise ConstraintError("prefixItems must be a list", keyword="prefixItems")
        if hi is not None and hi < lo:
            return NOTHING
        positional = [self.as_rule(self.compile(p)) for p in prefix[:hi]]
        repeated = self.as_rule(self.compile(rest))

        def element(i: int):
            return positional[i] if i < len(positional) else repeated

        def after(i: int):
            """What may follow once i >= 1 elements are present."""
            if hi is not None and i >= hi:
                return EMPTY
            if i >= len(positional):
                if repeated == NOTHING:
                    return EMPTY if i >= lo else NOTHING
                return repeat(seq(self.item_sep, repeated), max(lo - i, 0), None if hi is None else hi - i)
            step = seq(self.item_sep, element(i), after(i + 1))
            return step if i < lo else opt(step)

        if hi == 0 or element(0) == NOTHING:
            body = EMPTY if lo == 0 else NOTHING
        else:
            nonempty = seq(element(0), after(1), self.close)
            body = nonempty if lo > 0 else opt(nonempty)
        return seq(lit("["), self.open, body, lit("]"))

    def object(self, schema):
        props = schema.get("properties", {})
        required = schema.get("required", [])
        additional = schema.get("additionalProperties", True)
        patterns = schema.get("patternProperties", {})
        undeclared = additional                       # the value of a required name `properties` lacks
        if self.style.close_objects and "properties" in schema and "additionalProperties" not in schema:
            additional = False                        # generating: only the names the schema gives
        if not isinstance(props, dict) or not isinstance(patterns, dict):
            raise ConstraintError("properties and patternProperties must be objects", keyword="properties")
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise ConstraintError("required must be a list of strings", keyword="required")
        names = list(props) + [r for r in dict.fromkeys(required) if r not in props]
        lo = _count(schema, "minProperties", 0)
        hi = _count(schema, "maxProperties", None)
        if not patterns:
            keys, values, flags = [], [], []
            for name in names:
                value = self.compile(props[name] if name in props else undeclared)
                if value == NOTHING and name in required:
                    return NOTHING
                keys.append(tuple(_units(name)))
                values.append(self.as_rule(value))
                flags.append(name in required)
            extra = None
            if additional is not False:
                extra = self.compile(additional)
                extra = None if extra == NOTHING else self.as_rule(extra)
            return self.braces(lambda least: Properties(tuple(keys), tuple(values), tuple(flags), extra,
                                                        self.item_sep, self.key_sep, least, hi, self.style.any_order),
                               lo, hi, any(flags), extra is not None or any(v != NOTHING for v in values))
        items = []
        for name in names:
            matching = [sub for pattern, sub in patterns.items() if _search(pattern, name)]
            sub = props[name] if name in props else (True if matching else undeclared)
            if matching:
                sub = {"allOf": [sub, *matching]}
            value = self.compile(sub)
            if value == NOTHING:
                if name in required:
                    return NOTHING
                continue
            member = seq(literal(name), self.key_sep, self.as_rule(value))
            items.append((member, name in required))
        extra = self.extra_member(names, additional, patterns)
        return self.braces(lambda least: Members(tuple(items), extra, self.item_sep, least, hi),
                           lo, hi, any(required for _, required in items), extra is not None or bool(items))

    def braces(self, members, lo: int, hi: int | None, any_required: bool, any_member: bool):
        """An object around `members(least)` (its members, at least `least` of them): the whitespace of an
        empty object is one gap, not the opening's followed by the closing's (`{` newline newline `}`)."""
        may_be_empty = lo == 0 and not any_required
        empty = seq(lit("{"), self.open, lit("}")) if may_be_empty else NOTHING
        if not any_member or hi == 0:
            return empty
        nonempty = seq(lit("{"), self.open, members(max(lo, 1)), self.close, lit("}"))
        return alt(empty, nonempty) if may_be_empty else nonempty

    def extra_member(self, names: list[str], additional, patterns: dict):
        """A rule for one member whose key is not in `names` (None when no such member is allowed).

        A key matching a set S of the patternProperties regexes (and no other) takes all of S's schemas;
        a key matching none takes additionalProperties'. Each case is an intersection of key automata."""
        if len(patterns) > 4:
            raise ConstraintError("more than 4 patternProperties are not supported", keyword="patternProperties")
        keys = {p: json_content(regex.search(p)) for p in patterns}
        declared = tuple(lit(json.dumps(n, ensure_ascii=False)[1:-1]) for n in names)
        content = star(STRING_CHAR)
        branches = []
        pattern_list = list(patterns)
        for mask in range(1, 2 ** len(pattern_list)):
            chosen = [p for k, p in enumerate(pattern_list) if mask >> k & 1]
            others = [p for p in pattern_list if p not in chosen]
            value = self.compile({"allOf": [patterns[p] for p in chosen]})
            if value == NOTHING:
                continue
            key = Intersect(tuple(keys[p] for p in chosen), tuple(keys[p] for p in others) + declared)
            branches.append(seq(lit('"'), key, lit('"'), self.key_sep, self.as_rule(value)))
        if additional is not False:
            value = self.compile(additional)
            if value != NOTHING:
                key = Intersect((content,), tuple(keys.values()) + declared)
                branches.append(seq(lit('"'), key, lit('"'), self.key_sep, self.as_rule(value)))
        if not branches:
            return None
        name = f"extra{len(self.rules)}"
        self.rules[name] = alt(*branches)
        return Call(name)


def key_other_than(names: list[str]):
    """A JSON string (with quotes) whose text is none of `names` (as json.dumps writes them)."""
    trie: dict = {}
    for name in names:
        node = trie
        for unit in _units(name):
            node = node.setdefault(unit, {})
        node[None] = True
    free = seq(star(STRING_CHAR), lit('"'))

    def build(node):
        branches = [] if None in node else [lit('"')]
        plain_children = [u for u in node if u is not None and len(u) == 1]
        escape_children = [u for u in node if u is not None and len(u) > 1]
        for unit in plain_children + escape_children:
            branches.append(seq(lit(unit), build(node[unit])))
        other_plain = subtract(PLAIN, chars_of("".join(plain_children)))
        if other_plain.ranges:
            branches.append(seq(other_plain, free))
        escaped = {u[1] for u in escape_children if len(u) == 2}
        branches.append(seq(lit("\\"), alt(*(lit(c) for c in '"\\/bfnrt' if c not in escaped)), free))
        branches.append(seq(lit("\\u"), repeat(HEX, 4, 4), free))
        return alt(*branches)

    return seq(lit('"'), build(trie))


def _units(name: str) -> list[str]:
    """The JSON-string spelling of `name`, one unit (a character or one escape sequence) at a time."""
    return [json.dumps(c, ensure_ascii=False)[1:-1] for c in name]


def _search(pattern: str, text: str) -> bool:
    import re
    try:
        return re.search(pattern, text) is not None
    except re.error:
        return True


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
    if key in ("dependencies", "dependentRequired", "dependentSchemas", "propertyNames"):
        return value in ({}, True)
    if key in ("unevaluatedProperties", "unevaluatedItems"):
        return value is True or value == {}
    return False


def _json_equal(a, b) -> bool:
    """JSON equality: 1 == 1.0, but true != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def _valid(value, schema) -> bool:
    import jsonschema
    try:
        jsonschema.Draft202012Validator(schema).validate(value)
        return True
    except jsonschema.ValidationError:
        return False
    except Exception:                                   # unresolvable refs and the like: keep the value
        return True


from .merge import expand, merge, overlaps  # noqa: E402  (merge needs SchemaCompiler.resolve only)
