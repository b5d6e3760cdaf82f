"""Two `refengine serve` replicas sharing one PostgreSQL store behind a real nginx running deploy/nginx.conf (its
`server` and `listen` lines pointed at this test's loopback ports): a session begun through one replica goes
on through the other, stored responses are read from either, an `ask` approval posted to replica B releases
the stream waiting on replica A, and with A killed mid-stream nginx routes its conversations to B.
Run with `-s` to see the transcript: each request and the replica that answered it.
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import psycopg
import pytest

from serving import free_port, refengine_serve, running_server
from services import postgres_url  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parent.parent
HANG_GUARD_S = 900                   # never a speed expectation: CI's 2 cores may be busy elsewhere
QUESTION = [{"role": "user", "content": "Compute 12345*6789 with Python and print it."}]
FORCED = {"type": "function", "function": {"name": "execute_python"}}
TRANSCRIPT: list[str] = []


def say(line: str) -> None:
    TRANSCRIPT.append(line)
    print(line, flush=True)


class Cluster:
    def __init__(self, a: int, b: int, lb: int, a_process: subprocess.Popen):
        self.ports = {"A": a, "B": b, "nginx": lb}
        self.a_process = a_process

    def name_of(self, upstream: str | None) -> str:
        """An X-Refengine-Upstream value (the last address nginx tried) as a replica's name."""
        last = (upstream or "").split(",")[-1].strip()
        return next((n for n in ("A", "B") if last == f"127.0.0.1:{self.ports[n]}"), f"?{upstream}")

    def send(self, where: str, method: str, path: str, body: dict | None = None,
             headers: dict | None = None) -> tuple[int, dict | str, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", self.ports[where], timeout=HANG_GUARD_S)
        try:
            connection.request(method, path, body=None if body is None else json.dumps(body),
                               headers={"Content-Type": "application/json", **(headers or {})})
            response = connection.getresponse()
            text = response.read().decode()
            answered = {k.lower(): v for k, v in response.getheaders()}
        finally:
            connection.close()
        served = self.name_of(answered.get("x-refengine-upstream")) if where == "nginx" else where
        summary = {k: body[k] for k in ("session_id", "previous_response_id", "stream") if body and k in body}
        summary.update({k: v for k, v in (headers or {}).items() if k == "x-refengine-affinity"})
        say(f"{method} {path} {summary or ''} via {where} → {response.status} from replica {served}")
        kind = answered.get("content-type", "")
        return response.status, json.loads(text) if kind.startswith("application/json") else text, answered


def nginx_config(folder: Path, a: int, b: int, lb: int) -> Path:
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    for shipped, ours in (("127.0.0.1:8001", f"127.0.0.1:{a}"), ("127.0.0.1:8002", f"127.0.0.1:{b}"),
                          ("listen 127.0.0.1:8080", f"listen 127.0.0.1:{lb}"),
                          ("worker_processes auto", "worker_processes 1")):
        assert shipped in text
        text = text.replace(shipped, ours)
    if os.geteuid() == 0:                        # its workers would be nobody, who cannot enter the test's folder
        text = "user root;\n" + text
    path = folder / "nginx.conf"
    path.write_text(text)
    return path


def wait_for_port(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        assert process.poll() is None, f"nginx exited with {process.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return
        except OSError:
            assert time.monotonic() < deadline, "nginx did not start listening"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster(postgres_url, smollm2_dir, tmp_path_factory):
    if shutil.which("nginx") is None:
        pytest.skip("nginx is not installed (.ci/run installs it)")
    database = "replicas_" + uuid.uuid4().hex
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{database}"')
    store = postgres_url.rsplit("/", 1)[0] + "/" + database
    folder = tmp_path_factory.mktemp("replicas")
    a, b, lb = free_port(), free_port(), free_port()
    started: list[subprocess.Popen] = []
    with ExitStack() as stack:
        for name, port in (("A", a), ("B", b)):
            command = refengine_serve("--model", str(smollm2_dir), "--port", str(port), "--store", store,
                                      "--state-dir", str(folder / name), "--approval-timeout", "600")
            stack.enter_context(running_server(command, port, timeout=HANG_GUARD_S, started=started))
        config = nginx_config(folder, a, b, lb)
        nginx = subprocess.Popen(["nginx", "-p", str(folder), "-c", str(config), "-g", "daemon off;"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stack.callback(lambda: (nginx.terminate(), nginx.wait(30)))
        wait_for_port(lb, nginx)
        yield Cluster(a, b, lb, started[0])
        print("\n".join(["", "---- transcript ----", *TRANSCRIPT]))


def chat(session_id: str, content: str) -> dict:
    return {"model": "default", "messages": [{"role": "user", "content": content}], "max_tokens": 4,
            "temperature": 0, "session_id": session_id}


def test_a_session_sticks_to_one_replica_and_continues_on_the_other(cluster):
    replicas, echoed = [], {}
    for turn in range(3):                       # the client echoes the affinity key it was answered
        status, body, headers = cluster.send("nginx", "POST", "/v1/chat/completions", chat("trip-1", f"Hi {turn}"),
                                             headers=echoed)
        assert status == 200 and body["session_id"] == "trip-1"
        assert headers["x-refengine-affinity"] == "trip-1"
        echoed = {"x-refengine-affinity": headers["x-refengine-affinity"]}
        replicas.append(cluster.name_of(headers["x-refengine-upstream"]))
    assert replicas[1] == replicas[2]           # hashed on the key: the same replica each time
    replicas = replicas[1:]
    first = replicas[0]
    other = "B" if first == "A" else "A"
    status, body, _ = cluster.send(other, "POST", "/v1/chat/completions", chat("trip-1", "And now?"))
    assert status == 200
    status, exported, _ = cluster.send(first, "GET", "/v1/sessions/trip-1")
    assert status == 200
    assert [m["content"] for m in exported["messages"] if m["role"] == "user"] == ["Hi 0", "Hi 1", "Hi 2",
                                                                                  "And now?"]


def test_stored_responses_are_read_from_either_replica(cluster):
    status, created, _ = cluster.send("A", "POST", "/v1/responses", {
        "model": "default", "input": "Name a colour.", "max_output_tokens": 4, "temperature": 0, "store": True})
    assert status == 200
    for where in ("B", "nginx"):
        status, fetched, _ = cluster.send(where, "GET", f"/v1/responses/{created['id']}")
        assert status == 200 and fetched["id"] == created["id"] and fetched["output"] == created["output"]
    status, follow, headers = cluster.send("B", "POST", "/v1/responses", {
        "model": "default", "input": "Another.", "max_output_tokens": 4, "temperature": 0, "store": True,
        "previous_response_id": created["id"]})
    assert status == 200 and follow["previous_response_id"] == created["id"]
    assert headers["x-refengine-affinity"] == created["id"]


def test_an_approval_posted_to_b_releases_the_stream_waiting_on_a(cluster):
    body = {"model": "default", "messages": QUESTION, "max_tokens": 100, "temperature": 0, "stream": True,
            "enable_code_execution": True, "tool_choice": FORCED, "max_tool_rounds": 1, "agent_permission": "ask"}
    connection = http.client.HTTPConnection("127.0.0.1", cluster.ports["A"], timeout=HANG_GUARD_S)
    connection.request("POST", "/v1/chat/completions", body=json.dumps(body),
                       headers={"Content-Type": "application/json"})
    say("POST /v1/chat/completions {agent_permission: ask, stream} via A → streaming from replica A")
    results, name, done = [], None, False
    try:
        for raw in connection.getresponse():
            line = raw.decode().rstrip("\r\n")
            if line == "data: [DONE]":
                done = True
            elif line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: ") and name is not None:
                payload = json.loads(line[len("data: "):])
                if name == "agentic_tool_approval_required":
                    status, _, _ = cluster.send("B", "POST", f"/v1/agent/approvals/{payload['approval_id']}",
                                                {"decision": "deny"})
                    assert status == 200
                elif name == "agentic_tool_call_progress" and payload["phase"] == "complete":
                    results.append(payload["result"]["status"])
                name = None
    finally:
        connection.close()
    if not results:                            # the model's text, not the server: here it always closes it
        pytest.skip("SmolLM2 did not close its call within max_tokens on this machine")
    say(f"  the stream on A went on: tool result {results}, finished: {done}")
    assert results == ["denied"] and done


def key_served_by(cluster, replica: str) -> str:
    """An affinity key nginx hashes to `replica` (found by asking; the hash is fixed by the config)."""
    for i in range(200):
        key = f"conversation-{i}"
        status, _, headers = cluster.send("nginx", "GET", "/health", headers={"x-refengine-affinity": key})
        if status == 200 and cluster.name_of(headers["x-refengine-upstream"]) == replica:
            return key
    pytest.fail(f"no key among 200 hashed to replica {replica}")


def test_killing_a_mid_stream_leaves_b_serving(cluster):
    key = key_served_by(cluster, "A")
    body = {"model": "default", "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": 2000, "temperature": 0, "ignore_eos": True, "stream": True}
    connection = http.client.HTTPConnection("127.0.0.1", cluster.ports["nginx"], timeout=HANG_GUARD_S)
    connection.request("POST", "/v1/chat/completions", body=json.dumps(body),
                       headers={"Content-Type": "application/json", "x-refengine-affinity": key})
    response = connection.getresponse()
    assert response.status == 200 and cluster.name_of(response.getheader("x-refengine-upstream")) == "A"
    say(f"POST /v1/chat/completions {{stream, affinity {key}}} via nginx → streaming from replica A")
    assert response.readline().startswith(b"data: ")
    master = cluster.a_process
    children = subprocess.run(["pgrep", "-P", str(master.pid)], capture_output=True, text=True).stdout.split()
    for pid in [master.pid, *map(int, children)]:     # the replica, its workers included, dies at once
        os.kill(pid, signal.SIGKILL)
    master.wait(HANG_GUARD_S)
    deadline = time.monotonic() + HANG_GUARD_S
    while True:            # a killed worker holds the listening socket until the kernel has ended it
        try:
            socket.create_connection(("127.0.0.1", cluster.ports["A"]), timeout=2).close()
        except ConnectionRefusedError:
            break
        assert time.monotonic() < deadline, "replica A's port still accepts after SIGKILL"
        time.sleep(0.1)
    say("  replica A killed (SIGKILL, master and workers): its port refuses connections")
    rest = b""
    try:
        rest = response.read()
    except (http.client.IncompleteRead, ConnectionError) as cut:
        rest = getattr(cut, "partial", b"")
    finally:
        connection.close()
    assert b"data: [DONE]" not in rest                  # the stream was cut, not finished
    say("  the stream through nginx ended without [DONE]")
    for _ in range(2):                                  # the same conversation, and a new one: both on B
        for headers in ({"x-refengine-affinity": key}, {}):
            status, answer, answered = cluster.send("nginx", "POST", "/v1/chat/completions", {
                "model": "default", "messages": [{"role": "user", "content": "Still there?"}], "max_tokens": 3},
                headers=headers)
            assert status == 200 and answer["object"] == "chat.completion"
            assert cluster.name_of(answered["x-refengine-upstream"]) == "B"
