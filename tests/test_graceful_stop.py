"""SIGTERM on `refengine serve`: the replica stops admitting (/health 503 with Retry-After, new requests 503
`server_shutting_down`), lets the request in flight finish (here a stream held open by an `ask` approval,
whose decision still gets through), then exits 0. The approval makes the request's length the test's choice,
so nothing here depends on how fast the model runs."""
from __future__ import annotations

import http.client
import json
import signal
import subprocess
import time

import pytest

from serving import free_port, refengine_serve, running_server

HANG_GUARD_S = 900
QUESTION = [{"role": "user", "content": "Compute 12345*6789 with Python and print it."}]
FORCED = {"type": "function", "function": {"name": "execute_python"}}


def send(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, dict, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG_GUARD_S)
    try:
        connection.request(method, path, body=None if body is None else json.dumps(body),
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        text, headers = response.read(), dict(response.getheaders())
        is_json = headers.get("Content-Type", "").startswith("application/json")
        return response.status, json.loads(text) if is_json else text.decode(), headers
    finally:
        connection.close()


def sse(response):
    """(event name or None, payload or "[DONE]") per event of a stream."""
    name = None
    for raw in response:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            data = line[len("data: "):]
            yield name, data if data == "[DONE]" else json.loads(data)
            name = None


def test_sigterm_drains_then_exits(smollm2_dir, tmp_path):
    port, started = free_port(), []
    command = refengine_serve("--model", str(smollm2_dir), "--port", str(port), "--state-dir", str(tmp_path),
                              "--approval-timeout", str(HANG_GUARD_S), "--grace-period", str(HANG_GUARD_S))
    with running_server(command, port, timeout=HANG_GUARD_S, started=started):
        server: subprocess.Popen = started[0]
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG_GUARD_S)
        connection.request("POST", "/v1/chat/completions", headers={"Content-Type": "application/json"},
                           body=json.dumps({"model": "default", "messages": QUESTION, "max_tokens": 100,
                                            "temperature": 0, "stream": True, "enable_code_execution": True,
                                            "tool_choice": FORCED, "max_tool_rounds": 1, "agent_permission": "ask"}))
        events = sse(connection.getresponse())
        approval = next((payload for name, payload in events if name == "agentic_tool_approval_required"), None)
        if approval is None:                      # the model's text, not the server: here it always calls
            pytest.skip("SmolLM2 did not close its call within max_tokens on this machine")

        server.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + HANG_GUARD_S
        while (health := send(port, "GET", "/health"))[0] == 200:       # until the worker has the signal
            assert time.monotonic() < deadline
            time.sleep(0.1)
        status, body, headers = health
        assert (status, body, headers["Retry-After"]) == (503, {"status": "stopping"}, "5")
        status, body, headers = send(port, "POST", "/v1/chat/completions",
                                     {"model": "default", "messages": QUESTION, "max_tokens": 2})
        assert status == 503 and body["error"]["code"] == "server_shutting_down" and "Retry-After" in headers
        assert send(port, "GET", "/metrics")[0] == 200                   # scrapes still answered

        status, _, _ = send(port, "POST", f"/v1/agent/approvals/{approval['approval_id']}", {"decision": "deny"})
        assert status == 200                                             # the running stream's decision passes
        rest = list(events)
        connection.close()
        results = [p["result"]["status"] for n, p in rest if n == "agentic_tool_call_progress"
                   and p["phase"] == "complete"]
        assert results == ["denied"] and rest[-1] == (None, "[DONE]")  # finished, not cut
        assert server.wait(HANG_GUARD_S) == 0
