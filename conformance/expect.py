"""Small assertions shared by the checks: each returns the part it vouched for, or fails with evidence."""
from __future__ import annotations

from typing import Any

from .check import CheckFailed, Skip, require
from .client import Exchange


def ok_json(exchange: Exchange) -> dict:
    """A 200 response whose body is a JSON object."""
    require(exchange.status == 200, f"expected HTTP 200, got {exchange.status}", exchange.evidence())
    require(exchange.is_json and isinstance(exchange.json, dict), "the response body is not a JSON object",
            exchange.evidence())
    return exchange.json


def ok_completion(exchange: Exchange, choices: int = 1) -> dict:
    """A 200 chat/text completion carrying at least `choices` choices."""
    body = ok_json(exchange)
    found = body.get("choices")
    require(isinstance(found, list) and len(found) >= choices and all(isinstance(c, dict) for c in found),
            f"expected at least {choices} choice(s)", exchange.evidence(found, "choices"))
    return body


def first_choice(body: dict) -> dict:
    return body["choices"][0]


def message_text(choice: dict) -> str:
    """The message content of a chat choice ("" for null or absent)."""
    message = choice.get("message") or {}
    content = message.get("content")
    return content if isinstance(content, str) else ""


def ok_stream(exchange: Exchange) -> list[dict]:
    """A 200 event stream; returns its JSON chunks ([DONE] excluded)."""
    require(exchange.status == 200, f"expected HTTP 200 for a stream, got {exchange.status}",
            exchange.evidence())
    require(exchange.stream is not None and exchange.stream.events, "no server-sent events in the response",
            exchange.evidence(exchange.text[:2000]))
    chunks = exchange.chunks
    require(all(isinstance(chunk, dict) for chunk in chunks), "a stream chunk is not a JSON object",
            exchange.evidence([c for c in chunks if not isinstance(c, dict)][:3]))
    return chunks


def choice_deltas(chunks: list[dict], index: int) -> list[dict]:
    """The `choices` entries of choice `index` across all chunks, in order."""
    return [choice for chunk in chunks for choice in chunk.get("choices") or []
            if isinstance(choice, dict) and choice.get("index") == index]


def stream_text(chunks: list[dict], index: int = 0) -> str:
    return "".join(choice.get("delta", {}).get("content") or "" for choice in choice_deltas(chunks, index)
                   if isinstance(choice.get("delta"), dict))


def stream_finish_reasons(chunks: list[dict], index: int = 0) -> list[Any]:
    return [choice.get("finish_reason") for choice in choice_deltas(chunks, index)
            if choice.get("finish_reason") is not None]


def usage_of(exchange: Exchange, body: dict) -> dict:
    usage = body.get("usage")
    require(isinstance(usage, dict), "the response has no usage object", exchange.evidence(usage, "usage"))
    return usage


def error_body(exchange: Exchange) -> dict:
    """The `error` object of an OpenAI error envelope `{"error": {"message": str, "type": str, ...}}`."""
    evidence = exchange.evidence(note="expected an OpenAI error envelope")
    require(exchange.is_json and isinstance(exchange.json, dict), "the error body is not a JSON object",
            evidence)
    error = exchange.json.get("error")
    require(isinstance(error, dict), 'the error body has no "error" object', evidence)
    require(isinstance(error.get("message"), str) and error["message"] != "",
            'the error object has no non-empty "message" string', evidence)
    require(isinstance(error.get("type"), str), 'the error object has no "type" string', evidence)
    return error


def greedy_text_or_skip(ctx, prompt: str, **fields) -> tuple[Exchange, str]:
    """A greedy completion's text; Skip when the server is not deterministic at temperature 0."""
    first = ctx.chat(prompt, **fields)
    text = message_text(first_choice(ok_completion(first)))
    again = ctx.chat(prompt, fresh=True, **fields)
    if again.status != 200 or not again.is_json or message_text(first_choice(ok_completion(again))) != text:
        raise Skip("two identical requests at temperature 0 gave different texts; cannot compare")
    return first, text


__all__ = ["CheckFailed", "Skip", "require", "ok_json", "ok_completion", "first_choice", "message_text",
           "ok_stream", "choice_deltas", "stream_text", "stream_finish_reasons", "usage_of", "error_body",
           "greedy_text_or_skip"]
