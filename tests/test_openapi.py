"""GET /openapi.json (web/openapi.py) on the tiny model, through falcon.testing: a valid OpenAPI 3.1 document
whose request schemas are the validators' own, and whose response schemas the real answers follow."""
from __future__ import annotations

import json
import re

import falcon.inspect
import jsonschema
import pytest
from falcon import testing

from refengine.model import load_model
from tiny_model import write_tiny_llama
from web import sse
from web.app import create_app
from web.engine import EngineSlot, start_engine
from web.openapi import openapi_document
from web.schema import CHAT_REQUEST, COMPLETION_REQUEST, DETOKENIZE_REQUEST, TOKENIZE_REQUEST

USER = [{"role": "user", "content": "The quick brown fox"}]
ROUTES = {("/v1/chat/completions", "post"), ("/v1/completions", "post"), ("/v1/models", "get"),
          ("/v1/models/{model_id}", "get"), ("/tokenize", "post"), ("/detokenize", "post"), ("/health", "get"),
          ("/metrics", "get"), ("/openapi.json", "get"), ("/v1/responses", "post"),
          ("/v1/embeddings", "post")}
WEATHER = {"type": "function", "function": {"name": "get_weather", "strict": True, "parameters": {
    "type": "object", "properties": {"city": {"enum": ["Oslo", "Rome"]}}, "required": ["city"],
    "additionalProperties": False}}}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """The tiny llama with a 1024-token context: room for the tool prompt."""
    folder = write_tiny_llama(tmp_path_factory.mktemp("tiny-1k"), extra_config={"max_position_embeddings": 1024})
    engine = start_engine(load_model(folder), max_batch=8, max_queue=16)
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def client(engine):
    return testing.TestClient(create_app(engine))


@pytest.fixture(scope="module")
def document(client):
    result = client.simulate_get("/openapi.json")
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("application/json")
    return result.json


def component(document: dict, name: str) -> jsonschema.Draft202012Validator:
    """A validator for `#/components/schemas/<name>` of the served document (its $refs resolve in it)."""
    assert name in document["components"]["schemas"], name
    return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                            "components": document["components"]})


def response_schema(document: dict, path: str, method: str, status: int, media: str = "application/json") -> dict:
    return document["paths"][path][method]["responses"][str(status)]["content"][media]["schema"]


def conforms(document: dict, path: str, method: str, result) -> None:
    """The answer's status is documented for the operation and its JSON body follows the schema given there."""
    responses = document["paths"][path][method]["responses"]
    assert str(result.status_code) in responses, (path, method, result.status_code, result.text)
    media = result.headers["content-type"].split(";")[0]
    content = responses[str(result.status_code)]["content"]
    assert media in content, (path, media, list(content))
    if media == "application/json":
        jsonschema.Draft202012Validator({**content[media]["schema"], "components": document["components"]}
                                        ).validate(result.json)


def events(result) -> list:
    """The data of each SSE event: a parsed object, or the string "[DONE]"."""
    assert result.headers["content-type"] == sse.CONTENT_TYPE
    data = []
    for block in result.text.split("\n\n"):
        line = block.strip()
        if line and not line.startswith(":"):
            assert line.startswith("data: "), block
            payload = line[len("data: "):]
            data.append(payload if payload == "[DONE]" else json.loads(payload))
    return data


# ---- the document itself ----

def test_document_is_valid_openapi_3_1(document):
    schemathesis = pytest.importorskip("schemathesis")
    assert document["openapi"].startswith("3.1")
    schemathesis.openapi.from_dict(document).validate()           # the OAS 3.1 meta-schema


def test_every_schema_in_the_document_is_valid_json_schema_2020_12(document):
    schemas = list(document["components"]["schemas"].values())
    for operations in document["paths"].values():
        for operation in operations.values():
            for body in [operation.get("requestBody", {})] + list(operation["responses"].values()):
                schemas += [media["schema"] for media in body.get("content", {}).values()]
    assert len(schemas) > 30
    for schema in schemas:
        jsonschema.Draft202012Validator.check_schema(schema)


def served_routes(app) -> set[tuple[str, str]]:
    """(path, method) of every responder the app has, as OpenAPI writes them ({model_id:path} → {model_id})."""
    return {(re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path), info.method.lower())
            for route in falcon.inspect.inspect_routes(app) for info in route.methods if not info.internal}


def test_the_document_lists_every_route_and_each_answers(client, document):
    assert {(path, method) for path, ops in document["paths"].items() for method in ops} == ROUTES
    assert served_routes(client.app) == ROUTES                   # a new route must be documented too
    for path, method in ROUTES:
        result = client.simulate_request(method.upper(), path.replace("{model_id}", "default"),
                                         json={} if method == "post" else None)
        assert result.status_code not in (404, 405), (path, method)
        conforms(document, path, method, result)


@pytest.mark.parametrize("path, validator", [("/v1/chat/completions", CHAT_REQUEST),
                                             ("/v1/completions", COMPLETION_REQUEST),
                                             ("/tokenize", TOKENIZE_REQUEST), ("/detokenize", DETOKENIZE_REQUEST)])
def test_request_bodies_are_the_validation_schemas(document, path, validator):
    body = document["paths"][path]["post"]["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/json"]["schema"] == json.loads(json.dumps(validator.schema))


def test_a_changed_document_leaves_the_validators_alone():
    document = openapi_document()
    document["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"][
        "properties"]["max_tokens"]["maximum"] = 4
    assert "maximum" not in CHAT_REQUEST.schema["properties"]["max_tokens"]
    assert openapi_document() != document


def test_streaming_is_documented_as_event_stream(document):
    for path, chunk in (("/v1/chat/completions", "ChatCompletionChunk"), ("/v1/completions", "TextCompletion")):
        ok = document["paths"][path]["post"]["responses"]["200"]
        assert set(ok["content"]) == {"application/json", "text/event-stream"}
        events_named = ok["content"]["text/event-stream"]["x-sse-events"]
        assert events_named == [f"#/components/schemas/{chunk}", "#/components/schemas/ErrorResponse"]
        assert "[DONE]" in ok["description"]


def test_every_error_status_is_the_envelope(document):
    envelope = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status in operation["responses"]:
                if int(status) >= 400 and path != "/health":
                    assert response_schema(document, path, method, int(status)) == envelope, (path, status)


# ---- real answers follow it ----

def test_chat_completion_conforms(client, document):
    result = client.simulate_post("/v1/chat/completions", json={
        "model": "default", "messages": USER, "max_tokens": 4, "n": 2, "logprobs": True, "top_logprobs": 2})
    conforms(document, "/v1/chat/completions", "post", result)
    assert len(result.json["choices"]) == 2
    assert result.json["choices"][0]["logprobs"]["content"]


@pytest.mark.parametrize("tool_choice", ["auto", "required"])
def test_chat_with_tools_conforms(client, document, tool_choice):
    result = client.simulate_post("/v1/chat/completions", json={
        "model": "default", "messages": USER, "max_tokens": 40, "tools": [WEATHER], "tool_choice": tool_choice,
        "temperature": 0})
    assert result.status_code == 200, result.text
    conforms(document, "/v1/chat/completions", "post", result)
    if tool_choice == "required":                      # the call grammar holds the output from the first token
        assert result.json["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_chat_stream_chunks_conform(client, document):
    result = client.simulate_post("/v1/chat/completions", json={
        "model": "default", "messages": USER, "max_tokens": 4, "stream": True, "logprobs": True,
        "stream_options": {"include_usage": True}})
    conforms(document, "/v1/chat/completions", "post", result)
    data = events(result)
    assert data[-1] == "[DONE]" and len(data) >= 4
    chunk = component(document, "ChatCompletionChunk")
    for payload in data[:-1]:
        chunk.validate(payload)
    assert data[-2]["usage"]["total_tokens"] > 0


def test_text_completion_and_its_stream_conform(client, document):
    result = client.simulate_post("/v1/completions", json={
        "model": "default", "prompt": ["Hello", "The quick"], "max_tokens": 3, "echo": True, "logprobs": 2})
    conforms(document, "/v1/completions", "post", result)
    assert result.json["choices"][0]["logprobs"]["token_logprobs"][0] is None     # the echoed first token
    streamed = client.simulate_post("/v1/completions", json={
        "model": "default", "prompt": "Hello", "max_tokens": 3, "stream": True, "logprobs": 1,
        "stream_options": {"include_usage": True}})
    data = events(streamed)
    assert data[-1] == "[DONE]"
    chunk = component(document, "TextCompletion")
    for payload in data[:-1]:
        chunk.validate(payload)


def test_models_tokenize_detokenize_health_metrics_conform(client, document):
    for path, method, kwargs in [
            ("/v1/models", "get", {}),
            ("/v1/models/{model_id}", "get", {}),
            ("/tokenize", "post", {"json": {"prompt": "Hello world", "return_token_strs": True}}),
            ("/tokenize", "post", {"json": {"messages": USER}}),
            ("/detokenize", "post", {"json": {"tokens": [5, 6, 7]}}),
            ("/health", "get", {}),
            ("/metrics", "get", {})]:
        result = client.simulate_request(method.upper(), path.replace("{model_id}", "default"), **kwargs)
        assert result.status_code == 200, (path, result.text)
        conforms(document, path, method, result)


@pytest.mark.parametrize("path, body, status", [
    ("/v1/chat/completions", {"model": "default", "messages": []}, 400),
    ("/v1/chat/completions", {"model": "nope", "messages": USER}, 404),
    ("/v1/completions", {"model": "default", "prompt": "x", "max_tokens": -1}, 400),
    ("/tokenize", {"prompt": "x", "messages": USER}, 400),
    ("/detokenize", {"tokens": [10 ** 9]}, 400),
])
def test_errors_conform(client, document, path, body, status):
    result = client.simulate_post(path, json=body)
    assert result.status_code == status
    conforms(document, path, "post", result)


def test_unknown_model_item_is_a_documented_404(client, document):
    result = client.simulate_get("/v1/models/nope")
    assert result.status_code == 404
    conforms(document, "/v1/models/{model_id}", "get", result)


def test_health_while_loading_conforms(document):
    loading = testing.TestClient(create_app(EngineSlot()))
    result = loading.simulate_get("/health")
    assert result.status_code == 503
    conforms(document, "/health", "get", result)
    assert loading.simulate_get("/openapi.json").json == document      # served while the model loads


def test_with_an_api_key_every_keyed_operation_documents_its_401(engine, document):
    keyed = testing.TestClient(create_app(engine, api_key="sk-test"))
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            result = keyed.simulate_request(method.upper(), path.replace("{model_id}", "default"),
                                            json={} if method == "post" else None)
            if operation.get("security"):
                assert result.status_code == 401, (path, result.text)
                assert {"bearer": []} in operation["security"]
            else:                                            # /health: probes have no key
                assert result.status_code == 200, (path, result.text)
            conforms(document, path, method, result)
