"""JSON Schema → constraint: each feature with accepting and rejecting instances, judged against the
`jsonschema` validator (with format checking) as the independent oracle."""
from __future__ import annotations

import json

import jsonschema
import pytest

from refengine.constrain import ConstraintError, build_grammar
from refengine.constrain.automaton import DEAD, Automaton


def accepts(automaton: Automaton, text: str) -> bool:
    state = automaton.walk(automaton.initial, text.encode("utf-8"))
    return state != DEAD and automaton.is_accepting(state)


def compile_schema(schema) -> Automaton:
    return Automaton(build_grammar("json_schema", schema))


def oracle(schema, instance) -> bool:
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return validator(schema, format_checker=validator.FORMAT_CHECKER).is_valid(instance)


CASES = {
    "type string": ({"type": "string"}, ["abc", "", "é\"\n\\", 1, None, ["a"]]),
    "type list": ({"type": ["integer", "null"]}, [1, None, -5, 1.5, "1", True]),
    "boolean and null": ({"type": "boolean"}, [True, False, None, 0]),
    "integer bounds": ({"type": "integer", "minimum": -3, "maximum": 12},
                       [-3, 12, 0, -4, 13, 100, 5.5]),
    "exclusive bounds": ({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1.5},
                         [0, 0.0001, 1.49, 1.5, 2, -1, 0.75]),
    "draft4 exclusive": ({"$schema": "http://json-schema.org/draft-04/schema#", "type": "number",
                          "minimum": 2, "exclusiveMinimum": True}, [2, 2.5, 3, 1]),
    "number unbounded": ({"type": "number"}, [0, -1.5, 1e21, 3.25, "3"]),
    "multipleOf 0.01": ({"type": "number", "multipleOf": 0.01}, [1.25, 3, 1.255]),
    "string lengths": ({"type": "string", "minLength": 2, "maxLength": 4}, ["ab", "abcd", "a", "abcde", "日本"]),
    "pattern anchored": ({"type": "string", "pattern": "^[a-z]+-\\d{2}$"}, ["ab-12", "ab-1", "Ab-12", "x-99"]),
    "pattern search": ({"type": "string", "pattern": "b+c"}, ["abbc", "bc!", "ac", ""]),
    "pattern with quote": ({"type": "string", "pattern": "^a\"b\\\\c$"}, ['a"b\\c', "abc"]),
    "enum": ({"enum": ["red", 1, None, {"a": [1, 2]}]}, ["red", 1, None, {"a": [1, 2]}, "blue", 2, {"a": [1]}]),
    "const": ({"const": "x"}, ["x", "y"]),
    "typed enum filters": ({"type": "string", "enum": ["a", 1]}, ["a", 1]),
    "properties in order": ({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}},
                             "required": ["a"], "additionalProperties": False},
                            [{"a": 1}, {"a": 1, "b": "x"}, {"b": "x"}, {"a": "1"}, {"a": 1, "c": 2}, {}]),
    "additional default true": ({"type": "object", "properties": {"a": {"type": "integer"}}},
                                [{"a": 1, "z": [1, {"q": None}]}, {"z": 1}, {"a": "no"}, {"a": 1, "a1": True}]),
    "additional schema": ({"type": "object", "properties": {"a": {"type": "integer"}},
                           "additionalProperties": {"type": "string"}},
                          [{"a": 1, "b": "x"}, {"a": 1, "b": 2}, {"b": "x", "a": 1}]),
    "required only": ({"type": "object", "required": ["id"]}, [{"id": 3}, {}, {"x": 1}]),
    "min/max properties": ({"type": "object", "minProperties": 1, "maxProperties": 2},
                           [{}, {"a": 1}, {"a": 1, "b": 2}, {"a": 1, "b": 2, "c": 3}]),
    "pattern properties": ({"type": "object", "patternProperties": {"^x-": {"type": "integer"}},
                            "additionalProperties": False}, [{"x-a": 1}, {"x-a": "s"}, {"y": 1}, {}]),
    "pattern properties with additional": (
        {"type": "object", "properties": {"ab": {"type": "string"}},
         "patternProperties": {"^a": {"type": "integer"}, "b$": {"minimum": 3}},
         "additionalProperties": {"type": "boolean"}},
        [{"a1": 1, "zb": 4, "q": True}, {"ab": "x"}, {"ab": 1}, {"a1": "s"}, {"q": 1}, {"zb": 1}, {"ab2b": 2},
         {"ab2b": 3}, {"q": False, "a": 5}]),
    "allOf with patternProperties on one side": (
        {"allOf": [{"type": "object", "properties": {"xz": {"maximum": 9}}, "additionalProperties": {"type": "integer"}},
                   {"patternProperties": {"^x": {"minimum": 5}}}]},
        [{"xa": 6}, {"xa": 4}, {"b": 1}, {"b": "s"}, {"xa": "s"}, {"xz": 7}, {"xz": 10}, {"xz": 3}]),
    "pattern and lengths": ({"type": "string", "pattern": "^[a-z]+$", "minLength": 2, "maxLength": 3},
                            ["ab", "abc", "a", "abcd", "AB"]),
    "allOf patterns": ({"allOf": [{"type": "string", "pattern": "a"}, {"pattern": "b"}]}, ["ab", "ba", "a", "b"]),
    "not const": ({"type": "string", "not": {"const": "x"}}, ["x", "y", "xx", ""]),
    "not type": ({"not": {"type": ["object", "array", "string"]}}, [1, None, True, "s", [1], {"a": 1}]),
    "not enum scalars": ({"type": ["integer", "string"], "not": {"enum": [1, "a"]}}, [1, 2, "a", "b", 1.0]),
    "not minimum": ({"type": "number", "not": {"minimum": 5}}, [4.9, 5, 6, -1]),
    "not pattern": ({"type": "string", "not": {"pattern": "^a"}}, ["abc", "bac", ""]),
    "array items": ({"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3},
                    [[1], [1, 2, 3], [], [1, 2, 3, 4], ["a"]]),
    "prefixItems": ({"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": False},
                    [["a", 1], ["a"], [], ["a", 1, 2], [1, "a"]]),
    "tuple draft7": ({"$schema": "http://json-schema.org/draft-07/schema#", "type": "array",
                      "items": [{"type": "boolean"}], "additionalItems": {"type": "null"}},
                     [[True], [True, None, None], [True, 1], [None]]),
    "anyOf": ({"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 1}]}, [1, "a", "ab", None]),
    "oneOf disjoint": ({"oneOf": [{"type": "integer"}, {"type": "boolean"}]}, [1, True, "x"]),
    "oneOf discriminated": ({"oneOf": [
        {"type": "object", "properties": {"kind": {"const": "a"}, "x": {"type": "integer"}}, "required": ["kind"]},
        {"type": "object", "properties": {"kind": {"const": "b"}}, "required": ["kind"]}]},
        [{"kind": "a", "x": 1}, {"kind": "b"}, {"kind": "c"}, {"kind": "a", "x": "1"}]),
    "oneOf required": ({"type": "object", "oneOf": [{"required": ["a"]}, {"required": ["b"]}]},
                       [{"a": 1}, {"b": 1}, {"a": 1, "b": 2}, {}]),
    "oneOf formats": ({"type": "string", "oneOf": [{"format": "hostname"}, {"format": "ipv4"}]},
                      ["example.com", "1.2.3.4", "300.1.1.1"]),
    "allOf merged": ({"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                                {"properties": {"b": {"type": "string"}}, "required": ["b"]}]},
                     [{"a": 1, "b": "x"}, {"a": 1}, {"b": "x"}, {"a": 1, "b": 2}]),
    "allOf additionalProperties false": (
        {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False},
                   {"properties": {"b": {"type": "integer"}}}]}, [{"a": 1}, {"a": 1, "b": 2}, {}]),
    "ref and defs": ({"$defs": {"pos": {"type": "integer", "minimum": 1}},
                      "type": "object", "properties": {"n": {"$ref": "#/$defs/pos"}}, "required": ["n"]},
                     [{"n": 1}, {"n": 0}]),
    "recursive ref": ({"definitions": {"node": {"type": "object", "properties": {
        "v": {"type": "integer"}, "next": {"anyOf": [{"$ref": "#/definitions/node"}, {"type": "null"}]}},
        "required": ["v", "next"], "additionalProperties": False}}, "$ref": "#/definitions/node"},
        [{"v": 1, "next": None}, {"v": 1, "next": {"v": 2, "next": {"v": 3, "next": None}}},
         {"v": 1, "next": {"v": "2", "next": None}}, {"v": 1}]),
    "ref with siblings": ({"$defs": {"s": {"type": "string"}}, "$ref": "#/$defs/s", "maxLength": 2},
                          ["ab", "abc", 1]),
    "untyped keywords apply per type": ({"minLength": 2, "minimum": 5}, ["ab", "a", 5, 4, None, {"x": 1}]),
    "format date": ({"type": "string", "format": "date"}, ["2024-01-31", "2024-13-01", "24-01-01"]),
    "format uuid": ({"type": "string", "format": "uuid"},
                    ["123e4567-e89b-12d3-a456-426614174000", "123e4567e89b12d3a456426614174000"]),
    "format ipv4": ({"type": "string", "format": "ipv4"}, ["192.168.0.1", "256.1.1.1", "1.2.3"]),
    "format ipv6": ({"type": "string", "format": "ipv6"}, ["::1", "fe80::1:2", "2001:db8::", "1::2::3", "x"]),
    "format email": ({"type": "string", "format": "email"}, ["a.b@example.com", "nope"]),
    "dependencies": ({"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                      "properties": {"a": {"type": "integer"}, "b": {}, "c": {}},
                      "dependencies": {"a": ["b"], "c": {"required": ["a"]}}},
                     [{}, {"a": 1, "b": 2}, {"a": 1}, {"b": 1}, {"a": 1, "b": 1, "c": 1}, {"c": 1}, {"b": 1, "c": 1}]),
    "dependentRequired and dependentSchemas": (
        {"type": "object", "dependentRequired": {"x": ["y"]}, "dependentSchemas": {"y": {"maxProperties": 2}},
         "required": ["z"]},
        [{"z": 1}, {"z": 1, "y": 2}, {"z": 1, "x": 1, "y": 2}, {"z": 1, "x": 1}, {"y": 1, "z": 1, "w": 3}]),
    "dependency of a required name": ({"type": "object", "required": ["a"], "dependentRequired": {"a": ["b"]}},
                                      [{"a": 1, "b": 2}, {"a": 1}]),
    "propertyNames": ({"type": "object", "propertyNames": {"pattern": "^[a-z]+$", "maxLength": 3}},
                      [{}, {"ab": 1, "xyz": [1]}, {"Ab": 1}, {"abcd": 1}, {"a1": 2}]),
    "propertyNames with declared names": (
        {"type": "object", "properties": {"A": {"type": "integer"}, "b": {}}, "propertyNames": {"maxLength": 1},
         "required": ["b"]},
        [{"b": 1}, {"A": 1, "b": 1, "c": 2}, {"b": 1, "cc": 1}, {"A": "x", "b": 1}]),
    "propertyNames enum": ({"type": "object", "propertyNames": {"enum": ["x", "y"]}, "additionalProperties":
                            {"type": "integer"}}, [{"x": 1}, {"x": 1, "y": 2}, {"z": 1}, {"x": "1"}]),
    "if then else by discriminator": (
        {"type": "object", "properties": {"kind": {"enum": ["a", "b"]}, "x": {}}, "required": ["kind"],
         "if": {"properties": {"kind": {"const": "a"}}}, "then": {"properties": {"x": {"type": "integer"}}},
         "else": {"properties": {"x": {"type": "string"}}}},
        [{"kind": "a", "x": 1}, {"kind": "b", "x": "s"}, {"kind": "a", "x": "s"}, {"kind": "b", "x": 1}, {"kind": "a"}]),
    "if without else": ({"if": {"type": "string"}, "then": {"minLength": 2}}, ["ab", "a", 1, None]),
    "not anyOf": ({"type": ["string", "integer"], "not": {"anyOf": [{"type": "string", "maxLength": 1},
                                                                    {"type": "integer", "minimum": 10}]}},
                  ["ab", "a", 9, 10, -3]),
    "allOf of nots": ({"type": "integer", "allOf": [{"not": {"const": 1}}, {"not": {"const": 2}}]}, [0, 1, 2, 3]),
    "not not": ({"type": "string", "not": {"not": {"pattern": "^a"}}}, ["ab", "ba"]),
    "not properties": ({"type": "object", "not": {"properties": {"a": {"type": "integer"}}, "required": ["a"]}},
                       [{}, {"a": "x"}, {"a": 1}, {"b": 1}]),
    "not number values": ({"type": "number", "not": {"enum": [1, 2.5]}}, [1, 1.0, 2.5, 2, 0.5]),
    "oneOf overlapping": ({"oneOf": [{"type": "integer", "minimum": 5}, {"type": "integer", "maximum": 10}]},
                          [1, 5, 10, 11, 7]),
    "oneOf overlapping required": ({"type": "object", "properties": {"a": {}, "b": {}}, "oneOf": [
        {"required": ["a"]}, {"required": ["b"]}]}, [{"a": 1}, {"b": 1}, {"a": 1, "b": 2}, {}]),
    "uniqueItems over an enum": ({"type": "array", "items": {"enum": ["a", "b", 1]}, "uniqueItems": True,
                                  "minItems": 1},
                                 [["a"], ["a", "b", 1], ["b", "a"], ["a", "a"], ["a", 1, "b", 1], [], [1.0, 1]]),
    "uniqueItems over booleans": ({"type": "array", "items": {"type": "boolean"}, "uniqueItems": True},
                                  [[], [True], [True, False], [False, False], [True, False, True]]),
    "uniqueItems over a small range": ({"type": "array", "uniqueItems": True,
                                        "items": {"type": "integer", "minimum": 1, "maximum": 3}},
                                       [[1, 2, 3], [3, 1], [2, 2], [4]]),
    "oneOf with a listed value the other excludes": (
        {"oneOf": [{"type": "string", "pattern": "^[a-f]{3}$", "maxLength": 3}, {"enum": ["", 1]}]},
        ["abc", "", 1, "abcd", 2]),
    "multipleOf an integer": ({"type": "integer", "multipleOf": 7}, [0, 7, -21, 700007, 8, -1, 70000001]),
    "number multipleOf with bounds": ({"type": "number", "multipleOf": 3, "minimum": 2, "exclusiveMaximum": 12},
                                      [3, 6.0, 9, 12, 0, 4, 1.5]),
    "allOf of multipleOfs": ({"type": "integer", "allOf": [{"multipleOf": 3}, {"multipleOf": 5}]}, [15, 30, 5, 3]),
    "not multipleOf": ({"type": "integer", "not": {"multipleOf": 3}}, [1, 3, 6, 7, -3, -4]),
    "oneOf array sizes": ({"oneOf": [{"type": "array", "maxItems": 2}, {"type": "array", "minItems": 1}]},
                          [[], [1], [1, 2], [1, 2, 3]]),
    "enum filtered by the rest": ({"allOf": [{"enum": [[1], [1, 2], [2, 2], "x"]},
                                             {"not": {"type": "string"}}],
                                   "if": {"minItems": 2}, "then": {"uniqueItems": True}},
                                  [[1], [1, 2], [2, 2], "x", [3]]),
    "nested": ({"type": "object", "properties": {"tags": {"type": "array", "items": {
        "type": "object", "properties": {"k": {"type": "string"}}, "required": ["k"], "additionalProperties": False}}},
        "required": ["tags"], "additionalProperties": False},
        [{"tags": []}, {"tags": [{"k": "a"}, {"k": "b"}]}, {"tags": [{"k": 1}]}, {"tags": [{}]}]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_schema_feature_agrees_with_jsonschema(name):
    schema, instances = CASES[name]
    automaton = compile_schema(schema)
    seen = set()
    for instance in instances:
        text = json.dumps(instance, ensure_ascii=False)
        expected = oracle(schema, instance)
        seen.add(expected)
        assert accepts(automaton, text) == expected, (name, text)
    assert seen == {True, False}, "each case needs an accepting and a rejecting instance"


def test_format_date_time_follows_rfc3339():
    # (the jsonschema oracle only checks date-time when rfc3339-validator is installed)
    automaton = compile_schema({"type": "string", "format": "date-time"})
    for text, expected in [("2024-02-29T12:30:00Z", True), ("2024-02-29t12:30:00.5+01:00", True),
                           ("2024-02-29", False), ("2024-02-29T25:00:00Z", False), ("2024-02-29T12:30:00", False)]:
        assert accepts(automaton, json.dumps(text)) == expected, text


def test_whitespace_is_bounded_but_pretty_printing_is_accepted():
    schema = {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integer"}}}}
    automaton = compile_schema(schema)
    assert accepts(automaton, json.dumps({"a": [1, 2]}, indent=2))
    assert accepts(automaton, json.dumps({"a": [1, 2]}, separators=(",", ":")))
    assert not accepts(automaton, '{"a": [1,' + " " * 100 + "2]}")


def test_json_object_accepts_nested_objects_only_at_top_level():
    automaton = Automaton(build_grammar("json_object", None))
    assert accepts(automaton, '{"a": [1, {"b": {"c": [true, null, "x"]}}], "d": -1.5e3}')
    assert accepts(automaton, "{}")
    assert not accepts(automaton, "[1]")
    assert not accepts(automaton, '"text"')
    assert not accepts(automaton, '{"a": 1,}')


@pytest.mark.parametrize("schema, keyword", [
    ({"not": {"const": {"a": 1}}}, "not"),
    ({"type": "object", "not": {"type": "object", "propertyNames": {"maxLength": 2}}}, "not"),
    ({"type": "array", "not": {"type": "array", "items": {"type": "string"}}}, "not"),
    ({"oneOf": [{"type": "array", "items": {"type": "integer"}}, {"type": "array", "maxItems": 3}]}, "oneOf"),
    ({"$ref": "https://example.com/schema.json"}, "$ref"),
    ({"$ref": "#/definitions/missing"}, "$ref"),
    ({"type": "string", "format": "duration"}, "format"),
    ({"type": "string", "pattern": "(a)\\1"}, "backreference"),
    ({"type": "number", "multipleOf": 0.3}, "multipleOf"),
    ({"type": "strin"}, "type"),
])
def test_keywords_we_cannot_honour_are_named(schema, keyword):
    with pytest.raises(ConstraintError) as info:
        compile_schema(schema)
    assert info.value.keyword == keyword


def test_huge_bounds_compile_at_once_and_hold():
    schema = {"type": "object", "properties": {"s": {"type": "string", "maxLength": 131072},
                                               "a": {"type": "array", "maxItems": 100000, "minItems": 2}}}
    automaton = compile_schema(schema)
    assert accepts(automaton, json.dumps({"s": "x" * 3000, "a": list(range(500))}))
    assert not accepts(automaton, json.dumps({"a": [1]}))
    small = compile_schema({"type": "string", "maxLength": 40})
    assert accepts(small, json.dumps("y" * 40)) and not accepts(small, json.dumps("y" * 41))


def test_generation_writes_declared_properties_in_schema_order():
    from refengine.constrain import GENERATION_STYLE
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
              "additionalProperties": False}
    automaton = Automaton(build_grammar("json_schema", schema, GENERATION_STYLE))
    assert accepts(automaton, '{"a": 1, "b": 2}')
    assert not accepts(automaton, '{"b": 2, "a": 1}')


def test_format_date_knows_month_lengths_and_leap_years():
    automaton = compile_schema({"type": "string", "format": "date"})
    for text, expected in [("2024-02-29", True), ("2023-02-29", False), ("2000-02-29", True), ("1900-02-29", False),
                           ("2024-04-31", False), ("2024-12-31", True), ("2024-00-10", False)]:
        assert accepts(automaton, json.dumps(text)) == expected, text


def test_objects_without_declared_properties():
    for schema in ({"type": "object", "additionalProperties": False}, {"type": "object", "minProperties": 1},
                   {"type": "object", "additionalProperties": {"type": "integer"}}):
        automaton = compile_schema(schema)
        for instance in ({}, {"a": 1}, {"a": "x"}):
            assert accepts(automaton, json.dumps(instance)) == oracle(schema, instance), (schema, instance)


def test_the_letter_accepts_declared_properties_in_any_order_once():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"},
                                               "c": {"type": "boolean"}},
              "required": ["a", "c"], "additionalProperties": False}
    automaton = compile_schema(schema)
    for text, expected in [('{"c": true, "a": 1}', True), ('{"b": "x", "c": false, "a": 2}', True),
                           ('{"a": 1, "a": 2, "c": true}', False), ('{"b": "x", "a": 1}', False),
                           ('{"c": true, "a": "1"}', False)]:
        assert accepts(automaton, text) == expected, text


def test_unique_items_over_unbounded_items_allow_one_item_never_a_repeat():
    """"All different" over any string is not regular: the documented approximation is at most one item."""
    automaton = compile_schema({"type": "array", "items": {"type": "string"}, "uniqueItems": True})
    assert accepts(automaton, "[]") and accepts(automaton, '["a"]')
    assert not accepts(automaton, '["a", "a"]')
    assert not accepts(automaton, '["a", "b"]')             # valid, but beyond the approximation


def test_keys_leaving_the_trie_anywhere_agree_with_jsonschema():
    """Declared names sharing prefixes, with escapes and non-ASCII characters, in any order, beside
    undeclared keys that leave their trie at every point (a prefix of a name, a name continued, a
    different character, an escape): each random instance judged against the validator."""
    import random
    names = ["ab", "abc", 'a"q', "é", "na\nme", "x"]
    schema = {"type": "object", "properties": {name: {"type": "string"} for name in names},
              "required": ["abc"], "additionalProperties": {"type": "integer"}}
    others = ["a", "abcd", "ab\"", "é2", "na", "na\n", "y", "", "\\", "a\\q", "éé", "ab c", "X"]
    automaton = compile_schema(schema)
    rng = random.Random(7)
    seen = set()
    for _ in range(300):
        keys = rng.sample(names, rng.randint(0, len(names))) + rng.sample(others, rng.randint(0, 3))
        rng.shuffle(keys)
        instance = {key: rng.choice(["s", 1]) for key in keys}
        text = json.dumps(instance, ensure_ascii=False)
        expected = oracle(schema, instance)
        seen.add(expected)
        assert accepts(automaton, text) == expected, text
    assert seen == {True, False}
