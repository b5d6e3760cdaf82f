"""Noticing a client that hangs up while its non-streamed answer is still being generated.

A stream notices at its next write; a plain JSON answer writes only at the end, so without a watch a
client that timed out (and maybe retried) would keep its sequences decoding to max_tokens for nobody.
gunicorn hands the connection's socket to the app as `environ["gunicorn.socket"]`: a closed connection
reads as end-of-file. Without a socket (in-process test clients) there is nothing to watch.
"""
from __future__ import annotations

import select
import socket
import threading
from typing import Callable

POLL_S = 0.25


def hung_up(connection: socket.socket) -> bool:
    """True once the peer has closed the connection (readable, and a peek reads end-of-file)."""
    try:
        readable, _, _ = select.select([connection], [], [], 0)
        return bool(readable) and connection.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):            # a closed or unusable socket: nobody is waiting any more
        return True


class HangupWatch:
    """While the block runs, poll the client's connection; on hang-up call `on_hangup` once."""

    def __init__(self, connection: socket.socket | None, on_hangup: Callable[[], None], poll_s: float = POLL_S):
        self.connection, self.on_hangup, self.poll_s = connection, on_hangup, poll_s
        self._done = threading.Event()

    def __enter__(self) -> "HangupWatch":
        if self.connection is not None:
            threading.Thread(target=self._watch, name="hangup-watch", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()

    def _watch(self) -> None:
        while not self._done.wait(self.poll_s):
            if hung_up(self.connection):
                if not self._done.is_set():
                    self.on_hangup()
                return
