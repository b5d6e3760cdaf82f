"""Structured output: response_format json_object and json_schema are enforced, not just accepted."""
from __future__ import annotations

import json

import jsonschema

from ..check import check, require
from ..expect import first_choice, message_text, ok_completion, ok_stream, stream_finish_reasons, stream_text

CATEGORY = "structured-output"
JSON_MAX_TOKENS = 64
# Values an unconstrained model is unlikely to produce for the prompt, so ignoring the schema shows.
PET_SCHEMA = {
    "type": "object",
    "properties": {"colour": {"type": "string", "enum": ["mauve", "teal"]},
                   "legs": {"type": "integer", "minimum": 3, "maximum": 7}},
    "required": ["colour", "legs"],
    "additionalProperties": False,
}
PET_PROMPT = "Describe a cat in one sentence."
JSON_SCHEMA_FORMAT = {"type": "json_schema",
                      "json_schema": {"name": "pet", "strict": True, "schema": PET_SCHEMA}}


def verify_json_output(exchange, text: str, finish_reason, schema: dict | None) -> None:
    """The output parses as a JSON object (valid against `schema`); a cut-off output must start like one."""
    evidence = exchange.evidence({"content": text, "finish_reason": finish_reason})
    if finish_reason == "length":
        require(text.lstrip().startswith("{"), "the output (cut by max_tokens) does not start a JSON object",
                evidence)
        return
    try:
        value = json.loads(text)
    except ValueError as exc:
        require(False, f"the output is not JSON: {exc}", evidence)
    require(isinstance(value, dict), "the output is JSON but not an object", evidence)
    if schema is not None:
        problems = [error.message for error in jsonschema.Draft202012Validator(schema).iter_errors(value)]
        require(not problems, "the output violates the schema: " + "; ".join(problems[:5]), evidence)


@check(CATEGORY, "MUST", "json_object", 'response_format {"type": "json_object"} yields a JSON object')
def json_object(ctx):
    exchange = ctx.chat("Name three colours. Answer in JSON.", max_tokens=JSON_MAX_TOKENS,
                        response_format={"type": "json_object"})
    choice = first_choice(ok_completion(exchange))
    verify_json_output(exchange, message_text(choice), choice.get("finish_reason"), None)


@check(CATEGORY, "MUST", "json_schema_strict",
       "response_format json_schema with strict=true yields JSON valid against the schema")
def json_schema_strict(ctx):
    exchange = ctx.chat(PET_PROMPT, max_tokens=JSON_MAX_TOKENS, response_format=JSON_SCHEMA_FORMAT)
    choice = first_choice(ok_completion(exchange))
    verify_json_output(exchange, message_text(choice), choice.get("finish_reason"), PET_SCHEMA)


@check(CATEGORY, "SHOULD", "json_schema_stream", "json_schema is enforced on streamed output too")
def json_schema_stream(ctx):
    exchange = ctx.chat(PET_PROMPT, max_tokens=JSON_MAX_TOKENS, response_format=JSON_SCHEMA_FORMAT, stream=True)
    chunks = ok_stream(exchange)
    reasons = stream_finish_reasons(chunks, 0)
    verify_json_output(exchange, stream_text(chunks, 0), reasons[-1] if reasons else None, PET_SCHEMA)


@check(CATEGORY, "MUST", "response_format_text", 'response_format {"type": "text"} is accepted')
def response_format_text(ctx):
    ok_completion(ctx.chat(response_format={"type": "text"}))


CHECKS = (json_object, json_schema_strict, json_schema_stream, response_format_text)
