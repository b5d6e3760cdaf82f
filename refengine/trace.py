"""A request's trace: what every stage of the pipeline did to it, as one JSON document.

Off unless a request asks (`"trace": true`); then each stage writes what it did into the request's
`RequestTrace` as a by-product of doing it (the stages stay pure: a trace only listens):

    messages, tools (as received) ─► template ─► prompt text ─► tokens (ids, exact bytes), truncation
    ─► prefix cache (positions reused) ─► forward passes (step, batch size, time)
    ─► per generated token: top-k logits after the forward pass and after each processor in order
       (logit_bias, penalties, DRY, the constraint's mask, temperature / greedy, top-k, top-p, min-p),
       the constraint's state and how many tokens it allowed, the sampled token, its probability and
       the random draw, the detokenized piece and what the stop check let out
    ─► finish reason and why; timings of every stage.

The request's thread records the stages it runs (template, tokenize) through `stage` / `note`, which find
the request's trace in a context variable; the engine records into `request.trace` on the scheduler
thread; the response reads the document once the request is done (its events are a happens-before). The
format is `trace.schema.json` beside this file.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import numpy as np

from .processors import NEG_INF, top_indices

SCHEMA_PATH = Path(__file__).with_name("trace.schema.json")
FORMAT = "refengine.trace/1"
DEFAULT_TOP_K = 10
MAX_TOP_K = 50

_active: ContextVar["RequestTrace | None"] = ContextVar("refengine_trace", default=None)


@contextmanager
def tracing(trace: "RequestTrace | None"):
    """Make `trace` the one `stage` and `note` record into, in this thread's context (None: nothing)."""
    token = _active.set(trace)
    try:
        yield trace
    finally:
        _active.reset(token)


@contextmanager
def stage(name: str):
    """Time a stage of the request's own thread (template, tokenize) into the active trace, if any."""
    trace = _active.get()
    if trace is None:
        yield
        return
    started = time.perf_counter()
    try:
        yield
    finally:
        trace.timed(name, started, time.perf_counter())


def note(key: str, value) -> None:
    """Record a fact about the request (e.g. what truncation dropped) in the active trace, if any."""
    trace = _active.get()
    if trace is not None:
        trace.notes[key] = value


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 4)


def _finite(value: float) -> float | None:
    """JSON has no -inf: a logit taken out by a processor is null."""
    return float(value) if math.isfinite(value) else None


class RequestTrace:
    """The trace of one request (one prompt with its n choices)."""

    def __init__(self, top_k: int = DEFAULT_TOP_K):
        self.top_k = top_k
        self.started = time.perf_counter()
        self.input: dict = {}                # what the client sent that shaped the prompt
        self.notes: dict = {}
        self.timings: list[dict] = []        # stages of the request's thread, in order
        self.prompt: dict | None = None
        self.steps: list[dict] = []          # the forward passes this request ran in
        self.choices: dict[int, dict] = {}
        self.ended: float | None = None
        self._piece = None                   # token id -> its bytes (the model's), once the prompt is set

    # ---- the request's thread ----

    def timed(self, name: str, started: float, ended: float) -> None:
        self.timings.append({"stage": name, "at_ms": _ms(started - self.started), "ms": _ms(ended - started)})

    # ---- the engine ----

    def set_prompt(self, piece, prompt_ids) -> None:
        """`piece`: a token id's bytes (a special token's name for those that have no text)."""
        self._piece = piece
        tokens = [self.token(i) for i in prompt_ids]
        self.prompt = {"text": b"".join(bytes(t["bytes"]) for t in tokens).decode("utf-8", errors="replace"),
                       "tokens": tokens, "cached_positions": 0}

    def token(self, token_id: int) -> dict:
        piece = self._piece(token_id)
        return {"id": int(token_id), "text": piece.decode("utf-8", errors="replace"), "bytes": list(piece)}

    def forward(self, step: int, kind: str, batch_size: int, new_tokens: int, started: float, ended: float) -> None:
        """A forward pass this request ran in: `kind` is what its own rows were (a prompt chunk or a decode
        step), `batch_size` the sequences in the pass, `new_tokens` all of the pass's rows."""
        self.steps.append({"step": step, "kind": kind, "batch_size": batch_size, "new_tokens": new_tokens,
                           "at_ms": _ms(started - self.started), "ms": _ms(ended - started)})

    def candidates(self, logits: np.ndarray) -> dict:
        """The top-k of a [V] logits vector (descending; tokens a processor took out are left out) and how
        many tokens are still possible."""
        top = [int(i) for i in top_indices(logits, self.top_k) if logits[i] > NEG_INF]
        return {"top": [{**self.token(i), "logit": _finite(logits[i])} for i in top],
                "possible": int(np.count_nonzero(logits > NEG_INF))}

    def generated(self, index: int, record: dict) -> None:
        self.choices.setdefault(index, {"index": index, "tokens": [], "finish_reason": None, "why": None})
        self.choices[index]["tokens"].append(record)

    def finished(self, index: int, reason: str, why: str) -> None:
        self.choices.setdefault(index, {"index": index, "tokens": [], "finish_reason": None, "why": None})
        self.choices[index].update(finish_reason=reason, why=why)
        self.ended = time.perf_counter()

    # ---- the response ----

    def document(self) -> dict:
        ended = self.ended or time.perf_counter()
        return {"format": FORMAT, "top_k": self.top_k, "input": self.input, "notes": self.notes,
                "prompt": self.prompt, "steps": self.steps,
                "choices": [self.choices[i] for i in sorted(self.choices)],
                "timings": self.timings, "wall_ms": _ms(ended - self.started)}


class TokenTrace:
    """One generated token's record, filled as `Generation.choose` goes: the stages' candidates (this is
    the `record` the processors call), then the mask, the draw, the text."""

    def __init__(self, trace: RequestTrace, raw_logits: np.ndarray):
        self.trace = trace
        self.clock = time.perf_counter()
        self.record = {"step": trace.steps[-1]["step"] if trace.steps else None,
                       "stages": [{"stage": "forward", **trace.candidates(raw_logits)}],
                       "constraint": None, "timings_ms": {}}

    def lap(self, name: str) -> None:
        """Charge the time since the last lap to `name`."""
        now = time.perf_counter()
        self.record["timings_ms"][name] = _ms(now - self.clock)
        self.clock = now

    def stage(self, name: str, logits: np.ndarray) -> None:
        self.record["stages"].append({"stage": name, **self.trace.candidates(logits)})

    def constraint(self, state: int | None, allowed: np.ndarray | None) -> None:
        if state is not None and allowed is not None:
            count = int(np.count_nonzero(allowed))
            self.record["constraint"] = {"state": int(state), "allowed": count, "forced": count == 1}

    def sampled(self, token: int, logits: np.ndarray, draw: float) -> None:
        finite = logits[logits > NEG_INF]
        probability = float(np.exp(logits[token] - finite.max()) / np.exp(finite - finite.max()).sum())
        self.record["sampled"] = {**self.trace.token(token), "probability": probability, "draw": float(draw)}

    def text(self, piece: str, emitted: str) -> None:
        """What the detokenizer made of the token and what the stop check let out (less: held back)."""
        self.record["piece"], self.record["emitted"] = piece, emitted
