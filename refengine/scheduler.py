"""Continuous batching: one thread runs the model for every request in flight.

Request threads `submit` a GenerationRequest and read TokenEvents from the returned handle. The scheduler
thread loops: admit waiting requests while there is room in the batch, then run ONE forward pass that
carries a decode token for every live choice of every running request ([B] new tokens, each sequence on its
own KV cache and position) plus up to `prefill_chunk` prompt tokens of the requests being admitted, hand
each choice its token event, and retire finished or cancelled sequences, freeing their caches. Feeding long
prompts a chunk per step keeps the running streams going while they are read. A request whose prompt is
in, and again one that ends, leaves the KV of what it fed to the prefix cache (prefixcache.py), which
admission consults. Each request keeps its own RNG streams, processors state and stop checkers inside its
`Generation`, so requests never see each other's tokens, seeds or constraints.

A choice whose next token needs slow constraint work (a state reached for the first time, whose allowed
tokens must be indexed over the vocabulary; the walk over a trigger just seen) waits while the
`refengine-settle` thread does it, and the other streams go on, so one hard schema does not stall them. (That
thread takes one job at a time, so constrained choices wait for each other's fresh states.)

Failures stay with the requests they concern: an error in one request's token choice, constraint work,
prefill or prefix-cache lookup fails that request (a prefix cache that cannot store is logged and skipped);
a failed forward pass fails the requests in that batch; anything else that escapes a step fails the
requests in flight, is logged with its traceback, and the loop goes on (each failed request gets its own
`RequestFailed`, the shared error as its cause). Should the thread
die all the same, every waiting client gets `SchedulerStopped` at once, `alive` turns False (/health
answers 503) and `submit` refuses. `step()` runs one round by hand, for tests that drive the scheduler
without its thread.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field

import numpy as np

from .generate import PREFILL_CHUNK, Generation, dry_breakers, keep_prefix, max_new_tokens
from .handle import DONE, RequestHandle, SchedulerStopped, failure_for
from .model import Model
from .prefixcache import PrefixCache
from .request import GenerationRequest, RequestError

logger = logging.getLogger(__name__)

SETTLE_WAIT_S = 0.05                         # a step with only settling choices waits at most this long


class QueueFullError(Exception):
    """Too many requests are waiting; the client should retry later."""


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
        self._thread = threading.Thread(target=self._run, name="refengine-scheduler", daemon=True)
        self._bytes_per_position = model.new_cache(0).bytes_per_position     # keys + values, every layer
        self._settler = _Settler()
        self._settling: dict[int, tuple[object, Future]] = {}   # id(choice) → (that waiting choice, its job)
        self._between: deque[tuple[object, Future]] = deque()    # (work, its future): `between_steps`
        self._counters = {"requests_finished": 0, "prompt_tokens": 0, "completion_tokens": 0, "steps": 0,
                          "failed_steps": 0}

    def start(self) -> "Scheduler":
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join()
        else:                                     # never started (driven by `step`), or already dead
            self._fail_everyone(SchedulerStopped("the server is shutting down"))

    @property
    def alive(self) -> bool:
        """Whether submitted requests will be served: not stopped, and the thread (once started) runs."""
        return not self._stopping and (self._thread.ident is None or self._thread.is_alive())

    def submit(self, request: GenerationRequest) -> RequestHandle:
        """Queue a request. Raises at once RequestError (ContextLengthError, ...) for one that cannot run,
        QueueFullError when too many are waiting, SchedulerStopped when the scheduler does not run.

        The slow preparations happen here, in the caller's thread, so the scheduler's step never does them:
        the first state of a constraint that starts with the first token is indexed, DRY's breakers are
        mapped to tokens."""
        if not self.alive:
            raise SchedulerStopped("the scheduler is not running")
        needed = self._kv_bytes(request)
        if needed > self.max_kv_bytes:
            alone = self._kv_bytes(GenerationRequest(request.prompt_ids, stopping=request.stopping))
            raise RequestError(
                f"the request needs {needed / 2**30:.2f} GiB of KV cache (a {len(request.prompt_ids)}-token prompt "
                f"and n={request.n} choices of up to {max_new_tokens(self.model, request)} tokens), over this "
                f"server's {self.max_kv_bytes / 2**30:.2f} GiB; lower n or max_tokens",
                "n" if alone <= self.max_kv_bytes else "max_tokens")
        spec = request.constraint
        if spec is not None and spec.trigger is None:
            spec.constraint.allowed(spec.constraint.initial_state)
        dry_breakers(self.model, request.sampling)
        handle = RequestHandle(request, needed, running=lambda: self.alive)
        with self._wake:
            if not self.alive:
                raise SchedulerStopped("the scheduler is not running")
            for gone in [h for h in self._waiting if h.cancelled]:   # clients that left while waiting
                self._waiting.remove(gone)
                gone.put(DONE)
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(f"{len(self._waiting)} requests are already waiting; retry later")
            # lower priority values are admitted first (vLLM's order); equal ones in the order they came
            later = (i for i, waiting in enumerate(self._waiting) if waiting.request.priority > request.priority)
            self._waiting.insert(next(later, len(self._waiting)), handle)
            self._wake.notify()
        return handle

    def between_steps(self, work) -> Future:
        """Run `work()` on the scheduler thread before its next step, so that it may use the model's backend
        (whose step state is not shared between threads) between two batched steps, as embeddings do; the
        Future of its result, or of its exception. SchedulerStopped when the scheduler does not run."""
        job: Future = Future()
        with self._wake:
            if not self.alive:
                raise SchedulerStopped("the scheduler is not running")
            self._between.append((work, job))
            self._wake.notify()
        return job

    def _kv_bytes(self, request: GenerationRequest) -> int:
        """The KV cache a request may come to hold: its prompt once (its n choices share it, kvcache.py) and
        n × max new tokens positions. Caches grow a block at a time, never past that (`max_length`)."""
        positions = len(request.prompt_ids) + request.n * max_new_tokens(self.model, request)
        return positions * self._bytes_per_position

    def stats(self) -> dict:
        with self._wake:
            return {"queue_depth": len(self._waiting),
                    "running_requests": len(self._prefilling) + len(self._running),
                    "batch_size": sum(len(r.generation.live) for r in self._running),
                    "kv_reserved_bytes": sum(r.handle.kv_bytes for r in self._prefilling + self._running),
                    "alive": self.alive,
                    **(self.prefix_cache.stats() if self.prefix_cache else {}),
                    **self._counters}

    # ---- the scheduler thread ----

    def _run(self) -> None:
        try:
            while self._work_to_do():
                self._run_between()
                self.step()
        except BaseException:
            logger.critical("the scheduler thread died; no request can be served until a restart", exc_info=True)
            raise
        finally:
            with self._wake:
                self._stopping = True
            self._fail_everyone(SchedulerStopped("the server is shutting down"))

    def _work_to_do(self) -> bool:
        """Wait until a request is waiting or in flight; False once stopping."""
        with self._wake:
            while (not self._stopping and not self._waiting and not self._prefilling and not self._running
                   and not self._between):
                self._wake.wait()
            return not self._stopping

    def _run_between(self) -> None:
        """The work handed to `between_steps`; its failure goes to its own Future, never to the loop."""
        while True:
            with self._wake:
                if not self._between:
                    return
                work, job = self._between.popleft()
            if not job.set_running_or_notify_cancel():
                continue
            try:
                job.set_result(work())
            except Exception as error:
                job.set_exception(error)

    def step(self) -> None:
        """One round: admit waiting requests, then one batched step. What escapes the per-request guards
        fails the requests in flight (logged with its traceback); the scheduler goes on."""
        try:
            self._admit()
            self._step()
        except Exception as error:
            self._counters["failed_steps"] += 1
            in_flight = self._prefilling + self._running
            logger.error("a scheduler step failed; failing the %d requests in flight", len(in_flight),
                         exc_info=error)
            for running in in_flight:
                self._retire(running, failure_for(error))

    def _fail_everyone(self, error: Exception) -> None:
        with self._wake:
            in_flight = self._prefilling + self._running
            waiting = list(self._waiting)
            self._prefilling, self._running = [], []
            self._waiting.clear()
        for running in in_flight:
            running.handle.put(failure_for(error))
            for choice in running.generation.choices:
                choice.cache = None
        for handle in waiting:
            handle.put(failure_for(error))
        with self._wake:
            between, self._between = list(self._between), deque()
        for _, job in between:
            if job.set_running_or_notify_cancel():
                job.set_exception(error)

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
                reserved = sum(r.handle.kv_bytes for r in in_flight)
                upcoming = self._waiting[0]
                if in_flight and (live + upcoming.request.n > self.max_batch
                                  or reserved + upcoming.kv_bytes > self.max_kv_bytes):
                    return
                handle = self._waiting.popleft()
            if handle.cancelled:
                handle.put(DONE)
                continue
            try:
                admitted = _InFlight(handle, Generation(self.model, handle.request))
            except Exception as error:           # reaches the client as an error, never kills the loop
                handle.put(error)
                continue
            with self._wake:
                self._prefilling.append(admitted)

    def _step(self) -> None:
        """Choose a token for every live choice that can; then one forward pass for the choices that go on
        and the next prompt chunks of the requests being admitted."""
        decode = []
        for running in list(self._running):
            if running.handle.cancelled:
                self._retire(running)
                continue
            try:
                chosen = []
                for choice in running.generation.live:
                    if self._waits_to_settle(running.generation, choice):
                        continue                 # its row stays; it goes on once settled
                    running.handle.put(running.generation.choose(choice, running.rows.pop(choice.index)))
                    self._counters["completion_tokens"] += 1
                    chosen.append(choice)
            except Exception as error:
                self._retire(running, error)
                continue
            if not running.generation.live:
                self._counters["requests_finished"] += 1
                self._retire(running)
            decode += [(running, choice) for choice in chosen if choice.finish_reason is None]
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
                    except Exception as error:           # this request's failure only
                        self._retire(running, error)
                        continue
                    running.handle.cached_tokens = generation.cached_tokens
                chunk = generation.next_chunk(min(budget, PREFILL_CHUNK))
                prefill.append((running, chunk))
                budget -= len(chunk)
        if not decode and not prefill:
            self._wait_for_settling()
            return
        tokens = [[c.last_token] for _, c in decode] + [chunk for _, chunk in prefill]
        every_row = [False] * len(decode) + [r.generation.scores_prompt for r, _ in prefill]   # prompts to score
        started = time.perf_counter()
        try:
            logits = self.model.forward(tokens, [c.cache for _, c in decode] + [r.generation.cache for r, _ in prefill],
                                        all_logits=every_row)   # [M, V]: each sequence's last row, or all its rows
        except Exception as error:               # fail this batch's requests, keep serving
            logger.error("a forward pass failed; failing the requests in its batch", exc_info=error)
            for running in {id(r): r for r, _ in decode + prefill}.values():
                self._retire(running, failure_for(error))
            return
        self._counters["steps"] += 1
        self._trace_step(decode, prefill, len(tokens), sum(len(t) for t in tokens), started)
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

    def _trace_step(self, decode: list, prefill: list, batch_size: int, new_tokens: int, started: float) -> None:
        """Tell each traced request of the pass about it (once, however many of its choices ran in it)."""
        ended = time.perf_counter()
        kinds = {id(r): (r, "decode") for r, _ in decode} | {id(r): (r, "prefill") for r, _ in prefill}
        for running, kind in kinds.values():
            if running.generation.trace is not None:
                running.generation.trace.forward(self._counters["steps"], kind, batch_size, new_tokens, started, ended)

    def _waits_to_settle(self, generation: Generation, choice) -> bool:
        """Whether `choice` must wait for slow constraint work (`Generation.settle`), which runs on the
        settler's thread meanwhile; raises what failed that work."""
        key = id(choice)
        waiting = self._settling.get(key)
        if waiting is None:
            if not generation.unsettled(choice):
                return False
            self._settling[key] = (choice, self._settler.submit(lambda: generation.settle(choice)))
            return True
        job = waiting[1]
        if not job.done():
            return True
        del self._settling[key]
        job.result()                             # raises what failed the work
        return generation.unsettled(choice)      # settled, unless its state was evicted meanwhile (again then)

    def _wait_for_settling(self) -> None:
        """Nothing could run this step: wait (briefly, so arrivals are admitted) for a choice to settle."""
        jobs = [job for _, job in self._settling.values() if not job.done()]
        if jobs:
            wait(jobs, timeout=SETTLE_WAIT_S, return_when=FIRST_COMPLETED)

    def _retire(self, running: _InFlight, error: BaseException | None = None) -> None:
        """Drop a finished or cancelled request, or a failed one whose client gets `error` as its last event.
        What a finished or cancelled one fed through the model is offered to the prefix cache (a failed step
        may have left its cache half written)."""
        if error is not None:
            running.handle.put(error)
        else:
            running.handle.put(DONE)
            keep_prefix(self.prefix_cache, running.generation)
        with self._wake:
            for group in (self._running, self._prefilling):
                if running in group:
                    group.remove(running)
        for choice in running.generation.choices:
            choice.cache = None                  # free the KV cache now, not when the handle is dropped
            waiting = self._settling.pop(id(choice), None)
            if waiting is not None:
                waiting[1].cancel()              # (a job already running finishes for nobody)


class _Settler:
    """One daemon thread that does waiting choices' slow constraint work, a job at a time (a daemon, so a
    worker that exits never waits for a hard state to be indexed)."""

    def __init__(self):
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="refengine-settle", daemon=True)

    def submit(self, work) -> Future:
        if not self._thread.is_alive():
            self._thread.start()
        job = Future()
        self._jobs.put((job, work))
        return job

    def _work(self) -> None:
        while True:
            job, work = self._jobs.get()
            if not job.set_running_or_notify_cancel():
                continue                         # cancelled while queued: its request is gone
            try:
                job.set_result(work())
            except BaseException as error:       # handed to the waiting request
                job.set_exception(error)
