"""GET /openapi.json: this server's OpenAPI 3.1 document.

The request bodies are the validation schemas of `web/schema.py` themselves (CHAT_REQUEST,
COMPLETION_REQUEST, TOKENIZE_REQUEST, DETOKENIZE_REQUEST; OpenAPI 3.1 schemas are JSON Schema 2020-12, as
theirs are), copied when the document is built, so the document cannot drift from what the server checks.
The response schemas say what the endpoints send (chat.completion and its stream chunks, text_completion,
the model list, tokenize, detokenize, health) and every 4xx / 5xx is OpenAI's error envelope.

A request with `"stream": true` is answered `text/event-stream`: `data: <json>` events, each a chunk
(ChatCompletionChunk or TextCompletion), or one ErrorResponse when the generation fails after the stream
started, then `data: [DONE]`. OpenAPI 3.1 has no model of a stream, so the text/event-stream `schema` describes
one event as OpenAPI 3.2 does (an object whose `data` is a string with `contentMediaType` application/json and
a `contentSchema`, or the `[DONE]` sentinel), which is also how schemathesis reads it; `x-sse-events` names
the event schemas for readers that do not.

    document = openapi_document()            # a fresh dict each call: callers may change their copy
"""
from __future__ import annotations

import copy
from importlib import metadata

import falcon

from .embeddings import EMBEDDING_REQUEST
from .response_request import RESPONSE_REQUEST
from .schema import CHAT_REQUEST, COMPLETION_REQUEST, DETOKENIZE_REQUEST, MESSAGES, TOKENIZE_REQUEST

OPENAPI_VERSION = "3.1.0"
REF = "#/components/schemas/"
SSE = "text/event-stream"
JSON = "application/json"
METRICS_MEDIA = "text/plain"

# ---- response schemas (what the endpoints send) ----

INTEGER = {"type": "integer"}
STRING = {"type": "string"}
NULLABLE_STRING = {"type": ["string", "null"]}
FINISH_REASON = {"enum": ["stop", "length", "tool_calls"]}


def ref(name: str) -> dict:
    return {"$ref": REF + name}


def obj(properties: dict, required=None, **extra) -> dict:
    """An object with these properties, all required unless `required` says which."""
    return {"type": "object", "required": list(properties if required is None else required),
            "properties": properties, **extra}


RESPONSE_SCHEMAS = {
    "ErrorResponse": obj({"error": obj({
        "message": STRING, "type": STRING, "param": NULLABLE_STRING, "code": NULLABLE_STRING})}),
    "Usage": obj({
        "prompt_tokens": INTEGER, "completion_tokens": INTEGER, "total_tokens": INTEGER,
        "prompt_tokens_details": obj({"cached_tokens": INTEGER}),
        "completion_tokens_details": obj({"reasoning_tokens": INTEGER}),
    }, required=["prompt_tokens", "completion_tokens", "total_tokens"]),
    "TopLogprob": obj({"token": STRING, "logprob": {"type": "number"},
                       "bytes": {"type": ["array", "null"], "items": INTEGER}}),
    "TokenLogprob": obj({"token": STRING, "logprob": {"type": "number"},
                         "bytes": {"type": ["array", "null"], "items": INTEGER},
                         "top_logprobs": {"type": "array", "items": ref("TopLogprob")}}),
    "ChatLogprobs": obj({"content": {"type": ["array", "null"], "items": ref("TokenLogprob")},
                         "refusal": {"type": ["array", "null"], "items": ref("TokenLogprob")}}),
    "ToolCall": obj({"id": STRING, "type": {"const": "function"},
                     "function": obj({"name": STRING, "arguments": STRING})}),
    "ChatMessage": obj({
        "role": {"const": "assistant"}, "content": NULLABLE_STRING, "refusal": NULLABLE_STRING,
        "tool_calls": {"type": "array", "items": ref("ToolCall")},
        "reasoning_content": NULLABLE_STRING,            # only for a model whose template thinks
    }, required=["role", "content"]),
    "ChatCompletion": obj({
        "id": STRING, "object": {"const": "chat.completion"}, "created": INTEGER, "model": STRING,
        "system_fingerprint": STRING,
        "choices": {"type": "array", "items": obj({
            "index": INTEGER, "message": ref("ChatMessage"),
            "logprobs": {"anyOf": [ref("ChatLogprobs"), {"type": "null"}]},
            "finish_reason": FINISH_REASON})},
        "usage": ref("Usage"),
    }, required=["id", "object", "created", "model", "choices", "usage"]),
    "ChatCompletionChunk": obj({
        "id": STRING, "object": {"const": "chat.completion.chunk"}, "created": INTEGER, "model": STRING,
        "system_fingerprint": STRING,
        "choices": {"type": "array", "items": obj({
            "index": INTEGER,
            "delta": obj({
                "role": {"const": "assistant"}, "content": NULLABLE_STRING, "refusal": NULLABLE_STRING,
                "reasoning_content": NULLABLE_STRING,
                "tool_calls": {"type": "array", "items": obj({
                    "index": INTEGER, "id": STRING, "type": {"const": "function"},
                    "function": obj({"name": STRING, "arguments": STRING}, required=[])}, required=["index"])},
            }, required=[]),
            "logprobs": {"anyOf": [ref("ChatLogprobs"), {"type": "null"}]},
            "finish_reason": {"anyOf": [FINISH_REASON, {"type": "null"}]}})},
        "usage": {"anyOf": [ref("Usage"), {"type": "null"}]},   # with include_usage: null until the last chunk
    }, required=["id", "object", "created", "model", "choices"]),
    "CompletionLogprobs": obj({
        "tokens": {"type": "array", "items": STRING},
        "token_logprobs": {"type": "array", "items": {"type": ["number", "null"]}},   # null: an echoed
        "top_logprobs": {"type": "array", "items": {                                  # prompt's first token
            "type": ["object", "null"], "additionalProperties": {"type": "number"}}},
        "text_offset": {"type": "array", "items": INTEGER}}),
    "TextCompletion": obj({            # the non-streamed body, and (finish_reason null until the end) each chunk
        "id": STRING, "object": {"const": "text_completion"}, "created": INTEGER, "model": STRING,
        "system_fingerprint": STRING,
        "choices": {"type": "array", "items": obj({
            "index": INTEGER, "text": STRING,
            "logprobs": {"anyOf": [ref("CompletionLogprobs"), {"type": "null"}]},
            "finish_reason": {"anyOf": [FINISH_REASON, {"type": "null"}]}})},
        "usage": {"anyOf": [ref("Usage"), {"type": "null"}]},
    }, required=["id", "object", "created", "model", "choices"]),
    "Model": obj({"id": STRING, "object": {"const": "model"}, "created": INTEGER, "owned_by": STRING,
                  "max_model_len": INTEGER}, required=["id", "object", "created", "owned_by"]),
    "ModelList": obj({"object": {"const": "list"}, "data": {"type": "array", "items": ref("Model")}}),
    "TokenizeResponse": obj({"count": INTEGER, "max_model_len": INTEGER,
                             "tokens": {"type": "array", "items": INTEGER},
                             "token_strs": {"type": "array", "items": STRING}},
                            required=["count", "max_model_len", "tokens"]),
    "DetokenizeResponse": obj({"prompt": STRING}),
    "Health": obj({"status": {"enum": ["ok", "loading", "stopped"]}, "model": STRING}, required=["status"]),
    # the Responses API (responses.py): the fields this server sends; OpenAI's full schemas are in conformance/
    "ResponseOutputItem": obj({
        "id": STRING, "type": {"enum": ["message", "function_call", "reasoning"]},
        "status": {"enum": ["in_progress", "completed", "incomplete"]},
        "role": {"const": "assistant"}, "content": {"type": "array", "items": obj({"type": STRING}, ["type"])},
        "call_id": STRING, "name": STRING, "arguments": STRING, "summary": {"type": "array"},
    }, required=["id", "type", "status"]),
    "ResponseUsage": obj({
        "input_tokens": INTEGER, "input_tokens_details": obj({"cached_tokens": INTEGER, "cache_write_tokens": INTEGER}),
        "output_tokens": INTEGER, "output_tokens_details": obj({"reasoning_tokens": INTEGER}), "total_tokens": INTEGER,
    }),
    "Response": obj({
        "id": STRING, "object": {"const": "response"}, "created_at": INTEGER,
        "status": {"enum": ["in_progress", "completed", "incomplete", "failed"]},
        "completed_at": {"type": ["integer", "null"]},
        "error": {"anyOf": [obj({"code": STRING, "message": STRING}), {"type": "null"}]},
        "incomplete_details": {"anyOf": [obj({"reason": STRING}), {"type": "null"}]},
        "model": STRING, "output": {"type": "array", "items": ref("ResponseOutputItem")},
        "usage": ref("ResponseUsage"), "store": {"type": "boolean"}, "previous_response_id": NULLABLE_STRING,
        "instructions": NULLABLE_STRING, "max_output_tokens": {"type": ["integer", "null"]},
        "tools": {"type": "array"}, "tool_choice": {"type": ["string", "object"]},
        "parallel_tool_calls": {"type": "boolean"}, "text": {"type": "object"}, "reasoning": {"type": "object"},
        "temperature": {"type": "number"}, "top_p": {"type": "number"}, "metadata": {"type": "object"},
    }, required=["id", "object", "created_at", "status", "error", "incomplete_details", "model", "output", "store"]),
    "ResponseStreamEvent": obj({           # response.created ... response.completed, and `error`
        "type": STRING, "sequence_number": INTEGER, "response": ref("Response"), "output_index": INTEGER,
        "item": ref("ResponseOutputItem"), "item_id": STRING, "delta": STRING,
    }, required=["type", "sequence_number"]),
    "ResponseDeleted": obj({"id": STRING, "object": {"const": "response"}, "deleted": {"const": True}}),
    "EmbeddingList": obj({
        "object": {"const": "list"}, "model": STRING,
        "data": {"type": "array", "items": obj({
            "object": {"const": "embedding"}, "index": INTEGER,
            "embedding": {"anyOf": [{"type": "array", "items": {"type": "number"}}, STRING]}})},
        "usage": obj({"prompt_tokens": INTEGER, "total_tokens": INTEGER})}),
}

# ---- responses ----

ERROR_MEANINGS = {
    400: "Invalid request: the envelope's `param` names the field.",
    401: "Missing or wrong API key (when the server has one).",
    404: "The model is not served here (`code`: model_not_found).",
    413: "The request body is too large.",
    429: "The scheduler's queue is full; retry after `Retry-After` seconds.",
    500: "A fault of the server (`type`: server_error).",
    503: "The model is still loading, or the engine is not running; retry after `Retry-After` seconds.",
}


def error_responses(*statuses: int) -> dict:
    return {str(status): {"description": ERROR_MEANINGS[status], "content": {JSON: {"schema": ref("ErrorResponse")}}}
            for status in statuses}


GENERATION_ERRORS = (400, 401, 404, 413, 429, 500, 503)
BODY_ERRORS = (400, 401, 404, 413, 500, 503)


def sse_event(chunk: str) -> dict:
    """One event of a stream as OpenAPI 3.2 models it (and schemathesis reads a 3.1 `schema` of
    text/event-stream): its `data` is the `[DONE]` sentinel or a JSON chunk or error envelope."""
    payload = {"anyOf": [ref(chunk), ref("ErrorResponse")]}
    return {"type": "object", "required": ["data"], "properties": {
        "event": {"const": "message"},
        "data": {"anyOf": [{"const": "[DONE]"},
                           {"type": "string", "contentMediaType": JSON, "contentSchema": payload}]}}}


def generation_ok(body: str, chunk: str, what: str) -> dict:
    return {"200": {
        "description": f"{what}; with `\"stream\": true` a `text/event-stream` of `data: <{chunk}>` events "
                       "(or one `data: <ErrorResponse>` if the generation fails once the stream has started), "
                       "ended by `data: [DONE]`. The text/event-stream schema describes one event.",
        "content": {
            JSON: {"schema": ref(body)},
            SSE: {"schema": sse_event(chunk), "x-sse-events": [REF + chunk, REF + "ErrorResponse"],
                  "x-sse-end": "[DONE]"},
        }}}


def responses_ok() -> dict:
    """The Responses API's answer: OpenAI's events carry their type as the SSE `event:` name too, and a
    stream ends with its last event (response.completed or response.incomplete), not with [DONE]."""
    event = {"type": "object", "required": ["data"], "properties": {
        "event": STRING,
        "data": {"type": "string", "contentMediaType": JSON, "contentSchema": ref("ResponseStreamEvent")}}}
    return {"200": {
        "description": "A Response; with `\"stream\": true` a `text/event-stream` of `event: <type>` / `data: "
                       "<ResponseStreamEvent>` events numbered by `sequence_number`, from response.created to "
                       "response.completed or response.incomplete (a failure once streaming: `error`, then "
                       "response.failed). The text/event-stream schema describes one event.",
        "content": {JSON: {"schema": ref("Response")},
                    SSE: {"schema": event, "x-sse-events": [REF + "ResponseStreamEvent"]}}}}


def json_body(validator_schema: dict) -> dict:
    return {"required": True, "content": {JSON: {"schema": copy.deepcopy(validator_schema)}}}


def ok(schema: str, description: str) -> dict:
    return {"200": {"description": description, "content": {JSON: {"schema": ref(schema)}}}}


def _version() -> str:
    try:
        return metadata.version("refengine")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def agent_paths(keyed: list) -> dict:
    """The agent runtime's routes (served with `create_app(..., agent=...)`, as `refengine serve` does)."""
    def path_id(name: str, what: str) -> dict:
        return {"name": name, "in": "path", "required": True, "schema": STRING, "description": what}
    session_id, file_id = path_id("session_id", "The session's id."), path_id("file_id", "The file's id.")
    approval_id = path_id("approval_id", "From an `agentic_tool_approval_required` event.")
    response_id = path_id("response_id", "A stored response's id.")
    anything = {"type": "object"}
    return {
        "/v1/responses/{response_id}": {
            "get": {"operationId": "getResponse", "summary": "A stored response", "security": keyed,
                    "parameters": [response_id],
                    "responses": {**ok("Response", "The response, as answered."), **error_responses(400, 401, 404)}},
            "delete": {"operationId": "deleteResponse", "summary": "Delete a stored response", "security": keyed,
                       "parameters": [response_id],
                       "responses": {**ok("ResponseDeleted", "Deleted."), **error_responses(401, 404)}}},
        "/v1/sessions": {"get": {
            "operationId": "listSessions", "summary": "Sessions: id, created, last used, message count",
            "security": keyed, "responses": {"200": {"description": "The sessions.",
                                                     "content": {JSON: {"schema": anything}}},
                                             **error_responses(401)}}},
        "/v1/sessions/{session_id}": {
            "get": {"operationId": "exportSession", "summary": "A session's messages and files", "security": keyed,
                    "parameters": [session_id],
                    "responses": {"200": {"description": "The session.", "content": {JSON: {"schema": anything}}},
                                  **error_responses(400, 401, 404)}},
            "put": {"operationId": "importSession", "summary": "Replace (or create) a session's messages",
                    "security": keyed, "parameters": [session_id],
                    "requestBody": {"required": True, "content": {JSON: {"schema": obj(
                        {"messages": copy.deepcopy(MESSAGES)}, ["messages"])}}},
                    "responses": {"200": {"description": "The session.", "content": {JSON: {"schema": anything}}},
                                  **error_responses(400, 401, 413)}},
            "delete": {"operationId": "deleteSession", "summary": "Delete a session and its folder",
                       "security": keyed, "parameters": [session_id],
                       "responses": {"200": {"description": "Deleted.", "content": {JSON: {"schema": anything}}},
                                     **error_responses(400, 401, 404)}}},
        "/v1/files/{file_id}/content": {"get": {
            "operationId": "fileContent", "summary": "A produced file's bytes", "security": keyed,
            "parameters": [file_id],
            "responses": {"200": {"description": "The bytes, with the file's MIME type."},
                          **error_responses(401, 404)}}},
        "/v1/agent/approvals/{approval_id}": {"post": {
            "operationId": "decideApproval", "summary": "Approve or deny a waiting built-in tool call",
            "security": keyed, "parameters": [approval_id],
            "requestBody": {"required": True, "content": {JSON: {"schema": obj(
                {"decision": {"enum": ["approve", "deny"]}, "remember_for_session": {"type": "boolean"}},
                ["decision"])}}},
            "responses": {"200": {"description": "Decided.", "content": {JSON: {"schema": anything}}},
                          **error_responses(400, 401, 404)}}},
    }


def openapi_document(agent: bool = False) -> dict:
    """The OpenAPI 3.1 document of the routes `create_app` serves (a new dict on each call); `agent`: with
    the agent runtime's routes."""
    model_id = {"name": "model_id", "in": "path", "required": True, "schema": STRING,
                "description": "The served model's id, or `default`."}
    keyed = [{}, {"bearer": []}]             # the API key is only asked for when the server has one
    paths = {
        "/v1/chat/completions": {"post": {
            "operationId": "createChatCompletion", "summary": "Chat completion (JSON, or SSE when streamed)",
            "security": keyed, "requestBody": json_body(CHAT_REQUEST.schema),
            "responses": {**generation_ok("ChatCompletion", "ChatCompletionChunk", "A chat.completion"),
                          **error_responses(*GENERATION_ERRORS)}}},
        "/v1/completions": {"post": {
            "operationId": "createCompletion", "summary": "Legacy text completion (JSON, or SSE when streamed)",
            "security": keyed, "requestBody": json_body(COMPLETION_REQUEST.schema),
            "responses": {**generation_ok("TextCompletion", "TextCompletion", "A text_completion"),
                          **error_responses(*GENERATION_ERRORS)}}},
        "/v1/embeddings": {"post": {
            "operationId": "createEmbedding", "summary": "Embeddings: final hidden states, mean-pooled, unit length",
            "security": keyed, "requestBody": json_body(EMBEDDING_REQUEST.schema),
            "responses": {**ok("EmbeddingList", "One embedding per input (floats, or base64 float32)."),
                          **error_responses(*GENERATION_ERRORS)}}},
        "/v1/responses": {"post": {
            "operationId": "createResponse", "summary": "Responses API (JSON, or SSE events when streamed)",
            "security": keyed, "requestBody": json_body(RESPONSE_REQUEST.schema),
            "responses": {**responses_ok(), **error_responses(*GENERATION_ERRORS)}}},
        "/v1/models": {"get": {
            "operationId": "listModels", "summary": "The served model", "security": keyed,
            "responses": {**ok("ModelList", "The one served model."), **error_responses(401, 503)}}},
        "/v1/models/{model_id}": {"get": {
            "operationId": "retrieveModel", "summary": "One model", "security": keyed, "parameters": [model_id],
            "responses": {**ok("Model", "The model."), **error_responses(401, 404, 503)}}},
        "/tokenize": {"post": {
            "operationId": "tokenize", "summary": "A prompt, or chat messages, to token ids (vLLM's shape)",
            "security": keyed, "requestBody": json_body(TOKENIZE_REQUEST.schema),
            "responses": {**ok("TokenizeResponse", "The token ids."), **error_responses(*BODY_ERRORS)}}},
        "/detokenize": {"post": {
            "operationId": "detokenize", "summary": "Token ids to text (vLLM's shape)",
            "security": keyed, "requestBody": json_body(DETOKENIZE_REQUEST.schema),
            "responses": {**ok("DetokenizeResponse", "The text."), **error_responses(*BODY_ERRORS)}}},
        "/health": {"get": {
            "operationId": "health", "summary": "Liveness and readiness (no API key)",
            "responses": {
                "200": {"description": "The model is loaded and the scheduler runs.",
                        "content": {JSON: {"schema": ref("Health")}}},
                "503": {"description": "The model is still loading, or the engine has stopped.",
                        "content": {JSON: {"schema": ref("Health")}}},
            }}},
        "/metrics": {"get": {
            "operationId": "metrics", "summary": "Prometheus text exposition (no API key with --metrics-public)",
            "security": keyed,
            "responses": {"200": {"description": "The metrics.",
                                  "content": {METRICS_MEDIA: {"schema": {"type": "string"}}}},
                          **error_responses(401)}}},
        "/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This document", "security": keyed,
            "responses": {"200": {"description": "The OpenAPI document.",
                                  "content": {JSON: {"schema": {"type": "object"}}}},
                          **error_responses(401)}}},
    }
    if agent:
        paths.update(agent_paths(keyed))
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "refengine", "version": _version(),
                 "description": "An OpenAI-compatible inference server (Chat Completions, legacy Completions) "
                                "with vLLM's /tokenize and /detokenize. Every error is OpenAI's envelope."},
        "paths": paths,
        "components": {
            "schemas": copy.deepcopy(RESPONSE_SCHEMAS),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "Only when the server runs with --api-key."}},
        },
    }


class OpenAPIDocument:
    """GET /openapi.json."""

    def __init__(self, agent: bool = False):
        self.document = openapi_document(agent)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.document
