"""Token events → the choices of a response: text, completion tokens, logprobs and finish reason.

The end-of-sequence token that ends a choice is not part of the completion: it adds no text, so it gets
no logprobs entry and is not counted in `completion_tokens` (as OpenAI reports it: one logprobs entry per
completion token, whose bytes concatenate to the content).
"""
from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field

from refengine.output import is_completion_token

from . import sse
from refengine.request import TokenEvent, TopLogprob

LOGPROB_FLOOR = -9999.0                      # OpenAI's stand-in for -inf, which JSON cannot carry


def finite(logprob: float) -> float:
    return float(logprob) if math.isfinite(logprob) else LOGPROB_FLOOR


@dataclass
class ChoiceResult:
    index: int
    text: str = ""
    tokens: int = 0
    scored: list[TokenEvent] = field(default_factory=list)     # the completion tokens' events, for logprobs
    finish_reason: str | None = None

    def add(self, event: TokenEvent, ends: frozenset[int]) -> bool:
        """Take one event; True when it is a completion token."""
        self.text += event.text
        if event.finish_reason is not None:
            self.finish_reason = event.finish_reason
        if not is_completion_token(event, ends):
            return False
        self.tokens += 1
        if event.logprob is not None:
            self.scored.append(event)
        return True

    @property
    def logprob_sum(self) -> float:
        return sum(finite(e.logprob.logprob) for e in self.scored)


def collect(events, n: int, ends: frozenset[int]) -> list[ChoiceResult]:
    choices = [ChoiceResult(i) for i in range(n)]
    for event in events:
        choices[event.index].add(event, ends)
    return choices


def usage(prompt_tokens: int, completion_tokens: int, reasoning_tokens: int | None = None,
          cached_tokens: int = 0) -> dict:
    """OpenAI's usage, with both details objects always there as OpenAI sends them: `cached_tokens` are the
    prompt tokens whose KV came from the prefix cache; `reasoning_tokens` those a thinking model spent
    thinking (part of `completion_tokens`; 0 for a model that does not think); no audio and no predicted
    outputs here, so those counts are 0."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": reasoning_tokens or 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def token_text(top: TopLogprob) -> str:
    """A token as logprobs show it: its text, or for a piece of a UTF-8 character OpenAI's `bytes:\\xNN` form
    (so that different partial tokens never print as the same replacement character)."""
    try:
        return bytes(top.bytes).decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in top.bytes)


def top_entry(top: TopLogprob) -> dict:
    return {"token": token_text(top), "logprob": finite(top.logprob), "bytes": list(top.bytes)}


def chat_logprob(event: TokenEvent) -> dict:
    """One entry of `logprobs.content`: the chosen token, its bytes, and the alternatives asked for."""
    return {**top_entry(event.logprob), "top_logprobs": [top_entry(t) for t in event.top_logprobs]}


@dataclass(frozen=True)
class ResponseHead:
    """What every body or chunk of one response repeats."""
    id: str
    created: int
    model: str
    system_fingerprint: str

    @classmethod
    def new(cls, prefix: str, model: str, fingerprint: str) -> ResponseHead:
        return cls(f"{prefix}-{uuid.uuid4().hex}", int(time.time()), model, fingerprint)

    def fields(self, object_name: str) -> dict:
        return {"id": self.id, "object": object_name, "created": self.created, "model": self.model,
                "system_fingerprint": self.system_fingerprint}

    def chunk(self, object_name: str, choices: list[dict], include_usage: bool, **extra) -> bytes:
        """One SSE chunk of this response. With `include_usage` (stream_options) every chunk has a `usage`
        field, null but in the last, as OpenAI streams it."""
        fields = {**self.fields(object_name), "choices": choices, **extra}
        if include_usage:
            fields.setdefault("usage", None)
        return sse.event(fields)
