"""A worker killed mid-stream: `refengine serve --workers 2` on the tiny model, streams open on both workers,
`kill -9` of one. Its streams end (no hang), the other worker's streams run to [DONE], gunicorn starts a
new worker that answers /health 200, and requests succeed afterwards.

Which worker serves a connection is read from /proc, without touching the server: the server end of our
TCP connection (local port = the server's, remote port = ours) is an inode in /proc/net/tcp, and the worker
that accepted it holds a file descriptor `socket:[inode]`. So each connection is opened first and its
worker known before its request is sent: the victim's streams ask for far more tokens than they can produce
before the kill (they are still generating when it comes), the survivor's for a few hundred (they finish).

Bounded by counts; the timeouts are hang guards only. The figures (how each killed stream ended, the time
to the new worker's /health 200) are printed.
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field

import pytest

from processes import children, holds, port_of, server_root, tcp_table
from serving import free_port, refengine_serve, running_server
from tiny_model import write_tiny_llama

HANG_GUARD_S = 120.0
CONTEXT = 32768
VICTIM_TOKENS = 30000                        # never reached before the kill: the stream is cut by it
SURVIVOR_TOKENS = 200
STREAMS_PER_WORKER = 3
MESSAGES = [{"role": "user", "content": "The quick brown fox"}]

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads /proc (Linux)")


def serving_worker(server_port: int, client_port: int, workers: set[int]) -> int | None:
    """The worker that accepted our connection from `client_port`, or None while nobody has."""
    inodes = {f"socket:[{row[9]}]" for row in tcp_table()
              if port_of(row[1]) == server_port and port_of(row[2]) == client_port and row[9] != "0"}
    return next((pid for pid in workers if holds(pid, inodes)), None)


def wait_for(condition, what: str, timeout: float = HANG_GUARD_S):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"hang guard: {what} not within {timeout} s")
        time.sleep(0.05)


# ---- connections to a chosen worker ----

@dataclass
class Connection:
    connection: http.client.HTTPConnection
    worker: int


def connect(port: int, workers: set[int]) -> Connection:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG_GUARD_S)
    connection.connect()
    client_port = connection.sock.getsockname()[1]
    worker = wait_for(lambda: serving_worker(port, client_port, workers), "the connection's accept")
    return Connection(connection, worker)


def connect_to(port: int, workers: set[int], wanted: int, spare: list[Connection], attempts: int = 400) -> Connection:
    """A connection the worker `wanted` accepted; the others opened on the way are kept in `spare`."""
    for _ in range(attempts):
        opened = connect(port, workers)
        if opened.worker == wanted:
            return opened
        spare.append(opened)
    pytest.fail(f"worker {wanted} accepted none of {attempts} connections")


def get_json(connection: http.client.HTTPConnection, path: str) -> tuple[int, dict]:
    connection.request("GET", path)
    response = connection.getresponse()
    return response.status, json.loads(response.read() or b"{}")


def post_chat(connection: http.client.HTTPConnection, max_tokens: int, stream: bool):
    body = {"model": "default", "messages": MESSAGES, "max_tokens": max_tokens, "ignore_eos": True,
            "temperature": 0.8, "seed": 1, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    connection.request("POST", "/v1/chat/completions", body=json.dumps(body),
                       headers={"Content-Type": "application/json"})
    return connection.getresponse()


def worker_healthy(port: int, workers: set[int], worker: int) -> bool:
    """/health answered 200 on a connection that `worker` accepted (503 while its model loads)."""
    spare: list[Connection] = []
    try:
        opened = connect_to(port, workers, worker, spare)
        status, _ = get_json(opened.connection, "/health")
        opened.connection.close()
        return status == 200
    finally:
        for other in spare:
            other.connection.close()


# ---- streams ----

@dataclass
class Stream:
    worker: int
    response: http.client.HTTPResponse
    chunks: int = 0
    completion_tokens: int | None = None     # from the last chunk's usage
    events: list = field(default_factory=list)
    ending: str | None = None                # "done" | "error event" | "closed" | "reset" | "incomplete read"

    def read_one_chunk(self) -> None:
        """Until the first chunk that carries a token: the stream is generating."""
        while True:
            data = self._next_data()
            if data is None or data == "[DONE]":
                pytest.fail(f"the stream on worker {self.worker} ended before the kill: {self.ending}")
            if '"content":"' in data and '"content":""' not in data:
                return

    def read_to_end(self) -> None:
        try:
            while self._next_data() not in (None, "[DONE]"):
                pass
        except ConnectionResetError:
            self.ending = "reset"
        except http.client.IncompleteRead:
            self.ending = "incomplete read"

    def _next_data(self) -> str | None:
        while True:
            line = self.response.readline()
            if not line:
                self.ending = self.ending or ("error event" if self.events else "closed")
                return None
            line = line.decode().strip()
            if not line.startswith("data: "):
                continue
            data = line[len("data: "):]
            self.chunks += 1
            if data == "[DONE]":
                self.ending = "done"
            elif data.startswith('{"error"'):
                self.events.append(json.loads(data)["error"]["type"])
            elif '"usage":{' in data:
                self.completion_tokens = json.loads(data)["usage"]["completion_tokens"]
            return data


@pytest.fixture(scope="module")
def long_context_dir(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-32k"), extra_config={"max_position_embeddings": CONTEXT})


def test_a_killed_worker_ends_its_streams_and_is_replaced(long_context_dir, capsys):
    port = free_port()
    command = refengine_serve("--model", str(long_context_dir), "--port", str(port), "--workers", "2",
                              "--max-batch", "8")
    with running_server(command, port):
        master = wait_for(lambda: server_root(port), "the master")
        workers = wait_for(lambda: children(master) if len(children(master)) == 2 else None, "two workers")
        for worker in workers:                   # both have loaded the model
            wait_for(lambda: worker_healthy(port, workers, worker), f"worker {worker}'s /health 200")
        victim, survivor = sorted(workers)

        spare: list[Connection] = []
        streams = []
        for worker, tokens in ((victim, VICTIM_TOKENS), (survivor, SURVIVOR_TOKENS)):
            for _ in range(STREAMS_PER_WORKER):
                opened = connect_to(port, workers, worker, spare)
                response = post_chat(opened.connection, tokens, stream=True)
                assert response.status == 200
                streams.append(Stream(worker, response))
        for stream in streams:
            stream.read_one_chunk()              # every stream is generating

        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        readers = [threading.Thread(target=stream.read_to_end, daemon=True) for stream in streams]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(HANG_GUARD_S)
        assert not any(reader.is_alive() for reader in readers), "hang guard: a stream did not end"
        for other in spare:
            other.connection.close()

        replaced = wait_for(lambda: children(master) - workers if len(children(master)) == 2 else None,
                            "a new worker")
        new_worker = next(iter(replaced))
        new_workers = {survivor, new_worker}
        assert victim not in children(master)
        new_worker_at = time.monotonic() - killed_at
        wait_for(lambda: worker_healthy(port, new_workers, new_worker), "the new worker's /health 200")
        healthy_at = time.monotonic() - killed_at

        for worker in sorted(new_workers):       # each worker answers new requests, streamed and not
            for stream in (False, True):
                spare = []
                opened = connect_to(port, new_workers, worker, spare)
                response = post_chat(opened.connection, 8, stream=stream)
                body = response.read().decode()
                assert response.status == 200, body
                assert body.endswith("data: [DONE]\n\n") if stream else json.loads(body)["choices"]
                for connection in [opened] + spare:
                    connection.connection.close()

    killed = [s for s in streams if s.worker == victim]
    survived = [s for s in streams if s.worker == survivor]
    assert all(s.ending == "done" and not s.events for s in survived), [(s.ending, s.events) for s in survived]
    assert all(s.completion_tokens == SURVIVOR_TOKENS for s in survived)
    assert all(s.ending in ("closed", "error event", "reset", "incomplete read") for s in killed)
    assert all(s.completion_tokens is None for s in killed)          # cut short by the kill
    endings = {ending: sum(s.ending == ending for s in killed) for ending in {s.ending for s in killed}}
    with capsys.disabled():
        print(f"\nworker death: {len(killed)} streams on the killed worker ended: {endings} "
              f"(after {[s.chunks for s in killed]} events); {len(survived)} on the other worker ran to [DONE]; "
              f"new worker pid after {new_worker_at:.2f} s, its /health 200 after {healthy_at:.2f} s")

