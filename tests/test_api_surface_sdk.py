"""Issue 17's API surface on `refengine serve` with the default model, driven by the openai SDK as a user drives
it: the Responses API (responses.create and responses.stream, structured output, a forced call and its
function_call_output round trip, previous_response_id, retrieve and delete; every raw event of a stream checked
against the spec), vLLM's fields through extra_body, x-request-id, CORS over raw HTTP, legacy functions."""
import array
import base64
import http.client
import json
from urllib.parse import urlsplit

import jsonschema
import openai
import pytest

from conformance.checks.responses import event_schemas, item_order_problems
from conformance.client import Client
from conformance.schemas import validate
from serving import free_port, refengine_serve, running_server

WEATHER = {"type": "function", "name": "get_weather", "description": "Get the current weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}, "strict": True}
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0,
                                                                             "maximum": 120}}}
QUESTION = "What is the capital of France?"
ORIGIN = "http://localhost:3000"
COUNT = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]


@pytest.fixture(scope="module")
def server(smollm2_dir):
    port = free_port()
    command = refengine_serve("--model", str(smollm2_dir), "--port", str(port), "--allowed-origins", ORIGIN)
    with running_server(command, port):
        yield f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server, api_key="unused", max_retries=0, timeout=300)


def test_create_and_stream_give_the_same_answer(client):
    reply = client.responses.create(model="default", input=QUESTION, max_output_tokens=24, temperature=0)
    assert reply.status == "completed" and "Paris" in reply.output_text
    assert reply.usage.total_tokens == reply.usage.input_tokens + reply.usage.output_tokens
    with client.responses.stream(model="default", input=QUESTION, max_output_tokens=24, temperature=0) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == reply.output_text
    assert final.id != reply.id and final.usage.output_tokens == reply.usage.output_tokens


def test_every_raw_event_follows_the_spec_in_order(server):
    body = {"model": "default", "input": QUESTION, "max_output_tokens": 4, "temperature": 0, "stream": True}
    answer = Client(server, timeout=300).post("responses", body)          # the raw bytes, parsed strictly
    assert answer.content_type == "text/event-stream" and answer.stream.problems == ()
    events = []
    for sent in answer.stream.events:
        event = json.loads(sent.data)
        assert sent.event == event["type"]
        assert [e for e in validate(f"ResponseStreamEvent#{event_schemas()[event['type']]}", event) if not e.soft] == []
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert item_order_problems(events) == []
    assert [e["type"] for e in events][:2] == ["response.created", "response.in_progress"]
    assert events[-1]["type"] == "response.incomplete"            # 4 tokens cannot hold the answer
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_json_schema_output_validates(client):
    reply = client.responses.create(model="default", input="Describe a person as JSON.", max_output_tokens=60,
                                    temperature=0.8, extra_body={"seed": 3},
                                    text={"format": {"type": "json_schema", "name": "person", "schema": PERSON,
                                                     "strict": True}})
    jsonschema.validate(json.loads(reply.output_text), PERSON)


def test_a_forced_call_and_its_output_round_trip(client):
    called = client.responses.create(model="default", input="What is the weather in Paris?", tools=[WEATHER],
                                     tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=60,
                                     temperature=0)
    [call] = [item for item in called.output if item.type == "function_call"]
    assert call.name == "get_weather" and isinstance(json.loads(call.arguments)["city"], str)
    answered = client.responses.create(
        model="default", previous_response_id=called.id, tools=[WEATHER], max_output_tokens=30, temperature=0,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"celsius": 21}'}])
    assert answered.status in ("completed", "incomplete") and answered.previous_response_id == called.id
    assert answered.usage.input_tokens > called.usage.input_tokens + called.usage.output_tokens
    # the same round trip sent as items, without the stored response, is the same prompt
    items = [{"role": "user", "content": "What is the weather in Paris?"},
             {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
             {"type": "function_call_output", "call_id": call.call_id, "output": '{"celsius": 21}'}]
    resent = client.responses.create(model="default", input=items, tools=[WEATHER], max_output_tokens=30,
                                      temperature=0, store=False)
    assert resent.usage.input_tokens == answered.usage.input_tokens and resent.output_text == answered.output_text


def test_previous_response_retrieve_and_delete(client):
    first = client.responses.create(model="default", input="My name is Ada. Say hello.", max_output_tokens=16,
                                    temperature=0)
    follow = client.responses.create(model="default", input="What is my name?", previous_response_id=first.id,
                                     max_output_tokens=16, temperature=0)
    # what the stored conversation stands for, sent whole: the same prompt, so the same greedy answer
    conversation = [{"role": "user", "content": "My name is Ada. Say hello."},
                    {"type": "message", "role": "assistant",
                     "content": [{"type": "output_text", "text": first.output_text}]},
                    {"role": "user", "content": "What is my name?"}]
    whole = client.responses.create(model="default", input=conversation, max_output_tokens=16, temperature=0,
                                    store=False)
    assert follow.usage.input_tokens == whole.usage.input_tokens and follow.output_text == whole.output_text
    assert client.responses.retrieve(follow.id).output_text == follow.output_text
    client.responses.delete(follow.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(follow.id)
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="default", input="Again?", previous_response_id=follow.id)
    assert refused.value.body["param"] == "previous_response_id"


# ---- vLLM's fields, the HTTP layer, legacy functions ----

def raw(server: str, method: str, path: str, body: dict | None = None, headers: dict | None = None):
    """One request over a plain socket: (status, headers with lower-case names, body text)."""
    parts = urlsplit(server)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
    try:
        connection.request(method, path, body=None if body is None else json.dumps(body),
                           headers={"Content-Type": "application/json", **(headers or {})})
        answer = connection.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read().decode()
    finally:
        connection.close()


def test_vllm_fields_through_extra_body(client, server):
    def ask(messages=COUNT, **extra):
        return client.chat.completions.create(model="default", messages=messages, max_tokens=12, temperature=0,
                                              extra_body=extra)
    choices = ["yes", "no", "maybe"]
    assert ask([{"role": "user", "content": "Is the sky green?"}], guided_choice=choices).choices[
        0].message.content in choices
    comma = json.loads(raw(server, "POST", "/tokenize", {"prompt": ","})[2])["tokens"]
    stopped = ask(stop_token_ids=comma)
    assert stopped.choices[0].message.content == "1," and stopped.choices[0].finish_reason == "stop"
    prefill = COUNT + [{"role": "assistant", "content": "1, 2, 3,"}]
    continued = ask(prefill, continue_final_message=True, add_generation_prompt=False, echo=True)
    assert continued.choices[0].message.content.startswith("1, 2, 3, 4")       # the prefill, continued
    plain = ask(prefill)                                                        # a new turn after it instead
    assert continued.usage.prompt_tokens < plain.usage.prompt_tokens
    answer = client.chat.completions.with_raw_response.create(
        model="default", messages=COUNT, max_tokens=1, extra_body={"frobnicate": True})
    assert answer.headers["x-refengine-ignored-fields"] == "frobnicate"


def test_request_id_and_cors_over_raw_http(client, server):
    reply = client.chat.completions.create(model="default", messages=COUNT, max_tokens=2)
    assert reply._request_id.startswith("req_")
    status, headers, _ = raw(server, "OPTIONS", "/v1/chat/completions", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert status == 204 and headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in headers["access-control-allow-methods"]
    status, headers, text = raw(server, "POST", "/v1/chat/completions",
                                {"model": "default", "messages": COUNT, "max_tokens": 2},
                                {"Origin": ORIGIN, "X-Request-Id": "browser-7"})
    assert status == 200 and headers["access-control-allow-origin"] == ORIGIN
    assert headers["x-request-id"] == "browser-7" and "x-request-id" in headers["access-control-expose-headers"]
    assert json.loads(text)["service_tier"] == "default"
    _, stranger, _ = raw(server, "POST", "/v1/chat/completions",
                         {"model": "default", "messages": COUNT, "max_tokens": 1}, {"Origin": "http://evil.test"})
    assert "access-control-allow-origin" not in stranger


def test_legacy_functions_through_the_sdk(client):
    weather = {"name": "get_weather", "description": "Get the current weather in a city.",
               "parameters": WEATHER["parameters"]}
    reply = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        functions=[weather], function_call={"name": "get_weather"}, max_tokens=60, temperature=0)
    call = reply.choices[0].message.function_call
    assert call.name == "get_weather" and isinstance(json.loads(call.arguments)["city"], str)
    assert not reply.choices[0].message.tool_calls


def test_embeddings_through_the_sdk(client):
    texts = ["A cat sat on the mat.", "A cat is sitting on a mat.", "Quarterly tax reports are due in April."]
    answer = client.embeddings.create(model="default", input=texts)
    vectors = [item.embedding for item in answer.data]
    assert len(vectors) == 3 and all(len(v) == 576 for v in vectors)              # SmolLM2-135M's hidden size
    assert all(abs(sum(x * x for x in v) - 1) < 1e-4 for v in vectors)
    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b))
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])        # the paraphrase is nearer
    # (the SDK asks for base64 when no format is given, and decodes it; asked for, it hands over the text)
    packed = client.embeddings.create(model="default", input=texts, encoding_format="base64").data[0].embedding
    assert array.array("f", base64.b64decode(packed)).tolist() == pytest.approx(vectors[0], abs=1e-6)
    assert answer.usage.prompt_tokens == answer.usage.total_tokens > 0
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model="default", input="x", dimensions=256)
    assert refused.value.body["param"] == "dimensions"
