"""llguidance's grammar object: a list of Lark grammars and JSON schemas composed through `@name`, Lark's
`%json {...}`, `%llguidance {...}` options, `max_tokens`, and errors that name the grammar at fault."""
from __future__ import annotations

import pytest

from refengine.constrain import GENERATION_STYLE, ConstraintError, build_grammar, build_grammar_capped
from refengine.constrain.automaton import DEAD, Automaton

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}


def accepts(grammar, text: str) -> bool:
    automaton = Automaton(grammar)
    state = automaton.walk(automaton.initial, text.encode("utf-8"))
    return state != DEAD and automaton.is_accepting(state)


def llguidance(value):
    return build_grammar("llguidance", value, GENERATION_STYLE)


def test_a_lark_rule_composes_a_json_schema_by_name():
    grammar, max_tokens = build_grammar_capped("llguidance", {
        "grammars": [{"lark_grammar": 'start: "Answer: " @person'}, {"name": "person", "json_schema": PERSON}],
        "max_tokens": 40}, GENERATION_STYLE)
    assert max_tokens == 40
    assert accepts(grammar, 'Answer: {"name": "John", "age": 30}')
    assert not accepts(grammar, 'Answer: {"name": "John"}')                 # the schema holds inside
    assert not accepts(grammar, 'Answer: {"name": "John", "age": 30, "x": 1}')   # closed when generating
    assert not accepts(grammar, '{"name": "John", "age": 30}')              # and so does the Lark around it


def test_the_start_grammar_may_be_a_schema_and_grammars_may_refer_to_each_other_recursively():
    assert accepts(llguidance({"grammars": [{"json_schema": {"type": "array", "items": {"type": "integer"}}}]}),
                   "[1, 2]")
    nested = llguidance({"grammars": [{"lark_grammar": 'start: "(" [@inner] ")"'},
                                      {"name": "inner", "lark_grammar": 'start: "[" [@inner] "]"'}]})
    assert accepts(nested, "([[]])") and not accepts(nested, "([)")


def test_rule_names_of_the_composed_grammars_do_not_clash():
    grammar = llguidance({"grammars": [
        {"lark_grammar": 'start: item " " @other\nitem: "a"'},
        {"name": "other", "lark_grammar": 'start: item item\nitem: "b"'}]})
    assert accepts(grammar, "a bb") and not accepts(grammar, "a aa")


def test_inline_json_in_lark_and_the_lark_kind_too():
    value = 'start: "x=" %json {"type": "integer", "minimum": 3}\n| "none"'
    for grammar in (build_grammar("lark", value, GENERATION_STYLE),
                    llguidance({"grammars": [{"lark_grammar": value}]})):
        assert accepts(grammar, "x=5") and accepts(grammar, "none")
        assert not accepts(grammar, "x=2")


def test_llguidance_syntax_extensions():
    once = llguidance({"grammars": [{"lark_grammar":
                                     '%llguidance {"skip_repetition": "once", "no_forcing": true}\n'
                                     '%ignore /[ ]{1,2}/\nstart: "A" "!"'}]})
    assert accepts(once, "A  !") and not accepts(once, "A   !")
    counted = build_grammar("lark", 'start: "a"{2,3} "b"{2} # a comment')
    assert accepts(counted, "aabb") and accepts(counted, "aaabb") and not accepts(counted, "aaaabb")


@pytest.mark.parametrize("value, path, keyword", [
    ({"grammars": [{"lark_grammar": "start: @nope"}]}, "grammars[0].lark_grammar", "lark"),
    ({"grammars": [{"lark_grammar": "start: @p"}, {"name": "p", "json_schema": {"type": "strin"}}]},
     "grammars[1].json_schema", "type"),
    ({"grammars": []}, "grammars", "llguidance"),
    ({"grammars": [{"lark_grammar": 'start: "a"', "nodes": []}]}, "grammars[0].nodes", "llguidance"),
    ({"grammars": [{"lark_grammar": 'start: "a"', "json_schema": {}}]}, "grammars[0]", "llguidance"),
    ({"grammars": [{"lark_grammar": 'start: "a"'}], "max_tokens": 0}, "max_tokens", "llguidance"),
    ({"grammars": [{"lark_grammar": 'start: "a"'}], "temperature": 1}, "temperature", "llguidance"),
    ({"grammars": [{"lark_grammar": '%llguidance {"allow_invalid_utf8": true}\nstart: "a"'}]},
     "grammars[0].lark_grammar", "%llguidance"),
    ({"grammars": [{"lark_grammar": 'start: <|python_tag|> "a"'}]}, "grammars[0].lark_grammar", "lark"),
    ({"grammars": [{"lark_grammar": 'start: "a"'}, {"name": "a", "json_schema": {}},
                   {"name": "a", "json_schema": {}}]}, "grammars[2].name", "llguidance"),
])
def test_grammars_that_cannot_be_compiled_name_where_and_why(value, path, keyword):
    with pytest.raises(ConstraintError) as info:
        llguidance(value)
    assert (info.value.path, info.value.keyword) == (path, keyword)
    assert info.value.message


def test_a_schema_error_in_an_inline_json_names_the_lark_grammar():
    with pytest.raises(ConstraintError) as info:
        llguidance({"grammars": [{"lark_grammar": 'start: %json {"type": "array", "contains": {}}'}]})
    assert info.value.path == "grammars[0].lark_grammar" and info.value.keyword == "contains"
    assert "contains" in info.value.message
