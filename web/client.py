"""Noticing a client that hangs up while its non-streamed answer is still being generated.

A stream notices at its next write; a plain JSON answer writes only at the end, so without a watch a
client that timed out (and maybe retried) would keep its sequences decoding to max_tokens for nobody.
gunicorn hands the connection's socket to the app as `environ["gunicorn.socket"]`: a closed connection
reads as end-of-file. Without a socket (another WSGI server, in-process test clients) there is nothing to
watch, and the app works without hang-up detection:

    with watch_hangup(req, lambda: handle.cancel()):
        ...wait for the answer...
"""
from __future__ import annotations

import select
import socket
import threading
from typing import Callable

POLL_S = 0.25
CLIENT_CLOSED = "499 Client Closed Request"       # nginx's status for it, as logs and /metrics show it


def hung_up(connection: socket.socket) -> bool:
    """True once the peer has closed the connection: it hangs up, or reads as end-of-file (a peek, so a
    pipelined next request stays unread). poll, unlike select, takes descriptors past 1023."""
    try:
        poller = select.poll()
        poller.register(connection, select.POLLIN)
        events = poller.poll(0)
        if not events:
            return False
        if events[0][1] & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
            return True
        return connection.recv(1, socket.MSG_PEEK) == b""
    except ValueError:                       # a socket that cannot peek (TLS) or is closed here: unknown
        return False
    except OSError:                          # reset by the peer
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


def watch_hangup(request, on_hangup: Callable[[], None], poll_s: float = POLL_S) -> HangupWatch:
    """The watch over a request's connection (`request`: a falcon.Request, or its WSGI environ): gunicorn's
    socket when the server provides one, else a watch of nothing."""
    environ = getattr(request, "env", request)
    connection = environ.get("gunicorn.socket")
    return HangupWatch(connection if isinstance(connection, socket.socket) else None, on_hangup, poll_s)
