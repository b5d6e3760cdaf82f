"""Tool calling: template detection, prompts (native and fallback), history round trips, call parsing (batch and
streamed in random pieces), the call grammar for each tool_choice, and finish reasons."""
import itertools
import json
import re

import jsonschema
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refengine.constrain import ConstraintError, Vocab
from refengine.constrain.automaton import DEAD, Automaton
from refengine.constrain.index import Constraint
from refengine.model import load_model
from refengine.prompt import chat_prompt_ids
from refengine.tools import (HERMES, LLAMA3_JSON, MISTRAL, ContentDelta, ToolCall, ToolCallDelta,
                             ToolCallStreamParser, ToolChoice, ToolFormat, ToolRequestError, ToolSet,
                             collect_tool_calls,
                             detect_tool_format, parse_tool_calls, prepare_chat, resolve_tool_choice,
                             tool_call_grammar, tool_constraint_spec, tool_finish_reason)
from tool_templates import (LLAMA3_TEMPLATE, MISTRAL_TEMPLATE, QWEN_TEMPLATE, TOOLS_IN_COMMENT_TEMPLATE,
                            write_template_model)

WEATHER_PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                            "parameters": WEATHER_PARAMETERS}}
STRICT_PARAMETERS = {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]},
                                                      "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                     "required": ["city", "days"], "additionalProperties": False}
FORECAST = {"type": "function", "function": {"name": "forecast", "strict": True, "parameters": STRICT_PARAMETERS}}
CITY_PARAMETERS = {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}}, "required": ["city"],
                   "additionalProperties": False}
CITY = {"type": "function", "function": {"name": "pick_city", "strict": True, "parameters": CITY_PARAMETERS}}
TREE = {"type": "function", "function": {"name": "tree", "strict": True, "parameters": {
    "$defs": {"node": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
                       "additionalProperties": False}}, "$ref": "#/$defs/node"}}}
HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "22C"},
]
HERMES_FMT = ToolFormat(HERMES, native=True, renders_tool_history=True)
MISTRAL_FMT = ToolFormat(MISTRAL, native=True, renders_tool_history=True)
LLAMA3_FMT = ToolFormat(LLAMA3_JSON, native=True, renders_tool_history=True)
CALL_ID = re.compile(r"^call_[A-Za-z0-9]{24}$")


@pytest.fixture(scope="module")
def qwen_model(tmp_path_factory):
    return load_model(write_template_model(tmp_path_factory.mktemp("qwen-tools"), QWEN_TEMPLATE))


def counting_ids():
    counter = itertools.count()
    return lambda: f"call_{next(counter):024d}"


# --- detection --------------------------------------------------------------------------------------------------

def test_template_families_are_detected_from_the_syntax_tree(smollm2):
    assert detect_tool_format(QWEN_TEMPLATE) == ToolFormat(HERMES, native=True, renders_tool_history=True)
    assert detect_tool_format(LLAMA3_TEMPLATE) == ToolFormat(LLAMA3_JSON, native=True, renders_tool_history=True)
    assert detect_tool_format(MISTRAL_TEMPLATE) == ToolFormat(MISTRAL, native=True, renders_tool_history=True)
    assert detect_tool_format(TOOLS_IN_COMMENT_TEMPLATE).native is False     # "tools" only in a comment/string
    assert detect_tool_format(smollm2.template.source) == ToolFormat(HERMES, native=False,
                                                                     renders_tool_history=False)
    assert detect_tool_format(None).native is False
    # a vocabulary's [TOOL_CALLS] token marks the mistral family even when the template text does not show it
    plain_tools = "{% for t in tools %}{{ t.function.name }}{% endfor %}"
    assert detect_tool_format(plain_tools).family == HERMES
    assert detect_tool_format(plain_tools, lambda token: token == "[TOOL_CALLS]").family == MISTRAL


# --- prompting ------------------------------------------------------------------------------------------------

QWEN_TOOLS_HEADER = (
    "<|im_start|>system\n# Tools\n\nYou are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>\n"
    '{"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": '
    '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}\n'
    "</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n')


def test_native_template_gets_the_tools_and_renders_the_history_itself(qwen_model):
    chat = prepare_chat(qwen_model, HISTORY, ToolSet.read([WEATHER], "auto"))
    assert chat.tools == [WEATHER] and chat.format.native
    # OpenAI's JSON-string arguments reach the template as an object (it `tojson`s them); the tool result
    # got the name of the call it answers
    assert chat.messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert chat.messages[2]["name"] == "get_weather"
    expected = (QWEN_TOOLS_HEADER + "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
                "<|im_start|>assistant\n<tool_call>\n"
                '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
                "<|im_start|>user\n<tool_response>\n22C\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    ids = chat_prompt_ids(qwen_model, chat.messages, tools=chat.tools)
    assert ids == qwen_model.tokenizer.encode(expected)


FALLBACK_SYSTEM = (
    "# Tools\n\nYou may call one or more of these functions to answer the user.\n\n"
    "## get_weather\nWeather now\n"
    'Parameters (JSON Schema): {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}\n'
    "\nTo call a function, answer with one line per call, exactly in this format:\n"
    '<tool_call>{"name": "<function name>", "arguments": {<arguments as a JSON object>}}</tool_call>\n'
    "Results come back in <tool_response></tool_response> tags, in the order of the calls.")


def test_fallback_prompt_on_the_default_model(smollm2):
    chat = prepare_chat(smollm2, [{"role": "user", "content": "Weather in Paris?"}],
                        ToolSet.read([WEATHER], "required"))
    assert chat.tools is None and not chat.format.native
    assert chat.messages == [{"role": "system", "content": FALLBACK_SYSTEM},
                             {"role": "user", "content": "Weather in Paris?"}]
    ids = chat_prompt_ids(smollm2, chat.messages, tools=chat.tools)
    assert ids == smollm2.tokenizer.encode(f"<|im_start|>system\n{FALLBACK_SYSTEM}<|im_end|>\n"
                                           "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n")


def test_fallback_merges_into_an_existing_system_message(smollm2):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    chat = prepare_chat(smollm2, messages, ToolSet.read([WEATHER], None))
    assert chat.messages == [{"role": "system", "content": "Be brief.\n\n" + FALLBACK_SYSTEM},
                             {"role": "user", "content": "Hi"}]
    parts = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}, {"role": "user", "content": "Hi"}]
    merged = prepare_chat(smollm2, parts, ToolSet.read([WEATHER], None)).messages[0]["content"]
    assert merged == [{"type": "text", "text": "Be brief."}, {"type": "text", "text": FALLBACK_SYSTEM}]


def test_tool_result_round_trip_renders_on_the_default_model(smollm2):
    history = HISTORY + [
        {"role": "assistant", "content": "Checking Oslo too.", "tool_calls": [
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
            {"id": "call_3", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_2", "content": "9C"},
        {"role": "tool", "tool_call_id": "call_3", "content": "error: city is required"}]
    chat = prepare_chat(smollm2, history, ToolSet.read([WEATHER], "auto"))
    ids = chat_prompt_ids(smollm2, chat.messages, tools=chat.tools)
    assert ids == smollm2.tokenizer.encode(
        f"<|im_start|>system\n{FALLBACK_SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
        "<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n22C\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\nChecking Oslo too.\n"
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>\n'
        '<tool_call>{"name": "get_weather", "arguments": {}}</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n9C\n</tool_response>\n"
        "<tool_response>\nerror: city is required\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n")


def test_tool_choice_none_leaves_the_tools_out_but_keeps_the_history(smollm2, qwen_model):
    chat = prepare_chat(smollm2, HISTORY, ToolSet.read([WEATHER], "none"))
    assert chat.tools is None and chat.messages[0]["role"] == "user"
    assert "<tool_call>" in chat.messages[1]["content"]
    native = prepare_chat(qwen_model, HISTORY, ToolSet.read([WEATHER], "none"))
    assert native.tools is None
    text = qwen_model.template.render(native.messages, tools=native.tools)
    assert not text.startswith("<|im_start|>system") and '{"name": "get_weather", "arguments"' in text
    assert tool_constraint_spec(ToolSet.read([WEATHER], "none", None), HERMES_FMT) is None


# --- parsing ----------------------------------------------------------------------------------------------------

# (format, model output, expected content, expected calls as (name, arguments object))
CASES = [
    (HERMES_FMT, 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
     "Let me check.", [("get_weather", {"city": "Paris"})]),
    (HERMES_FMT, '<tool_call>{"name": "a", "arguments": {"s": "}{\\"<tool_call>", "n": [1, {"x": null}]}}</tool_call>\n'
                 '<tool_call>{"arguments": {"k": true}, "name": "b\\u00e9"}</tool_call> trailing words',
     None, [("a", {"s": '}{"<tool_call>', "n": [1, {"x": None}]}), ("bé", {"k": True})]),
    (HERMES_FMT, '<tool_call>{"name": "no_args"}</tool_call>', None, [("no_args", {})]),
    (HERMES_FMT, '<tool_call>{"name": "stringly", "arguments": "{\\"q\\": 1}"}</tool_call>', None,
     [("stringly", {"q": 1})]),
    (HERMES_FMT, "Plain answer with <tool_ no call, {\"name\": 1} and [TOOL_CALLS] text.  ",
     "Plain answer with <tool_ no call, {\"name\": 1} and [TOOL_CALLS] text.  ", []),
    (MISTRAL_FMT, '[TOOL_CALLS][{"name": "a", "arguments": {"q": "x"}}, {"name": "b", "arguments": {}}]', None,
     [("a", {"q": "x"}), ("b", {})]),
    (MISTRAL_FMT, ' [{"name": "a", "arguments": {"q": [1, 2]}}]', None, [("a", {"q": [1, 2]})]),
    (MISTRAL_FMT, 'Sure [{"name": "a"}] is not a call', 'Sure [{"name": "a"}] is not a call', []),
    (LLAMA3_FMT, '<|python_tag|>{"name": "a", "parameters": {"k": 1.5}}; {"name": "b", "parameters": {}}', None,
     [("a", {"k": 1.5}), ("b", {})]),
    (LLAMA3_FMT, 'Calling: {"name": "a", "parameters": {"city": "Oslo"}}', "Calling:", [("a", {"city": "Oslo"})]),
]


@pytest.mark.parametrize("fmt, text, content, calls", CASES)
def test_parse_complete_outputs(fmt, text, content, calls):
    parsed_content, parsed = parse_tool_calls(text, fmt)
    assert parsed_content == content
    assert [(c.name, json.loads(c.arguments)) for c in parsed] == calls
    assert all(CALL_ID.match(c.id) for c in parsed) and len({c.id for c in parsed}) == len(parsed)


def test_arguments_keep_the_models_own_text():
    _, [call] = parse_tool_calls('<tool_call>{"name": "f", "arguments": {"a" :1,  "b": [ ]}}</tool_call>', HERMES_FMT)
    assert call.arguments == '{"a" :1,  "b": [ ]}'


def test_max_calls_keeps_the_first_call_only():
    text = '<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{"name": "b", "arguments": {}}</tool_call>'
    assert [c.name for c in parse_tool_calls(text, HERMES_FMT, max_calls=1)[1]] == ["a"]
    mistral = '[TOOL_CALLS][{"name": "a", "arguments": {}}, {"name": "b", "arguments": {}}]'
    assert [c.name for c in parse_tool_calls(mistral, MISTRAL_FMT, max_calls=1)[1]] == ["a"]


def split_at(text, cuts):
    bounds = [0, *sorted(set(cuts)), len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_streamed_in_random_pieces_gives_the_same_calls(data):
    fmt, text, content, calls = data.draw(st.sampled_from(CASES))
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=12))
    parser = ToolCallStreamParser(fmt, new_id=counting_ids())
    deltas = [d for piece in split_at(text, cuts) for d in parser.push(piece)] + parser.finish()
    # the same as the whole text at once
    assert collect_tool_calls(deltas) == parse_tool_calls(text, fmt, new_id=counting_ids())
    # OpenAI's streaming shape: the first delta of a call has id, type and name; the rest only arguments
    seen = set()
    for d in deltas:
        if isinstance(d, ToolCallDelta):
            first = d.index not in seen
            assert (d.id is not None, d.type, d.name is not None) == \
                   ((True, "function", True) if first else (False, None, False))
            if first:
                assert d.index == len(seen)                      # indices 0, 1, ... in order of opening
            seen.add(d.index)
        else:
            assert isinstance(d, ContentDelta) and not seen       # no content once a call has opened
    arguments = {}
    for d in deltas:
        if isinstance(d, ToolCallDelta):
            arguments[d.index] = arguments.get(d.index, "") + d.arguments
    assert [json.loads(arguments[i]) for i in sorted(arguments)] == [a for _, a in calls]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8)
GENERATED_CALLS = st.lists(st.tuples(st.text(min_size=1, max_size=10),
                                     st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=4)),
                           min_size=1, max_size=3)


def write_calls(fmt, content, calls, indent, ascii_only):
    def dump(value):
        return json.dumps(value, indent=indent, ensure_ascii=ascii_only)
    if fmt.family == HERMES:
        return content + "\n".join(f"<tool_call>\n{dump({'name': n, 'arguments': a})}\n</tool_call>" for n, a in calls)
    if fmt.family == MISTRAL:
        return content + "[TOOL_CALLS]" + dump([{"name": n, "arguments": a} for n, a in calls])
    # llama3 calls open with a compact `{"name"` (as its prompt shows them), so no indent at the top level
    return content + "; ".join(json.dumps({"name": n, "parameters": a}, ensure_ascii=ascii_only) for n, a in calls)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), fmt=st.sampled_from([HERMES_FMT, MISTRAL_FMT, LLAMA3_FMT]), calls=GENERATED_CALLS,
       content=st.text(alphabet=st.characters(exclude_characters="[{<"), max_size=12),
       indent=st.sampled_from([None, 0, 2]), ascii_only=st.booleans())
def test_any_written_calls_come_back_streamed_or_not(data, fmt, calls, content, indent, ascii_only):
    text = write_calls(fmt, content, calls, indent, ascii_only)
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=15))
    parsed_content, parsed = parse_tool_calls(text, fmt)
    assert parsed_content == (content.rstrip() or None)
    assert [(c.name, json.loads(c.arguments)) for c in parsed] == calls
    parser = ToolCallStreamParser(fmt, new_id=counting_ids())
    deltas = [d for piece in split_at(text, cuts) for d in parser.push(piece)] + parser.finish()
    assert collect_tool_calls(deltas) == parse_tool_calls(text, fmt, new_id=counting_ids())


@settings(max_examples=150, deadline=None)
@given(fmt=st.sampled_from([HERMES_FMT, MISTRAL_FMT, LLAMA3_FMT]),
       text=st.text(alphabet=st.sampled_from(list('<>[]{}":,\\ nameargumts_TOOLCALSpyhg|1')), max_size=60))
def test_any_text_parses_without_error(fmt, text):
    content, calls = parse_tool_calls(text, fmt)
    assert content is None or text.startswith(content)
    assert all(isinstance(c.name, str) for c in calls)


def test_streaming_holds_back_only_a_possible_trigger():
    parser = ToolCallStreamParser(HERMES_FMT, new_id=counting_ids())
    assert parser.push("Hello <tool") == [ContentDelta("Hello")]          # " <tool" may open a call
    assert parser.push("box> ok") == [ContentDelta(" <toolbox> ok")]
    assert parser.push('\n<tool_call>{"name": "f", "argu') == [
        ToolCallDelta(0, "", id="call_" + "0" * 24, type="function", name="f")]
    assert parser.push('ments": {"x": 1') == [ToolCallDelta(0, '{"x": 1')]
    assert parser.push("}}</tool_call>") == [ToolCallDelta(0, "}")]
    assert parser.finish() == []
    as_openai = ToolCallDelta(0, "", id="call_x", type="function", name="f").as_openai()
    assert as_openai == {"index": 0, "id": "call_x", "type": "function", "function": {"name": "f", "arguments": ""}}
    assert ToolCallDelta(0, '{"x"').as_openai() == {"index": 0, "function": {"arguments": '{"x"'}}


def test_tool_call_as_openai():
    call = ToolCall("call_abc", "f", '{"x": 1}')
    assert call.as_openai() == {"id": "call_abc", "type": "function",
                                "function": {"name": "f", "arguments": '{"x": 1}'}}


# --- tool_choice, the call grammar and finish_reason ------------------------------------------------------------

def accepts(grammar, text: str) -> bool:
    automaton = Automaton(grammar)
    state = automaton.walk(automaton.initial, text.encode())
    return state != DEAD and automaton.is_accepting(state)


def hermes_call(name, arguments, spacing=""):
    return f"<tool_call>{spacing}{json.dumps({'name': name, 'arguments': arguments})}{spacing}</tool_call>"


def test_non_strict_parameters_the_constrainer_cannot_compile_allow_any_object():
    unusual = {"type": "function", "function": {"name": "tags", "parameters": {
        "type": "object", "properties": {"xs": {"type": "array", "contains": {"type": "integer"}}}}}}
    grammar = tool_call_grammar(tool_constraint_spec(ToolSet.read([unusual], "required", None), HERMES_FMT))
    assert accepts(grammar, hermes_call("tags", {"anything": [1, "goes"]}))


def nested_parameters(depth: int) -> dict:
    schema = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def ref_chain_parameters(length: int) -> dict:
    definitions = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(length)}
    definitions[f"d{length}"] = {"type": "string"}
    return {"type": "object", "properties": {"a": {"$ref": "#/$defs/d0"}}, "$defs": definitions}


# nesting exhausts the stack while the call schema is assembled; a chain of $refs only while it compiles
@pytest.mark.parametrize("parameters", [nested_parameters(3000), ref_chain_parameters(3000)],
                         ids=["nested", "ref_chain"])
def test_parameters_nested_too_deeply_are_a_constraint_error_or_any_object(parameters):
    strict = {"type": "function", "function": {"name": "deep", "strict": True, "parameters": parameters}}
    with pytest.raises(ConstraintError, match="nested too deeply") as raised:
        tool_call_grammar(tool_constraint_spec(ToolSet.read([strict], "required", None), HERMES_FMT))
    assert raised.value.keyword == "size"
    guided = {"type": "function", "function": {"name": "deep", "parameters": parameters}}
    grammar = tool_call_grammar(tool_constraint_spec(ToolSet.read([guided], "required", None), HERMES_FMT))
    assert accepts(grammar, hermes_call("deep", {"anything": [1, "goes"]}))


def test_required_forces_a_call_of_any_tool_from_the_first_token():
    spec = tool_constraint_spec(ToolSet.read([WEATHER, FORECAST, TREE], "required", None), HERMES_FMT)
    assert spec.trigger is None and spec.max_calls is None
    grammar = tool_call_grammar(spec)
    assert accepts(grammar, hermes_call("get_weather", {"city": "Lima"}, "\n"))    # not strict: guided by
    assert not accepts(grammar, hermes_call("get_weather", {"anything": [1, "goes"]}))     # its parameters
    assert accepts(grammar, hermes_call("forecast", {"city": "Oslo", "days": 7}))
    assert not accepts(grammar, hermes_call("forecast", {"city": "Rome", "days": 7}))         # strict: enum
    assert not accepts(grammar, hermes_call("forecast", {"city": "Oslo", "days": 8}))         # strict: maximum
    assert accepts(grammar, hermes_call("tree", {"kids": [{"kids": []}, {}]}))                # $ref rebased
    assert not accepts(grammar, hermes_call("tree", {"leaves": []}))
    assert not accepts(grammar, hermes_call("nope", {}))
    assert not accepts(grammar, "Sure! " + hermes_call("forecast", {"city": "Oslo", "days": 7}))
    two = hermes_call("get_weather", {"city": "Lima"}) + hermes_call("tree", {})
    assert accepts(grammar, two)
    assert not accepts(grammar, hermes_call("get_weather", {"city": "Lima"}) + "\n" + hermes_call("tree", {}))
    single = tool_call_grammar(tool_constraint_spec(ToolSet.read([WEATHER, TREE], "required", False), HERMES_FMT))
    assert not accepts(single, two) and accepts(single, hermes_call("tree", {}))


def test_named_choice_forces_that_function_once():
    choice = {"type": "function", "function": {"name": "forecast"}}
    spec = tool_constraint_spec(ToolSet.read([WEATHER, FORECAST], choice, True), HERMES_FMT)
    assert spec.trigger is None and spec.max_calls == 1
    grammar = tool_call_grammar(spec)
    assert accepts(grammar, hermes_call("forecast", {"city": "Paris", "days": 1}))
    assert not accepts(grammar, hermes_call("get_weather", {"city": "Paris"}))


def test_auto_is_a_lazy_grammar_started_at_the_trigger():
    spec = tool_constraint_spec(ToolSet.read([WEATHER, FORECAST], "auto", None), HERMES_FMT)
    assert spec.trigger == "<tool_call>"
    automaton = Automaton(tool_call_grammar(spec))
    state = automaton.walk(automaton.initial, spec.trigger.encode())
    assert state != DEAD
    rest = '\n{"name": "forecast", "arguments": {"city": "Oslo", "days": 2}}\n</tool_call>'
    assert automaton.is_accepting(automaton.walk(state, rest.encode()))
    assert automaton.walk(state, b'{"name": "unknown"') == DEAD


def test_allowed_tools_restrict_the_callable_names():
    choice = {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
        {"type": "function", "function": {"name": "forecast"}}]}}
    assert resolve_tool_choice([WEATHER, FORECAST], choice) == ToolChoice("required", ("forecast",))
    grammar = tool_call_grammar(tool_constraint_spec(ToolSet.read([WEATHER, FORECAST], choice, None), HERMES_FMT))
    assert not accepts(grammar, hermes_call("get_weather", {"city": "Paris"}))


def test_other_families_grammars():
    mistral = tool_constraint_spec(ToolSet.read([WEATHER, FORECAST], "required", None), MISTRAL_FMT)
    grammar = tool_call_grammar(mistral)
    two = '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Lima"}}, {"name": "forecast", "arguments": ' \
          '{"city": "Paris", "days": 3}}]'
    assert accepts(grammar, two)
    single = tool_constraint_spec(ToolSet.read([WEATHER], "required", False), MISTRAL_FMT)
    assert not accepts(tool_call_grammar(single), two)
    llama = tool_constraint_spec(ToolSet.read([WEATHER, FORECAST], "auto", None), LLAMA3_FMT)
    assert llama.trigger == '{"name"'                       # the call's own JSON opens it
    grammar = tool_call_grammar(llama)
    assert accepts(grammar, '{"name": "forecast", "parameters": {"city": "Oslo", "days": 1}}; '
                            '{"name": "get_weather", "parameters": {"city": "Oslo"}}')
    assert not accepts(grammar, '{"name": "forecast", "arguments": {"city": "Oslo", "days": 1}}')


def test_tool_choice_errors_name_the_parameter():
    with pytest.raises(ToolRequestError) as error:
        resolve_tool_choice([WEATHER], {"type": "function", "function": {"name": "missing"}})
    assert error.value.param == "tool_choice"
    with pytest.raises(ToolRequestError) as error:
        resolve_tool_choice([{"type": "custom", "custom": {"name": "x"}}], "auto")
    assert error.value.param == "tools[0]"
    assert resolve_tool_choice(None, None) == ToolChoice("none", ())
    assert resolve_tool_choice([WEATHER], None) == ToolChoice("auto", ("get_weather",))


def test_finish_reason_follows_openai():
    auto, required = ToolChoice("auto", ("f",)), ToolChoice("required", ("f",))
    named = ToolChoice("required", ("f",), named=True)
    assert tool_finish_reason(auto, True, "stop") == "tool_calls"
    assert tool_finish_reason(required, True, "stop") == "tool_calls"
    assert tool_finish_reason(named, True, "stop") == "stop"
    assert tool_finish_reason(auto, False, "stop") == "stop"
    assert tool_finish_reason(required, True, "length") == "length"


# --- constrained generation end to end (greedy, the spec's grammar as the only mask) --------------------------------

def constrained_greedy(model, prompt_ids, constraint, state=None, max_steps=200) -> str:
    cache = model.new_cache(len(prompt_ids) + max_steps + 1)
    logits = model.forward([prompt_ids], [cache])[0]                      # [V]
    state = constraint.initial_state if state is None else state
    out = []
    for _ in range(max_steps):
        masked = np.where(constraint.allowed(state), logits, np.float32(-np.inf))   # [V]
        token = int(np.argmax(masked))
        if token in model.eos_ids:
            break
        out.append(token)
        state = constraint.advance(state, token)
        logits = model.forward([[token]], [cache])[0]                     # [V]
    return model.tokenizer.decode(out)


def vocab_of(model):
    return Vocab(tuple(model.tokenizer.token_bytes), model.eos_ids, model.tokenizer.special_ids)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "pick_city"}}, "auto"])
def test_random_tiny_model_makes_a_valid_strict_call(qwen_model, choice):
    """A random model only makes sense under the mask, so whatever it writes is the grammar's doing. For auto,
    the model is taken to have written the trigger (the lazy start: the grammar walked over the trigger)."""
    tools = [WEATHER, CITY]
    chat = prepare_chat(qwen_model, [{"role": "user", "content": "Forecast for Oslo?"}], ToolSet.read(tools, choice))
    spec = tool_constraint_spec(ToolSet.read(tools, choice, False), chat.format)
    constraint = Constraint(Automaton(tool_call_grammar(spec)), vocab_of(qwen_model))
    state = None if spec.trigger is None else \
        constraint.automaton.walk(constraint.initial_state, spec.trigger.encode())
    prompt = chat_prompt_ids(qwen_model, chat.messages, tools=chat.tools)
    text = (spec.trigger or "") + constrained_greedy(qwen_model, prompt, constraint, state)
    content, calls = parse_tool_calls(text, chat.format)
    assert content is None and len(calls) == 1
    if calls[0].name == "pick_city":
        jsonschema.validate(json.loads(calls[0].arguments), CITY_PARAMETERS)
    else:
        assert choice != {"type": "function", "function": {"name": "pick_city"}}
        assert isinstance(json.loads(calls[0].arguments), dict)


def test_default_model_required_call_validates(smollm2):
    tools = [FORECAST]
    chat = prepare_chat(smollm2, [{"role": "user", "content": "What is the weather in Paris this week?"}],
                        ToolSet.read(tools, "required"))
    spec = tool_constraint_spec(ToolSet.read(tools, "required", False), chat.format)
    constraint = Constraint(Automaton(tool_call_grammar(spec)), vocab_of(smollm2))
    text = constrained_greedy(smollm2, chat_prompt_ids(smollm2, chat.messages, tools=chat.tools), constraint,
                              max_steps=80)
    _, [call] = parse_tool_calls(text, chat.format)
    assert call.name == "forecast"
    jsonschema.validate(json.loads(call.arguments), STRICT_PARAMETERS)
