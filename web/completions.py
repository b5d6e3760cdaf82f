"""POST /v1/completions: the legacy text completions API (raw prompts, no chat template).

`prompt` may be one string, a list of strings, a list of token ids or a list of token id lists; each
prompt is its own engine request and its n choices are numbered prompt_index * n + choice_index, as
OpenAI numbers them. `echo` puts the prompt in front of the text; `best_of` generates that many choices
and returns the n with the highest total logprob. Logprobs take this API's own shape (`tokens`,
`token_logprobs`, `top_logprobs` as {token: logprob} maps with the chosen token always in, `text_offset`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import falcon

from refengine.output import end_ids, is_completion_token
from refengine.request import GenerationRequest, PromptTokenScore, TokenEvent
from refengine.trace import stage, tracing

from . import sse
from .body import Settings, read_json, tell_ignored
from .choices import ChoiceResult, ResponseHead, collect, finite, token_text, usage
from .engine import Engine, EngineSlot
from .metrics import Metrics
from .respond import ResponsePlan, Tally, respond
from .schema import CompletionCall, parse_completion
from .traces import trace_event, traced_input, with_trace

PARAMS = {"prompt": "prompt", "max_tokens": "max_tokens", "n": "n", "logit_bias": "logit_bias"}


@dataclass
class LogprobsBuilder:
    """The legacy logprobs object of one choice, built token by token."""
    offset: int                               # where the next token starts in the returned text

    def __post_init__(self):
        self.tokens, self.token_logprobs, self.top_logprobs, self.text_offset = [], [], [], []

    def add(self, event: TokenEvent) -> None:
        self.add_token(event.logprob, event.logprob.logprob, event.top_logprobs)

    def add_token(self, token, logprob: float | None, top_logprobs) -> None:
        """`token` has the token's `bytes`; a None `logprob` (a prompt's first token) has no alternatives."""
        chosen = token_text(token)
        alternatives = None
        if logprob is not None:
            alternatives = {token_text(top): finite(top.logprob) for top in top_logprobs}
            alternatives[chosen] = finite(logprob)                   # the chosen token is always there
        self.tokens.append(chosen)
        self.token_logprobs.append(None if logprob is None else finite(logprob))
        self.top_logprobs.append(alternatives)
        self.text_offset.append(self.offset)
        self.offset += len(bytes(token.bytes).decode("utf-8", errors="replace"))

    def body(self) -> dict:
        return {"tokens": self.tokens, "token_logprobs": self.token_logprobs, "top_logprobs": self.top_logprobs,
                "text_offset": self.text_offset}


def logprobs_of(events: list[TokenEvent], offset: int) -> dict:
    builder = LogprobsBuilder(offset)
    for event in events:
        builder.add(event)
    return builder.body()


def prompt_logprobs_of(scores: list[PromptTokenScore]) -> dict:
    """The echoed prompt's part of the logprobs: its first token has none (nothing came before it)."""
    builder = LogprobsBuilder(0)
    for score in scores:
        builder.add_token(score, score.logprob, score.top_logprobs)
    return builder.body()


def joined(*parts: dict) -> dict:
    """Logprobs objects one after the other (the echoed prompt's, then the completion's)."""
    return {key: [item for part in parts for item in part[key]] for key in parts[0]}


def prompt_ids(engine: Engine, prompt) -> list[int]:
    if isinstance(prompt, list):
        return prompt
    tokenizer = engine.model.tokenizer
    return tokenizer.encode(prompt, add_bos=tokenizer.special.add_bos)


def traced_request(engine: Engine, call: CompletionCall, prompt, constraint=None) -> GenerationRequest:
    """The engine request of one prompt (its output held to `constraint`, a compiled ConstraintSpec), with its
    trace when the call asked for one."""
    trace = traced_input(call.options.trace_top_k, prompt=prompt)
    with tracing(trace), stage("tokenize"):
        ids = prompt_ids(engine, prompt)
    return call.options.request(ids, constraint, trace=trace)


def prompt_text(engine: Engine, prompt) -> str:
    return prompt if isinstance(prompt, str) else engine.model.tokenizer.decode(prompt)


def best(choices: list[ChoiceResult], n: int) -> list[ChoiceResult]:
    """The n choices with the highest total logprob, in their original order."""
    if len(choices) == n:
        return choices
    kept = sorted(sorted(choices, key=lambda c: c.logprob_sum, reverse=True)[:n], key=lambda c: c.index)
    return kept


def completion_body(head: ResponseHead, per_prompt: list[list[ChoiceResult]], echoes: list[str],
                    prompt_scores: list[list[PromptTokenScore]], call: CompletionCall, prompt_tokens: int,
                    cached_tokens: int) -> dict:
    choices = []
    for p, (results, echo, scores) in enumerate(zip(per_prompt, echoes, prompt_scores)):
        for j, choice in enumerate(best(results, call.n)):
            shown = choice.scored if call.generates else []
            logprobs = None
            if call.logprobs is not None:
                logprobs = logprobs_of(shown, len(echo))
                if call.echo:
                    logprobs = joined(prompt_logprobs_of(scores), logprobs)
            choices.append({"index": p * call.n + j, "text": echo + (choice.text if call.generates else ""),
                            "logprobs": logprobs,
                            "finish_reason": choice.finish_reason if call.generates else "length"})
    return {**head.fields("text_completion"), "choices": choices,
            "usage": usage(prompt_tokens, generated_tokens(per_prompt, call), cached_tokens=cached_tokens)}


def generated_tokens(per_prompt: list[list[ChoiceResult]], call: CompletionCall) -> int:
    """Every generated choice counts, the best_of ones not returned too; max_tokens 0 generates nothing."""
    return sum(c.tokens for results in per_prompt for c in results) if call.generates else 0


class CompletionReply:
    """The legacy API's shapes: `text_completion` chunks and body, choices numbered p·n + j."""

    def __init__(self, call: CompletionCall, head: ResponseHead, echoes: list[str], ends: frozenset[int]):
        self.call, self.head, self.echoes, self.ends = call, head, echoes, ends

    def collect(self, handles: list, events: list) -> list[list[ChoiceResult]]:
        return [collect(stream, self.call.options.n, self.ends) for stream in events]

    def completion_tokens(self, per_prompt: list[list[ChoiceResult]]) -> int:
        return generated_tokens(per_prompt, self.call)

    def body(self, handles: list, per_prompt: list[list[ChoiceResult]]) -> dict:
        return with_trace(completion_body(self.head, per_prompt, self.echoes, [h.prompt_scores for h in handles],
                                          self.call, sum(h.prompt_tokens for h in handles),
                                          sum(h.cached_tokens for h in handles)), handles)

    def stream(self, handles: list, items, tally: Tally) -> Iterator[bytes]:
        """SSE chunks of `text_completion` objects: the echoes, the text, each choice's finish, usage."""
        call, echoes = self.call, self.echoes

        def chunk(choices: list[dict], **extra) -> bytes:
            if call.continuous_usage and "usage" not in extra:        # vLLM's: the usage so far on each chunk
                extra["usage"] = usage(sum(h.prompt_tokens for h in handles), tally.completion_tokens)
            return self.head.chunk("text_completion", choices, call.include_usage, **extra)

        def piece(index: int, text: str, logprobs=None, finish_reason=None) -> bytes:
            return chunk([{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}])

        offsets = {}
        scored = call.echo and call.logprobs is not None     # the echo carries the prompt's logprobs
        echoed = set()
        for p, echo in enumerate(echoes):
            for j in range(call.n):
                offsets[p * call.n + j] = len(echo)
                if echo and not scored:
                    yield piece(p * call.n + j, echo)
        for item in items:
            if item is None:
                yield sse.KEEPALIVE
                continue
            p, event = item
            # its prompt's scores are in with its first event (a prompt that fails before has no echo)
            if scored and p not in echoed:
                echoed.add(p)
                for j in range(call.n):
                    yield piece(p * call.n + j, echoes[p], prompt_logprobs_of(handles[p].prompt_scores))
            index = p * call.n + event.index
            if not call.generates:                       # max_tokens 0: only the echo, then the finish
                if event.finish_reason is not None:
                    yield piece(index, "", finish_reason="length")
                continue
            counted = is_completion_token(event, self.ends)
            tally.completion_tokens += counted
            logprobs = None
            if counted and call.logprobs is not None:
                builder = LogprobsBuilder(offsets[index])
                builder.add(event)
                offsets[index] = builder.offset
                logprobs = builder.body()
            if event.text or logprobs:
                yield piece(index, event.text, logprobs)
            if event.finish_reason is not None:
                yield piece(index, "", finish_reason=event.finish_reason)
        if call.include_usage:
            yield chunk([], usage=usage(sum(h.prompt_tokens for h in handles), tally.completion_tokens,
                                        cached_tokens=sum(h.cached_tokens for h in handles)))
        yield from trace_event(handles)


class Completions:
    def __init__(self, slot: EngineSlot, metrics: Metrics, settings: Settings):
        self.slot, self.metrics, self.settings = slot, metrics, settings

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.monotonic()
        engine = self.slot.get()
        body = read_json(req, self.settings.max_body_bytes)
        call = parse_completion(body, serves=engine.serves, vocab_size=engine.model.vocab_size,
                                context_length=engine.context_length, strict=self.settings.strict_params)
        tell_ignored(resp, call.ignored)
        constraint = engine.constraint_spec(call.constraint)      # vLLM's guided_* fields, compiled once
        reply = CompletionReply(call, ResponseHead.new("cmpl", engine.model_id, engine.fingerprint),
                                [prompt_text(engine, p) if call.echo else "" for p in call.prompts],
                                end_ids(engine.model.eos_ids, call.options.stopping.ignore_eos))
        plan = ResponsePlan(requests=tuple(traced_request(engine, call, p, constraint) for p in call.prompts),
                            reply=reply, stream=call.stream,
                            params={**PARAMS, "n": "best_of" if call.options.n > call.n else "n",
                                    "constraint": call.constraint and call.constraint.param})
        respond(req, resp, engine, self.metrics, plan, started=started, keepalive_s=self.settings.keepalive_s)
