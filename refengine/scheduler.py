"""Continuous batching: one thread runs the model for every request in flight.

Request threads `submit` a GenerationRequest and read TokenEvents from the returned handle. The scheduler
thread loops: admit waiting requests while there is room in the batch, then run ONE forward pass that
carries a decode token for every live choice of every running request ([B] new tokens, each sequence on its
own KV cache and position) plus up to `prefill_chunk` prompt tokens of the requests being admitted, hand
each choice its token event, and retire finished or cancelled sequences, freeing their caches. Feeding long
prompts a chunk per step keeps the running streams going while they are read. A request whose prompt is
in, and again one that ends, leaves the KV of what it fed to the prefix cache (prefixcache.py), which
admission consults. Each request keeps
its own RNG streams, processors state and stop checkers inside its `Generation`, so requests never see
each other's tokens, seeds or constraints.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .generate import PREFILL_CHUNK, Generation, keep_prefix, max_new_tokens
from .model import Model
from .prefixcache import PrefixCache
from .request import GenerationRequest


class QueueFullError(Exception):
    """Too many requests are waiting; the client should retry later."""


_DONE = object()


class RequestHandle:
    """A submitted request, seen from the thread that submitted it: iterate to receive its events."""

    def __init__(self, request: GenerationRequest):
        self.request = request
        self.submitted_at = time.monotonic()
        self.prompt_tokens = len(request.prompt_ids)
        self.cached_tokens = 0               # prompt tokens found in the prefix cache; set before any event
        self.prompt_scores = []              # with prompt_logprobs: set before the first event
        self._events: queue.Queue = queue.Queue()
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """The client went away: the scheduler drops the request and frees its caches at its next step."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def __iter__(self):
        while True:
            item = self._events.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    # called by the scheduler thread only
    def _put(self, item) -> None:
        self._events.put(item)


@dataclass
class _InFlight:
    handle: RequestHandle
    generation: Generation
    rows: dict = field(default_factory=dict)     # choice index → its next logits row [V]


class Scheduler:
    def __init__(self, model: Model, *, max_batch: int = 16, max_queue: int = 64,
                 max_kv_bytes: int = 4 * 2**30, prefill_chunk: int = 256, prefix_cache_bytes: int = 2**30):
        self.model = model
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_kv_bytes = max_kv_bytes     # KV caches reserved by the requests running at once
        self.prefill_chunk = prefill_chunk   # prompt tokens fed per step, beside the decode tokens
        self.prefix_cache = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes > 0 else None
        self._waiting: deque[RequestHandle] = deque()
        self._prefilling: list[_InFlight] = []    # admitted; their prompts go in a chunk per step
        self._running: list[_InFlight] = []       # decoding
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="refengine-scheduler", daemon=True)
        self._counters = {"requests_finished": 0, "prompt_tokens": 0, "completion_tokens": 0, "steps": 0}

    def start(self) -> "Scheduler":
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()

    def submit(self, request: GenerationRequest) -> RequestHandle:
        """Queue a request. Raises at once (ContextLengthError, ValueError) for one that cannot run,
        and QueueFullError when too many are waiting."""
        needed = self._kv_bytes(request)
        if needed > self.max_kv_bytes:
            raise ValueError(
                f"the request needs {needed / 2**30:.1f} GiB of KV cache (n={request.n} choices of up to "
                f"{len(request.prompt_ids) + max_new_tokens(self.model, request)} positions), over this "
                f"server's {self.max_kv_bytes / 2**30:.1f} GiB; lower n or max_tokens")
        handle = RequestHandle(request)
        with self._wake:
            for gone in [h for h in self._waiting if h.cancelled]:   # clients that left while waiting
                self._waiting.remove(gone)
                gone._put(_DONE)
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(f"{len(self._waiting)} requests are already waiting; retry later")
            self._waiting.append(handle)
            self._wake.notify()
        return handle

    def _kv_bytes(self, request: GenerationRequest) -> int:
        """The KV cache a request reserves: n choices × (prompt + max new tokens) positions."""
        config = self.model.config
        per_position = config.num_layers * config.num_kv_heads * config.head_dim * 2 * 4   # keys + values, f32
        return request.n * (len(request.prompt_ids) + max_new_tokens(self.model, request)) * per_position

    def stats(self) -> dict:
        with self._wake:
            return {"queue_depth": len(self._waiting),
                    "running_requests": len(self._prefilling) + len(self._running),
                    "batch_size": sum(len(r.generation.live) for r in self._running),
                    **(self.prefix_cache.stats() if self.prefix_cache else {}),
                    **self._counters}

    # ---- the scheduler thread ----

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self._waiting and not self._prefilling and not self._running:
                    self._wake.wait()
                if self._stopping:
                    break
            self._admit()
            self._step()
        for running in self._prefilling + self._running:
            running.handle._put(RuntimeError("the server is shutting down"))
        for handle in self._waiting:
            handle._put(RuntimeError("the server is shutting down"))

    def _admit(self) -> None:
        """Take waiting requests while their choices fit in the batch and their caches in the KV budget
        (always at least one request in flight)."""
        while True:
            with self._wake:
                if not self._waiting:
                    return
                in_flight = self._prefilling + self._running
                live = (sum(len(r.generation.live) for r in self._running)
                        + sum(r.handle.request.n for r in self._prefilling))
                reserved = sum(self._kv_bytes(r.handle.request) for r in in_flight)
                upcoming = self._waiting[0].request
                if in_flight and (live + upcoming.n > self.max_batch
                                  or reserved + self._kv_bytes(upcoming) > self.max_kv_bytes):
                    return
                handle = self._waiting.popleft()
            if handle.cancelled:
                handle._put(_DONE)
                continue
            try:
                admitted = _InFlight(handle, Generation(self.model, handle.request))
            except Exception as error:           # reaches the client as an error, never kills the loop
                handle._put(error)
                continue
            with self._wake:
                self._prefilling.append(admitted)

    def _step(self) -> None:
        """Choose a token for every live choice; then one forward pass for the choices that go on and the
        next prompt chunks of the requests being admitted."""
        decode = []
        for running in list(self._running):
            if running.handle.cancelled:
                self._retire(running)
                continue
            try:
                for choice in running.generation.live:
                    running.handle._put(running.generation.choose(choice, running.rows.pop(choice.index)))
                    self._counters["completion_tokens"] += 1
            except Exception as error:
                self._retire(running, error)
                continue
            live = running.generation.live
            if not live:
                self._counters["requests_finished"] += 1
                self._retire(running)
            decode += [(running, choice) for choice in live]
        prefill = []
        budget = self.prefill_chunk
        for running in list(self._prefilling):
            if running.handle.cancelled:
                self._retire(running)
            elif budget > 0:
                generation = running.generation
                if not generation.cache.length:          # its first chunk: start from what the cache holds
                    try:                                 # now (the prompts read in earlier steps included)
                        generation.reuse_prefix(self.prefix_cache)
                    except MemoryError as error:
                        self._retire(running, error)
                        continue
                    running.handle.cached_tokens = generation.cached_tokens
                chunk = generation.next_chunk(min(budget, PREFILL_CHUNK))
                prefill.append((running, chunk))
                budget -= len(chunk)
        if not decode and not prefill:
            return
        tokens = [[c.last_token] for _, c in decode] + [chunk for _, chunk in prefill]
        every_row = [False] * len(decode) + [r.generation.scores_prompt for r, _ in prefill]   # prompts to score
        try:
            logits = self.model.forward(tokens, [c.cache for _, c in decode] + [r.generation.cache for r, _ in prefill],
                                        all_logits=every_row)   # [M, V]: each sequence's last row, or all its rows
        except Exception as error:               # fail this batch's requests, keep serving
            for running in {id(r): r for r, _ in decode + prefill}.values():
                self._retire(running, error)
            return
        self._counters["steps"] += 1
        heights = [len(t) if every else 1 for t, every in zip(tokens, every_row)]    # rows of logits per sequence
        rows = [logits[end - h:end] for h, end in zip(heights, np.cumsum(heights))]   # [h, V] each
        for (running, choice), row in zip(decode, rows):
            running.rows[choice.index] = row[-1].copy()                 # [V], not a view holding all [M, V]
        for (running, _), chunk_rows in zip(prefill, rows[len(decode):]):
            generation = running.generation
            try:                                        # on the last chunk: forks the n choices' caches
                generation.prefilled(chunk_rows if generation.scores_prompt else chunk_rows[-1])
            except Exception as error:
                self._retire(running, error)
                continue
            if generation.choices:                                      # the whole prompt is in
                keep_prefix(self.prefix_cache, generation)   # for requests that come while this one runs
                self._counters["prompt_tokens"] += len(running.handle.request.prompt_ids)
                running.handle.prompt_scores = generation.prompt_scores
                running.rows = {c.index: generation.first_logits for c in generation.choices}
                with self._wake:
                    self._prefilling.remove(running)
                    self._running.append(running)

    def _retire(self, running: _InFlight, error: Exception | None = None) -> None:
        """Drop a finished or cancelled request, or a failed one whose client gets `error` as its last event.
        What a finished or cancelled one fed through the model is offered to the prefix cache (a failed step
        may have left its cache half written)."""
        if error is not None:
            running.handle._put(error)
        else:
            running.handle._put(_DONE)
            keep_prefix(self.prefix_cache, running.generation)
        with self._wake:
            (self._running if running in self._running else self._prefilling).remove(running)
        for choice in running.generation.choices:
            choice.cache = None                  # free the KV cache now, not when the handle is dropped
