"""JSON Schema's object keywords → the inside of a JSON object.

An object whose only extra keys are "anything else" (or none) becomes a `Properties` node: the automaton
reads keys through one trie of the declared names. With `patternProperties` or a non-trivial
`propertyNames`, members are spelled out (`Members`) and each kind of undeclared key is an intersection of
key automata (matching these patterns, none of those, and the names schema).

`dependencies` / `dependentRequired` / `dependentSchemas` are rewritten into case splits before the object
is compiled (`dependency_cases`): "a is absent, or a is present with what it needs".
"""
from __future__ import annotations

from . import regex
from .automaton import DEAD, Automaton
from .expr import NOTHING, Call, ConstraintError, Grammar, Intersect, Members, Properties, alt, call_free, lit, seq
from .json_keywords import DEPENDENCY_KEYS
from .json_text import json_content, json_string, literal, name_units
from .merge import pattern_matches

MAX_PATTERNS = 4                     # patternProperties: one key case per subset of the patterns


def closes(compiler, schema: dict) -> bool:
    """Whether generating closes this object: it declares properties and says nothing of additional ones.
    Properties that are all `false` forbid names rather than declare them (and are what the case splits of
    `dependencies` and `not required` add), so they do not close a map."""
    props = schema.get("properties")
    if not compiler.style.close_objects or props is None or "additionalProperties" in schema:
        return False
    return not props or any(value is not False for value in props.values())


def compile_object(compiler, schema: dict):
    c = compiler
    props = schema.get("properties", {})
    required = schema.get("required", [])
    additional = schema.get("additionalProperties", True)
    patterns = schema.get("patternProperties", {})
    undeclared = additional                          # the value of a required name `properties` lacks
    if closes(c, schema):
        additional = False
    if not isinstance(props, dict) or not isinstance(patterns, dict):
        raise ConstraintError("properties and patternProperties must be objects", keyword="properties")
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise ConstraintError("required must be a list of strings", keyword="required")
    names = list(props) + [r for r in dict.fromkeys(required) if r not in props]
    lo = c.count(schema, "minProperties", 0)
    hi = c.count(schema, "maxProperties", None)
    key_names = _names_expr(c, schema.get("propertyNames", True))
    allowed_name = _name_filter(c, key_names)
    if not patterns and key_names is None:
        keys, values, flags = [], [], []
        for name in names:
            value = c.compile(props[name] if name in props else undeclared)
            if value == NOTHING and name in required:
                return NOTHING
            keys.append(tuple(name_units(name)))
            values.append(c.as_rule(value))
            flags.append(name in required)
        extra = None
        if additional is not False:
            extra = c.compile(additional)
            extra = None if extra == NOTHING else c.as_rule(extra)
        return braces(c, lambda least: Properties(tuple(keys), tuple(values), tuple(flags), extra, c.item_sep,
                                                  c.key_sep, least, hi, c.style.any_order),
                      lo, hi, any(flags), extra is not None or any(v != NOTHING for v in values))
    items = []
    for name in names:
        matching = [sub for pattern, sub in patterns.items() if pattern_matches(pattern, name)]
        sub = props[name] if name in props else (True if matching else undeclared)
        if matching:
            sub = {"allOf": [sub, *matching]}
        value = c.compile(sub) if allowed_name(name) else NOTHING
        if value == NOTHING:
            if name in required:
                return NOTHING
            continue
        member = seq(literal(name), c.key_sep, c.as_rule(value))
        items.append((member, name in required))
    extra = extra_member(c, names, additional, patterns, key_names)
    return braces(c, lambda least: Members(tuple(items), extra, c.item_sep, least, hi),
                  lo, hi, any(required for _, required in items), extra is not None or bool(items))


def braces(c, members, lo: int, hi: int | None, any_required: bool, any_member: bool):
    """An object around `members(least)` (its members, at least `least` of them): the whitespace of an
    empty object is one gap, not the opening's followed by the closing's (`{` newline newline `}`)."""
    may_be_empty = lo == 0 and not any_required
    empty = seq(lit("{"), c.open, lit("}")) if may_be_empty else NOTHING
    if not any_member or hi == 0:
        return empty
    nonempty = seq(lit("{"), c.open, members(max(lo, 1)), c.close, lit("}"))
    return alt(empty, nonempty) if may_be_empty else nonempty


def extra_member(c, names: list[str], additional, patterns: dict, key_names):
    """A rule for one member whose key is not in `names` (None when no such member is allowed).

    A key matching a set S of the patternProperties regexes (and no other) takes all of S's schemas;
    a key matching none takes additionalProperties'. Each case is an intersection of key automata (the
    quoted key), with the names schema (`key_names`, None: any name) among the positives."""
    if len(patterns) > MAX_PATTERNS:
        raise ConstraintError(f"more than {MAX_PATTERNS} patternProperties are not supported",
                              keyword="patternProperties")
    keys = {p: seq(lit('"'), json_content(regex.search(p)), lit('"')) for p in patterns}
    declared = tuple(literal(n) for n in names)
    names_positive = () if key_names is None else (key_names,)
    branches = []
    pattern_list = list(patterns)
    for mask in range(1, 2 ** len(pattern_list)):
        chosen = [p for k, p in enumerate(pattern_list) if mask >> k & 1]
        others = [p for p in pattern_list if p not in chosen]
        value = c.compile({"allOf": [patterns[p] for p in chosen]})
        if value == NOTHING:
            continue
        key = Intersect(tuple(keys[p] for p in chosen) + names_positive, tuple(keys[p] for p in others) + declared)
        branches.append(seq(key, c.key_sep, c.as_rule(value)))
    if additional is not False:
        value = c.compile(additional)
        if value != NOTHING:
            key = Intersect((json_string(),) + names_positive, tuple(keys.values()) + declared)
            branches.append(seq(key, c.key_sep, c.as_rule(value)))
    if not branches:
        return None
    name = f"extra{len(c.rules)}"
    c.rules[name] = alt(*branches)
    return Call(name)


def _names_expr(c, names_schema):
    """`propertyNames` as the language of quoted keys (None when it allows every name)."""
    if names_schema is True or names_schema == {}:
        return None
    tree = c.compile({"allOf": [names_schema, {"type": "string"}]})
    while isinstance(tree, Call):                   # a merged or referenced schema's rule
        tree = c.rules[tree.name]
    if not call_free(tree):
        raise ConstraintError("propertyNames that refer to other schemas recursively are not supported",
                              keyword="propertyNames")
    return tree


def _name_filter(c, key_names):
    """Whether a declared name satisfies `propertyNames` (its quoted JSON text walked through it)."""
    if key_names is None:
        return lambda name: True
    automaton = Automaton(Grammar(key_names), max_depth=0)

    def allowed(name: str) -> bool:
        state = automaton.walk(automaton.initial, literal_text(name))
        return state != DEAD and automaton.is_accepting(state)
    return allowed


def literal_text(name: str) -> bytes:
    return ('"' + "".join(name_units(name)) + '"').encode("utf-8")


def dependency_cases(schema: dict) -> list:
    """`dependencies` (both forms), `dependentRequired` and `dependentSchemas` as allOf parts: for each
    name, "absent, or present with its needs" (just its needs where `required` already has the name)."""
    required = set(schema.get("required", []))
    parts = []
    for key in DEPENDENCY_KEYS:
        deps = schema.get(key, {})
        if not isinstance(deps, dict):
            raise ConstraintError(f"{key} must be an object", keyword=key)
        for name, needs in deps.items():
            if isinstance(needs, list):
                if not all(isinstance(n, str) for n in needs) or key == "dependentSchemas":
                    raise ConstraintError(f"{key} of {name!r} must be a list of names", keyword=key)
                if set(needs) <= required | {name}:
                    continue
                need = {"required": needs}
            elif isinstance(needs, (dict, bool)) and key != "dependentRequired":
                if needs is True or needs == {}:
                    continue
                need = needs
            else:
                raise ConstraintError(f"{key} of {name!r} must be a list of names or a schema", keyword=key)
            if name in required:
                parts.append(need)
            else:
                parts.append({"anyOf": [{"properties": {name: False}},
                                        {"allOf": [{"required": [name]}, need]}]})
    return parts
