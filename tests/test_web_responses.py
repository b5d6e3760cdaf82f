"""The Responses API (web/responses.py) on tiny models through falcon.testing: every body against OpenAI's
Response schema and every event against its event schema, in the spec's order; input items rendered as chat
renders messages; reasoning and function_call items; the store; each refusal naming its Responses field;
a failure after the stream started."""
from __future__ import annotations

import json
import logging
import re

import pytest
from falcon import testing

from conformance.checks.responses import event_schemas, item_order_problems, output_text
from conformance.schemas import validate
from refengine.agent.runtime import AgentRuntime, AgentSettings
from refengine.model import load_model
from test_faults import FaultyModel
from tool_templates import QWEN_TEMPLATE, R1_TEMPLATE, write_template_model
from web.app import create_app
from web.engine import start_engine

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                          "required": ["city"], "additionalProperties": False}}


@pytest.fixture(scope="module")
def engine(tiny_model):
    engine = start_engine(tiny_model, max_batch=4, max_queue=8)
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    runtime = AgentRuntime(AgentSettings(state_dir=tmp_path_factory.mktemp("responses-state")))
    yield runtime
    runtime.close()


@pytest.fixture(scope="module")
def client(engine, agent):
    return testing.TestClient(create_app(engine, agent=agent))


@pytest.fixture(scope="module")
def qwen_client(tmp_path_factory, agent):
    """A tiny model with Qwen's template: hermes tool calls, and a template that thinks."""
    engine = start_engine(load_model(write_template_model(tmp_path_factory.mktemp("qwen"), QWEN_TEMPLATE)))
    yield testing.TestClient(create_app(engine, agent=agent))
    engine.stop()


def post(client, **fields):
    return client.simulate_post("/v1/responses", json={"model": "default", **fields})


def response_of(result) -> dict:
    assert result.status_code == 200, result.text
    errors = [e for e in validate("Response", result.json) if not e.soft]
    assert errors == [], errors
    return result.json


def events_of(result, finished: bool = True) -> list[dict]:
    """The stream's events: `event: <type>` then `data: <json>` each, every one valid against its schema, in
    the spec's order (`finished`: every item that was added is done)."""
    assert result.status_code == 200 and result.headers["content-type"].startswith("text/event-stream")
    assert result.text.endswith("\n\n") and "[DONE]" not in result.text   # OpenAI's Responses streams have none
    events = []
    for block in result.text[:-2].split("\n\n"):
        name, data = block.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        errors = [e for e in validate(f"ResponseStreamEvent#{event_schemas()[event['type']]}", event) if not e.soft]
        assert errors == [], (event, errors)
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    problems = item_order_problems(events)
    assert (problems if finished else [p for p in problems if not p.endswith("never done")]) == []
    return events


def error_of(result, status: int) -> dict:
    assert result.status_code == status, result.text
    assert validate("ErrorResponse", result.json) == []
    return result.json["error"]


def test_a_text_response_and_its_stream_agree(client):
    fields = dict(input="The quick brown fox", max_output_tokens=6, temperature=0, instructions="Be brief.")
    plain = response_of(post(client, **fields))
    assert plain["object"] == "response" and plain["id"].startswith("resp_")
    assert plain["status"] == "incomplete" and plain["incomplete_details"] == {"reason": "max_output_tokens"}
    assert plain["instructions"] == "Be brief." and plain["max_output_tokens"] == 6 and plain["store"] is True
    usage = plain["usage"]
    assert usage["output_tokens"] == 6 and usage["total_tokens"] == usage["input_tokens"] + 6
    [message] = plain["output"]
    assert message["type"] == "message" and message["role"] == "assistant" and message["status"] == "incomplete"

    events = events_of(post(client, stream=True, **fields))
    types = [e["type"] for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.incomplete"]
    assert events[0]["response"]["status"] == "in_progress" and "usage" not in events[0]["response"]
    final = events[-1]["response"]
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == output_text(final) == output_text(plain)
    assert final["usage"]["input_tokens"] == usage["input_tokens"]          # (cached_tokens: the prefix cache)
    assert final["usage"]["output_tokens"] == 6
    assert {e["response"]["id"] for e in events if "response" in e} == {final["id"]}


def test_stored_responses_continue_and_are_deleted(client):
    first = response_of(post(client, input="Hello", max_output_tokens=4, temperature=0))
    assert client.simulate_get(f"/v1/responses/{first['id']}").json == first
    follow = response_of(post(client, input="And then?", previous_response_id=first["id"], max_output_tokens=4,
                              temperature=0))
    assert follow["previous_response_id"] == first["id"]
    # the continued prompt is the chat of both turns, the first answer included, exactly as chat renders it
    said = output_text(first)
    chat = client.simulate_post("/tokenize", json={"messages": [
        {"role": "user", "content": "Hello"}, {"role": "assistant", "content": said},
        {"role": "user", "content": "And then?"}]}).json
    assert follow["usage"]["input_tokens"] == chat["count"]

    assert client.simulate_delete(f"/v1/responses/{first['id']}").json == {
        "id": first["id"], "object": "response", "deleted": True}
    assert error_of(client.simulate_get(f"/v1/responses/{first['id']}"), 404)["param"] == "response_id"
    assert error_of(client.simulate_delete(f"/v1/responses/{first['id']}"), 404)["code"] == "not_found"
    gone = error_of(post(client, input="x", previous_response_id=first["id"]), 400)
    assert gone["param"] == "previous_response_id" and gone["code"] == "previous_response_not_found"
    unstored = response_of(post(client, input="x", max_output_tokens=2, store=False))
    assert unstored["store"] is False
    assert client.simulate_get(f"/v1/responses/{unstored['id']}").status_code == 404


def test_input_items_render_as_the_chat_messages_they_stand_for(client):
    items = [{"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Be kind."}]},
             {"role": "user", "content": "Weather in Oslo?"},
             {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
             {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
             {"type": "function_call_output", "call_id": "call_1", "output": '{"celsius": 3}'},
             {"type": "reasoning", "id": "rs_1", "summary": []}]
    messages = [{"role": "developer", "content": [{"type": "text", "text": "Be kind."}]},
                {"role": "user", "content": "Weather in Oslo?"},
                {"role": "assistant", "content": [{"type": "text", "text": "Checking."}], "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 3}'}]
    answered = response_of(post(client, input=items, max_output_tokens=1))
    assert answered["usage"]["input_tokens"] == client.simulate_post("/tokenize", json={"messages": messages}).json[
        "count"]


def test_a_forced_function_call_and_its_stream(qwen_client):
    fields = dict(input="Weather in Paris?", tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"},
                  max_output_tokens=200, temperature=0, enable_thinking=False)
    plain = response_of(post(qwen_client, **fields))
    calls = [item for item in plain["output"] if item["type"] == "function_call"]
    assert len(calls) == 1 and calls[0]["name"] == "get_weather" and calls[0]["call_id"].startswith("call_")
    assert json.loads(calls[0]["arguments"]).keys() == {"city"}
    assert plain["tools"] == [{"strict": True, **WEATHER}] and plain["status"] == "completed"

    events = events_of(post(qwen_client, stream=True, **fields))
    added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
    assert [item["type"] for item in added] == ["function_call"] and added[0]["arguments"] == ""
    arguments = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
    [done] = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert done["arguments"] == arguments == calls[0]["arguments"] and done["name"] == "get_weather"


def test_a_thinking_model_answers_reasoning_items(tmp_path_factory, agent):
    engine = start_engine(load_model(write_template_model(tmp_path_factory.mktemp("r1"), R1_TEMPLATE)))
    try:
        client = testing.TestClient(create_app(engine, agent=agent))
        fields = dict(input="Hi", max_output_tokens=5, temperature=0, reasoning={"effort": "low"})
        plain = response_of(post(client, **fields))
        reasoning, message = plain["output"]          # the prompt opened <think>: all of it is reasoning
        assert reasoning["type"] == "reasoning" and reasoning["content"][0]["type"] == "reasoning_text"
        assert message["type"] == "message" and output_text(plain) == ""
        assert plain["usage"]["output_tokens_details"]["reasoning_tokens"] == 5
        assert plain["reasoning"] == {"effort": "low", "summary": None}
        events = events_of(post(client, stream=True, **fields))
        thought = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_text.delta")
        assert thought == reasoning["content"][0]["text"]
    finally:
        engine.stop()


@pytest.mark.parametrize("fields, status, param, code", [
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]}, 400,
     "input[0].content[0]", "unsupported_parameter"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, 400, "tools[0].type", "unsupported_parameter"),
    ({"input": "x", "tools": [WEATHER], "tool_choice": {"type": "file_search"}}, 400, "tool_choice.type",
     "unsupported_parameter"),
    ({"input": "x", "tool_choice": {"type": "function", "name": "nope"}, "tools": [WEATHER]}, 400, "tool_choice",
     None),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, 400, "input[0]", "unsupported_parameter"),
    ({"input": [{"type": "computer_call", "id": "c"}]}, 400, "input[0].type", None),
    ({"input": "x", "max_output_tokens": 0}, 400, "max_output_tokens", None),
    ({"input": "x", "max_output_tokens": 100000}, 400, "max_output_tokens", None),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "p"}}}, 400, "text.format.schema", None),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "p", "schema": {"type": "object",
                                        "properties": {"a": {"type": "string", "pattern": "(?<=a)b"}}}}}}, 400,
     "text.format.schema", None),
    ({"input": "x", "text": {"format": {"type": "json_object"}}, "tools": [WEATHER]}, 400, "text.format", None),
    ({"input": "x", "reasoning": {"effort": "high"}, "enable_thinking": False}, 400, "reasoning.effort", None),
    ({"input": "x", "reasoning": {"summary": "detailed"}}, 400, "reasoning.summary", "unsupported_parameter"),
    ({"input": "x", "background": True}, 400, "background", "unsupported_parameter"),
    ({"input": "x", "include": ["reasoning.encrypted_content"]}, 400, "include", "unsupported_parameter"),
    ({"input": "x", "top_logprobs": 2}, 400, "top_logprobs", "unsupported_parameter"),
    ({"input": "x", "stream_options": {"include_obfuscation": False}}, 400, "stream_options", None),
    ({"input": "x " * 400}, 400, "input", "context_length_exceeded"),
    ({"input": "x", "model": "gpt-9"}, 404, "model", "model_not_found"),
    ({"input": "x", "top_k": -5}, 400, "top_k", None),
    ({}, 400, "input", None),
])
def test_refusals_name_the_responses_field(client, fields, status, param, code):
    error = error_of(client.simulate_post("/v1/responses", json=fields), status)
    assert (error["param"], error["code"]) == (param, code)


def test_an_image_part_says_the_server_is_text_only(client):
    error = error_of(post(client, input=[{"role": "user", "content": [
        {"type": "input_text", "text": "What is this?"}, {"type": "input_image", "image_url": "https://x/y.png"}]}]),
        400)
    assert "text-only" in error["message"] and error["param"] == "input[0].content[1]"


def test_a_strict_tool_whose_schema_cannot_be_followed_names_its_parameters(qwen_client):
    tool = {**WEATHER, "parameters": {"type": "object", "properties": {"a": {"type": "string",
                                                                             "pattern": "(?<=a)b"}}}}
    error = error_of(post(qwen_client, input="x", tools=[tool], tool_choice="required"), 400)
    assert error["param"] == "tools[0].parameters" and "tools[0].parameters" in error["message"]


def test_without_a_state_folder_nothing_is_stored(engine):
    client = testing.TestClient(create_app(engine))
    answered = response_of(post(client, input="x", max_output_tokens=2))
    assert answered["store"] is False
    assert error_of(post(client, input="x", store=True), 400)["param"] == "store"
    assert error_of(post(client, input="x", previous_response_id="resp_1"), 400)["param"] == "previous_response_id"
    assert client.simulate_get(f"/v1/responses/{answered['id']}").status_code == 404


def test_a_failure_after_the_stream_started_is_an_error_event_then_response_failed(tiny_model, agent, caplog):
    engine = start_engine(tiny_model)
    engine.scheduler.model = FaultyModel(tiny_model, failing_calls={2, 3})   # the prompt passes, a decode fails
    client = testing.TestClient(create_app(engine, agent=agent))
    try:
        with caplog.at_level(logging.ERROR):
            streamed = post(client, input="The quick brown fox", stream=True, max_output_tokens=8, temperature=0)
            plain = post(client, input="The quick brown fox", max_output_tokens=8, temperature=0)
        events = events_of(streamed, finished=False)
        assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
        error, failed = events[-2:]
        assert error["type"] == "error" and re.search(r"log id [0-9a-f]+", error["message"])
        assert failed["type"] == "response.failed" and failed["response"]["status"] == "failed"
        assert failed["response"]["error"]["code"] == "server_error"
        assert error_of(plain, 500)["type"] == "server_error"
        assert client.simulate_get(f"/v1/responses/{failed['response']['id']}").status_code == 404  # never kept
    finally:
        engine.stop()
