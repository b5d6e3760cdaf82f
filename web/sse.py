"""Server-sent events: framing, the end sentinel, keep-alive comments, and waiting on event streams.

An event is `data: <json>\\n\\n`; a line starting with ":" is a comment that clients ignore, which we send
on long silences (a queued request, a slow prefill) so proxies keep the connection open and a vanished
client is noticed by the failed write.
"""
from __future__ import annotations

import json
import queue
import threading
from typing import Iterable, Iterator

CONTENT_TYPE = "text/event-stream"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}   # no proxy buffering of the stream
DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"


def event(payload: dict, name: str | None = None) -> bytes:
    """`data: <json>`, named with an `event:` line when `name` is given (a client that only reads data
    events, as OpenAI's SDK does for chat, sees it as one more event)."""
    data = b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
    return data if name is None else b"event: " + name.encode() + b"\n" + data


class _End:
    """A source is exhausted."""


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def interleave(sources: list[Iterable], silence_s: float) -> Iterator[tuple[int, object] | None]:
    """(source index, item) from several blocking iterables as items arrive; None after each
    `silence_s` seconds without any. Raises a source's exception when it reaches it.

    Each source is drained by a daemon thread, so a consumer that stops early leaves the threads to end
    with their sources (a cancelled request handle ends at the scheduler's next step).
    """
    inbox: queue.Queue = queue.Queue()

    def drain(index: int, source: Iterable) -> None:
        try:
            for item in source:
                inbox.put((index, item))
        except BaseException as error:            # handed to the consumer, not lost in this thread
            inbox.put((index, _Failed(error)))
        inbox.put((index, _End))

    for index, source in enumerate(sources):
        threading.Thread(target=drain, args=(index, source), name="sse-drain", daemon=True).start()
    open_sources = len(sources)
    while open_sources:
        try:
            index, item = inbox.get(timeout=silence_s)
        except queue.Empty:
            yield None
            continue
        if item is _End:
            open_sources -= 1
        elif isinstance(item, _Failed):
            raise item.error
        else:
            yield index, item
