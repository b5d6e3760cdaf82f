"""A submitted request seen from the thread that submitted it: its events as they come, cancellation, and
the guarantee of never waiting forever on a scheduler that is gone.

The scheduler thread puts TokenEvents, then DONE (or the exception that failed the request); the request's
thread iterates, or a test driving the scheduler step by step takes what is ready with `ready_events`.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable

from .request import GenerationRequest

LIVENESS_POLL_S = 1.0                        # how often a waiting handle checks that the scheduler still runs
DONE = object()                              # the last item of a request that ended normally
_NOTHING = object()


class SchedulerStopped(RuntimeError):
    """The scheduler is not running (stopped, or its thread died): the request cannot be served."""


class RequestFailed(RuntimeError):
    """The engine failed while running this request, in a step it shared with others: one of these per
    request, the shared error as its `__cause__` (so each thread raises its own exception object)."""


def failure_for(error: BaseException) -> Exception:
    """What one of the requests that `error` failed is told."""
    if isinstance(error, SchedulerStopped):
        return SchedulerStopped(str(error))
    failure = RequestFailed(f"{type(error).__name__}: {error}")
    failure.__cause__ = error
    return failure


class RequestHandle:
    def __init__(self, request: GenerationRequest, kv_bytes: int, running: Callable[[], bool] = lambda: True):
        self.request = request
        self.kv_bytes = kv_bytes             # the KV cache it may need, reserved against the budget
        self.submitted_at = time.monotonic()
        self.prompt_tokens = len(request.prompt_ids)
        self.cached_tokens = 0               # prompt tokens found in the prefix cache; set before any event
        self.prompt_scores = []              # with prompt_logprobs: set before the first event
        self._events: queue.Queue = queue.Queue()
        self._last = _NOTHING                # DONE or an error that `ready_events` took out but left unread
        self._cancelled = threading.Event()
        self._running = running              # False once the scheduler thread is gone

    def cancel(self) -> None:
        """The client went away: the scheduler drops the request and frees its caches at its next step."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def __iter__(self):
        """The events as they come; raises the error that failed the request, or SchedulerStopped if the
        scheduler is gone without a word (never waits forever)."""
        while True:
            try:
                item = self._take(timeout=LIVENESS_POLL_S)
            except queue.Empty:
                if not self._running():
                    raise SchedulerStopped("the scheduler stopped before the request finished") from None
                continue
            if item is DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def ready_events(self) -> list:
        """The events produced so far and not yet read, without waiting (the end or an error stays for
        iteration to report)."""
        events = []
        while self._last is _NOTHING:
            try:
                item = self._events.get_nowait()
            except queue.Empty:
                break
            if item is DONE or isinstance(item, BaseException):
                self._last = item
            else:
                events.append(item)
        return events

    def _take(self, timeout: float):
        if self._last is not _NOTHING:
            return self._last
        return self._events.get(timeout=timeout)

    def put(self, item) -> None:
        """An event, DONE, or the error that fails the request (the scheduler's side)."""
        self._events.put(item)
