"""Tool calling and reasoning through the server: request → prompt → constrained generation → tool_calls /
reasoning_content, streamed and not.

Fast shape checks run in-process (falcon's TestClient) on tiny random models whose chat templates have
native tools (Qwen's, with `<tool_call>` added to the vocabulary so a logit bias can open a call) or that
think (DeepSeek-R1's, which opens the <think> block in the prompt). The default model is driven through the
`openai` SDK against a real server on a loopback port."""
from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import numpy as np
import openai
import pytest
from falcon import testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file
from tokenizers import AddedToken, Tokenizer

from refengine.model import load_model
from refengine.output import ChoiceOutput, OutputReading
from refengine.request import TokenEvent
from refengine.tools import HERMES, ToolChoice, ToolFormat, ToolSet
from serving import free_port, refengine_serve, running_server
from tool_templates import QWEN_TEMPLATE, R1_TEMPLATE, write_template_model
from web.app import create_app
from web.engine import start_engine

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "conformance" / "schemas"
CALL_ID = re.compile(r"^call_[A-Za-z0-9]{24}$")

FORECAST_PARAMETERS = {"type": "object", "additionalProperties": False, "required": ["city", "days"],
                       "properties": {"city": {"enum": ["Paris", "Oslo", "Rome"]},
                                      "days": {"type": "integer", "minimum": 1, "maximum": 7}}}
TIME_PARAMETERS = {"type": "object", "additionalProperties": False, "required": ["timezone"],
                   "properties": {"timezone": {"type": "string", "maxLength": 32}}}
FORECAST = {"type": "function", "function": {"name": "get_forecast", "description": "Weather forecast for a city.",
                                             "strict": True, "parameters": FORECAST_PARAMETERS}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "Current time in a timezone.",
                                         "strict": True, "parameters": TIME_PARAMETERS}}
TOOLS = [FORECAST, TIME]
PARAMETERS = {"get_forecast": FORECAST_PARAMETERS, "get_time": TIME_PARAMETERS}
GET_TIME = {"type": "function", "function": {"name": "get_time"}}
ASK = [{"role": "user", "content": "What will the weather be in Oslo for the next 3 days?"}]
ROUND_TRIP = ASK + [
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_forecast",
                                                          "arguments": '{"city": "Oslo", "days": 3}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, then rain; 12 to 15C."}]


def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / f"{name}.json").read_text()))


CHAT_RESPONSE = validator("CreateChatCompletionResponse")
CHAT_CHUNK = validator("CreateChatCompletionStreamResponse")


def assert_valid_call(call: dict, names=tuple(PARAMETERS)) -> dict:
    """One complete call in OpenAI's shape whose arguments satisfy its (strict) parameters; returns them."""
    assert CALL_ID.match(call["id"]) and call["type"] == "function"
    assert call["function"]["name"] in names
    arguments = json.loads(call["function"]["arguments"])
    jsonschema.validate(arguments, PARAMETERS[call["function"]["name"]])
    return arguments


# ---- tiny models with a native-tools template and a thinking template ----

def with_added_tokens(model_dir: Path, tokens: list[str]) -> Path:
    """Add non-special tokens to a tiny model's vocabulary (random embedding and output rows for them)."""
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in tokens])
    tokenizer.save(str(model_dir / "tokenizer.json"))
    config = json.loads((model_dir / "config.json").read_text())
    config["vocab_size"] = tokenizer.get_vocab_size()
    (model_dir / "config.json").write_text(json.dumps(config))
    tensors = load_file(str(model_dir / "model.safetensors"))
    rng = np.random.default_rng(1)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        rows = rng.standard_normal((len(tokens), tensors[name].shape[1])).astype(np.float32)
        tensors[name] = np.concatenate([tensors[name], rows])              # [V + n, D]
    save_file(tensors, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    return model_dir


@pytest.fixture(scope="module")
def qwen_engine(tmp_path_factory):
    model_dir = with_added_tokens(write_template_model(tmp_path_factory.mktemp("qwen-web"), QWEN_TEMPLATE),
                                  ["<tool_call>", "</tool_call>"])
    engine = start_engine(load_model(model_dir), max_batch=4, max_queue=8)
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def qwen(qwen_engine):
    return testing.TestClient(create_app(qwen_engine))


@pytest.fixture(scope="module")
def r1(tmp_path_factory):
    engine = start_engine(load_model(write_template_model(tmp_path_factory.mktemp("r1-web"), R1_TEMPLATE)),
                          max_batch=4, max_queue=8)
    yield testing.TestClient(create_app(engine))
    engine.stop()


@pytest.fixture(scope="module")
def plain(tiny_model):
    """The tiny model with a ChatML template that has neither tools nor thinking."""
    engine = start_engine(tiny_model, max_batch=4, max_queue=8)
    yield testing.TestClient(create_app(engine))
    engine.stop()


TINY_MAX_TOKENS = 160                    # a random model spends ~100 tokens on one call (single characters, spaces)


def post(client, messages=ASK, **fields):
    body = {"model": "default", "messages": messages, "temperature": 0, "max_tokens": TINY_MAX_TOKENS, **fields}
    result = client.simulate_post("/v1/chat/completions", json=body)
    assert result.status_code == 200, result.text
    if not fields.get("stream"):
        CHAT_RESPONSE.validate(result.json)
    return result


def refused(client, **fields) -> dict:
    body = {"model": "default", "messages": ASK, "max_tokens": 5, **fields}
    result = client.simulate_post("/v1/chat/completions", json=body)
    assert result.status_code == 400, result.text
    return result.json["error"]


def stream_chunks(client, **fields) -> list[dict]:
    result = post(client, stream=True, stream_options={"include_usage": True}, **fields)
    events = [line[len("data: "):] for line in result.text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        CHAT_CHUNK.validate(chunk)
    return chunks


def reassemble(chunks: list[dict]) -> dict:
    """A streamed choice 0 put back together as OpenAI's clients do (tool calls keyed by `index`)."""
    calls: dict[int, dict] = {}
    content, reasoning, reasons = "", "", []
    for chunk in chunks:
        for choice in chunk["choices"]:
            delta = choice["delta"]
            content += delta.get("content") or ""
            reasoning += delta.get("reasoning_content") or ""
            for piece in delta.get("tool_calls") or []:
                assert isinstance(piece["index"], int)              # every tool-call delta has its index
                if piece["index"] not in calls:                     # the first carries id, type and name
                    assert CALL_ID.match(piece["id"]) and piece["type"] == "function" and piece["function"]["name"]
                    calls[piece["index"]] = {"id": piece["id"], "type": "function",
                                             "function": {"name": piece["function"]["name"], "arguments": ""}}
                else:
                    assert "id" not in piece and "name" not in piece["function"]
                calls[piece["index"]]["function"]["arguments"] += piece["function"].get("arguments", "")
            if choice["finish_reason"] is not None:
                reasons.append(choice["finish_reason"])
    assert sorted(calls) == list(range(len(calls)))
    return {"content": content, "reasoning": reasoning, "tool_calls": [calls[i] for i in sorted(calls)],
            "finish_reasons": reasons, "usage": chunks[-1]["usage"]}


def ids_only(calls: list[dict]) -> list[dict]:
    return [{**c, "id": "call_x"} for c in calls]


# ---- tool_choice modes on the native-tools template ----

def complete_calls(choice: dict) -> list[dict]:
    """The calls of a choice that must be complete: all, unless the length ran out (then the last may not be)."""
    calls = choice["message"]["tool_calls"]
    assert choice["finish_reason"] in ("tool_calls", "length")
    return calls if choice["finish_reason"] == "tool_calls" else calls[:-1]


def test_required_returns_valid_strict_calls(qwen):
    """The random model keeps calling (parallel calls are allowed) until max_tokens cuts it off."""
    choice = post(qwen, tools=TOOLS, tool_choice="required").json["choices"][0]
    assert choice["message"]["content"] is None and choice["message"]["reasoning_content"] is None
    calls = complete_calls(choice)
    assert calls
    for call in calls:
        assert_valid_call(call)


def test_parallel_tool_calls_false_gives_one_call(qwen):
    choice = post(qwen, tools=TOOLS, tool_choice="required", parallel_tool_calls=False).json["choices"][0]
    [call] = choice["message"]["tool_calls"]
    assert_valid_call(call)
    assert choice["finish_reason"] == "tool_calls"


def test_named_function_is_called_once_with_finish_reason_stop(qwen):
    choice = post(qwen, tools=TOOLS, tool_choice=GET_TIME).json["choices"][0]
    [call] = choice["message"]["tool_calls"]
    assert_valid_call(call, names=("get_time",))
    assert choice["finish_reason"] == "stop"                      # OpenAI's answer to a forced function


def test_auto_call_opened_by_the_model_is_completed_by_the_grammar(qwen, qwen_engine):
    """The biased first token writes the trigger; from there the grammar makes it a valid call."""
    opening = qwen_engine.model.tokenizer.token_id("<tool_call>")
    choice = post(qwen, tools=TOOLS, tool_choice="auto", parallel_tool_calls=False,
                  logit_bias={str(opening): 100}).json["choices"][0]
    [call] = choice["message"]["tool_calls"]
    assert_valid_call(call)
    assert choice["message"]["content"] is None and choice["finish_reason"] == "tool_calls"


def test_auto_without_a_call_is_plain_text(qwen):
    choice = post(qwen, tools=TOOLS, tool_choice="auto", max_tokens=8).json["choices"][0]
    assert "tool_calls" not in choice["message"] and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")


def test_none_leaves_the_tools_out_of_the_prompt(qwen, qwen_engine):
    opening = qwen_engine.model.tokenizer.token_id("<tool_call>")
    none = post(qwen, tools=TOOLS, tool_choice="none", max_tokens=8, logit_bias={str(opening): 100}).json
    without = post(qwen, max_tokens=8, logit_bias={str(opening): 100}).json
    assert none["usage"]["prompt_tokens"] == without["usage"]["prompt_tokens"]
    assert none["choices"][0]["message"]["content"] == without["choices"][0]["message"]["content"]
    assert none["choices"][0]["message"]["content"].startswith("<tool_call>")   # not parsed: just text
    assert "tool_calls" not in none["choices"][0]["message"]
    assert post(qwen, tools=TOOLS, max_tokens=8).json["usage"]["prompt_tokens"] > without["usage"]["prompt_tokens"]


@pytest.mark.parametrize("tool_choice", ["required", GET_TIME])
def test_streamed_calls_reassemble_to_the_non_streamed_ones(qwen, tool_choice):
    plain = post(qwen, tools=TOOLS, tool_choice=tool_choice).json
    streamed = reassemble(stream_chunks(qwen, tools=TOOLS, tool_choice=tool_choice))
    message = plain["choices"][0]["message"]
    assert ids_only(streamed["tool_calls"]) == ids_only(message["tool_calls"])
    assert streamed["content"] == "" and streamed["finish_reasons"] == [plain["choices"][0]["finish_reason"]]
    assert streamed["usage"] == plain["usage"]


def test_tool_result_round_trip(qwen):
    choice = post(qwen, messages=ROUND_TRIP, tools=TOOLS, max_tokens=8).json["choices"][0]
    assert isinstance(choice["message"]["content"], str)


def test_n_choices_each_get_their_own_calls(qwen):
    body = post(qwen, tools=TOOLS, tool_choice=GET_TIME, n=2, temperature=1, seed=5).json
    ids = [c["message"]["tool_calls"][0]["id"] for c in body["choices"]]
    assert len(set(ids)) == 2
    for choice in body["choices"]:
        assert_valid_call(choice["message"]["tool_calls"][0], names=("get_time",))


def test_strict_parameters_that_cannot_be_compiled_are_a_400_naming_them(qwen):
    tools = [FORECAST, {"type": "function", "function": {"name": "tags", "strict": True, "parameters": {
        "type": "object", "properties": {"tags": {"type": "array", "contains": {"type": "integer"}}}}}}]
    error = refused(qwen, tools=tools, tool_choice="required")
    assert error["param"] == "tools[1].function.parameters" and "contains" in error["message"]


@pytest.mark.parametrize("fields,param", [
    ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format"),
    ({"tools": [{"type": "custom", "custom": {"name": "grep"}}]}, "tools[0]"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"enable_thinking": False, "reasoning_effort": "high"}, "reasoning_effort"),
    ({"functions": [{"name": "f"}], "tools": TOOLS}, "functions"),       # the legacy form of tools, not both
])
def test_refusals_name_the_field(qwen, fields, param):
    assert refused(qwen, **fields)["param"] == param


def test_compiled_tool_grammars_are_cached_on_the_engine(qwen_engine):
    fmt = ToolFormat(HERMES, native=True, renders_tool_history=True)
    required = qwen_engine.tool_constraint(ToolSet.read(TOOLS, "required"), fmt)
    auto = qwen_engine.tool_constraint(ToolSet.read(TOOLS, "auto"), fmt)
    again = qwen_engine.tool_constraint(ToolSet.read(json.loads(json.dumps(TOOLS)), "required"), fmt)
    single = qwen_engine.tool_constraint(ToolSet.read(TOOLS, "required", False), fmt)
    assert (required.trigger, auto.trigger) == (None, "<tool_call>")
    assert required.constraint is auto.constraint is again.constraint      # one grammar: same tools, same calls
    assert single.constraint is not required.constraint                  # at most one call: another grammar


# ---- reasoning ----

def completion_text(client, prompt_ids: list[int], max_tokens: int) -> str:
    """The raw generated text for the same prompt, through the completions endpoint."""
    result = client.simulate_post("/v1/completions", json={"model": "default", "prompt": prompt_ids,
                                                           "max_tokens": max_tokens, "temperature": 0})
    return result.json["choices"][0]["text"]


def chat_prompt(client, messages, **fields) -> list[int]:
    result = client.simulate_post("/tokenize", json={"messages": messages, **fields})
    return result.json["tokens"]


def test_thinking_opened_by_the_prompt_is_reasoning_content(r1):
    """R1's generation prompt opens <think>: a cut-off output is all reasoning, every token a reasoning token."""
    body = post(r1, max_tokens=12).json
    message, usage = body["choices"][0]["message"], body["usage"]
    raw = completion_text(r1, chat_prompt(r1, ASK), 12)
    assert message["reasoning_content"] == raw.strip("\n") and message["content"] == ""
    assert usage["completion_tokens_details"]["reasoning_tokens"] == usage["completion_tokens"]
    streamed = reassemble(stream_chunks(r1, max_tokens=12))
    assert (streamed["reasoning"], streamed["content"]) == (message["reasoning_content"], "")
    assert streamed["usage"]["completion_tokens_details"] == usage["completion_tokens_details"]
    assert streamed["usage"]["completion_tokens"] == usage["completion_tokens"]


def test_disabled_thinking_reaches_the_template(qwen):
    body = post(qwen, max_tokens=6, enable_thinking=False).json
    message = body["choices"][0]["message"]
    assert message["reasoning_content"] is None and isinstance(message["content"], str)
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
    thinking = post(qwen, max_tokens=6).json["usage"]["prompt_tokens"]
    assert body["usage"]["prompt_tokens"] > thinking                   # the empty <think></think> block


def test_a_model_without_thinking_accepts_the_fields_and_answers_as_usual(plain):
    usual = post(plain, max_tokens=6).json
    for fields in ({"enable_thinking": True}, {"reasoning_effort": "high"}, {"enable_thinking": False}):
        body = post(plain, max_tokens=6, **fields).json
        assert body["choices"][0]["message"] == usual["choices"][0]["message"]
        assert "reasoning_content" not in body["choices"][0]["message"]
        assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0      # (always there)
        assert body["usage"]["completion_tokens"] == usual["usage"]["completion_tokens"]


def events_of(pieces: list[str]) -> list[TokenEvent]:
    return [TokenEvent(index=0, token_id=i, text=text, finish_reason="stop" if i == len(pieces) - 1 else None)
            for i, text in enumerate(pieces)]


def test_choice_output_splits_reasoning_content_and_calls_token_by_token():
    reading = OutputReading(thinks=True, starts_inside=False, tool_format=ToolFormat(HERMES, True, True),
                            tool_choice=ToolChoice("auto", ("get_time",)), max_calls=None)
    pieces = ["<think>", "\nWhich", " zone?", "\n</think>", "\n\n", "Let me", " check.", "\n<tool_", "call>",
              '{"name": "get_time", ', '"arguments": {"timezone": ', '"UTC"}}', "</tool_call>"]
    output = ChoiceOutput(reading)
    parts = [part for event in events_of(pieces) for part in output.add(event, counted=True)]
    message = output.message()
    assert message["reasoning_content"] == "Which zone?" and message["content"] == "Let me check."
    [call] = message["tool_calls"]
    assert call["function"] == {"name": "get_time", "arguments": '{"timezone": "UTC"}'}
    assert output.reasoning_tokens == 4                                # <think> through </think>
    assert output.has_calls and reading.finish_reason(True, "stop") == "tool_calls"
    assert "".join(getattr(p, "text", "") for p in parts if type(p).__name__ == "ReasoningDelta") == "Which zone?"


def test_choice_output_passes_plain_text_through_untouched():
    reading = OutputReading(thinks=False, starts_inside=False, tool_format=None, tool_choice=None, max_calls=None)
    output = ChoiceOutput(reading)
    pieces = ["<think>", "a", "<tool_call>", "\n"]
    assert [p.text for event in events_of(pieces) for p in output.add(event, counted=True)] == pieces
    assert output.message() == {"role": "assistant", "content": "".join(pieces), "refusal": None}
    assert reading.finish_reason(False, "length") == "length"


# ---- the default model through the openai SDK, on a real server ----

@pytest.fixture(scope="module")
def server(smollm2_dir):
    port = free_port()
    with running_server(refengine_serve("--model", str(smollm2_dir), "--port", str(port), "--max-batch", "4"),
                        port):
        yield port


@pytest.fixture(scope="module")
def sdk(server):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server}/v1", api_key="unused", max_retries=0, timeout=120)


def ask(sdk, messages=ASK, **fields):
    return sdk.chat.completions.create(**{"model": "default", "messages": messages, "temperature": 0,
                                          "max_tokens": 60, "tools": TOOLS, **fields})


def as_dicts(calls) -> list[dict]:
    return [call.model_dump(exclude_none=True) for call in calls or []]


def test_sdk_required(sdk):
    choice = ask(sdk, tool_choice="required", parallel_tool_calls=False).choices[0]
    [call] = as_dicts(choice.message.tool_calls)
    assert assert_valid_call(call) == {"city": "Oslo", "days": 3}
    assert choice.message.content is None and choice.finish_reason == "tool_calls"


def test_sdk_required_with_parallel_calls(sdk):
    """Any number of calls; every complete one validates (a cut-off last one only when the length ran out)."""
    choice = ask(sdk, tool_choice="required").choices[0]
    calls = as_dicts(choice.message.tool_calls)
    complete = complete_calls({"message": {"tool_calls": calls}, "finish_reason": choice.finish_reason})
    assert complete
    for call in complete:
        assert_valid_call(call)


def test_sdk_named(sdk):
    choice = ask(sdk, tool_choice={"type": "function", "function": {"name": "get_time"}}).choices[0]
    [call] = as_dicts(choice.message.tool_calls)
    assert_valid_call(call, names=("get_time",))
    assert choice.finish_reason == "stop"


def test_sdk_auto(sdk):
    choice = ask(sdk, tool_choice="auto").choices[0]
    if choice.message.tool_calls:
        for call in as_dicts(choice.message.tool_calls):
            assert_valid_call(call)
        assert choice.finish_reason == "tool_calls"
    else:
        assert choice.message.content and choice.finish_reason in ("stop", "length")


def test_sdk_none(sdk):
    reply = ask(sdk, tool_choice="none", max_tokens=12)
    without = sdk.chat.completions.create(model="default", messages=ASK, temperature=0, max_tokens=12)
    assert reply.choices[0].message.tool_calls is None
    assert reply.choices[0].message.content == without.choices[0].message.content
    assert reply.usage.prompt_tokens == without.usage.prompt_tokens


def test_sdk_stream_helper_reassembles_the_calls(sdk):
    expected = ask(sdk, tool_choice="required", parallel_tool_calls=False).choices[0].message
    with sdk.chat.completions.stream(model="default", messages=ASK, temperature=0, max_tokens=60, tools=TOOLS,
                                     tool_choice="required", parallel_tool_calls=False) as stream:
        deltas = [event.chunk.choices[0].delta for event in stream
                  if event.type == "chunk" and event.chunk.choices]
        final = stream.get_final_completion()
    assert all(piece.index is not None for d in deltas for piece in d.tool_calls or [])
    message = final.choices[0].message
    assert [(c.function.name, c.function.arguments) for c in message.tool_calls] == \
        [(c.function.name, c.function.arguments) for c in expected.tool_calls]
    assert final.choices[0].finish_reason == "tool_calls"


def test_sdk_tool_result_round_trip(sdk):
    choice = ask(sdk, messages=ROUND_TRIP, max_tokens=40).choices[0]
    assert choice.message.content and choice.message.tool_calls is None
    assert choice.finish_reason in ("stop", "length")


def test_sdk_thinking_fields_on_a_model_without_thinking(sdk):
    reply = sdk.chat.completions.create(model="default", messages=ASK, temperature=0, max_tokens=8,
                                        reasoning_effort="low")
    usual = sdk.chat.completions.create(model="default", messages=ASK, temperature=0, max_tokens=8)
    assert reply.choices[0].message.content == usual.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model="default", messages=ASK, max_tokens=8, reasoning_effort="high",
                                    extra_body={"enable_thinking": False})
    assert caught.value.body["param"] == "reasoning_effort"


# ---- nothing a client sends about tools or thinking is a 500 ----

NAMES = st.sampled_from(["get_forecast", "get_time", "nope", "", 5])
TOOL_CHOICES = st.one_of(
    st.sampled_from([None, "none", "auto", "required", "sometimes", 3]),
    st.fixed_dictionaries({"type": st.sampled_from(["function", "custom", "x"]),
                           "function": st.fixed_dictionaries({"name": NAMES})}),
    st.fixed_dictionaries({"type": st.just("allowed_tools"), "allowed_tools": st.fixed_dictionaries({
        "mode": st.sampled_from(["auto", "required", "none"]),
        "tools": st.lists(st.one_of(st.integers(), st.fixed_dictionaries(
            {"type": st.just("function"), "function": st.fixed_dictionaries({"name": NAMES})})), max_size=2)})}))
PARAMETER_SCHEMAS = st.sampled_from([
    None, {}, {"type": "object"}, FORECAST_PARAMETERS, {"type": "array", "uniqueItems": True}, {"type": "string"},
    {"$ref": "#/$defs/missing"}, {"type": "object", "properties": {"a": {"$ref": "#"}}}, {"enum": []}])
FUZZ_TOOLS = st.lists(st.fixed_dictionaries({
    "type": st.sampled_from(["function", "custom"]),
    "function": st.fixed_dictionaries({"name": st.sampled_from(["get_forecast", "get_time"])}, optional={
        "parameters": PARAMETER_SCHEMAS, "strict": st.sampled_from([True, False, None])})}), max_size=2)
FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(tools=st.none() | FUZZ_TOOLS, tool_choice=TOOL_CHOICES, parallel=st.sampled_from([None, True, False, "no"]),
       thinking=st.sampled_from([None, True, False, "yes"]), effort=st.sampled_from([None, "none", "low", "max", "x"]),
       stream=st.booleans(), history=st.booleans())
def test_nothing_about_tools_or_thinking_is_a_500(qwen, tools, tool_choice, parallel, thinking, effort, stream,
                                                  history):
    body = {"model": "default", "messages": ROUND_TRIP if history else ASK, "max_tokens": 3, "stream": stream}
    for key, value in (("tools", tools), ("tool_choice", tool_choice), ("parallel_tool_calls", parallel),
                       ("enable_thinking", thinking), ("reasoning_effort", effort)):
        if value is not None:
            body[key] = value
    result = qwen.simulate_post("/v1/chat/completions", json=body)
    assert result.status_code in (200, 400), result.text
    if result.status_code == 400:
        assert result.json["error"]["param"]
    elif stream:
        assert result.text.rstrip().endswith("data: [DONE]") and '"error"' not in result.text
    else:
        CHAT_RESPONSE.validate(result.json)
