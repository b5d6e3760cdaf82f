"""What clients expect of the HTTP layer (web/http_layer.py, chat.py, choices.py, legacy_functions.py), on tiny
models through falcon.testing: x-request-id, CORS, service_tier, usage details, vLLM's continuous usage
stats, and the legacy functions / function_call fields."""
from __future__ import annotations

import json

import pytest
from falcon import testing

from refengine.model import load_model
from tool_templates import QWEN_TEMPLATE, write_template_model
from web.app import create_app
from web.engine import start_engine

USER = [{"role": "user", "content": "The quick brown fox"}]
ORIGIN = "https://app.example"
WEATHER = {"name": "get_weather", "description": "Weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}},
                          "required": ["city"], "additionalProperties": False}}


@pytest.fixture(scope="module")
def engine(tiny_model):
    engine = start_engine(tiny_model, max_batch=8, max_queue=16)
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def client(engine):
    return testing.TestClient(create_app(engine))


@pytest.fixture(scope="module")
def qwen_client(tmp_path_factory):
    engine = start_engine(load_model(write_template_model(tmp_path_factory.mktemp("qwen"), QWEN_TEMPLATE)))
    yield testing.TestClient(create_app(engine))
    engine.stop()


def chat(client, messages=USER, headers=None, **fields):
    return client.simulate_post("/v1/chat/completions", headers=headers,
                                json={"model": "default", "messages": messages, **fields})


def chunks(result) -> list[dict]:
    return [json.loads(line[6:]) for line in result.text.split("\n") if line.startswith("data: {")]


# ---- x-request-id ----

def test_every_answer_has_a_request_id_and_keeps_the_clients(client):
    made = chat(client, max_tokens=1).headers["x-request-id"]
    assert made.startswith("req_") and made != chat(client, max_tokens=1).headers["x-request-id"]
    assert chat(client, headers={"X-Request-Id": "trace-42"}, max_tokens=1).headers["x-request-id"] == "trace-42"
    assert chat(client, headers={"X-Request-Id": "x" * 500}, max_tokens=1).headers["x-request-id"].startswith("req_")
    refused = chat(client, headers={"X-Request-Id": "bad-1"}, temperature=9)
    assert refused.status_code == 400 and refused.headers["x-request-id"] == "bad-1"
    assert client.simulate_get("/nowhere").headers["x-request-id"].startswith("req_")
    streamed = chat(client, headers={"X-Request-Id": "s-1"}, max_tokens=1, stream=True)
    assert streamed.headers["x-request-id"] == "s-1"


# ---- CORS ----

def test_cors_preflight_and_headers_for_allowed_origins(engine):
    client = testing.TestClient(create_app(engine, api_key="sk-k", allowed_origins=(ORIGIN,)))
    preflight = client.simulate_options("/v1/chat/completions", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 204                              # no API key asked for a preflight
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-headers"] == "authorization, content-type"
    answered = chat(client, headers={"Origin": ORIGIN, "Authorization": "Bearer sk-k"}, max_tokens=1)
    assert answered.status_code == 200 and answered.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in answered.headers["access-control-expose-headers"]
    assert "Origin" in answered.headers["vary"]
    refused = chat(client, headers={"Origin": ORIGIN}, max_tokens=1)           # no key: the error is readable
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ORIGIN

    stranger = {"Origin": "https://evil.example"}
    assert "access-control-allow-origin" not in chat(client, headers={**stranger, "Authorization": "Bearer sk-k"},
                                                     max_tokens=1).headers
    blocked = client.simulate_options("/v1/chat/completions",
                                      headers={**stranger, "Access-Control-Request-Method": "POST"})
    assert blocked.status_code == 401 and "access-control-allow-origin" not in blocked.headers


def test_cors_any_origin_and_none_by_default(engine, client):
    anyone = testing.TestClient(create_app(engine, allowed_origins=("*",)))
    assert chat(anyone, headers={"Origin": "http://x.test"}, max_tokens=1).headers[
        "access-control-allow-origin"] == "*"
    assert "access-control-allow-origin" not in chat(client, headers={"Origin": ORIGIN}, max_tokens=1).headers


# ---- service_tier, usage ----

def test_service_tier_is_the_one_tier_served(client):
    for asked in (None, "auto", "flex", "priority"):
        answered = chat(client, max_tokens=1, service_tier=asked).json
        assert answered["service_tier"] == "default"
    assert {c["service_tier"] for c in chunks(chat(client, max_tokens=2, stream=True))} == {"default"}


def test_usage_details_are_always_there(client):
    details = {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0,
               "rejected_prediction_tokens": 0}
    usage = chat(client, max_tokens=2).json["usage"]
    assert usage["completion_tokens_details"] == details and usage["prompt_tokens_details"]["audio_tokens"] == 0
    legacy = client.simulate_post("/v1/completions", json={"model": "default", "prompt": "a", "max_tokens": 2})
    assert legacy.json["usage"]["completion_tokens_details"] == details


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"messages": USER}), ("/v1/completions", {"prompt": "The quick brown fox"})])
def test_continuous_usage_stats_count_on_every_chunk(client, path, body):
    result = client.simulate_post(path, json={
        "model": "default", **body, "max_tokens": 5, "ignore_eos": True, "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True}})
    usages = [c["usage"] for c in chunks(result)]
    assert all(u is not None for u in usages)
    counts = [u["completion_tokens"] for u in usages]
    assert counts == sorted(counts) and counts[-1] == 5 and counts[0] < 5
    assert len({u["prompt_tokens"] for u in usages}) == 1
    lone = client.simulate_post(path, json={"model": "default", **body, "stream": True,
                                            "stream_options": {"continuous_usage_stats": True}})
    assert lone.status_code == 400 and lone.json["error"]["param"] == "stream_options.continuous_usage_stats"


# ---- legacy functions ----

def test_functions_are_tools_answered_as_a_function_call(qwen_client):
    fields = dict(functions=[WEATHER], function_call={"name": "get_weather"}, max_tokens=200, temperature=0,
                  enable_thinking=False)
    answered = chat(qwen_client, [{"role": "user", "content": "Weather in Oslo?"}], **fields).json
    message = answered["choices"][0]["message"]
    assert "tool_calls" not in message and message["function_call"]["name"] == "get_weather"
    assert json.loads(message["function_call"]["arguments"]).keys() == {"city"}
    streamed = chunks(chat(qwen_client, [{"role": "user", "content": "Weather in Oslo?"}], stream=True, **fields))
    pieces = [c["choices"][0]["delta"].get("function_call") for c in streamed if c["choices"]]
    pieces = [p for p in pieces if p]
    assert pieces[0]["name"] == "get_weather"
    assert "".join(p["arguments"] for p in pieces) == message["function_call"]["arguments"]
    assert not any("tool_calls" in c["choices"][0]["delta"] for c in streamed if c["choices"])


def test_a_legacy_history_renders_as_its_tool_form(qwen_client):
    legacy = [{"role": "user", "content": "Weather in Oslo?"},
              {"role": "assistant", "content": None, "function_call": {"name": "get_weather",
                                                                        "arguments": '{"city": "Oslo"}'}},
              {"role": "function", "name": "get_weather", "content": '{"celsius": 3}'}]
    tools = [legacy[0], {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_legacy_1", "type": "function", "function": legacy[1]["function_call"]}]},
        {"role": "tool", "tool_call_id": "call_legacy_1", "content": '{"celsius": 3}'}]
    fields = dict(max_tokens=1, enable_thinking=False)
    as_legacy = chat(qwen_client, legacy, functions=[WEATHER], **fields).json["usage"]["prompt_tokens"]
    as_tools = chat(qwen_client, tools, tools=[{"type": "function", "function": WEATHER}],
                    parallel_tool_calls=False, **fields).json["usage"]["prompt_tokens"]
    assert as_legacy == as_tools


@pytest.mark.parametrize("fields, param", [
    ({"functions": [WEATHER], "tools": [{"type": "function", "function": WEATHER}]}, "functions"),
    ({"function_call": "auto"}, "function_call"),
    ({"messages": [{"role": "function", "name": "f", "content": "1"}]}, "messages[0].name"),
])
def test_legacy_fields_that_cannot_work_are_refused(client, fields, param):
    body = {"model": "default", "messages": USER, **fields}
    result = client.simulate_post("/v1/chat/completions", json=body)
    assert result.status_code == 400 and result.json["error"]["param"] == param


# ---- text-only ----

@pytest.mark.parametrize("part", [
    {"type": "image_url", "image_url": {"url": "https://x.test/cat.png"}},
    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    {"type": "file", "file": {"file_id": "file-1"}},
])
def test_non_text_parts_are_refused_naming_the_part(client, part):
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, part]}]
    result = chat(client, messages)
    assert result.status_code == 400
    error = result.json["error"]
    assert error["param"] == "messages[0].content[1]" and error["code"] == "unsupported_parameter"
    assert "text-only models" in error["message"] and part["type"] in error["message"]
