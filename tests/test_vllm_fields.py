"""vLLM's extra request fields (web/vllm_fields.py) on tiny models through falcon.testing: each with an effect
one can see, or a 400 naming it; unknown fields named in the x-refengine-ignored-fields header."""
from __future__ import annotations

import json
import re
import threading
import time

import jsonschema
import pytest
from falcon import testing

from refengine.agent.runtime import AgentRuntime, AgentSettings
from refengine.generate import generate
from refengine.model import load_model
from refengine.request import GenerationRequest, SamplingParams, StoppingParams
from tool_templates import QWEN_TEMPLATE, write_template_model
from web.app import create_app
from web.engine import start_engine

USER = [{"role": "user", "content": "The quick brown fox"}]
PROMPT = [5, 60, 61, 62, 63, 64, 65]                     # token ids: the prompt is exactly these
IM_START = 1                                             # the tiny tokenizer's special tokens (tiny_model.py)


@pytest.fixture(scope="module")
def engine(tiny_model):
    engine = start_engine(tiny_model, max_batch=8, max_queue=16)
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def client(engine):
    return testing.TestClient(create_app(engine))


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """A tiny model with Qwen's template (it reads enable_thinking)."""
    engine = start_engine(load_model(write_template_model(tmp_path_factory.mktemp("qwen"), QWEN_TEMPLATE)))
    yield engine
    engine.stop()


def chat(client, messages=USER, **fields):
    return client.simulate_post("/v1/chat/completions", json={"model": "default", "messages": messages, **fields})


def complete(client, prompt=PROMPT, **fields):
    return client.simulate_post("/v1/completions", json={"model": "default", "prompt": prompt, **fields})


def ok(result) -> dict:
    assert result.status_code == 200, result.text
    return result.json


def refused(result, param: str) -> dict:
    assert result.status_code == 400, result.text
    assert result.json["error"]["param"] == param, result.json
    return result.json["error"]


def greedy_ids(model, prompt: list[int], tokens: int) -> list[int]:
    request = GenerationRequest(tuple(prompt), sampling=SamplingParams(temperature=0),
                                stopping=StoppingParams(max_tokens=tokens, ignore_eos=True))
    return [event.token_id for event in generate(model, request) if event.token_id is not None]


# ---- guided decoding ----

CHOICES = ["red", "green", "blue"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_guided_choice_is_one_of_the_choices(client, seed):
    text = ok(chat(client, guided_choice=CHOICES, temperature=1.5, seed=seed, max_tokens=10))
    assert text["choices"][0]["message"]["content"] in CHOICES
    legacy = ok(complete(client, guided_choice=CHOICES, temperature=1.5, seed=seed, max_tokens=10))
    assert legacy["choices"][0]["text"] in CHOICES


def test_guided_regex_json_and_grammar(client):
    assert re.fullmatch(r"[0-9]{3}-[a-z]{2}", ok(chat(client, guided_regex=r"[0-9]{3}-[a-z]{2}", temperature=1,
                                                      seed=4, max_tokens=12))["choices"][0]["message"]["content"])
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["n"], "additionalProperties": False}
    answer = ok(chat(client, guided_json=schema, temperature=1, seed=5, max_tokens=30))
    jsonschema.validate(json.loads(answer["choices"][0]["message"]["content"]), schema)
    lark = 'start: "yes" | "no"'
    assert ok(complete(client, guided_grammar=lark, max_tokens=5, temperature=1, seed=6))["choices"][0]["text"] in (
        "yes", "no")


def test_guided_fields_are_one_at_a_time_and_alone(client):
    refused(chat(client, guided_regex="a+", guided_choice=["a"]), "guided_choice")
    refused(chat(client, guided_regex="a+", response_format={"type": "json_object"}), "guided_regex")
    refused(chat(client, guided_regex="a+", grammar={"type": "regex", "value": "b"}), "guided_regex")
    refused(chat(client, guided_regex="(?<=a)b"), "guided_regex")          # cannot be compiled: named
    refused(chat(client, guided_choice=[]), "guided_choice")


# ---- stopping and special tokens ----

def test_stop_token_ids_end_the_output_at_that_token(client, tiny_model):
    ids = greedy_ids(tiny_model, PROMPT, 8)
    at = next(i for i in range(2, 8) if ids[i] not in ids[:i])           # a token that first comes here
    plain = ok(complete(client, max_tokens=8, temperature=0, ignore_eos=True))["choices"][0]
    stopped = ok(complete(client, max_tokens=8, temperature=0, ignore_eos=True, stop_token_ids=[ids[at]]))
    assert stopped["choices"][0]["finish_reason"] == "stop" and stopped["usage"]["completion_tokens"] == at + 1
    assert stopped["choices"][0]["text"] == tiny_model.tokenizer.decode(ids[:at + 1])     # its text is kept
    assert plain["text"].startswith(stopped["choices"][0]["text"])
    refused(complete(client, stop_token_ids=[10 ** 6]), "stop_token_ids[0]")


def test_min_tokens_holds_back_stop_tokens_too(client, tiny_model):
    ids = greedy_ids(tiny_model, PROMPT, 3)
    early = ok(complete(client, max_tokens=6, temperature=0, ignore_eos=True, stop_token_ids=[ids[0]],
                        min_tokens=4))
    assert early["usage"]["completion_tokens"] >= 4


def test_include_stop_str_in_output(client):
    text = ok(complete(client, max_tokens=12, temperature=0, ignore_eos=True))["choices"][0]["text"]
    stop = text[3:5]
    cut = ok(complete(client, max_tokens=12, temperature=0, ignore_eos=True, stop=[stop]))["choices"][0]["text"]
    kept = ok(complete(client, max_tokens=12, temperature=0, ignore_eos=True, stop=[stop],
                       include_stop_str_in_output=True))["choices"][0]["text"]
    assert kept == cut + stop and text.startswith(kept)


def test_skip_special_tokens_false_shows_their_names(client):
    forced = {"logit_bias": {str(IM_START): 100}, "max_tokens": 2, "temperature": 0}
    assert ok(complete(client, **forced))["choices"][0]["text"] == ""
    shown = ok(complete(client, skip_special_tokens=False, **forced))["choices"][0]["text"]
    assert shown == "<|im_start|><|im_start|>"
    refused(complete(client, skip_special_tokens=False, spaces_between_special_tokens=True, **forced),
            "spaces_between_special_tokens")
    assert ok(complete(client, spaces_between_special_tokens=True, **forced))["choices"][0]["text"] == ""


# ---- the chat template ----

def test_chat_template_kwargs_reach_the_template(qwen):
    client = testing.TestClient(create_app(qwen))
    fields = dict(max_tokens=1, temperature=0)
    plain = ok(chat(client, **fields))["usage"]["prompt_tokens"]
    off = ok(chat(client, chat_template_kwargs={"enable_thinking": False}, **fields))["usage"]["prompt_tokens"]
    assert off == ok(chat(client, enable_thinking=False, **fields))["usage"]["prompt_tokens"] > plain
    refused(chat(client, chat_template_kwargs={"messages": []}), "chat_template_kwargs.messages")


def test_add_generation_prompt_false_leaves_the_assistant_turn_closed(client):
    counted = client.simulate_post("/tokenize", json={"messages": USER, "add_generation_prompt": False}).json
    usage = ok(chat(client, add_generation_prompt=False, max_tokens=1))["usage"]
    assert usage["prompt_tokens"] == counted["count"] < ok(chat(client, max_tokens=1))["usage"]["prompt_tokens"]


def test_continue_final_message_continues_the_assistant_text(client, tiny_model):
    messages = USER + [{"role": "assistant", "content": "jumps over"}]
    rendered = tiny_model.template.render(messages, add_generation_prompt=False)
    prefix = rendered[:rendered.rfind("jumps over") + len("jumps over")]    # the turn left open
    ids = tiny_model.tokenizer.encode(prefix)
    continued = ok(chat(client, messages, continue_final_message=True, max_tokens=6, temperature=0, ignore_eos=True))
    assert continued["usage"]["prompt_tokens"] == len(ids)
    raw = ok(complete(client, ids, max_tokens=6, temperature=0, ignore_eos=True))["choices"][0]["text"]
    assert continued["choices"][0]["message"]["content"] == raw
    echoed = ok(chat(client, messages, continue_final_message=True, echo=True, max_tokens=6, temperature=0,
                     ignore_eos=True))
    assert echoed["choices"][0]["message"]["content"] == "jumps over" + raw
    stream = chat(client, messages, continue_final_message=True, echo=True, max_tokens=6, temperature=0,
                  ignore_eos=True, stream=True).text
    pieces = [json.loads(line[6:])["choices"][0]["delta"].get("content") or "" for line in stream.split("\n")
              if line.startswith("data: {")]
    assert "".join(pieces) == "jumps over" + raw and pieces[1] == "jumps over"
    refused(chat(client, USER, continue_final_message=True), "continue_final_message")     # no assistant text
    refused(chat(client, messages, continue_final_message=True, add_generation_prompt=True), "continue_final_message")


def test_echo_of_a_user_turn_adds_nothing(client):
    plain = ok(chat(client, max_tokens=4, temperature=0))["choices"][0]["message"]["content"]
    assert ok(chat(client, echo=True, max_tokens=4, temperature=0))["choices"][0]["message"]["content"] == plain


def test_prefill_fields_are_refused_beside_server_side_tools(engine, tmp_path):
    runtime = AgentRuntime(AgentSettings(state_dir=tmp_path))
    try:
        client = testing.TestClient(create_app(engine, agent=runtime))
        refused(chat(client, session_id="s1", echo=True), "echo")
    finally:
        runtime.close()


# ---- priority and unknown fields ----

def test_priority_orders_the_queue(tiny_model):
    engine = start_engine(tiny_model, max_batch=1, max_queue=4)
    client = testing.TestClient(create_app(engine))
    finished = []
    try:
        occupying = engine.scheduler.submit(GenerationRequest((1,), stopping=StoppingParams(max_tokens=250,
                                                                                         ignore_eos=True)))

        def ask(name: str, priority: int) -> None:
            ok(complete(client, max_tokens=2, priority=priority))
            finished.append(name)
        threads = []
        for name, priority, waiting in (("late", 0, 1), ("urgent", -5, 2)):
            threads.append(threading.Thread(target=ask, args=(name, priority)))
            threads[-1].start()
            deadline = time.monotonic() + 60                       # a hang guard
            while engine.scheduler.stats()["queue_depth"] < waiting and time.monotonic() < deadline:
                time.sleep(0.01)
        occupying.cancel()
        for thread in threads:
            thread.join(timeout=120)
        assert finished == ["urgent", "late"]                      # one at a time: the lower value first
    finally:
        engine.stop()


def test_unknown_fields_are_named_in_a_header(client, engine):
    answered = chat(client, max_tokens=1, guided_decoding_backend="xgrammar", frobnicate=1)
    assert answered.status_code == 200
    assert answered.headers["x-refengine-ignored-fields"] == "guided_decoding_backend, frobnicate"
    assert "x-refengine-ignored-fields" not in ok_headers(chat(client, max_tokens=1))
    legacy = complete(client, max_tokens=1, frobnicate=1)
    assert legacy.headers["x-refengine-ignored-fields"] == "frobnicate"
    streamed = chat(client, max_tokens=1, stream=True, frobnicate=1)
    assert streamed.headers["x-refengine-ignored-fields"] == "frobnicate"
    responses = client.simulate_post("/v1/responses", json={"input": "x", "max_output_tokens": 1, "guided_regex": "a"})
    assert responses.headers["x-refengine-ignored-fields"] == "guided_regex"
    strict = testing.TestClient(create_app(engine, strict_params=True))
    assert chat(strict, frobnicate=1).json["error"]["param"] == "frobnicate"


def ok_headers(result) -> dict:
    assert result.status_code == 200
    return {name.lower(): value for name, value in result.headers.items()}


def test_ignored_names_cannot_break_the_header(client):
    answered = chat(client, max_tokens=1, **{"a\r\nSet-Cookie: x": 1, "b,c": 2, "ünï": 3})
    assert answered.headers["x-refengine-ignored-fields"] == "a%0D%0ASet-Cookie%3A%20x, b%2Cc, %C3%BCn%C3%AF"
    many = chat(client, max_tokens=1, **{f"f{i}": i for i in range(40)}).headers["x-refengine-ignored-fields"]
    assert many.endswith("f31, ... (8 more)")
