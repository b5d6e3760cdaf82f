"""JSON Schema's logic keywords: `not`, `oneOf`, `if`/`then`/`else`, and schemas whose values are a finite set.

`not` is pushed inward (`complement`): the complement of a schema is a union of pieces, each "these
instances (a schema), minus those (scalar schemas)", found type by type and keyword by keyword — an
object violates `required` when a name is absent, `properties` when a present property's value violates
its schema, `minProperties` when it has fewer members; a scalar violates its keywords where the automaton
of its type minus the automaton of the negated schema says so (intersection with complement). What cannot
be negated exactly (an array whose items violate something, an extra key, ...) raises `ConstraintError`.

`oneOf`'s branches that provably exclude each other compile as `anyOf`; a branch that may overlap others
becomes "this one and none of those". `if`/`then`/`else` is "(if and then) or (not if, and else)".

A schema that lists its values (`enum` / `const`, also inside `allOf` or a `$ref`) is compiled as the
values the whole schema accepts, judged by the `jsonschema` validator over the root schema, so any keyword
beside the list (`not`, `if`, `uniqueItems`, ...) holds exactly.
"""
from __future__ import annotations

import jsonschema

from .expr import NOTHING, Call, ConstraintError, Intersect, alt, call_free
from .json_keywords import CONDITIONAL, TYPE_KEYS, TYPES, VALIDATION
from .json_text import json_type_of, literal
from .merge import disjoint, expand, merge
from .numbers import MAYBE_INTEGRAL

MAX_PIECES = 256


# --- finite schemas --------------------------------------------------------------------------------------

def listed_values(c, schema, depth: int = 0):
    """The values `schema` lists (its `enum` / `const`, or those of an `allOf` part or `$ref` target), a
    superset of its instances; None when it lists none."""
    if not isinstance(schema, dict) or depth > 16:
        return None
    if "const" in schema:
        return [schema["const"]]
    if "enum" in schema:
        if not isinstance(schema["enum"], list):
            raise ConstraintError("enum must be a list", keyword="enum")
        return schema["enum"]
    if "$ref" in schema:
        found = listed_values(c, c.resolve(schema["$ref"]), depth + 1)
        if found is not None:
            return found
    for part in schema.get("allOf", []) if isinstance(schema.get("allOf"), list) else []:
        found = listed_values(c, part, depth + 1)
        if found is not None:
            return found
    return None


def finite(c, schema: dict, values: list):
    """The listed `values` that the whole schema accepts, as alternatives."""
    validator = c.validator.evolve(schema=schema)
    keep = []
    for value in values:
        json_type_of(value)                               # not a JSON value: a ConstraintError
        try:
            valid = validator.is_valid(value)
        except jsonschema.exceptions.SchemaError as e:
            raise ConstraintError(f"invalid schema: {e.message}", keyword="schema") from None
        except (jsonschema.exceptions.RefResolutionError, jsonschema.exceptions._WrappedReferencingError):
            raise ConstraintError("a $ref does not resolve", keyword="$ref") from None
        if valid and not any(json_equal(value, kept) for kept in keep):
            keep.append(value)
    return alt(*(literal(v) for v in keep)) if keep else NOTHING


def root_validator(root):
    """A validator of the root schema (its `$schema`'s draft; by default 2020-12 that also reads draft 7's
    `dependencies` and tuple `items`, as the compiler does), checking formats as the compiler does."""
    if isinstance(root, dict) and "$schema" in root:
        cls = jsonschema.validators.validator_for(root, default=jsonschema.Draft202012Validator)
    else:
        draft7 = jsonschema.Draft7Validator.VALIDATORS
        cls = jsonschema.validators.extend(jsonschema.Draft202012Validator, {
            "dependencies": draft7["dependencies"],
            "items": lambda v, items, instance, schema: (draft7["items"] if isinstance(items, list) else
                                                         jsonschema.Draft202012Validator.VALIDATORS["items"])(
                v, items, instance, schema),
            "additionalItems": draft7["additionalItems"]})
    return cls(root, format_checker=cls.FORMAT_CHECKER)


def json_equal(a, b) -> bool:
    """JSON equality: 1 == 1.0, but true != 1 (and so inside arrays and objects)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return a == b


# --- if / then / else, oneOf -----------------------------------------------------------------------------

def conditional(schema: dict) -> dict:
    """`if`/`then`/`else` as "(if and then) or (not if, and else)" beside the rest of the schema."""
    rest = {k: v for k, v in schema.items() if k not in CONDITIONAL}
    if "if" not in schema:
        return rest                                        # then / else alone have no effect
    condition = schema["if"]
    cases = {"anyOf": [{"allOf": [condition, schema.get("then", True)]},
                       {"allOf": [{"not": condition}, schema.get("else", True)]}]}
    return {**rest, "allOf": [*rest.get("allOf", []), cases]}


def one_of(c, branches: list, own: list):
    """Exactly one branch: branches that provably exclude each other compile as alternatives; a branch
    that may overlap others becomes "this one and none of those". `branches` include the sibling
    keywords, `own` are the branches as written (what is negated)."""
    if c.style.coerce_one_of:
        return alt(*(c.compile(b) for b in branches))
    out = []
    for i, branch in enumerate(branches):
        others = [own[j] for j in range(len(branches)) if j != i and not exclusive(c, branch, branches[j])]
        if not others:
            out.append(c.compile(branch))
            continue
        try:
            out.append(negation(c, branch, {"anyOf": others}))
        except ConstraintError as e:
            raise ConstraintError(f"oneOf whose branches may overlap, where one branch cannot exclude the "
                                  f"others ({e.message}); use anyOf", keyword="oneOf") from None
    return alt(*out)


def exclusive(c, a, b) -> bool:
    """Whether no instance satisfies both schemas, as far as can be told: by types, listed values and
    discriminating properties (merge.disjoint), or because no value one of them lists satisfies the other."""
    if disjoint(c, a, b):
        return True
    for listing, other in ((a, b), (b, a)):
        values = listed_values(c, listing) if isinstance(listing, dict) else None
        if values is not None and isinstance(other, (dict, bool)):
            validator = c.validator.evolve(schema=other)
            return not any(validator.is_valid(v) for v in values)
    return False


# --- not -------------------------------------------------------------------------------------------------

def negation(c, rest: dict, negated):
    """Instances of `rest` that `negated` rejects. A piece's negatives are scalar schemas of its one type
    (or expressions: the integral spellings)."""
    pieces = complement(c, negated)
    out = []
    for positive, negatives in pieces:
        kept = merge(c, rest, positive)
        if kept is False:
            continue
        if not negatives:
            out.append(c.compile(kept))
            continue
        t = positive["type"]                              # negatives only come with one scalar type
        kept_tree = _inline(c, c.compile(kept))
        removed = tuple(_inline(c, c.compile(merge(c, n, {"type": t}))) if isinstance(n, dict) else n
                        for n in negatives)
        removed = tuple(r for r in removed if r != NOTHING)
        if kept_tree == NOTHING or not removed:
            out.append(kept_tree)
            continue
        if not all(call_free(x) for x in (kept_tree, *removed)):
            raise ConstraintError(f"not: excluding {t}s that refer to other schemas is not supported",
                                  keyword="not")
        out.append(Intersect((kept_tree,), removed))
    return alt(*out) if out else NOTHING


def complement(c, schema, depth: int = 0) -> list[tuple[dict, list]]:
    """The instances `schema` rejects, as pieces (positive schema, scalar schemas it must not match)."""
    if depth > 16:
        raise ConstraintError("not: schemas nested too deeply", keyword="not")
    if schema is True or schema == {}:
        return []
    if schema is False:
        return [({}, [])]
    if not isinstance(schema, dict):
        raise ConstraintError("not must be a schema", keyword="not")
    schema = expand(c, schema, 0)                          # $ref and allOf merged
    if schema is False:
        return [({}, [])]
    schema = {k: v for k, v in schema.items() if k in VALIDATION}
    if any(key in schema for key in CONDITIONAL):
        schema = conditional(schema)
    pieces: list = []
    for part in schema.pop("allOf", []):                   # what merging kept apart: failing any part
        pieces += complement(c, part, depth + 1)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            branches = schema.pop(key)
            if key == "oneOf" and not all(exclusive(c, a, b) for i, a in enumerate(branches)
                                          for b in branches[i + 1:]):
                raise ConstraintError("not: oneOf whose branches may overlap is not supported", keyword="not")
            product = [({}, [])]                            # none of the branches: each one's complement
            for branch in branches:
                product = _intersect(c, product, complement(c, branch, depth + 1))
            pieces += product
    if "not" in schema:
        pieces.append((schema.pop("not"), []))
    if "const" in schema or "enum" in schema:
        values = [schema.pop("const")] if "const" in schema else schema.pop("enum")
        pieces += _other_values(values)
    pieces += _violations(c, schema)
    if len(pieces) > MAX_PIECES:
        raise ConstraintError("not: too many cases", keyword="not")
    return pieces


def _intersect(c, a: list, b: list) -> list:
    out = []
    for positive_a, negatives_a in a:
        for positive_b, negatives_b in b:
            positive = merge(c, positive_a, positive_b)
            if positive is not False:
                out.append((positive, negatives_a + negatives_b))
            if len(out) > MAX_PIECES:
                raise ConstraintError("not: too many cases", keyword="not")
    return out


def _other_values(values: list) -> list:
    """Instances equal to none of `values`: each scalar type minus its listed values (numbers by value, so
    every spelling of a listed number is removed), other types whole unless one of their values is listed
    (an object unequal to given objects is not expressible)."""
    pieces = []
    for t in TYPES:
        listed = [v for v in values if json_type_of(v) == t or (t == "number" and json_type_of(v) == "integer")]
        if not listed:
            pieces.append(({"type": t}, []))
        elif t in ("object", "array"):
            raise ConstraintError(f"not: excluding particular {t}s is not supported", keyword="not")
        elif t == "number":
            pieces.append(({"type": t}, [{"minimum": v, "maximum": v} for v in listed]))
        else:
            pieces.append(({"type": t}, [{"enum": listed}]))
    return pieces


def _violations(c, schema: dict) -> list:
    """Pieces for instances that violate `schema`'s own keywords: another type, or a keyword of theirs."""
    declared = c.types(schema) if "type" in schema else list(TYPES)
    pieces = []
    for t in TYPES:
        keywords = {k: v for k, v in schema.items() if k in TYPE_KEYS[t]}
        if t == "number" and "integer" in declared:            # integers only: numbers that are not,
            pieces.append(({"type": "number"}, [MAYBE_INTEGRAL]))
            if keywords:                                       # and integers that violate the keywords
                pieces.append(({"type": "integer"}, [{**keywords, "type": "integer"}]))
        elif t not in declared:
            pieces.append(({"type": t}, []))
        elif t == "object":
            pieces += _object_violations(keywords)
        elif t == "array":
            pieces += _array_violations(keywords)
        elif keywords:
            pieces.append(({"type": t}, [{**keywords, "type": t}]))
    return pieces


def _object_violations(keywords: dict) -> list:
    pieces = []
    for key, value in keywords.items():
        if key == "required":
            pieces += [({"type": "object", "properties": {name: False}}, []) for name in dict.fromkeys(value)]
        elif key == "properties":
            pieces += [({"type": "object", "required": [name], "properties": {name: {"not": sub}}}, [])
                       for name, sub in value.items() if sub is not True and sub != {}]
        elif key == "minProperties":
            pieces += [({"type": "object", "maxProperties": value - 1}, [])] if value > 0 else []
        elif key == "maxProperties":
            pieces.append(({"type": "object", "minProperties": value + 1}, []))
        elif not (key == "additionalProperties" and (value is True or value == {})):
            raise ConstraintError(f"not: objects that violate {key!r} are not supported", keyword="not")
    return pieces


def _array_violations(keywords: dict) -> list:
    pieces = []
    for key, value in keywords.items():
        if key == "minItems":
            pieces += [({"type": "array", "maxItems": value - 1}, [])] if value > 0 else []
        elif key == "maxItems":
            pieces.append(({"type": "array", "minItems": value + 1}, []))
        elif not ((key in ("items", "additionalItems") and (value is True or value == {}))
                  or (key == "uniqueItems" and not value)):
            raise ConstraintError(f"not: arrays that violate {key!r} are not supported", keyword="not")
    return pieces


def _inline(c, tree):
    """A rule call replaced by its rule (so that an intersection can use it)."""
    seen = set()
    while isinstance(tree, Call) and tree.name not in seen:
        seen.add(tree.name)
        tree = c.rules[tree.name]
    return tree
