"""JSON Schema intersection (`allOf`, a `$ref` with sibling keywords, anyOf/oneOf with siblings) and the
disjointness check that lets `oneOf` be compiled as a plain alternative.

`merge(a, b)` returns one schema whose instances are exactly those valid under both, or raises
`ConstraintError` where that is not expressible here (two different `pattern`s, say).
"""
from __future__ import annotations

import json
import math
import re

from .expr import ConstraintError
from .json_keywords import CONDITIONAL, DEPENDENCY_KEYS, VALIDATION
from .json_text import json_type_of

MIN_KEYS = ("minLength", "minItems", "minProperties")
MAX_KEYS = ("maxLength", "maxItems", "maxProperties")
OBJECT_SHAPE = ("properties", "additionalProperties", "patternProperties")
DEFERRED = (*CONDITIONAL, *DEPENDENCY_KEYS)         # kept apart when both sides have them
MAX_MERGE_DEPTH = 32
MAX_BRANCHES = 256


def normalize_bounds(schema: dict) -> dict:
    """Draft 4's boolean exclusiveMinimum/Maximum → the numeric form of later drafts."""
    out = dict(schema)
    for inclusive, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if isinstance(out.get(exclusive), bool):
            if out.pop(exclusive) and inclusive in out:
                out[exclusive] = out.pop(inclusive)
    return out


def _types(schema: dict):
    t = schema.get("type")
    if t is None:
        return None
    return {t} if isinstance(t, str) else set(t)


def _intersect_types(a, b):
    if a is None:
        return b
    if b is None:
        return a
    out = a & b
    if "integer" in a and "number" in b or "number" in a and "integer" in b:
        out.add("integer")
    return out


def merge(compiler, a, b, depth: int = 0):
    """The intersection of schemas a and b (in a's property order, then b's)."""
    if depth > MAX_MERGE_DEPTH:
        raise ConstraintError("schemas nested too deeply in allOf / $ref", keyword="allOf")
    if a is True or a == {}:
        return b
    if b is True or b == {}:
        return a
    if a is False or b is False:
        return False
    if not isinstance(a, dict) or not isinstance(b, dict):
        raise ConstraintError("a schema must be an object or a boolean", keyword="allOf")
    a, b = expand(compiler, a, depth), expand(compiler, b, depth)
    if a is False or b is False:
        return False
    a, b = normalize_bounds(a), normalize_bounds(b)
    out = dict(a)
    deferred = _deferred(a, b)
    if deferred:                                   # b's conditional or dependencies, checked beside a's
        b = {k: v for k, v in b.items() if k not in DEFERRED}
        out["allOf"] = [deferred]
    for key, value in b.items():
        if key not in out:
            out[key] = value
            continue
        mine = out[key]
        if key in OBJECT_SHAPE or json.dumps(mine, sort_keys=True) == json.dumps(value, sort_keys=True):
            continue
        if key == "type":
            types = _intersect_types(_types(a), _types(b))
            if not types:
                return False
            out["type"] = sorted(types)
        elif key == "required":
            out[key] = list(dict.fromkeys(list(mine) + list(value)))
        elif key == "enum":
            out[key] = [v for v in mine if v in value]
        elif key == "const":
            return False
        elif key in MIN_KEYS or key in ("minimum", "exclusiveMinimum"):
            out[key] = max(mine, value)
        elif key in MAX_KEYS or key in ("maximum", "exclusiveMaximum"):
            out[key] = min(mine, value)
        elif key in ("items", "additionalItems", "propertyNames"):
            if isinstance(mine, list) or isinstance(value, list):
                raise ConstraintError(f"merging two different tuple '{key}' is not supported", keyword="allOf")
            out[key] = {"allOf": [mine, value]}
        elif key == "pattern":                         # every pattern must match: string() intersects them
            out[key] = list(dict.fromkeys((mine if isinstance(mine, list) else [mine]) +
                                          (value if isinstance(value, list) else [value])))
        elif key == "uniqueItems":
            out[key] = bool(mine) or bool(value)
        elif key == "not":                             # neither: not (either)
            out[key] = {"anyOf": [mine, value]}
        elif key == "multipleOf" and all(_whole(v) for v in (mine, value)):
            out[key] = math.lcm(int(mine), int(value))  # multiples of both whole steps
        elif key in ("anyOf", "oneOf"):
            product = [{"allOf": [x, y]} for x in mine for y in value]
            if len(product) > MAX_BRANCHES:
                raise ConstraintError(f"allOf of {key}s with too many combinations", keyword=key)
            out[key] = product
        elif key not in VALIDATION:                    # annotations and unknown keywords constrain nothing
            continue
        else:
            raise ConstraintError(f"allOf with two different {key!r} values is not supported", keyword=key)
    if any(key in a for key in OBJECT_SHAPE) and any(key in b for key in OBJECT_SHAPE):
        out.update(_merge_object_shape(a, b))
    return out


def _deferred(a: dict, b: dict) -> dict:
    """b's conditional and dependency keywords when a has different ones (an allOf part of the merge)."""
    clash = [k for k in DEFERRED if k in a and k in b and
             json.dumps(a[k], sort_keys=True) != json.dumps(b[k], sort_keys=True)]
    if not clash:
        return {}
    return {k: v for k, v in b.items() if k in DEFERRED}


def expand(compiler, schema: dict, depth: int):
    """Inline a top-level $ref and allOf so their keywords can be merged."""
    if "$ref" in schema:
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        schema = merge(compiler, compiler.resolve(schema["$ref"]), rest, depth + 1)
        if not isinstance(schema, dict):
            return schema
    if "allOf" in schema:
        parts = schema["allOf"]
        if not isinstance(parts, list):
            raise ConstraintError("allOf must be a list", keyword="allOf")
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for part in parts:
            merged = merge(compiler, merged, part, depth + 1)
            if merged is False:
                return False
        schema = merged
    return schema


def _merge_object_shape(a: dict, b: dict) -> dict:
    """A name's schema on each side is its `properties` entry, else the side's patternProperties that match
    it, else the side's additionalProperties; the merged entry is their intersection (so one side's
    additionalProperties: false still forbids the other side's extra names). Undeclared names that match a
    pattern of one side take that side's pattern schemas and the other side's additionalProperties;
    patterns on both sides with extra names limited on either are refused (not one schema of this shape)."""
    patterns_a, patterns_b = a.get("patternProperties") or {}, b.get("patternProperties") or {}
    add_a, add_b = a.get("additionalProperties", True), b.get("additionalProperties", True)
    if patterns_a and patterns_b and set(patterns_a) != set(patterns_b) and not (_free(add_a) and _free(add_b)):
        raise ConstraintError("allOf with different patternProperties and additionalProperties is not supported",
                              keyword="patternProperties")
    props_a, props_b = a.get("properties", {}), b.get("properties", {})
    props = {}
    for name in list(props_a) + [n for n in props_b if n not in props_a]:
        props[name] = _both(_side(name, props_a, patterns_a, add_a), _side(name, props_b, patterns_b, add_b))
    out = {"properties": props}
    add = _both(add_a, add_b)
    if add is not True:
        out["additionalProperties"] = add
    patterns = {}
    for key in list(patterns_a) + [k for k in patterns_b if k not in patterns_a]:
        if key in patterns_a and key in patterns_b:
            patterns[key] = _both(patterns_a[key], patterns_b[key])
        elif key in patterns_a:
            patterns[key] = _both(patterns_a[key], True if patterns_b else add_b)
        else:
            patterns[key] = _both(True if patterns_a else add_a, patterns_b[key])
    if patterns:
        out["patternProperties"] = patterns
    return out


def _side(name: str, props: dict, patterns: dict, additional):
    """The schema one side gives the property `name`."""
    if name in props:
        return props[name]
    matching = [sub for pattern, sub in patterns.items() if pattern_matches(pattern, name)]
    return {"allOf": matching} if matching else additional


def _both(x, y):
    """Both schemas (false when either is)."""
    if _free(x):
        return y
    if _free(y):
        return x
    if x is False or y is False or x == {"not": y} or y == {"not": x}:
        return False
    return {"allOf": [x, y]}


def _whole(step) -> bool:
    return isinstance(step, (int, float)) and not isinstance(step, bool) and step >= 1 and step == int(step)


def _free(schema) -> bool:
    return schema is True or schema == {}


def pattern_matches(pattern: str, text: str) -> bool:
    """Whether a patternProperties regex matches a declared name (Python's re reads these as JSON Schema does)."""
    try:
        return re.search(pattern, text) is not None
    except re.error:
        raise ConstraintError(f"patternProperties: bad regex {pattern!r}", keyword="patternProperties") from None


# --- oneOf -----------------------------------------------------------------------------------------------

ALL_TYPES = {"null", "boolean", "object", "array", "string", "number", "integer"}


def _possible_types(compiler, schema, depth: int = 0) -> set[str]:
    """The JSON types an instance of `schema` can have (over-approximated)."""
    if schema is False:
        return set()
    if schema is True or not isinstance(schema, dict) or depth > 8:
        return set(ALL_TYPES)
    schema = expand(compiler, schema, depth)
    if schema is False:
        return set()
    if not isinstance(schema, dict):
        return set(ALL_TYPES)
    types = _types(schema)
    types = set(ALL_TYPES) if types is None else set(types)
    if "number" in types:
        types.add("integer")
    if "const" in schema or "enum" in schema:
        values = [schema["const"]] if "const" in schema else schema["enum"]
        literal_types = {json_type_of(v) for v in values}
        if "integer" in literal_types:
            literal_types.add("number")
        types &= literal_types
    for key in ("anyOf", "oneOf"):
        if key in schema and isinstance(schema[key], list):
            union = set()
            for branch in schema[key]:
                union |= _possible_types(compiler, branch, depth + 1)
            types &= union
    return types


def _literals(compiler, schema):
    """The finite set of values `schema` allows (as canonical JSON), or None when not finite / unknown."""
    if not isinstance(schema, dict):
        return None
    schema = expand(compiler, schema, 0)
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return {json.dumps(schema["const"], sort_keys=True)}
    if "enum" in schema and isinstance(schema["enum"], list):
        return {json.dumps(v, sort_keys=True) for v in schema["enum"]}
    if _types(schema) == {"boolean"}:
        return {"true", "false"}
    if _types(schema) == {"null"}:
        return {"null"}
    return None


def _objects_disjoint(compiler, a: dict, b: dict) -> bool:
    """Two object schemas no object satisfies both of: a property both require with disjoint value
    sets, or one that one requires and the other forbids."""
    for x, y in ((a, b), (b, a)):
        for name in x.get("required", []):
            if y.get("additionalProperties") is False and name not in y.get("properties", {}) \
                    and not y.get("patternProperties"):
                return True
            if name in y.get("required", []):
                lx = _literals(compiler, x.get("properties", {}).get(name, True))
                ly = _literals(compiler, y.get("properties", {}).get(name, True))
                if lx is not None and ly is not None and not (lx & ly):
                    return True
            if y.get("properties", {}).get(name) is False:
                return True
    return False


def disjoint(compiler, a, b) -> bool:
    ta, tb = _possible_types(compiler, a), _possible_types(compiler, b)
    if not (ta & tb):
        return True
    la, lb = _literals(compiler, a), _literals(compiler, b)
    if la is not None and lb is not None and not (la & lb):
        return True
    if ta & tb <= {"object"} and isinstance(a, dict) and isinstance(b, dict):
        ea, eb = expand(compiler, a, 0), expand(compiler, b, 0)
        if isinstance(ea, dict) and isinstance(eb, dict):
            return _objects_disjoint(compiler, ea, eb)
    return False
