"""The generation loop: a GenerationRequest in, a stream of TokenEvents out.

Per choice and per step: raw logits → processors (+ the allowed-token mask) → sample → logprobs →
detokenize → stop check. `Generation` holds one request's run-state and turns one row of logits per live
choice into events; who runs the forward pass is up to the caller: `generate` below for one request at a
time, the scheduler for many requests batched together.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from .constrain.automaton import DEAD
from .detokenize import IncrementalDetokenizer, StopChecker
from .kvcache import KVCache
from .model import Model
from .prefixcache import PrefixCache
from .history import DryBreakers, TokenHistory, dry_sequence_breakers
from .processors import apply_processors
from .request import (ContextLengthError, GenerationRequest, PromptTokenScore, RequestError, TokenEvent,
                      TopLogprob)
from .sample import choice_rngs, sample_with_draw, token_logprobs
from .trace import TokenTrace

logger = logging.getLogger(__name__)

PREFILL_CHUNK = 512                          # bounds attention scores to [H, 512, S] during long prefills


def max_new_tokens(model: Model, request: GenerationRequest) -> int:
    """How many tokens each choice may produce; raises RequestError for a request that cannot run
    (ContextLengthError when it does not fit the context)."""
    context = model.config.max_position_embeddings
    prompt_length = len(request.prompt_ids)
    if prompt_length == 0:
        raise RequestError("the prompt is empty")
    vocab_size = model.vocab_size
    if not all(0 <= t < vocab_size for t in request.prompt_ids):
        raise RequestError(f"prompt token ids must be in [0, {vocab_size})")
    if not all(0 <= t < vocab_size for t in request.sampling.logit_bias):
        raise RequestError(f"logit_bias token ids must be in [0, {vocab_size})", "logit_bias")
    requested = request.stopping.max_tokens
    if prompt_length + (requested or 1) > context:
        raise ContextLengthError(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_length + (requested or 1)} tokens ({prompt_length} in the messages, {requested or 1} in "
            f"the completion). Please reduce the length of the messages or completion.")
    most = requested or context - prompt_length
    capped = request.constraint.max_tokens if request.constraint is not None else None
    return most if capped is None else min(most, capped)      # an llguidance grammar's own max_tokens


@dataclass
class Choice:
    """The run-state of one of a request's n choices."""
    index: int
    cache: KVCache
    rng: np.random.Generator
    history: TokenHistory
    detokenizer: IncrementalDetokenizer
    stops: StopChecker
    constraint_state: int | None = None     # None while unconstrained (before a trigger)
    output_bytes: bytearray = field(default_factory=bytearray)   # the output's unsearched end, watching for a trigger
    trigger_seen: bool = False               # the trigger is in output_bytes: `settle` walks the constraint over it
    produced: int = 0
    last_token: int | None = None
    finish_reason: str | None = None


def token_piece(model: Model, token_id: int) -> bytes:
    """The bytes logprobs report for a token: its text, or its literal name for a special token."""
    return model.tokenizer.token_bytes[token_id] or model.tokenizer.token_strings[token_id].encode()


def output_bytes(model: Model, skip_special_tokens: bool = True):
    """What each token adds to the output text: nothing for a special token, or with `skip_special_tokens`
    false its name (vLLM's option), computed once per tokenizer."""
    tokenizer = model.tokenizer
    if skip_special_tokens:
        return tokenizer.token_bytes
    return tokenizer.derived("output_bytes_with_specials", lambda: [
        token_piece(model, i) if i in tokenizer.special_ids else tokenizer.token_bytes[i]
        for i in range(len(tokenizer.token_bytes))])


class Generation:
    """One request's choices, from prefill to their last token.

    The prompt is fed in chunks (`next_chunk`, then `prefilled` with the chunk's last logits row) by whoever
    runs the forward pass, so a scheduler can prefill several requests in one batch; `prefill` does it
    alone. With `reuse_prefix` first, feeding starts after what a prefix cache holds. The n choices appear once
    the whole prompt is in the cache.
    """

    def __init__(self, model: Model, request: GenerationRequest):
        self.model, self.request = model, request
        self.max_tokens = max_new_tokens(model, request)
        self._banned_until_min = self._ending_mask() if request.stopping.min_tokens > 0 else None
        self._banned_always = self._eos_mask() if request.stopping.ignore_eos else None
        self.cache = model.new_cache(0)          # grows a block at a time as the prompt goes in (kvcache.py)
        # n > 1: the prompt's cache stops at the prompt, which the choices share (see `prefilled`)
        self.cache.max_length = len(request.prompt_ids) + (self.max_tokens if request.n == 1 else 0)
        self.cached_tokens = 0
        self.prompt_scores: list[PromptTokenScore] = []     # with prompt_logprobs: one per prompt token
        self.first_logits = None
        self.choices: list[Choice] = []
        self.trace = request.trace               # a RequestTrace, or None (not traced)
        if self.trace is not None:
            self.trace.set_prompt(lambda token: token_piece(model, token), request.prompt_ids)

    def reuse_prefix(self, prefix_cache: PrefixCache | None) -> None:
        """Before any of the prompt is fed: start from what `prefix_cache` holds of its beginning. Not for a
        prompt to score, whose every position's logits are wanted."""
        if prefix_cache is None or self.scores_prompt or self.cache.length:
            return
        prefix = prefix_cache.lookup(self.request.prompt_ids)
        if prefix is not None:
            self.cache = prefix.cache.fork(self.cache.capacity_for(len(self.request.prompt_ids)), prefix.length,
                                           max_length=self.cache.max_length)   # room for the whole prompt
            self.cached_tokens = prefix.length
            if self.trace is not None:
                self.trace.prompt["cached_positions"] = prefix.length

    def next_chunk(self, limit: int = PREFILL_CHUNK) -> list[int]:
        """The prompt tokens to feed next (at most `limit`); [] once the prompt is in."""
        start = self.cache.length
        return list(self.request.prompt_ids[start:start + limit])

    @property
    def scores_prompt(self) -> bool:
        """Whether `prefilled` wants every row of a chunk's logits (to score the prompt), not just the last."""
        return self.request.prompt_logprobs is not None

    def prefilled(self, logits) -> None:
        """After a chunk went through the model: `logits` is its last row [V], or with `scores_prompt` all
        its rows [T, V]. On the last chunk, the last row starts the n choices."""
        if self.scores_prompt:
            self._score_prompt(logits)
            logits = logits[-1]
        if self.cache.length < len(self.request.prompt_ids):
            return
        model, request = self.model, self.request
        breakers = dry_breakers(model, request.sampling)
        self.first_logits = logits.copy()        # [V], not a view holding the whole step's logits
        if request.n == 1:
            caches = [self.cache]
        else:                                    # each choice reads the prompt's cache and writes its own blocks
            caches = [self.cache.branch(len(request.prompt_ids) + self.max_tokens) for _ in range(request.n)]
        self.choices = [
            Choice(index=i, cache=c, rng=rng,
                   history=TokenHistory.start(request.prompt_ids, model.vocab_size, breakers),
                   detokenizer=IncrementalDetokenizer(output_bytes(model, request.stopping.skip_special_tokens)),
                   stops=StopChecker(request.stopping.stop, request.stopping.include_stop_str),
                   constraint_state=self._initial_constraint_state())
            for i, (c, rng) in enumerate(zip(caches, choice_rngs(request.sampling.seed, request.n)))]

    def _score_prompt(self, rows) -> None:
        """Row j of a chunk that starts at prompt position s predicts prompt token s + j + 1. (A prompt to
        score never starts from a cached prefix: see `reuse_prefix`.)"""
        prompt = self.request.prompt_ids
        start = self.cache.length - rows.shape[0]
        if start == 0:
            self.prompt_scores.append(self._prompt_score(prompt[0], None))
        for position, row in zip(range(start + 1, len(prompt)), rows):      # [V] each
            value, pairs = token_logprobs(row, prompt[position], self.request.prompt_logprobs)
            self.prompt_scores.append(self._prompt_score(prompt[position], value, pairs))

    def _prompt_score(self, token_id: int, value: float | None, pairs=()) -> PromptTokenScore:
        piece = token_piece(self.model, token_id)
        return PromptTokenScore(token_id=token_id, token=piece.decode("utf-8", errors="replace"),
                                bytes=list(piece), logprob=value,
                                top_logprobs=tuple(self._logprob(i, v) for i, v in pairs))

    def fed(self) -> tuple:
        """The tokens whose keys and values are in the cache, and that cache: the prompt as far as it went
        in, then the first choice's tokens but its last (sampled, never fed)."""
        if self.choices:
            choice = self.choices[0]
            return choice.history.context[:choice.history.length], choice.cache
        return self.request.prompt_ids, self.cache

    def prefill(self) -> "Generation":
        """Feed the whole prompt on its own."""
        while chunk := self.next_chunk():
            started = time.perf_counter()
            logits = self.model.forward([chunk], [self.cache], all_logits=self.scores_prompt)   # [T, V] | [1, V]
            if self.trace is not None:
                self.trace.forward(len(self.trace.steps) + 1, "prefill", 1, len(chunk), started, time.perf_counter())
            self.prefilled(logits if self.scores_prompt else logits[0])
        return self

    def _initial_constraint_state(self) -> int | None:
        spec = self.request.constraint
        return spec.constraint.initial_state if spec is not None and spec.trigger is None else None

    def unsettled(self, choice: Choice) -> bool:
        """Whether `choice`'s next token needs slow constraint work first (`settle`): walking the automaton
        over a trigger just seen, or indexing the tokens of a state reached for the first time."""
        if choice.trigger_seen:
            return True
        state = choice.constraint_state
        return state is not None and not self.request.constraint.constraint.ready(state)

    def settle(self, choice: Choice) -> None:
        """Do that work. `choose` does it when needed; a scheduler runs it on another thread while the choice
        waits (the choice is not touched meanwhile), so a hard constraint does not stall other streams."""
        spec = self.request.constraint
        if choice.trigger_seen:
            self._enter_constraint(choice)
        if choice.constraint_state is not None:
            spec.constraint.allowed(choice.constraint_state)        # indexes the state's tokens

    def _allowed(self, choice: Choice) -> np.ndarray | None:
        """The [V] mask of tokens this choice may take now (None: any), constraint and EOS bans combined."""
        banned = self._banned_always
        if choice.produced < self.request.stopping.min_tokens:     # (EOS and stop tokens: a superset)
            banned = self._banned_until_min
        if choice.constraint_state is None:
            return banned
        allowed = self.request.constraint.constraint.allowed(choice.constraint_state)
        if banned is not None and (allowed & banned).any():     # the constraint wins when they clash
            allowed = allowed & banned
        return allowed

    def _follow_constraint(self, choice: Choice, token: int) -> None:
        """Advance the constraint on `token`; with a trigger, note when it shows (`settle` switches the
        constraint on)."""
        spec = self.request.constraint
        if spec is None:
            return
        if choice.constraint_state is not None:
            choice.constraint_state = spec.constraint.advance(choice.constraint_state, token)
        elif spec.trigger is not None:
            trigger, seen = spec.trigger.encode(), choice.output_bytes
            seen += self.model.tokenizer.token_bytes[token]
            if trigger in seen:
                choice.trigger_seen = True
            else:                                # only a trigger's beginning can matter later
                del seen[:max(0, len(seen) - len(trigger) + 1)]

    def _enter_constraint(self, choice: Choice) -> None:
        """The constraint covers the trigger and what followed it: start it there, unless what followed
        cannot be right (then watch for the next trigger)."""
        spec = self.request.constraint
        constraint, trigger, seen = spec.constraint, spec.trigger.encode(), choice.output_bytes
        choice.trigger_seen = False
        while (found := seen.find(trigger)) >= 0:
            state = constraint.walk(constraint.initial_state, bytes(seen[found:]))
            if state != DEAD:
                choice.constraint_state = state
                return
            del seen[:found + 1]
        del seen[:max(0, len(seen) - len(trigger) + 1)]

    def _eos_mask(self) -> np.ndarray:
        allowed = np.ones(self.model.vocab_size, dtype=bool)
        allowed[list(self.model.eos_ids)] = False
        return allowed

    def _ending_mask(self) -> np.ndarray:
        """What min_tokens bans: EOS and the request's stop tokens (ignore_eos leaves the latter alone)."""
        allowed = self._eos_mask()
        allowed[list(self.request.stopping.stop_token_ids)] = False
        return allowed

    @property
    def live(self) -> list[Choice]:
        return [c for c in self.choices if c.finish_reason is None]

    def choose(self, choice: Choice, raw_logits: np.ndarray) -> TokenEvent:
        """Pick `choice`'s next token from its raw logits [V] and say what it adds."""
        request, model = self.request, self.model
        if self.unsettled(choice):
            self.settle(choice)
        traced = TokenTrace(self.trace, raw_logits) if self.trace is not None else None
        allowed = self._allowed(choice)
        if traced:
            traced.lap("mask")
            traced.constraint(choice.constraint_state, allowed)
        logits = apply_processors(raw_logits, request.sampling, choice.history, allowed,   # [V]
                                  traced.stage if traced else None)
        if traced:
            traced.lap("processors")
        token, draw = sample_with_draw(logits, choice.rng)
        if traced:
            traced.lap("sample")
            traced.sampled(token, logits, draw)
        choice.history.append(token)
        self._follow_constraint(choice, token)
        choice.produced += 1
        choice.last_token = token

        chosen = top = None
        if request.logprobs:
            value, pairs = token_logprobs(raw_logits, token, request.top_logprobs)
            chosen = self._logprob(token, value)
            top = tuple(self._logprob(i, v) for i, v in pairs)

        ended_by_eos = token in model.eos_ids and not request.stopping.ignore_eos
        piece = "" if ended_by_eos else choice.detokenizer.push(token)
        may_stop = choice.produced > request.stopping.min_tokens
        text, stopped = choice.stops.push(piece, detect=may_stop)
        ended_by_token = token in request.stopping.stop_token_ids          # (its text stays, as vLLM has it)
        if ended_by_eos or ended_by_token or stopped:
            choice.finish_reason = "stop"
        elif choice.produced >= self.max_tokens:
            choice.finish_reason = "length"
        if choice.finish_reason is not None and not stopped:
            tail, stopped = choice.stops.push(choice.detokenizer.flush(), detect=may_stop)
            text += tail if stopped else tail + choice.stops.flush()
        if traced:
            traced.text(piece, text)
            self.trace.generated(choice.index, traced.record)
            if choice.finish_reason is not None:
                why = ("the model produced an end-of-sequence token" if ended_by_eos else
                       "the model produced a stop token" if ended_by_token else
                       "a stop string matched" if stopped else f"max_tokens ({self.max_tokens}) reached")
                self.trace.finished(choice.index, choice.finish_reason, why)
        return TokenEvent(index=choice.index, token_id=token, text=text, logprob=chosen,
                          top_logprobs=top or (), finish_reason=choice.finish_reason)

    def _logprob(self, token_id: int, value: float) -> TopLogprob:
        piece = token_piece(self.model, token_id)
        return TopLogprob(token_id=token_id, token=piece.decode("utf-8", errors="replace"),
                          bytes=list(piece), logprob=value)


def dry_breakers(model: Model, sampling) -> DryBreakers | None:
    """DRY's sequence breakers as token tables (None without DRY), computed once per set of breakers: the
    scheduler asks at submit, in the request's thread, so its step only looks them up."""
    if sampling.dry_multiplier == 0:
        return None
    tokenizer = model.tokenizer
    return tokenizer.derived(("dry_breakers", sampling.dry_sequence_breakers),
                             lambda: dry_sequence_breakers(sampling.dry_sequence_breakers,
                                                           tokenizer.token_bytes[:model.vocab_size],
                                                           tokenizer.encode))


def keep_prefix(prefix_cache: PrefixCache | None, generation: Generation) -> None:
    """Offer what `generation` fed through the model to `prefix_cache`. Not a prompt scored (it could not
    reuse it anyway), and never an error: a cache entry is an optimisation."""
    if prefix_cache is None or generation.scores_prompt:
        return
    try:
        prefix_cache.store(*generation.fed())
    except Exception:                            # noqa: BLE001 - logged; the request itself is fine
        logger.warning("could not keep a prefix cache entry", exc_info=True)


def generate(model: Model, request: GenerationRequest,
             prefix_cache: PrefixCache | None = None) -> Iterator[TokenEvent]:
    """Run one request to the end on its own: one batched decode step for its live choices at a time.
    With a `prefix_cache`, start from what it holds of the prompt, and leave it what this run fed."""
    generation = Generation(model, request)
    generation.reuse_prefix(prefix_cache)
    generation.prefill()
    rows = {c.index: generation.first_logits for c in generation.choices}
    try:
        while True:
            for choice in generation.live:
                yield generation.choose(choice, rows[choice.index])
            live = generation.live
            if not live:
                return
            started = time.perf_counter()
            logits = model.forward([[c.last_token] for c in live], [c.cache for c in live])  # [B, V]
            if generation.trace is not None:
                generation.trace.forward(len(generation.trace.steps) + 1, "decode", len(live), len(live), started,
                                         time.perf_counter())
            rows = {c.index: row for c, row in zip(live, logits)}
    finally:                                     # also when the caller stops early (an interrupted reply)
        keep_prefix(prefix_cache, generation)
