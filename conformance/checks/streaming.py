"""Streaming: server-sent events that an OpenAI client can consume chunk by chunk."""
from __future__ import annotations

import json

from ..check import Skip, check, require
from ..expect import (choice_deltas, error_body, first_choice, message_text, ok_completion, ok_stream,
                      stream_finish_reasons, stream_text)
from .semantics import MAX_TOKENS_PROBE, reassembled

CATEGORY = "streaming"


def plain_stream(ctx):
    return ctx.chat(stream=True)


def usage_stream(ctx):
    return ctx.chat(stream=True, stream_options={"include_usage": True})


@check(CATEGORY, "MUST", "content_type", "a stream is served as text/event-stream")
def content_type(ctx):
    exchange = plain_stream(ctx)
    require(exchange.status == 200, f"expected HTTP 200, got {exchange.status}", exchange.evidence())
    require(exchange.content_type == "text/event-stream",
            f"Content-Type is {exchange.headers.get('content-type')!r}",
            exchange.evidence(dict(exchange.headers), "response headers"))


@check(CATEGORY, "MUST", "sse_framing",
       "every event is `data: <JSON object>` ended by a blank line, apart from comments and [DONE]")
def sse_framing(ctx):
    for exchange in (plain_stream(ctx), usage_stream(ctx)):
        ok_stream(exchange)
        require(not exchange.stream.problems, "; ".join(exchange.stream.problems),
                exchange.evidence(exchange.text[:2000], "raw stream"))
        for data in exchange.data_events:
            if data.strip() == "[DONE]":
                continue
            try:
                parsed = json.loads(data)
            except ValueError:
                parsed = None
            require(isinstance(parsed, dict), "an event's data is not a JSON object",
                    exchange.evidence(data, "event data"))


@check(CATEGORY, "MUST", "done_sentinel", "the stream ends with exactly one `data: [DONE]`, last")
def done_sentinel(ctx):
    for exchange in (plain_stream(ctx), usage_stream(ctx)):
        ok_stream(exchange)
        data = [item.strip() for item in exchange.data_events]
        evidence = exchange.evidence(exchange.data_events[-3:], "last events")
        require(data.count("[DONE]") == 1, f"found {data.count('[DONE]')} [DONE] events", evidence)
        require(data[-1] == "[DONE]", "[DONE] is not the last event", evidence)


@check(CATEGORY, "MUST", "one_id", "every chunk carries the same id, created and model")
def one_id(ctx):
    exchange = plain_stream(ctx)
    chunks = ok_stream(exchange)
    for field in ("id", "created", "model"):
        values = [chunk.get(field) for chunk in chunks]
        require(values and values[0] not in (None, "") and len(set(map(str, values))) == 1,
                f"chunks disagree on (or lack) {field!r}", exchange.evidence(values, f"{field} of each chunk"))


@check(CATEGORY, "MUST", "role_first", 'the first delta of a choice carries role "assistant"')
def role_first(ctx):
    exchange = plain_stream(ctx)
    deltas = choice_deltas(ok_stream(exchange), 0)
    require(deltas, "no chunk carries choice 0", exchange.evidence())
    require(isinstance(deltas[0].get("delta"), dict) and deltas[0]["delta"].get("role") == "assistant",
            'the first delta has no role "assistant"', exchange.evidence(deltas[0], "first delta"))


def _one_finish_reason(exchange, chunks: list[dict], index: int) -> None:
    deltas = choice_deltas(chunks, index)
    reasons = stream_finish_reasons(chunks, index)
    require(len(reasons) == 1, f"choice {index} has {len(reasons)} non-null finish_reason(s)",
            exchange.evidence([d for d in deltas if d.get("finish_reason") is not None] or deltas[-3:]))
    last = max(i for i, d in enumerate(deltas) if d.get("finish_reason") is not None)
    after = [d for d in deltas[last + 1:]
             if isinstance(d.get("delta"), dict) and (d["delta"].get("content") or d["delta"].get("tool_calls"))]
    require(not after, f"choice {index} has content after its finish_reason", exchange.evidence(after[:3]))


@check(CATEGORY, "MUST", "one_finish_reason",
       "each choice gets exactly one non-null finish_reason, after its last content")
def one_finish_reason(ctx):
    exchange = plain_stream(ctx)
    _one_finish_reason(exchange, ok_stream(exchange), 0)


@check(CATEGORY, "MUST", "include_usage",
       "with include_usage, a last chunk with empty choices carries usage; earlier chunks carry null")
def include_usage(ctx):
    exchange = usage_stream(ctx)
    chunks = ok_stream(exchange)
    last = chunks[-1]
    require(last.get("choices") == [] and isinstance(last.get("usage"), dict),
            "the last chunk is not {choices: [], usage: {...}}", exchange.evidence(last, "last chunk"))
    usage = last["usage"]
    require(all(isinstance(usage.get(k), int) for k in ("prompt_tokens", "completion_tokens", "total_tokens"))
            and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"],
            "usage arithmetic is wrong in the usage chunk", exchange.evidence(usage, "usage"))
    early = [chunk for chunk in chunks[:-1] if chunk.get("usage") is not None]
    require(not early, f"{len(early)} chunk(s) before the last carry a non-null usage",
            exchange.evidence(early[:3]))


@check(CATEGORY, "MUST", "length_finish",
       'a stream cut by max_tokens=N ends with finish_reason "length" after N tokens')
def length_finish(ctx):
    exchange = ctx.chat(stream=True, stream_options={"include_usage": True}, max_tokens=MAX_TOKENS_PROBE)
    chunks = ok_stream(exchange)
    reasons = stream_finish_reasons(chunks, 0)
    usage = chunks[-1].get("usage") if chunks else None
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    evidence = exchange.evidence({"finish_reasons": reasons, "usage": usage, "text": stream_text(chunks, 0)})
    if reasons[-1:] == ["stop"] and isinstance(tokens, int) and tokens < MAX_TOKENS_PROBE:
        raise Skip(f"the model stopped after {tokens} tokens, before max_tokens")
    require(reasons[-1:] == ["length"], f'finish_reason(s) {reasons}, expected "length"', evidence)
    require(tokens in (None, MAX_TOKENS_PROBE), f"{tokens} completion tokens for max_tokens={MAX_TOKENS_PROBE}",
            evidence)


@check(CATEGORY, "SHOULD", "no_usage_unless_asked", "without include_usage no chunk carries usage")
def no_usage_unless_asked(ctx):
    exchange = plain_stream(ctx)
    with_usage = [chunk for chunk in ok_stream(exchange) if chunk.get("usage") is not None]
    require(not with_usage, f"{len(with_usage)} chunk(s) carry usage that was not asked for",
            exchange.evidence(with_usage[:3]))


def _comparable_non_stream(ctx):
    """The non-stream answer to the same greedy request; Skip when greedy decoding is not repeatable."""
    exchange = ctx.chat()
    body = ok_completion(exchange)
    again = ctx.chat(fresh=True)
    if message_text(first_choice(ok_completion(again))) != message_text(first_choice(body)):
        raise Skip("greedy decoding is not repeatable on this server; cannot compare")
    return exchange, body


@check(CATEGORY, "MUST", "matches_non_stream",
       "at temperature 0 the streamed text and finish_reason equal the non-streamed ones")
def matches_non_stream(ctx):
    _, body = _comparable_non_stream(ctx)
    exchange = plain_stream(ctx)
    chunks = ok_stream(exchange)
    expected = {"content": message_text(first_choice(body)),
                "finish_reason": first_choice(body).get("finish_reason")}
    reasons = stream_finish_reasons(chunks, 0)
    got = {"content": stream_text(chunks, 0), "finish_reason": reasons[-1] if reasons else None}
    require(got == expected, "stream and non-stream disagree",
            exchange.evidence(got, f"non-stream gave {expected!r}"))


@check(CATEGORY, "SHOULD", "usage_matches_non_stream",
       "the include_usage totals equal the non-streamed usage of the same greedy request")
def usage_matches_non_stream(ctx):
    _, body = _comparable_non_stream(ctx)
    exchange = usage_stream(ctx)
    chunks = ok_stream(exchange)
    usage = chunks[-1].get("usage")
    if not isinstance(usage, dict):
        raise Skip("no usage chunk (reported by streaming.include_usage)")
    keys = ("prompt_tokens", "completion_tokens", "total_tokens")
    expected = {key: (body.get("usage") or {}).get(key) for key in keys}
    got = {key: usage.get(key) for key in keys}
    require(got == expected, "streamed usage differs from non-streamed usage",
            exchange.evidence(got, f"non-stream usage: {expected!r}"))


@check(CATEGORY, "MUST", "n_choices", "a stream with n=2 interleaves choices 0 and 1, each complete")
def n_choices(ctx):
    exchange = ctx.chat(stream=True, n=2, temperature=1.0, seed=11)
    chunks = ok_stream(exchange)
    indexes = sorted({c.get("index") for chunk in chunks for c in chunk.get("choices") or []}, key=str)
    require(indexes == [0, 1], f"choice indexes in the stream are {indexes}", exchange.evidence(indexes))
    for index in (0, 1):
        _one_finish_reason(exchange, chunks, index)


@check(CATEGORY, "MUST", "invalid_request_not_streamed",
       "an invalid stream request gets an HTTP error with a JSON envelope, not a 200 event stream")
def invalid_request_not_streamed(ctx):
    exchange = ctx.chat(stream=True, temperature=5)
    require(exchange.status == 400, f"expected HTTP 400, got {exchange.status}",
            exchange.evidence(exchange.text[:1000]))
    error_body(exchange)


@check(CATEGORY, "SHOULD", "logprobs", "streamed logprobs' bytes reassemble the streamed text")
def logprobs(ctx):
    exchange = ctx.chat(stream=True, logprobs=True)
    deltas = choice_deltas(ok_stream(exchange), 0)
    entries = [entry for d in deltas for entry in ((d.get("logprobs") or {}).get("content") or [])]
    text = "".join((d.get("delta") or {}).get("content") or "" for d in deltas)
    evidence = exchange.evidence({"text": text, "tokens": [(e.get("token"), e.get("bytes")) for e in entries]})
    require(entries, "logprobs=true but no chunk carries logprobs.content", evidence)
    require(reassembled(entries) == text.encode("utf-8"), "the bytes do not reassemble the streamed text",
            evidence)


CHECKS = (content_type, sse_framing, done_sentinel, one_id, role_first, one_finish_reason, include_usage,
          length_finish,
          no_usage_unless_asked, matches_non_stream, usage_matches_non_stream, n_choices,
          invalid_request_not_streamed, logprobs)
