"""JSON Schema intersection (`allOf`, a `$ref` with sibling keywords, anyOf/oneOf with siblings) and the
disjointness check that lets `oneOf` be compiled as a plain alternative.

`merge(a, b)` returns one schema whose instances are exactly those valid under both, or raises
`ConstraintError` where that is not expressible here (two different `pattern`s, say).
"""
from __future__ import annotations

import json

from .expr import ConstraintError

MIN_KEYS = ("minLength", "minItems", "minProperties")
MAX_KEYS = ("maxLength", "maxItems", "maxProperties")
OBJECT_SHAPE = ("properties", "additionalProperties", "patternProperties")
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
    from .json_schema import VALIDATION
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
    """A property's schema on each side is its `properties` entry or that side's additionalProperties;
    the merged entry is their intersection (so one side's additionalProperties: false still forbids
    the other side's extra names)."""
    if a.get("patternProperties") or b.get("patternProperties"):
        if a.get("patternProperties") != b.get("patternProperties") and (
                "additionalProperties" in a or "additionalProperties" in b):
            raise ConstraintError("allOf with patternProperties and additionalProperties is not supported",
                                  keyword="patternProperties")
    props_a, props_b = a.get("properties", {}), b.get("properties", {})
    add_a, add_b = a.get("additionalProperties", True), b.get("additionalProperties", True)
    props = {}
    for name in list(props_a) + [n for n in props_b if n not in props_a]:
        sa = props_a.get(name, add_a)
        sb = props_b.get(name, add_b)
        props[name] = sb if sa is True or sa == {} else sa if sb is True or sb == {} else {"allOf": [sa, sb]}
    out = {"properties": props}
    if add_a is True or add_a == {}:
        add = add_b
    elif add_b is True or add_b == {}:
        add = add_a
    elif add_a is False or add_b is False:
        add = False
    else:
        add = {"allOf": [add_a, add_b]}
    if add is not True:
        out["additionalProperties"] = add
    patterns = dict(a.get("patternProperties", {}))
    for key, value in b.get("patternProperties", {}).items():
        patterns[key] = value if key not in patterns else {"allOf": [patterns[key], value]}
    if patterns:
        out["patternProperties"] = patterns
    return out


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
        from .json_schema import json_type_of
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


def overlaps(compiler, branches: list) -> list[list[int]]:
    """For each branch, the other branches it is not provably disjoint from."""
    out: list[list[int]] = [[] for _ in branches]
    for i in range(len(branches)):
        for j in range(i + 1, len(branches)):
            if not disjoint(compiler, branches[i], branches[j]):
                out[i].append(j)
                out[j].append(i)
    return out
