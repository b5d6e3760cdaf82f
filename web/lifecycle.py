"""Graceful stop: on SIGTERM a replica stops admitting, finishes what it runs, then exits.

    SIGTERM → the master closes its listeners and passes SIGTERM to each worker; a worker (DrainingWorker)
      1. keeps answering, so a load balancer sees it leave instead of a refused connection: /health is 503
         with Retry-After, new requests are 503 `server_shutting_down` with Retry-After (nginx tries the next
         replica on a 503); approval decisions and /metrics still pass, since running streams wait for them;
      2. waits until its requests in flight (streams until their last chunk) are done, or the grace period
         (`--grace-period`) has passed;
      3. stops as gunicorn's gthread worker does (what still runs past the grace period is cut by the master).

A worker recycled by gunicorn's max_requests goes through gunicorn's own wait, which is as long: the grace
period is also gunicorn's graceful_timeout (web/serve.py), so recycling does not cut a stream that ends in it.
"""
from __future__ import annotations

import json
import threading
import time

from gunicorn.workers.gthread import ThreadWorker

RETRY_AFTER_S = "5"
PASSING_PATHS = ("/metrics", "/v1/agent/approvals/")       # still served while draining (prefixes)
UNCOUNTED_PATHS = ("/health", "/metrics")                   # probes: never what a drain waits for


class Lifecycle:
    """A WSGI wrapper around the app that counts requests in flight and refuses new ones once draining."""

    def __init__(self, app, grace_s: float):
        self.app, self.grace_s = app, grace_s
        self.draining = threading.Event()
        self._in_flight = 0
        self._idle = threading.Condition()

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if self.draining.is_set():
            if path.rstrip("/") == "/health":
                return self._refuse(start_response, {"status": "stopping"})
            if not path.startswith(PASSING_PATHS):
                return self._refuse(start_response, {"error": {
                    "message": "The server is shutting down; retry on another replica or after Retry-After.",
                    "type": "server_error", "param": None, "code": "server_shutting_down"}})
        if path.startswith(UNCOUNTED_PATHS):
            return self.app(environ, start_response)
        with self._idle:
            self._in_flight += 1
        try:
            body = self.app(environ, start_response)
        except BaseException:
            self._done()
            raise
        return Counted(body, self._done)

    def begin_drain(self) -> None:
        self.draining.set()

    def wait_drained(self) -> bool:
        """Block until no request is in flight (True) or the grace period has passed (False)."""
        deadline = time.monotonic() + self.grace_s
        with self._idle:
            while self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def _done(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    @staticmethod
    def _refuse(start_response, payload: dict) -> list[bytes]:
        body = json.dumps(payload).encode()
        start_response("503 Service Unavailable", [("Content-Type", "application/json"),
                                                   ("Content-Length", str(len(body))),
                                                   ("Retry-After", RETRY_AFTER_S), ("Connection", "close")])
        return [body]


class Counted:
    """A response body that reports when the server is done with it (close(), the WSGI server's last call)."""

    def __init__(self, body, done):
        self.body, self.done, self._closed = body, done, False

    def __iter__(self):
        return iter(self.body)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if hasattr(self.body, "close"):
                self.body.close()
        finally:
            self.done()


class DrainingWorker(ThreadWorker):
    """gunicorn's gthread worker, draining through the app's Lifecycle before it stops on SIGTERM."""

    def handle_exit(self, sig, frame) -> None:
        lifecycle = getattr(self, "wsgi", None)
        if not isinstance(lifecycle, Lifecycle) or lifecycle.draining.is_set() or not self.alive:
            super().handle_exit(sig, frame)
            return
        self.log.info("SIGTERM: draining (health 503, new requests refused) for at most %.0f s", lifecycle.grace_s)
        lifecycle.begin_drain()
        threading.Thread(target=self._stop_when_drained, args=(lifecycle,), name="refengine-drain",
                         daemon=True).start()

    def _stop_when_drained(self, lifecycle: Lifecycle) -> None:
        finished = lifecycle.wait_drained()
        self.log.info("drained: %s; stopping", "every request finished" if finished else "grace period over")
        ThreadWorker.handle_exit(self, None, None)        # safe from a thread: it wakes the loop via its queue
