"""How a JSON schema is read: by its letter (validating, `SPEC_STYLE`) or for generation (`GENERATION_STYLE`:
objects that declare properties closed, whitespace bounded), and llguidance's `x-guidance` options."""
from __future__ import annotations

import json

import pytest

from refengine.constrain import GENERATION_STYLE, SPEC_STYLE, ConstraintError, build_grammar
from refengine.constrain.automaton import DEAD, Automaton
from refengine.tools.grammar import call_object_schema

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}


def accepts(schema, text: str, style=GENERATION_STYLE) -> bool:
    automaton = Automaton(build_grammar("json_schema", schema, style))
    state = automaton.walk(automaton.initial, text.encode("utf-8"))
    return state != DEAD and automaton.is_accepting(state)


def test_generation_closes_objects_that_declare_properties_and_the_letter_does_not():
    extra = json.dumps({"name": "John", "age": 30, "gender": "Male"})
    assert accepts(PERSON, json.dumps({"name": "John", "age": 30}))
    assert not accepts(PERSON, extra)
    assert accepts(PERSON, extra, SPEC_STYLE)


def test_generation_keeps_what_the_schema_says_of_additional_properties():
    open_schema = {**PERSON, "additionalProperties": True}
    typed = {**PERSON, "additionalProperties": {"type": "boolean"}}
    assert accepts(open_schema, json.dumps({"name": "J", "age": 1, "x": [1]}))
    assert accepts(typed, json.dumps({"name": "J", "age": 1, "x": True}))
    assert not accepts(typed, json.dumps({"name": "J", "age": 1, "x": 1}))
    # no `properties`: nothing to close to (a map, or any object)
    assert accepts({"type": "object"}, json.dumps({"anything": 1}))


def test_closing_keeps_required_names_that_properties_does_not_declare():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a", "b"]}
    assert accepts(schema, json.dumps({"a": 1, "b": "any value"}))
    assert not accepts(schema, json.dumps({"a": 1, "b": 2, "c": 3}))


def test_closing_applies_inside_nested_objects_and_after_allof_merging():
    nested = {"type": "object", "properties": {"p": PERSON}, "required": ["p"]}
    assert not accepts(nested, json.dumps({"p": {"name": "J", "age": 1, "x": 1}}))
    merged = {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}},
                        {"properties": {"b": {"type": "integer"}}}]}
    assert accepts(merged, json.dumps({"a": 1, "b": 2}))
    assert not accepts(merged, json.dumps({"a": 1, "c": 2}))


def test_an_object_declaring_no_properties_is_empty_when_generating():
    schema = {"type": "object", "properties": {}}
    assert accepts(schema, "{}")
    assert not accepts(schema, '{"city": "Paris"}')
    assert not accepts(schema, "{\n  \n}")          # one gap inside an empty object, not two


@pytest.mark.parametrize("text, expected", [
    ('{"name":"J","age":1}', True),                     # compact
    ('{"name": "J", "age": 1}', True),                  # json.dumps
    (json.dumps({"name": "J", "age": 1}, indent=2), True),
    (json.dumps({"name": "J", "age": 1}, indent="\t"), True),
    ('{\n\n  "name": "J", "age": 1}', False),           # blank lines
    ('{"name": "J"\n,\n"age": 1}', False),              # whitespace before a comma
    ('{"name"  :  "J", "age": 1}', False),
    ('{"name": "J",' + " " * 20 + '"age": 1}', False),  # runs of spaces
])
def test_generation_whitespace_is_compact_or_one_newline_plus_indentation(text, expected):
    assert accepts(PERSON, text) == expected


def test_the_letter_allows_flexible_but_bounded_whitespace():
    assert accepts(PERSON, '{"name"  :  "J" ,\n\n "age": 1}', SPEC_STYLE)
    assert not accepts(PERSON, '{"name": "J",' + " " * 20 + '"age": 1}', SPEC_STYLE)


def test_x_guidance_sets_the_whitespace_and_separators():
    compact = {**PERSON, "x-guidance": {"whitespace_flexible": False}}
    assert accepts(compact, '{"name":"J","age":1}')
    assert not accepts(compact, '{"name": "J", "age": 1}')
    flexible = {**PERSON, "x-guidance": {"whitespace_flexible": True}}
    assert accepts(flexible, '{"name"  :  "J" ,\n\n "age": 1}')
    separators = {**PERSON, "x-guidance": {"item_separator": r"\s{0,2},\s{0,2}", "key_separator": r"\s?:\s?",
                                           "whitespace_flexible": False}}
    assert accepts(separators, '{"name" : "J" ,  "age":1}')
    assert not accepts(separators, '{"name":"J",   "age":1}')
    pattern = {**PERSON, "x-guidance": {"whitespace_pattern": r"[ ]{1,2}"}}
    assert accepts(pattern, '{  "name" : "J" , "age" :  1 }')
    assert not accepts(pattern, '{\n"name": "J", "age": 1}')


@pytest.mark.parametrize("options", [{"lenient": True}, {"whitespace_flexible": "yes"}, {"item_separator": "[,"},
                                     "compact"])
def test_x_guidance_options_we_cannot_honour_are_named(options):
    with pytest.raises(ConstraintError) as info:
        build_grammar("json_schema", {**PERSON, "x-guidance": options}, GENERATION_STYLE)
    assert info.value.keyword == "x-guidance"


def test_a_function_without_arguments_takes_an_empty_object():
    function = {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}
    call = call_object_schema(function, "arguments")
    assert accepts(call, '{"name": "get_weather", "arguments": {}}')
    assert not accepts(call, '{"name": "get_weather", "arguments": {"city": "Paris"}}')


@pytest.mark.parametrize("style", [SPEC_STYLE, GENERATION_STYLE])
def test_an_object_that_needs_members_none_may_be_is_refused_at_compile_time(style):
    schema = {"type": "object", "properties": {}, "additionalProperties": False, "minProperties": 1}
    with pytest.raises(ConstraintError):
        build_grammar("json_schema", schema, style)
