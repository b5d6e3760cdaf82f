"""Real servers for integration tests: a subprocess on a free loopback port, used once /health says 200."""
from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from typing import Iterator

import pytest


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def health(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/health")
        return connection.getresponse().status
    finally:
        connection.close()


def refengine_serve(*arguments: str) -> list[str]:
    """The command a user runs: `refengine serve ...`."""
    return [sys.executable, "-m", "refengine.cli", "serve", *arguments]


@contextmanager
def running_server(command: list[str], port: int, *, timeout: float = 120, env: dict | None = None,
                   cwd=None, log_path=None, started: list | None = None) -> Iterator[int]:
    """Start `command` (a server listening on `port`), wait until it is healthy, stop it afterwards and
    check that it never printed a traceback. Its output goes to a file (`log_path`, for a test that reads
    it; else a temporary one), so a chatty server never blocks. `started` receives the process (for a test
    that kills it)."""
    with (open(log_path, "w+") if log_path else tempfile.TemporaryFile(mode="w+")) as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, text=True)
        if started is not None:
            started.append(process)

        def output() -> str:
            log.seek(0)
            return log.read()
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited with {process.returncode}:\n{output()}")
            try:
                if health(port) == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the server did not become healthy in {timeout} s:\n{output()}")
            time.sleep(0.2)
        try:
            yield port
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        assert "Traceback" not in output(), output()
