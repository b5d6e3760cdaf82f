"""Request validation (web.schema): every field of the chat request, OpenAI's ranges, `param` naming it."""
from __future__ import annotations

import json
import logging

import pytest

from refengine.request import DEFAULT_DRY_SEQUENCE_BREAKERS
from web.agentic import agent_call
from web.errors import APIError
from web.schema import parse_chat, parse_completion, parse_json_object, param_path

VOCAB, CONTEXT = 1000, 4096
USER = [{"role": "user", "content": "hi"}]


def chat(strict=False, **fields):
    body = {"model": "default", "messages": USER, **fields}
    return parse_chat(body, serves=lambda m: m in ("default", "tiny"), vocab_size=VOCAB, context_length=CONTEXT,
                      strict=strict)


def completion(**fields):
    body = {"model": "default", "prompt": "hi", **fields}
    return parse_completion(body, serves=lambda m: m == "default", vocab_size=VOCAB, context_length=CONTEXT)


def refused(call, **fields) -> dict:
    with pytest.raises(APIError) as caught:
        call(**fields)
    return {"status": caught.value.status_code, **caught.value.envelope()["error"]}


# (field, bad value, the param the 400 must name)
BAD_CHAT_FIELDS = [
    ("temperature", 2.5, "temperature"), ("temperature", -0.1, "temperature"), ("temperature", "hot", "temperature"),
    ("top_p", 1.5, "top_p"), ("top_p", -1, "top_p"),
    ("n", 0, "n"), ("n", 129, "n"), ("n", 1.5, "n"),
    ("presence_penalty", 2.5, "presence_penalty"), ("frequency_penalty", -2.5, "frequency_penalty"),
    ("logit_bias", {"5": 101}, "logit_bias.5"), ("logit_bias", {"5": -101}, "logit_bias.5"),
    ("logit_bias", {"abc": 1}, "logit_bias.abc"), ("logit_bias", [1], "logit_bias"),
    ("logit_bias", {str(VOCAB): 1}, "logit_bias"),
    ("logprobs", "yes", "logprobs"),
    ("top_logprobs", 21, "top_logprobs"), ("top_logprobs", -1, "top_logprobs"),
    ("max_tokens", 0, "max_tokens"), ("max_tokens", -1, "max_tokens"), ("max_tokens", "ten", "max_tokens"),
    ("max_tokens", CONTEXT, "max_tokens"),
    ("max_completion_tokens", 0, "max_completion_tokens"),
    ("max_completion_tokens", CONTEXT + 5, "max_completion_tokens"),
    ("stop", ["a", "b", "c", "d", "e"], "stop"), ("stop", [], "stop"), ("stop", 5, "stop"), ("stop", [""], "stop[0]"),
    ("stop", "", "stop"),
    ("seed", 2 ** 64, "seed"), ("seed", "1", "seed"),
    ("stream", "yes", "stream"), ("stream_options", {"include_usage": True}, "stream_options"),
    ("stream_options", "x", "stream_options"),
    ("model", 5, "model"),
    ("response_format", {"type": "xml"}, "response_format.type"),
    ("response_format", {"type": "json_schema"}, "response_format.json_schema"),
    ("response_format", {"type": "json_schema", "json_schema": {"schema": {}}}, "response_format.json_schema.name"),
    ("response_format", "json", "response_format"),
    ("tools", [{"type": "function"}], "tools[0].function"),
    ("tools", [{"type": "function", "function": {"name": "bad name"}}], "tools[0].function.name"),
    ("tools", [{"type": "other"}], "tools[0].type"),
    ("tool_choice", "sometimes", "tool_choice"),
    ("tool_choice", {"type": "function"}, "tool_choice.function"),
    ("tool_choice", "required", "tool_choice"),                     # without tools
    ("tool_choice", {"type": "function", "function": {"name": "f"}}, "tool_choice"),
    ("parallel_tool_calls", "no", "parallel_tool_calls"),
    ("functions", [], "functions"), ("function_call", "sometimes", "function_call"),
    ("reasoning_effort", "extreme", "reasoning_effort"), ("verbosity", "loud", "verbosity"),
    ("modalities", ["video"], "modalities[0]"),
    ("audio", {"voice": "alloy"}, "audio.format"),
    ("prediction", {"type": "content"}, "prediction.content"),
    ("store", "yes", "store"), ("metadata", {"k": 1}, "metadata.k"),
    ("metadata", {f"k{i}": "v" for i in range(17)}, "metadata"),
    ("service_tier", "gold", "service_tier"), ("user", 5, "user"), ("safety_identifier", "x" * 65, "safety_identifier"),
    ("prompt_cache_key", 1, "prompt_cache_key"), ("prompt_cache_retention", "forever", "prompt_cache_retention"),
    ("prompt_cache_options", {"ttl": "1h"}, "prompt_cache_options.ttl"),
    ("moderation", {}, "moderation.model"),
    ("web_search_options", {"search_context_size": "huge"}, "web_search_options.search_context_size"),
    ("web_search_options", {"user_location": {"approximate": {}}}, "web_search_options.user_location.type"),
    ("web_search_options", {"user_location": {"type": "approximate", "approximate": {"city": 3}}},
     "web_search_options.user_location.approximate.city"),
    ("web_search_options", {"search_description": 1}, "web_search_options.search_description"),
    # extensions
    ("top_k", -2, "top_k"), ("top_k", 1.5, "top_k"), ("min_p", 1.5, "min_p"), ("min_p", -0.1, "min_p"),
    ("repetition_penalty", 0, "repetition_penalty"), ("repetition_penalty", 2.5, "repetition_penalty"),
    ("dry_multiplier", -1, "dry_multiplier"), ("dry_base", 0.5, "dry_base"),
    ("dry_allowed_length", -1, "dry_allowed_length"), ("dry_sequence_breakers", "\n", "dry_sequence_breakers"),
    ("dry_sequence_breakers", [""], "dry_sequence_breakers[0]"),
    ("grammar", {"type": "regex"}, "grammar.value"), ("grammar", {"type": "peg", "value": "x"}, "grammar.type"),
    ("grammar", {"type": "regex", "value": 5}, "grammar.value"),
    ("enable_thinking", "yes", "enable_thinking"), ("truncate_sequence", 1, "truncate_sequence"),
    ("enable_code_execution", "yes", "enable_code_execution"), ("files", "a.txt", "files"),
    ("max_tool_rounds", -1, "max_tool_rounds"), ("session_id", 5, "session_id"),
    ("ignore_eos", "yes", "ignore_eos"), ("min_tokens", -1, "min_tokens"),
]


@pytest.mark.parametrize("field,value,param", BAD_CHAT_FIELDS)
def test_each_bad_chat_field_is_a_400_naming_it(field, value, param):
    error = refused(chat, **{field: value})
    assert error["status"] == 400
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error["message"]
    assert param.split("[")[0].split(".")[0] in error["message"]


BAD_MESSAGES = [
    ([], "messages"),
    ("hello", "messages"),
    ([{"content": "hi"}], "messages[0].role"),
    ([{"role": "wizard", "content": "hi"}], "messages[0].role"),
    ([{"role": "user"}], "messages[0].content"),
    ([{"role": "user", "content": 42}], "messages[0].content"),
    ([{"role": "user", "content": []}], "messages[0].content"),
    ([{"role": "user", "content": [{"type": "text"}]}], "messages[0].content[0].text"),
    ([{"role": "user", "content": [{"type": "video", "video": "x"}]}], "messages[0].content[0].type"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}],
     "messages[0].content[0]"),                                               # valid, but text only here
    ([{"role": "system", "content": [{"type": "refusal", "refusal": "no"}]}], "messages[0].content[0].type"),
    ([{"role": "user", "content": "hi", "name": 5}], "messages[0].name"),
    (USER + [{"role": "assistant"}], "messages[1].content"),
    (USER + [{"role": "assistant", "content": None}], "messages[1].content"),
    (USER + [{"role": "assistant", "content": None, "tool_calls": [{"type": "function", "id": "c1"}]}],
     "messages[1].tool_calls[0].function"),
    (USER + [{"role": "tool", "content": "42"}], "messages[1].tool_call_id"),
    ([{"role": "user", "content": "", "tool_calls": [None]}], "messages[0].tool_calls"),     # assistant only
    (USER + [{"role": "tool", "content": "x", "tool_call_id": "a", "tool_calls": "zz"}], "messages[1].tool_calls"),
    (USER + [{"role": "function", "content": "42"}], "messages[1].name"),
    ([{"role": "developer", "content": 1}], "messages[0].content"),
]


@pytest.mark.parametrize("messages,param", BAD_MESSAGES)
def test_bad_messages_name_the_message_and_field(messages, param):
    error = refused(chat, messages=messages)
    assert (error["status"], error["param"]) == (400, param), error["message"]


def test_missing_required_fields():
    for body, param in (({"messages": USER}, "model"), ({"model": "default"}, "messages")):
        with pytest.raises(APIError) as caught:
            parse_chat(body, serves=lambda m: True, vocab_size=VOCAB, context_length=CONTEXT)
        assert caught.value.param == param
        assert caught.value.message == f"Missing required parameter: '{param}'."


def test_unknown_model_is_404_model_not_found():
    error = refused(chat, model="gpt-4o")
    assert (error["status"], error["code"], error["param"]) == (404, "model_not_found", "model")
    assert chat(model="tiny").options.n == 1              # the loaded model's own name is fine too


def test_top_logprobs_needs_logprobs():
    assert refused(chat, top_logprobs=2)["param"] == "top_logprobs"
    assert refused(chat, logprobs=False, top_logprobs=0)["param"] == "top_logprobs"
    assert chat(logprobs=True, top_logprobs=20).options.top_logprobs == 20


def test_min_tokens_may_not_exceed_max_tokens():
    assert refused(chat, min_tokens=10, max_tokens=5)["param"] == "min_tokens"


# Features this server does not offer (or not yet): a 400 naming the field, never silently ignored.
UNSUPPORTED = [
    ("audio", {"voice": "alloy", "format": "wav"}), ("modalities", ["text", "audio"]),
    ("prediction", {"type": "content", "content": "x"}), ("moderation", {"model": "omni-moderation"}),
    ("store", True),
]                                                        # (legacy functions are tools now: test_http_layer.py)


@pytest.mark.parametrize("fields,expected", [
    ({"response_format": {"type": "json_object"}}, ("json_object", None, "response_format")),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}},
     ("json_schema", {"type": "object"}, "response_format.json_schema.schema")),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     ("json_object", None, "response_format.json_schema")),
    ({"grammar": {"type": "regex", "value": "[0-9]+"}}, ("regex", "[0-9]+", "grammar.value")),
    ({"grammar": {"type": "lark", "value": 'start: "a"'}}, ("lark", 'start: "a"', "grammar.value")),
    ({"response_format": {"type": "text"}}, None),
])
def test_output_constraints_are_parsed(fields, expected):
    constraint = chat(**fields).constraint
    assert (constraint and (constraint.kind, constraint.value, constraint.param)) == expected


def test_grammar_with_json_response_format_is_refused():
    error = refused(chat, grammar={"type": "regex", "value": "a"}, response_format={"type": "json_object"})
    assert (error["status"], error["param"]) == (400, "grammar")


def test_llguidance_grammar_is_parsed_with_the_json_schema_mode():
    value = {"grammars": [{"lark_grammar": 'start: "a"'}]}
    constraint = chat(grammar={"type": "llguidance", "value": value}, json_schema_mode="plain").constraint
    assert (constraint.kind, constraint.value, constraint.param, constraint.json_schema_mode) == \
        ("llguidance", value, "grammar.value", "plain")
    assert refused(chat, json_schema_mode="loose")["param"] == "json_schema_mode"


@pytest.mark.parametrize("field,value", UNSUPPORTED)
def test_unsupported_features_are_refused_by_name(field, value):
    error = refused(chat, **{field: value})
    assert (error["status"], error["param"], error["code"]) == (400, field, "unsupported_parameter")
    assert field in error["message"] and "not supported" in error["message"]


# ---- tools and reasoning ----

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time"}}
CUSTOM = {"type": "custom", "custom": {"name": "grep"}}


@pytest.mark.parametrize("tool_choice,mode,names,named", [
    (None, "auto", ("get_weather", "get_time"), False),
    ("auto", "auto", ("get_weather", "get_time"), False),
    ("none", "none", ("get_weather", "get_time"), False),
    ("required", "required", ("get_weather", "get_time"), False),
    ({"type": "function", "function": {"name": "get_time"}}, "required", ("get_time",), True),
    ({"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
        {"type": "function", "function": {"name": "get_weather"}}]}}, "required", ("get_weather",), False),
])
def test_tools_and_tool_choice_are_parsed(tool_choice, mode, names, named):
    tools = chat(tools=[WEATHER, TIME], tool_choice=tool_choice, parallel_tool_calls=False).tools
    assert tools.tools == [WEATHER, TIME] and tools.functions == [WEATHER["function"], TIME["function"]]
    assert (tools.choice.mode, tools.choice.names, tools.choice.named) == (mode, names, named)
    assert tools.callable == (mode != "none") and tools.max_calls == 1


def test_parallel_tool_calls_bounds_the_calls_and_no_tools_is_no_tool_request():
    assert chat(tools=[WEATHER]).tools.max_calls is None
    assert chat(tools=[WEATHER], parallel_tool_calls=True).tools.max_calls is None
    assert chat(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}}
                ).tools.max_calls == 1                     # a named function is called once
    assert chat().tools is None and chat(tools=[], tool_choice="none", parallel_tool_calls=True).tools is None


@pytest.mark.parametrize("fields,param", [
    ({"tools": [WEATHER, CUSTOM]}, "tools[1]"),                                        # function tools only
    ({"tools": [CUSTOM], "tool_choice": {"type": "custom", "custom": {"name": "grep"}}}, "tools[0]"),
    ({"tools": [WEATHER], "tool_choice": {"type": "custom", "custom": {"name": "get_weather"}}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "allowed_tools", "allowed_tools": {
        "mode": "auto", "tools": [{"type": "function", "function": {"name": "nope"}}]}}}, "tool_choice"),
    ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format"),
    ({"tools": [WEATHER], "tool_choice": "required", "grammar": {"type": "regex", "value": "a"}}, "grammar"),
    ({"enable_thinking": False, "reasoning_effort": "high"}, "reasoning_effort"),
    ({"enable_thinking": True, "reasoning_effort": "none"}, "reasoning_effort"),
    ({"messages": USER + [{"role": "assistant", "content": None, "tool_calls": [
        {"type": "custom", "id": "c1", "custom": {"name": "grep", "input": "x"}}]}]}, "messages[1].tool_calls[0].type"),
])
def test_tool_and_reasoning_conflicts_name_the_field(fields, param):
    error = refused(chat, **fields)
    assert (error["status"], error["type"], error["param"]) == (400, "invalid_request_error", param), error
    assert param.split("[")[0] in error["message"]


def test_tool_choice_none_leaves_room_for_a_response_format():
    call = chat(tools=[WEATHER], tool_choice="none", response_format={"type": "json_object"})
    assert call.constraint.kind == "json_object" and not call.tools.callable


@pytest.mark.parametrize("fields,kwargs", [
    ({}, {}),
    ({"enable_thinking": False}, {"enable_thinking": False}),
    ({"reasoning_effort": "low"}, {"reasoning_effort": "low", "enable_thinking": True}),
    ({"reasoning_effort": "none", "enable_thinking": False}, {"reasoning_effort": "none", "enable_thinking": False}),
    ({"enable_thinking": None, "reasoning_effort": None}, {}),
])
def test_thinking_fields_become_template_kwargs(fields, kwargs):
    assert chat(**fields).template_kwargs == kwargs


def test_seed_request_is_parsed_and_its_agent_part_checked():
    """The seed's example request turns on code execution beside a grammar, which cannot hold together (the
    calls follow their own grammar): a 400 naming the grammar; without it, an agentic request."""
    body = {"agent_permission": None, "code_execution_permission": None, "dry_allowed_length": None,
            "dry_base": None, "dry_multiplier": None, "dry_sequence_breakers": None, "enable_code_execution": True,
            "enable_thinking": None, "files": ["example"], "frequency_penalty": None,
            "grammar": {"type": "regex", "value": "example"}, "logit_bias": None, "logprobs": False,
            "max_tokens": 256, "max_tool_rounds": None, "min_p": None, "model": "default", "n": 1,
            "messages": [{"content": "example", "role": "user"}], "presence_penalty": None,
            "reasoning_effort": None, "repetition_penalty": None, "response_format": {"type": "text"},
            "session_id": None, "stop": "example", "stream": True, "temperature": 0.7, "tool_choice": "none",
            "tools": None, "top_k": None, "top_logprobs": None, "top_p": None, "truncate_sequence": None}
    call = parse_chat(body, serves=lambda m: True, vocab_size=VOCAB, context_length=CONTEXT)
    assert call.stream and call.options.stopping.stop == ("example",)
    assert (call.constraint.kind, call.constraint.value) == ("regex", "example")
    assert call.options.sampling.temperature == pytest.approx(0.7)
    with pytest.raises(APIError) as caught:
        agent_call(body, call)
    assert caught.value.param == "grammar.value"
    body["grammar"] = None
    agentic = agent_call(body, parse_chat(body, serves=lambda m: True, vocab_size=VOCAB, context_length=CONTEXT))
    assert agentic.code_execution and [f["name"] for f in agentic.files] == ["example"]


def test_every_supported_field_maps_onto_the_engine_request():
    call = chat(temperature=0.5, top_p=0.9, n=3, presence_penalty=0.5, frequency_penalty=-0.5,
                logit_bias={"7": 100, "8": -100}, seed=-1, stop=["\n\n", "END"], max_tokens=10,
                max_completion_tokens=12, logprobs=True, top_logprobs=3, stream=True,
                stream_options={"include_usage": True, "include_obfuscation": False}, user="u",
                top_k=40, min_p=0.05, repetition_penalty=1.1, dry_multiplier=0.8, dry_base=2.0,
                dry_allowed_length=3, dry_sequence_breakers=["\n"], ignore_eos=True, min_tokens=2,
                truncate_sequence=True, response_format={"type": "text"}, tool_choice="none", tools=[],
                parallel_tool_calls=False, metadata={"k": "v"}, store=False, service_tier="auto",
                verbosity="low", modalities=["text"], safety_identifier="s", prompt_cache_key="p",
                prompt_cache_retention="24h", prompt_cache_options={"ttl": "30m"}, web_search_options=None,
                enable_code_execution=False, files=[], grammar=None)
    s, stop = call.options.sampling, call.options.stopping
    assert (s.temperature, s.top_p, s.top_k, s.min_p) == (0.5, pytest.approx(0.9), 40, pytest.approx(0.05))
    assert (s.presence_penalty, s.frequency_penalty, s.repetition_penalty) == (0.5, -0.5, pytest.approx(1.1))
    assert s.logit_bias == {7: 100.0, 8: -100.0}
    assert s.seed == 2 ** 64 - 1                       # int64 -1, as an unsigned 64-bit seed
    assert (s.dry_multiplier, s.dry_base, s.dry_allowed_length, s.dry_sequence_breakers) == (
        pytest.approx(0.8), 2.0, 3, ("\n",))
    assert stop.max_tokens == 12                       # max_completion_tokens wins over max_tokens
    assert (stop.stop, stop.min_tokens, stop.ignore_eos) == (("\n\n", "END"), 2, True)
    assert (call.options.n, call.options.logprobs, call.options.top_logprobs) == (3, True, 3)
    assert (call.stream, call.include_usage, call.truncate) == (True, True, True)


def test_defaults_are_openai_defaults():
    call = chat()
    s, stop = call.options.sampling, call.options.stopping
    assert (s.temperature, s.top_p, s.top_k, s.min_p, s.repetition_penalty, s.seed) == (1.0, 1.0, 0, 0.0, 1.0, None)
    assert s.dry_multiplier == 0.0 and s.dry_sequence_breakers == DEFAULT_DRY_SEQUENCE_BREAKERS
    assert (stop.max_tokens, stop.stop, stop.min_tokens, stop.ignore_eos) == (None, (), 0, False)
    assert (call.options.n, call.options.logprobs, call.stream, call.include_usage) == (1, False, False, False)
    assert chat(top_k=-1).options.sampling.top_k == 0          # vLLM's "disabled"
    assert chat(stop="x").options.stopping.stop == ("x",)


def test_developer_messages_reach_the_template_as_system():
    call = chat(messages=[{"role": "developer", "content": "be brief"}] + USER)
    assert call.messages[0] == {"role": "system", "content": "be brief"}


def test_unknown_fields_are_logged_or_rejected_with_strict(caplog):
    with caplog.at_level(logging.WARNING, logger="web.schema"):
        chat(frobnicate=1)
    assert "frobnicate" in caplog.text
    error = refused(chat, strict=True, frobnicate=1)
    assert (error["param"], error["message"]) == ("frobnicate", "Unrecognized request argument supplied: frobnicate")


@pytest.mark.parametrize("raw,fragment", [
    (b"", "empty"), (b"   ", "empty"), (b'{"model": "x", "messages": [', "parse"), (b"[1, 2]", "JSON object"),
    (b'"text"', "JSON object"), (b"null", "JSON object"), (b'{"temperature": NaN}', "parse"),
    (b'{"a": Infinity}', "parse"), (b"\xff\xfe{}", "UTF-8"), (b"[" * 100000 + b"]" * 100000, "parse"),
])
def test_malformed_bodies_are_a_400(raw, fragment):
    with pytest.raises(APIError) as caught:
        parse_json_object(raw)
    assert caught.value.status_code == 400 and fragment in caught.value.message


def test_param_path_is_openai_style():
    assert param_path(["messages", 1, "role"]) == "messages[1].role"
    assert param_path(["stop", 0]) == "stop[0]"
    assert param_path([]) is None


def test_error_messages_never_echo_huge_values():
    error = refused(chat, messages="x" * 100000)
    assert len(error["message"]) < 300


# ---- /v1/completions ----

BAD_COMPLETION_FIELDS = [
    ("prompt", None, "prompt"), ("prompt", [], "prompt"), ("prompt", [[]], "prompt[0]"), ("prompt", 5, "prompt"),
    ("prompt", ["a", 1], "prompt"), ("prompt", [-1], "prompt[0]"), ("prompt", [[1, "a"]], "prompt[0][1]"),
    ("prompt", [VOCAB], "prompt"), ("logprobs", 6, "logprobs"), ("logprobs", True, "logprobs"),
    ("best_of", 0, "best_of"), ("best_of", 21, "best_of"), ("echo", "yes", "echo"), ("suffix", 5, "suffix"),
    ("suffix", "tail", "suffix"), ("max_tokens", -1, "max_tokens"), ("temperature", 3, "temperature"),
]


@pytest.mark.parametrize("field,value,param", BAD_COMPLETION_FIELDS)
def test_each_bad_completion_field_is_a_400_naming_it(field, value, param):
    error = refused(completion, **{field: value})
    assert (error["status"], error["param"]) == (400, param), error["message"]


def test_completion_rules_for_best_of_and_echo():
    assert refused(completion, n=3, best_of=2)["param"] == "best_of"
    assert refused(completion, best_of=3, stream=True)["param"] == "best_of"
    assert completion(echo=True, logprobs=1).options.prompt_logprobs == 1      # scores the prompt
    assert completion(echo=True).options.prompt_logprobs is None
    call = completion(prompt=["a", "b"], n=2, best_of=3, max_tokens=None)
    assert (call.n, call.options.n, call.options.logprobs) == (2, 3, True)   # logprobs to rank best_of
    assert call.options.stopping.max_tokens == 16                             # the legacy default
    assert completion(prompt=[[1, 2], [3]]).prompts == [[1, 2], [3]]
    assert completion(prompt=[1, 2]).prompts == [[1, 2]]
    assert json.dumps(completion(prompt="x").prompts) == '["x"]'
