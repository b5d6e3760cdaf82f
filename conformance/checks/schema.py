"""Schema: every body the server sent during the run, validated against OpenAI's JSON Schemas.

These checks run last: each sends one probe of its own (so `--only schema` still tests something) and
then validates every matching exchange recorded by all checks before it.
"""
from __future__ import annotations

import json

from ..check import check, require
from ..schemas import validate
from .errors import UNKNOWN_ROUTE

CATEGORY = "schema"
EVIDENCE_LIMIT = 5


def _api_exchanges(ctx):
    """Exchanges with the API's own endpoints (the unknown-route probe is judged by errors.unknown_route)."""
    return [ex for ex in ctx.exchanges if UNKNOWN_ROUTE not in ex.url]


def _is_chat(exchange) -> bool:
    return exchange.method == "POST" and exchange.url.endswith("/chat/completions")


def chat_bodies(ctx):
    ctx.chat()
    return [(ex, ex.json) for ex in ctx.exchanges
            if _is_chat(ex) and ex.status == 200 and ex.stream is None and ex.is_json]


def chat_chunks(ctx):
    ctx.chat(stream=True, stream_options={"include_usage": True})
    return [(ex, chunk) for ex in ctx.exchanges if _is_chat(ex) and ex.status == 200 and ex.stream is not None
            for chunk in ex.chunks]


def error_bodies(ctx):
    ctx.chat_raw({"model": ctx.model})
    return [(ex, ex.json if ex.is_json else ex.text) for ex in _api_exchanges(ctx) if ex.status >= 400]


def model_lists(ctx):
    ctx.models()
    return [(ex, ex.json if ex.is_json else ex.text) for ex in ctx.exchanges
            if ex.method == "GET" and ex.url.endswith("/models")]


def model_objects(ctx):
    ctx.send("GET", f"models/{ctx.model}")
    return [(ex, ex.json if ex.is_json else ex.text) for ex in ctx.exchanges
            if ex.method == "GET" and ex.url.endswith(f"/models/{ctx.model}")]


def completion_bodies(ctx):
    ctx.send("POST", "completions", {"model": ctx.model, "prompt": "1, 2, 3, 4,", "max_tokens": 5,
                                     "temperature": 0})
    return [(ex, ex.json if ex.is_json else ex.text) for ex in ctx.exchanges
            if ex.method == "POST" and ex.url.endswith("/completions") and not _is_chat(ex)
            and ex.status == 200 and ex.stream is None]


def _violations(ctx, schema_name: str, body) -> list:
    """validate(), remembered per run: the same bodies are validated by several checks."""
    key = (schema_name, json.dumps(body, sort_keys=True))
    if key not in ctx.memo:
        ctx.memo[key] = validate(schema_name, body)
    return ctx.memo[key]


def _verify(ctx, schema_name: str, items, soft: bool) -> None:
    """Fail with evidence for each body that violates `schema_name` (hard errors, or soft ones if `soft`)."""
    bad = []
    for exchange, body in items:
        errors = [e for e in _violations(ctx, schema_name, body) if e.soft == soft]
        if errors:
            note = "; ".join(f"{e.path}: {e.message}" for e in errors[:8])
            bad.append(exchange.evidence(body, note))
    require(not bad, f"{len(bad)} of {len(items)} bodies violate {schema_name}", *bad[:EVIDENCE_LIMIT])


@check(CATEGORY, "MUST", "chat_completion", "every chat completion body is a valid CreateChatCompletionResponse")
def chat_completion(ctx):
    _verify(ctx, "CreateChatCompletionResponse", chat_bodies(ctx), soft=False)


@check(CATEGORY, "MUST", "chat_completion_chunk",
       "every stream chunk is a valid CreateChatCompletionStreamResponse")
def chat_completion_chunk(ctx):
    _verify(ctx, "CreateChatCompletionStreamResponse", chat_chunks(ctx), soft=False)


@check(CATEGORY, "MUST", "error_response", "every error body (status >= 400) is a valid ErrorResponse envelope")
def error_response(ctx):
    _verify(ctx, "ErrorResponse", error_bodies(ctx), soft=False)


@check(CATEGORY, "MUST", "models", "/models is a valid ListModelsResponse")
def models(ctx):
    _verify(ctx, "ListModelsResponse", model_lists(ctx), soft=False)


@check(CATEGORY, "SHOULD", "model_retrieve", "/models/{id} returns a valid Model object")
def model_retrieve(ctx):
    items = model_objects(ctx)
    require(all(ex.status == 200 for ex, _ in items), "/models/{id} did not answer 200",
            *[ex.evidence() for ex, _ in items if ex.status != 200][:1])
    _verify(ctx, "Model", items, soft=False)


@check(CATEGORY, "SHOULD", "completion", "every /completions body is a valid CreateCompletionResponse")
def completion(ctx):
    items = completion_bodies(ctx)
    require(items, "/completions gave no 200 response", *[ex.evidence() for ex in ctx.exchanges[-1:]])
    _verify(ctx, "CreateCompletionResponse", items, soft=False)


@check(CATEGORY, "SHOULD", "nullable_fields_present",
       "fields the spec requires but allows to be null (refusal, logprobs, param, code) are sent, as null")
def nullable_fields_present(ctx):
    for name, items in (("CreateChatCompletionResponse", chat_bodies(ctx)),
                        ("CreateChatCompletionStreamResponse", chat_chunks(ctx)),
                        ("ErrorResponse", error_bodies(ctx))):
        _verify(ctx, name, items, soft=True)


@check(CATEGORY, "MUST", "json_content_type", "every non-stream response is labelled application/json")
def json_content_type(ctx):
    ctx.models()
    bad = [ex.evidence(dict(ex.headers), "response headers") for ex in _api_exchanges(ctx)
           if ex.stream is None and ex.content_type != "application/json"]
    require(not bad, f"{len(bad)} response(s) are not labelled application/json", *bad[:EVIDENCE_LIMIT])


CHECKS = (chat_completion, chat_completion_chunk, error_response, models, model_retrieve, completion,
          nullable_fields_present, json_content_type)
