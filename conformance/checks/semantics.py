"""Semantics: does a well-formed response mean what the request asked for?"""
from __future__ import annotations

import time

from ..check import Skip, check, require
from ..expect import (first_choice, greedy_text_or_skip, message_text, ok_completion, ok_json, usage_of)

CATEGORY = "semantics"
SHORT_ANSWER_PROMPT = "Reply with just the word: yes"
SEEDED_TEMPERATURE = 1.0
MAX_TOKENS_PROBE = 5
FINISH_PROBE_MAX_TOKENS = 64


def _check_usage_arithmetic(exchange, usage: dict) -> None:
    fields = ("prompt_tokens", "completion_tokens", "total_tokens")
    require(all(isinstance(usage.get(name), int) and usage[name] >= 0 for name in fields),
            "usage must carry non-negative integer prompt_tokens, completion_tokens, total_tokens",
            exchange.evidence(usage, "usage"))
    require(usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"],
            "usage.total_tokens != prompt_tokens + completion_tokens", exchange.evidence(usage, "usage"))
    require(usage["prompt_tokens"] > 0, "usage.prompt_tokens is 0 for a non-empty prompt",
            exchange.evidence(usage, "usage"))


@check(CATEGORY, "MUST", "usage_arithmetic",
       "usage is present with total_tokens = prompt_tokens + completion_tokens")
def usage_arithmetic(ctx):
    exchange = ctx.chat()
    body = ok_completion(exchange)
    usage = usage_of(exchange, body)
    _check_usage_arithmetic(exchange, usage)
    text = message_text(first_choice(body))
    require(usage["completion_tokens"] >= 1 or text == "",
            "usage.completion_tokens is 0 but the message has content",
            exchange.evidence({"usage": usage, "content": text}))


def _max_tokens_honoured(ctx, field: str) -> None:
    exchange = ctx.chat(**{"max_tokens": None, field: MAX_TOKENS_PROBE})
    body = ok_completion(exchange)
    choice = first_choice(body)
    usage = usage_of(exchange, body)
    completion_tokens = usage.get("completion_tokens")
    evidence = exchange.evidence({"finish_reason": choice.get("finish_reason"), "usage": usage,
                                  "content": message_text(choice)})
    require(isinstance(completion_tokens, int) and completion_tokens <= MAX_TOKENS_PROBE,
            f"{field}={MAX_TOKENS_PROBE} but usage.completion_tokens={completion_tokens}", evidence)
    if choice.get("finish_reason") == "stop" and completion_tokens < MAX_TOKENS_PROBE:
        raise Skip(f"the model stopped after {completion_tokens} tokens, before {field}")
    require(choice.get("finish_reason") == "length",
            f'generation cut by {field} must end with finish_reason "length"', evidence)
    require(completion_tokens == MAX_TOKENS_PROBE,
            f'finish_reason "length" with {completion_tokens} tokens instead of {field}={MAX_TOKENS_PROBE}',
            evidence)


@check(CATEGORY, "MUST", "max_tokens",
       'max_tokens=N cuts generation at exactly N tokens with finish_reason "length"')
def max_tokens(ctx):
    _max_tokens_honoured(ctx, "max_tokens")


@check(CATEGORY, "MUST", "max_completion_tokens",
       'max_completion_tokens=N (the current name of max_tokens) cuts at exactly N tokens, "length"')
def max_completion_tokens(ctx):
    _max_tokens_honoured(ctx, "max_completion_tokens")


def stop_candidate(text: str) -> tuple[int, str] | None:
    """A short substring of `text` from its second half whose first occurrence is where it was taken."""
    for start in range(max(2, len(text) // 2), len(text) - 2):
        candidate = text[start:start + 3]
        if candidate.strip() and text.find(candidate) == start:
            return start, candidate
    return None


def _stop_excluded(ctx, as_list: bool) -> None:
    _, text = greedy_text_or_skip(ctx, "Count from 1 to 50, separated by commas.", max_tokens=16)
    found = stop_candidate(text)
    if found is None:
        raise Skip(f"the greedy text {text!r} is too short to pick a stop string from")
    start, stop = found
    exchange = ctx.chat("Count from 1 to 50, separated by commas.", max_tokens=16,
                        stop=[stop] if as_list else stop)
    choice = first_choice(ok_completion(exchange))
    got = message_text(choice)
    evidence = exchange.evidence({"content": got, "finish_reason": choice.get("finish_reason")},
                                 f"without stop the text was {text!r}; expected {text[:start]!r}")
    require(stop not in got, f"the stop string {stop!r} appears in the output", evidence)
    require(got == text[:start], "the output is not the greedy text cut just before the stop string",
            evidence)
    require(choice.get("finish_reason") == "stop", 'a stop string must end with finish_reason "stop"',
            evidence)


@check(CATEGORY, "MUST", "stop_excluded",
       "a stop sequence (list form) ends generation and is not included in the output")
def stop_excluded(ctx):
    _stop_excluded(ctx, as_list=True)


@check(CATEGORY, "MUST", "stop_single_string",
       "stop may be a single string (not a list) with the same effect")
def stop_single_string(ctx):
    _stop_excluded(ctx, as_list=False)


@check(CATEGORY, "MUST", "finish_reason_stop",
       'a generation that ends by itself has finish_reason "stop"')
def finish_reason_stop(ctx):
    exchange = ctx.chat(SHORT_ANSWER_PROMPT, max_tokens=FINISH_PROBE_MAX_TOKENS)
    body = ok_completion(exchange)
    choice = first_choice(body)
    tokens = (body.get("usage") or {}).get("completion_tokens")
    evidence = exchange.evidence({"finish_reason": choice.get("finish_reason"), "content": message_text(choice),
                                  "completion_tokens": tokens})
    if choice.get("finish_reason") == "length":
        require(tokens == FINISH_PROBE_MAX_TOKENS,
                f'finish_reason "length" after {tokens} tokens, below max_tokens={FINISH_PROBE_MAX_TOKENS}',
                evidence)
        raise Skip(f"the model did not finish within {FINISH_PROBE_MAX_TOKENS} tokens")
    require(choice.get("finish_reason") == "stop",
            f'expected finish_reason "stop", got {choice.get("finish_reason")!r}', evidence)


@check(CATEGORY, "MUST", "n_choices", "n=2 returns two choices with indexes 0 and 1")
def n_choices(ctx):
    exchange = ctx.chat(n=2, temperature=SEEDED_TEMPERATURE, seed=7)
    body = ok_completion(exchange)
    choices = body["choices"]
    summary = [{"index": c.get("index"), "finish_reason": c.get("finish_reason")} for c in choices]
    require(len(choices) == 2, f"n=2 returned {len(choices)} choice(s)", exchange.evidence(summary))
    require(sorted(c.get("index") for c in choices) == [0, 1], "choice indexes are not exactly 0 and 1",
            exchange.evidence(summary))
    require(all(isinstance(c.get("message"), dict) and c.get("finish_reason") for c in choices),
            "every choice needs a message and a finish_reason", exchange.evidence(summary))


@check(CATEGORY, "SHOULD", "temperature0_deterministic",
       "two identical requests at temperature 0 return the same text")
def temperature0_deterministic(ctx):
    first = ctx.chat(fresh=True)
    second = ctx.chat(fresh=True)
    texts = [message_text(first_choice(ok_completion(exchange))) for exchange in (first, second)]
    require(texts[0] == texts[1], "greedy decoding gave two different texts",
            second.evidence({"first": texts[0], "second": texts[1]}))


@check(CATEGORY, "SHOULD", "seed_deterministic",
       "two identical requests at temperature 1 with the same seed return the same text")
def seed_deterministic(ctx):
    first = ctx.chat(temperature=SEEDED_TEMPERATURE, seed=4242, fresh=True)
    second = ctx.chat(temperature=SEEDED_TEMPERATURE, seed=4242, fresh=True)
    texts = [message_text(first_choice(ok_completion(exchange))) for exchange in (first, second)]
    require(texts[0] == texts[1], "the same seed gave two different texts",
            second.evidence({"first": texts[0], "second": texts[1]}))


def logprob_entries(exchange, choice: dict) -> list[dict]:
    logprobs = choice.get("logprobs")
    entries = logprobs.get("content") if isinstance(logprobs, dict) else None
    require(isinstance(entries, list) and all(isinstance(entry, dict) for entry in entries),
            "logprobs=true but choice.logprobs.content is not a list of token objects",
            exchange.evidence(logprobs, "choices[0].logprobs"))
    return entries


def reassembled(entries: list[dict]) -> bytes | None:
    """The concatenated `bytes` of logprob entries; None when a token has no bytes."""
    if any(not isinstance(entry.get("bytes"), list) for entry in entries):
        return None
    try:
        return b"".join(bytes(entry["bytes"]) for entry in entries)
    except (TypeError, ValueError):
        return None


@check(CATEGORY, "MUST", "logprobs_bytes_reassemble",
       "with logprobs=true the tokens' bytes concatenate to exactly the UTF-8 of the content")
def logprobs_bytes_reassemble(ctx):
    exchange = ctx.chat(logprobs=True, top_logprobs=2)
    choice = first_choice(ok_completion(exchange))
    entries = logprob_entries(exchange, choice)
    text = message_text(choice)
    joined = reassembled(entries)
    evidence = exchange.evidence({"content": text, "tokens": [(e.get("token"), e.get("bytes")) for e in entries]})
    require(joined is not None, "a token has no byte list (bytes null or malformed)", evidence)
    require(joined == text.encode("utf-8"), "the tokens' bytes do not reassemble the content", evidence)


@check(CATEGORY, "SHOULD", "logprobs_consistent",
       "one logprob entry per completion token, top_logprobs as asked, sorted, <= 0, greedy token on top")
def logprobs_consistent(ctx):
    exchange = ctx.chat(logprobs=True, top_logprobs=2)
    body = ok_completion(exchange)
    choice = first_choice(body)
    entries = logprob_entries(exchange, choice)
    usage = body.get("usage") or {}
    require(len(entries) == usage.get("completion_tokens", len(entries)),
            f"{len(entries)} logprob entries for {usage.get('completion_tokens')} completion tokens",
            exchange.evidence({"entries": len(entries), "usage": usage}))
    tolerance = 1e-3
    for position, entry in enumerate(entries):
        top = entry.get("top_logprobs")
        evidence = exchange.evidence(entry, f"logprobs.content[{position}]")
        # The spec allows fewer alternatives than asked for, never more.
        require(isinstance(top, list) and 1 <= len(top) <= 2, "top_logprobs=2 but not 1 or 2 alternatives",
                evidence)
        values = [alt.get("logprob") for alt in top]
        require(all(isinstance(v, (int, float)) and v <= tolerance for v in values + [entry.get("logprob")]),
                "a logprob is not a number <= 0", evidence)
        require(values == sorted(values, reverse=True), "top_logprobs are not sorted by logprob", evidence)
        # Greedy decoding picks the most likely token, so it must head the alternatives.
        require(abs(entry["logprob"] - values[0]) <= tolerance,
                "at temperature 0 the chosen token is not the most likely alternative", evidence)


@check(CATEGORY, "SHOULD", "model_echo", "the response's model names the requested model")
def model_echo(ctx):
    exchange = ctx.chat()
    body = ok_completion(exchange)
    model = body.get("model")
    require(isinstance(model, str) and model.startswith(ctx.model),
            f"requested model {ctx.model!r}, response says {model!r}", exchange.evidence(model, "model"))


@check(CATEGORY, "MUST", "models_list", "/models lists the model under test, each id once")
def models_list(ctx):
    exchange = ctx.models()
    body = ok_json(exchange)
    data = body.get("data")
    require(isinstance(data, list) and data, "/models has no data list", exchange.evidence())
    ids = [entry.get("id") for entry in data if isinstance(entry, dict)]
    require(ctx.model in ids, f"the model under test {ctx.model!r} is not listed", exchange.evidence(ids))
    require(len(ids) == len(set(ids)), "a model id is listed twice", exchange.evidence(ids))


@check(CATEGORY, "MUST", "content_parts",
       'a message whose content is a list of {"type": "text"} parts means the same as the plain string')
def content_parts(ctx):
    prompt = "Count from 1 to 50, separated by commas."
    _, text = greedy_text_or_skip(ctx, prompt)
    body = ctx.chat_body(prompt, messages=[{"role": "user", "content": [{"type": "text", "text": prompt}]}])
    exchange = ctx.chat_raw(body)
    got = message_text(first_choice(ok_completion(exchange)))
    require(got == text, "text parts gave a different greedy text than the same string content",
            exchange.evidence({"content": got}, f"with string content: {text!r}"))


def _roles_accepted(ctx, messages: list[dict]) -> None:
    exchange = ctx.chat_raw(ctx.chat_body(messages=messages))
    ok_completion(exchange)


@check(CATEGORY, "MUST", "system_and_multi_turn",
       "system, user and assistant turns are accepted in one conversation")
def system_and_multi_turn(ctx):
    _roles_accepted(ctx, [{"role": "system", "content": "You are terse."},
                          {"role": "user", "content": "Say hi."},
                          {"role": "assistant", "content": "Hi."},
                          {"role": "user", "content": "Count from 1 to 5."}])


@check(CATEGORY, "SHOULD", "developer_role", 'the "developer" role (successor of "system") is accepted')
def developer_role(ctx):
    _roles_accepted(ctx, [{"role": "developer", "content": "You are terse."},
                          {"role": "user", "content": "Count from 1 to 5."}])


@check(CATEGORY, "SHOULD", "created_is_unix_seconds", "created is a Unix time in seconds, close to now")
def created_is_unix_seconds(ctx):
    exchange = ctx.chat()
    created = ok_completion(exchange).get("created")
    require(isinstance(created, int) and abs(created - time.time()) < 2 * 86400,
            "created is not the current Unix time in seconds", exchange.evidence(created, "created"))


@check(CATEGORY, "SHOULD", "ids_unique", "two completions get two different ids")
def ids_unique(ctx):
    ids = [ok_completion(ctx.chat(fresh=True)).get("id") for _ in range(2)]
    require(isinstance(ids[0], str) and ids[0] and ids[0] != ids[1], "completion ids repeat or are empty",
            ctx.exchanges[-1].evidence(ids, "ids of two completions"))


@check(CATEGORY, "SHOULD", "legacy_completions",
       "/completions (legacy) answers a prompt with text, finish_reason and usage")
def legacy_completions(ctx):
    exchange = ctx.send("POST", "completions", {"model": ctx.model, "prompt": "1, 2, 3, 4,",
                                                "max_tokens": MAX_TOKENS_PROBE, "temperature": 0})
    body = ok_completion(exchange)
    choice = first_choice(body)
    require(body.get("object") == "text_completion" and isinstance(choice.get("text"), str),
            'expected object "text_completion" with choices[0].text', exchange.evidence())
    require(choice.get("finish_reason") in ("stop", "length"), "finish_reason is not stop or length",
            exchange.evidence(choice))
    _check_usage_arithmetic(exchange, usage_of(exchange, body))
    require(body["usage"]["completion_tokens"] <= MAX_TOKENS_PROBE, "max_tokens not honoured",
            exchange.evidence(body["usage"], "usage"))


CHECKS = (usage_arithmetic, max_tokens, max_completion_tokens, stop_excluded, stop_single_string,
          finish_reason_stop, n_choices, temperature0_deterministic, seed_deterministic,
          logprobs_bytes_reassemble, logprobs_consistent, model_echo, models_list, content_parts,
          system_and_multi_turn, developer_role, created_is_unix_seconds, ids_unique, legacy_completions)
