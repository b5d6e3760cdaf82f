"""The one response path of the generation endpoints: a plan's requests in, an OpenAI JSON body or SSE out.

A resource reads its request and builds a `ResponsePlan` once: the engine requests (one per prompt), the
`Reply` that knows its endpoint's shapes (how events become chunks and bodies), which request parameter a
refusal points at, and whether to stream. `respond` does the rest the same way for every endpoint:

    submit every request (all or none) ─► stream: framed SSE (in-band error event, [DONE], hang-up cancels)
                                      └─► JSON: collect while watching for a hang-up (499), then the body

and counts tokens, disconnects and time to first token in /metrics, however the response ends.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

import falcon

from refengine.request import GenerationRequest
from refengine.handle import RequestHandle

from . import sse
from .client import CLIENT_CLOSED, watch_hangup
from .engine import Engine
from .errors import APIError, as_api_error
from .metrics import Metrics


@dataclass
class Tally:
    """What a streamed body has counted so far, read when the stream ends, however it ends (prompt tokens
    beyond the plan's: an agent's later rounds)."""
    completion_tokens: int = 0
    prompt_tokens: int = 0


class Reply(Protocol):
    """One endpoint's shapes: its SSE events, and its JSON body from the collected events."""

    def stream(self, handles: list[RequestHandle], items: Iterator, tally: Tally) -> Iterator[bytes]:
        """The SSE events (without [DONE]) of `items`: (handle index, TokenEvent) as they come, None after
        each silence (send sse.KEEPALIVE). Counts the completion tokens it sends in `tally`."""

    def collect(self, handles: list[RequestHandle], events: list):
        """Read every event to the end; whatever the body needs."""

    def body(self, handles: list[RequestHandle], collected) -> dict:
        """The JSON body."""

    def completion_tokens(self, collected) -> int:
        """The completion tokens of a collected answer, for /metrics."""


def error_event(error: APIError) -> bytes:
    """A failure after the stream started, as Chat Completions tell it: the error envelope as one event."""
    return sse.event(error.envelope())


@dataclass(frozen=True)
class ResponsePlan:
    """A request decided once: what the engine runs, how its output is answered, where a refusal points,
    and how a stream ends and tells a late failure (the Responses API has its own events for both)."""
    requests: tuple[GenerationRequest, ...]
    reply: Reply
    params: dict[str, str] = field(default_factory=dict)   # engine field → request parameter ("prompt" at least)
    stream: bool = False
    stream_end: bytes = sse.DONE
    stream_failure: Callable[[APIError], bytes] = error_event

    @property
    def prompt_tokens(self) -> int:
        return sum(len(r.prompt_ids) for r in self.requests)


def submit_all(engine: Engine, plan: ResponsePlan) -> list[RequestHandle]:
    """Queue every request of the plan, or none: a refusal cancels those already queued."""
    handles = []
    try:
        for request in plan.requests:
            handles.append(engine.scheduler.submit(request))
    except Exception as error:
        for handle in handles:
            handle.cancel()
        raise as_api_error(error, plan.params) from None
    return handles


def respond(req: falcon.Request, resp: falcon.Response, engine: Engine, metrics: Metrics, plan: ResponsePlan,
            *, started: float, keepalive_s: float) -> None:
    handles = submit_all(engine, plan)
    events = [metrics.timed(handle, started) for handle in handles]
    if plan.stream:
        resp.content_type = sse.CONTENT_TYPE
        resp.set_headers(sse.HEADERS)
        tally = Tally()
        body = plan.reply.stream(handles, sse.interleave(events, keepalive_s), tally)
        resp.stream = framed_stream(body, handles, tally, plan, metrics)
        return
    try:
        with watch_hangup(req, lambda: metrics.count_disconnect(*handles)):
            collected = plan.reply.collect(handles, events)
    except Exception as error:
        for handle in handles:                   # nobody will read the rest: stop decoding it
            handle.cancel()
        raise as_api_error(error, plan.params) from None
    if any(handle.cancelled for handle in handles):   # the client hung up: nobody to answer
        resp.status = CLIENT_CLOSED
        return
    metrics.count_tokens(plan.prompt_tokens, plan.reply.completion_tokens(collected))
    resp.media = plan.reply.body(handles, collected)


def framed_stream(body: Iterator[bytes], handles: list[RequestHandle], tally: Tally, plan: ResponsePlan,
                  metrics: Metrics) -> Iterator[bytes]:
    """The SSE response around `body` (one response's events), then the plan's end (`data: [DONE]`).

    A failure after the stream started is sent as one error event, and the stream ends there. A client that
    goes away closes this generator (at its next write): its requests are cancelled, their caches freed.
    Either way its tokens are counted in /metrics.
    """
    ended = False
    try:
        yield from body
        ended = True
        if plan.stream_end:
            yield plan.stream_end
    except Exception as error:                   # the response has started: report in-band, then stop
        ended = True
        for handle in handles:
            handle.cancel()                      # (a no-op when the engine already dropped the request)
        yield plan.stream_failure(as_api_error(error, plan.params))
    finally:
        if not ended:
            metrics.count_disconnect(*handles)
        metrics.count_tokens(plan.prompt_tokens + tally.prompt_tokens, tally.completion_tokens)
