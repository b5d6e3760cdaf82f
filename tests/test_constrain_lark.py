"""Lark grammars → constraints, judged against the `re` module or hand-written expectations."""
from __future__ import annotations

import json

import pytest

from refengine.constrain import ConstraintError, build_grammar
from refengine.constrain.automaton import DEAD, Automaton

JSON_GRAMMAR = r'''
?start: value
?value: object | array | string | SIGNED_NUMBER -> number | "true" | "false" | "null"
array  : "[" [value ("," value)*] "]"
object : "{" [pair ("," pair)*] "}"
pair   : string ":" value
string : ESCAPED_STRING
%import common.ESCAPED_STRING
%import common.SIGNED_NUMBER
%import common.WS
%ignore WS
'''


def matcher(grammar: str):
    automaton = Automaton(build_grammar("lark", grammar))

    def accepts(text: str) -> bool:
        state = automaton.walk(automaton.initial, text.encode("utf-8"))
        return state != DEAD and automaton.is_accepting(state)
    return accepts


def test_recursive_json_grammar_with_ignored_whitespace():
    accepts = matcher(JSON_GRAMMAR)
    for value in [{"a": [1, 2.5, {"b": None}]}, [], "x", -3, [[[["deep"]]]]]:
        assert accepts(json.dumps(value)) and accepts(json.dumps(value, indent=2))
    for text in ['{"a" 1}', "[1,]", "tru", '{"a": [1, 2}', ""]:
        assert not accepts(text), text


def test_operators_literals_ranges_and_terminals():
    accepts = matcher(r'''
start: greeting " " NAME "!"? (" " DIGITS)~0..2 ["."]
greeting: "hello"i | "hi"
NAME: UPPER /[a-z]+/
UPPER: "A".."Z"
DIGITS: ("0".."9")+
''')
    for text, expected in [("hello Bob!", True), ("HeLLo Bob", True), ("hi bob", False), ("hi Al! 1 22.", True),
                           ("hi Al 1 2 3", False), ("hey Al", False)]:
        assert accepts(text) == expected, text


def test_nesting_is_bounded_by_the_return_stack():
    accepts = matcher('start: "(" start ")" | "x"')
    assert accepts("((((x))))")
    assert not accepts("((x)")
    assert not accepts("(" * 200 + "x" + ")" * 200)      # deeper than the stack bound


@pytest.mark.parametrize("grammar", [
    'start: rule{x}\nrule{a}: a', "start: A\nA: /a/i", "start: B", 'start: "a"\n%declare X', "rule: \"a\"",
    "start: A\nA: \"a\" A",
])
def test_unsupported_or_broken_grammars_are_errors(grammar):
    with pytest.raises(ConstraintError) as info:
        build_grammar("lark", grammar)
    assert info.value.keyword == "lark"
