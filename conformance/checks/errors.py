"""Errors: a battery of bad requests, each expecting its status and an OpenAI error envelope.

Every case is a `BadRequest` (plain data); one MUST/SHOULD check per case verifies status and envelope,
and two SHOULD checks look across the whole battery at `param`/`code` and the error `type`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..check import Check, Skip, require
from ..expect import error_body

CATEGORY = "errors"
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
UNKNOWN_MODEL = "no-such-model-conformance-0000"
UNKNOWN_ROUTE = "conformance-no-such-route"
# Without an advertised context length, a prompt this many words long exceeds every common context.
FALLBACK_LONG_PROMPT_WORDS = 200_000


@dataclass(frozen=True)
class BadRequest:
    name: str
    description: str
    build: Callable                    # ctx -> dict(method=, path=, body= | raw=)
    status: tuple[int, ...]            # acceptable statuses
    param: str | None = None           # the field `error.param` should name (prefix match on paths)
    code: str | None = None            # the `error.code` expected, when OpenAI fixes one
    level: str = "MUST"


def chat(ctx, **fields) -> dict:
    return {"method": "POST", "path": "chat/completions", "body": ctx.chat_body(**fields)}


def chat_without(ctx, field: str) -> dict:
    body = ctx.chat_body()
    del body[field]
    return {"method": "POST", "path": "chat/completions", "body": body}


def raw_chat(payload: bytes) -> dict:
    return {"method": "POST", "path": "chat/completions", "raw": payload}


def too_long_prompt(ctx) -> str:
    words = ctx.context_length + 64 if ctx.context_length else FALLBACK_LONG_PROMPT_WORDS
    return "hi " * words


def user(content) -> list[dict]:
    return [{"role": "user", "content": content}]


BAD_REQUESTS = (
    BadRequest("malformed_json", "a body that is not valid JSON is a 400",
               lambda ctx: raw_chat(b'{"model": "x", "messages": ['), (400,)),
    BadRequest("empty_body", "an empty body is a 400", lambda ctx: raw_chat(b""), (400,)),
    BadRequest("missing_messages", "a request without messages is a 400",
               lambda ctx: chat_without(ctx, "messages"), (400,), "messages"),
    BadRequest("empty_messages", "an empty messages list is a 400",
               lambda ctx: chat(ctx, messages=[]), (400,), "messages"),
    BadRequest("messages_not_a_list", "messages given as a string is a 400",
               lambda ctx: chat(ctx, messages="hello"), (400,), "messages"),
    BadRequest("unknown_role", 'a message with role "wizard" is a 400',
               lambda ctx: chat(ctx, messages=[{"role": "wizard", "content": "hi"}]), (400,), "messages"),
    BadRequest("content_wrong_type", "a message whose content is a number is a 400",
               lambda ctx: chat(ctx, messages=user(42)), (400,), "messages"),
    BadRequest("tool_message_without_id", "a tool message without tool_call_id is a 400",
               lambda ctx: chat(ctx, messages=user("hi") + [{"role": "tool", "content": "42"}]),
               (400,), "messages"),
    BadRequest("temperature_out_of_range", "temperature=3 (allowed 0..2) is a 400",
               lambda ctx: chat(ctx, temperature=3), (400,), "temperature"),
    BadRequest("temperature_wrong_type", 'temperature="hot" is a 400',
               lambda ctx: chat(ctx, temperature="hot"), (400,), "temperature"),
    BadRequest("top_p_out_of_range", "top_p=1.5 (allowed 0..1) is a 400",
               lambda ctx: chat(ctx, top_p=1.5), (400,), "top_p"),
    BadRequest("max_tokens_negative", "max_tokens=-1 is a 400",
               lambda ctx: chat(ctx, max_tokens=-1), (400,), "max_tokens"),
    BadRequest("n_zero", "n=0 is a 400", lambda ctx: chat(ctx, n=0), (400,), "n"),
    BadRequest("presence_penalty_out_of_range", "presence_penalty=2.5 (allowed -2..2) is a 400",
               lambda ctx: chat(ctx, presence_penalty=2.5), (400,), "presence_penalty"),
    BadRequest("frequency_penalty_out_of_range", "frequency_penalty=-2.5 (allowed -2..2) is a 400",
               lambda ctx: chat(ctx, frequency_penalty=-2.5), (400,), "frequency_penalty"),
    BadRequest("logit_bias_out_of_range", "a logit_bias of 500 (allowed -100..100) is a 400",
               lambda ctx: chat(ctx, logit_bias={"100": 500}), (400,), "logit_bias"),
    BadRequest("top_logprobs_out_of_range", "top_logprobs=21 (allowed 0..20) is a 400",
               lambda ctx: chat(ctx, logprobs=True, top_logprobs=21), (400,), "top_logprobs"),
    BadRequest("stream_wrong_type", 'stream="yes" is a 400',
               lambda ctx: chat(ctx, stream="yes"), (400,), "stream"),
    BadRequest("unknown_model", "an unknown model is a 404 model_not_found",
               lambda ctx: chat(ctx, model=UNKNOWN_MODEL), (404,), code="model_not_found"),
    BadRequest("unknown_tool_in_tool_choice", "tool_choice naming a function not in tools is a 400",
               lambda ctx: chat(ctx, tools=TOOLS, tool_choice={"type": "function",
                                                                 "function": {"name": "no_such_tool"}}),
               (400,), "tool_choice"),
    BadRequest("tool_choice_without_tools", 'tool_choice="required" without tools is a 400',
               lambda ctx: chat(ctx, tool_choice="required"), (400,), "tool_choice"),
    BadRequest("unknown_response_format", 'response_format {"type": "xml"} is a 400',
               lambda ctx: chat(ctx, response_format={"type": "xml"}), (400,), "response_format"),
    BadRequest("json_schema_missing", 'response_format "json_schema" without its json_schema is a 400',
               lambda ctx: chat(ctx, response_format={"type": "json_schema"}), (400,), "response_format"),
    BadRequest("prompt_too_long", "a prompt longer than the context is a 400 context_length_exceeded",
               lambda ctx: chat(ctx, messages=user(too_long_prompt(ctx)), max_tokens=1),
               (400,), "messages", "context_length_exceeded"),
    BadRequest("unknown_parameter", "an unrecognized request field is rejected, not silently ignored",
               lambda ctx: chat(ctx, conformance_unknown_field=1), (400,), "conformance_unknown_field",
               level="SHOULD"),
    BadRequest("unknown_route", "an unknown path is a 404 with an error envelope",
               lambda ctx: {"method": "GET", "path": UNKNOWN_ROUTE}, (404,), level="SHOULD"),
    BadRequest("wrong_api_key", "a wrong API key is a 401 invalid_api_key (only run with --api-key)",
               lambda ctx: {**chat(ctx), "api_key": "sk-wrong-conformance-key"}, (401,),
               code="invalid_api_key"),
)


def send(ctx, case: BadRequest):
    if case.name == "wrong_api_key" and not ctx.client.api_key:
        raise Skip("the server was given no API key (--api-key)")
    request = dict(case.build(ctx))
    return ctx.send(request.pop("method"), request.pop("path"), request.pop("body", None), **request)


def _case_check(case: BadRequest) -> Check:
    def run(ctx):
        exchange = send(ctx, case)
        require(exchange.status in case.status,
                f"expected HTTP {' or '.join(map(str, case.status))}, got {exchange.status}",
                exchange.evidence(exchange.text[:2000] if not exchange.is_json else exchange.json))
        error_body(exchange)
    return Check(f"{CATEGORY}.{case.name}", CATEGORY, case.level, case.description, run)


def param_matches(found, expected: str) -> bool:
    """`param` may name the field itself or a path inside it ("messages[0].role", "response_format.type")."""
    return isinstance(found, str) and (found == expected or found.startswith((expected + "[", expected + ".")))


def _answered_cases(ctx):
    """(case, exchange, error) for each case answered with its expected status and an envelope."""
    answered = []
    for case in BAD_REQUESTS:
        try:
            exchange = send(ctx, case)
        except Skip:
            continue
        error = exchange.json.get("error") if exchange.is_json and isinstance(exchange.json, dict) else None
        if exchange.status in case.status and isinstance(error, dict):
            answered.append((case, exchange, error))
    if not answered:
        raise Skip("no bad request was answered with its expected status and an envelope")
    return answered


def param_and_code(ctx):
    wrong = [exchange.evidence(error, f"expected param {case.param!r}" + (f", code {case.code!r}"
                                                                        if case.code else ""))
             for case, exchange, error in _answered_cases(ctx)
             if (case.param and not param_matches(error.get("param"), case.param))
             or (case.code and error.get("code") != case.code)]
    require(not wrong, f"{len(wrong)} error(s) do not name the offending param or the expected code", *wrong)


def error_type(ctx):
    wrong = [exchange.evidence(error, 'expected type "invalid_request_error"')
             for case, exchange, error in _answered_cases(ctx)
             if exchange.status in (400, 404) and error.get("type") != "invalid_request_error"]
    require(not wrong, f"{len(wrong)} 400/404 error(s) are not of type invalid_request_error", *wrong)


CHECKS = tuple(_case_check(case) for case in BAD_REQUESTS) + (
    Check(f"{CATEGORY}.param_and_code", CATEGORY, "SHOULD",
          "error.param names the offending field and error.code is OpenAI's where it has one", param_and_code),
    Check(f"{CATEGORY}.error_type", CATEGORY, "SHOULD",
          'errors for bad requests have type "invalid_request_error"', error_type),
)
