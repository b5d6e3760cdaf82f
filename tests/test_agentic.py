"""The agent runtime through HTTP: `refengine serve` on the default model with the real bubblewrap sandbox,
driven by the openai SDK (`extra_body`) and raw SSE; the field checks on the tiny model in-process."""
from __future__ import annotations

import http.client
import json
import shutil
from urllib.parse import urlsplit

import openai
import pytest
from falcon import testing

from refengine.agent.runtime import AgentRuntime, AgentSettings
from refengine.agent.sessions import folder_name
from serving import free_port, refengine_serve, running_server
from test_openapi import served_routes
from web.app import create_app
from web.engine import start_engine

FORCED = {"type": "function", "function": {"name": "execute_python"}}
HANG_GUARD_S = 900                           # never a speed expectation: CI's 2 cores may be busy elsewhere
QUESTION = [{"role": "user", "content": "Compute 12345*6789 with Python and print it."}]   # SmolLM2 closes this call

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is missing (.ci/run installs it)")


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return tmp_path_factory.mktemp("agent-state")


@pytest.fixture(scope="module")
def server(smollm2_dir, state):
    port = free_port()
    command = refengine_serve("--model", str(smollm2_dir), "--port", str(port), "--state-dir", str(state),
                              "--approval-timeout", "60")
    with running_server(command, port):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=HANG_GUARD_S)


def agentic(client, messages=QUESTION, **extra):
    return client.chat.completions.create(model="default", messages=messages, temperature=0, max_tokens=100,
                                          extra_body={"enable_code_execution": True, **extra})


@needs_bwrap
def test_a_forced_code_call_runs_in_the_sandbox_and_the_session_goes_on(client, server):
    first = agentic(client, tool_choice=FORCED)
    extra = first.model_extra
    calls = extra["agentic_tool_calls"]
    if not calls:                                  # the model's text, not the server: here it always closes it
        pytest.skip("SmolLM2 did not close its call within max_tokens on this machine")
    assert calls[0]["name"] == "execute_python" and calls[0]["round"] == 1
    assert calls[0]["result"]["status"] in ("success", "error")          # it ran (the model's code decides)
    assert first.choices[0].finish_reason in ("stop", "length") and first.choices[0].message.content is not None
    assert first.usage.prompt_tokens > 0 and first.usage.completion_tokens > 0
    session = extra["session_id"]
    exported = Raw(server).send("GET", f"/v1/sessions/{session}")[1]
    turn = len(exported["messages"])
    assert exported["messages"][0] == QUESTION[0] and turn >= 4          # user, call, result, answer
    assert any(m["role"] == "tool" for m in exported["messages"])
    second = agentic(client, [{"role": "user", "content": "Thanks."}], session_id=session, max_tool_rounds=0)
    assert second.model_extra["session_id"] == session and second.model_extra["agentic_tool_calls"] == []
    assert len(Raw(server).send("GET", f"/v1/sessions/{session}")[1]["messages"]) == turn + 2


def test_sessions_are_listed_imported_exported_and_deleted(server):
    raw = Raw(server)
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    status, put = raw.send("PUT", "/v1/sessions/imported-1", {"messages": history})
    assert status == 200 and put["messages"] == history
    assert any(s["id"] == "imported-1" for s in raw.send("GET", "/v1/sessions")[1]["data"])
    status, bad = raw.send("PUT", "/v1/sessions/imported-1", {"messages": [{"role": 3}]})
    assert status == 400 and bad["error"]["param"].startswith("messages")
    assert raw.send("DELETE", "/v1/sessions/imported-1")[1]["deleted"] is True
    assert raw.send("GET", "/v1/sessions/imported-1")[0] == 404


@needs_bwrap
def test_deny_gives_the_model_a_denied_result(client):
    reply = agentic(client, tool_choice=FORCED, agent_permission="deny", max_tool_rounds=1)
    assert reply.model_extra["agentic_tool_calls"][0]["result"]["status"] == "denied"


@needs_bwrap
def test_the_round_limit_ends_with_a_normal_answer_and_done(server):
    body = {"model": "default", "messages": QUESTION, "max_tokens": 100, "temperature": 0, "stream": True,
            "enable_code_execution": True, "tool_choice": FORCED, "max_tool_rounds": 1}
    events = sse_events(Raw(server).send("POST", "/v1/chat/completions", body)[1])
    names = [name for name, _ in events]
    assert names.count("agentic_tool_call_progress") == 2                 # calling, complete: one round
    finish = [data for name, data in events if name is None and data != "[DONE]"
              and json.loads(data)["choices"] and json.loads(data)["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and "session_id" in json.loads(finish[0])
    assert events[-1] == (None, "[DONE]")


@needs_bwrap
def test_requested_files_come_back_produced_or_as_placeholders(client, server, state):
    """A file in the session's working folder (written there by an earlier run, here by the test) comes back
    with its content; one that is not there as a not_produced placeholder, even when no code ran."""
    session = agentic(client, max_tool_rounds=0).model_extra["session_id"]
    (state / "sessions" / folder_name(session) / "report.csv").write_text("a,b\n1,2\n")
    reply = agentic(client, [{"role": "user", "content": "Thanks."}], session_id=session,
                    files=["report.csv", "missing.csv"], max_tool_rounds=0)
    produced, missing = reply.model_extra["files"]
    assert (produced["name"], produced["text"], produced["mime_type"]) == ("report.csv", "a,b\n1,2\n", "text/csv")
    assert missing["name"] == "missing.csv" and missing["error"]["code"] == "not_produced"
    status, content = Raw(server).send("GET", f"/v1/files/{produced['id']}/content")
    assert status == 200 and content == "a,b\n1,2\n"


@needs_bwrap
@pytest.mark.parametrize("decision", ["approve", "deny"])
def test_ask_waits_for_a_decision_over_http(server, decision):
    body = {"model": "default", "messages": QUESTION, "max_tokens": 100, "temperature": 0, "stream": True,
            "enable_code_execution": True, "tool_choice": FORCED, "max_tool_rounds": 1, "agent_permission": "ask"}
    raw, results, name = Raw(server), [], None
    for line in raw.stream_lines("/v1/chat/completions", body):
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: ") and name is not None:
            payload = json.loads(line[len("data: "):])
            if name == "agentic_tool_approval_required":
                answered = raw.send("POST", f"/v1/agent/approvals/{payload['approval_id']}", {"decision": decision})
                assert answered[0] == 200
            elif name == "agentic_tool_call_progress" and payload["phase"] == "complete":
                results.append(payload["result"]["status"])
            name = None
    if not results:                                # the model's text, not the server: here it always calls
        pytest.skip("SmolLM2 did not close its call within max_tokens on this machine")
    assert len(results) == 1
    assert (results[0] == "denied") == (decision == "deny")
    assert raw.send("POST", "/v1/agent/approvals/appr_nothing", {"decision": "approve"})[0] == 404


class Raw:
    """Plain HTTP to the server (the SDK has no calls for sessions and approvals)."""

    def __init__(self, base: str):
        self.host, self.port = urlsplit(base).hostname, urlsplit(base).port

    def send(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict | str]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=HANG_GUARD_S)
        try:
            connection.request(method, path, body=None if body is None else json.dumps(body),
                               headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            text = response.read().decode()
            kind = response.getheader("Content-Type", "")
            return response.status, json.loads(text) if kind.startswith("application/json") else text
        finally:
            connection.close()

    def stream_lines(self, path: str, body: dict):
        connection = http.client.HTTPConnection(self.host, self.port, timeout=HANG_GUARD_S)
        connection.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        try:
            for raw in response:
                yield raw.decode().rstrip("\r\n")
        finally:
            connection.close()


def sse_events(text: str) -> list[tuple[str | None, str]]:
    """(event name or None, data) per SSE event."""
    events = []
    for block in text.strip().split("\n\n"):
        name, data = None, None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                data = line[len("data: "):]
        if data is not None:
            events.append((name, data))
    return events


# ---- the fields' checks (in-process, tiny model) ----

@pytest.fixture(scope="module")
def tiny_client(tiny_model, tmp_path_factory):
    engine = start_engine(tiny_model)
    runtime = AgentRuntime(AgentSettings(state_dir=tmp_path_factory.mktemp("tiny-agent")))
    yield testing.TestClient(create_app(engine, agent=runtime))
    engine.stop()
    runtime.close()


@pytest.mark.parametrize("fields,param", [
    ({"session_id": ""}, "session_id"),
    ({"session_id": 7}, "session_id"),
    ({"enable_code_execution": "yes"}, "enable_code_execution"),
    ({"files": ["a.txt"]}, "files"),                                          # files without code execution
    ({"enable_code_execution": True, "files": ["../a.txt"]}, "files[0]"),
    ({"enable_code_execution": True, "files": [{"format": "csv"}]}, "files[0]"),
    ({"agent_permission": "maybe"}, "agent_permission"),
    ({"agent_permission": "ask"}, "agent_permission"),                        # ask needs a stream
    ({"code_execution_permission": "ask", "enable_code_execution": True}, "code_execution_permission"),
    ({"max_tool_rounds": -1}, "max_tool_rounds"),
    ({"max_tool_rounds": "3"}, "max_tool_rounds"),
    ({"enable_code_execution": True, "n": 2}, "n"),
    ({"enable_code_execution": True, "logprobs": True}, "logprobs"),
    ({"enable_code_execution": True, "response_format": {"type": "json_object"}}, "response_format"),
    ({"enable_code_execution": True, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"enable_code_execution": True, "tools": [{"type": "function", "function": {
        "name": "execute_python", "parameters": {"type": "object"}}}]}, "tools"),     # shadows the built-in
    ({"enable_code_execution": True, "tool_choice": {"type": "allowed_tools", "allowed_tools": {
        "mode": "auto", "tools": [{"type": "function", "function": {"name": "ghost"}}]}}}, "tool_choice"),
    ({"session_id": "s-format", "response_format": {"type": "json_object"}}, "response_format"),
    ({"session_id": "x" * 129}, "session_id"),
    ({"enable_code_execution": True, "files": [{"name": "a.csv", "format": 3}]}, "files[0]"),
])
def test_every_bad_value_of_the_agent_fields_is_a_400_naming_it(tiny_client, fields, param):
    reply = tiny_client.simulate_post("/v1/chat/completions", json={
        "model": "default", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, **fields})
    assert reply.status_code == 400, reply.text
    assert reply.json["error"]["param"].startswith(param), reply.json


def test_a_session_without_tools_keeps_the_conversation(tiny_client):
    first = tiny_client.simulate_post("/v1/chat/completions", json={
        "model": "default", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "session_id": "s-1"})
    assert first.status_code == 200 and first.json["session_id"] == "s-1"
    again = tiny_client.simulate_post("/v1/chat/completions", json={
        "model": "default", "messages": [{"role": "user", "content": "More"}], "max_tokens": 3, "session_id": "s-1"})
    assert again.status_code == 200
    messages = tiny_client.simulate_get("/v1/sessions/s-1").json["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    made = tiny_client.simulate_post("/v1/chat/completions", json={
        "model": "default", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
        "max_tool_rounds": 0}).json["session_id"]
    assert len(made) == 32                                                      # a new uuid4


@needs_bwrap
def test_files_may_be_objects_and_come_back_even_when_no_code_ran(tiny_client):
    reply = tiny_client.simulate_post("/v1/chat/completions", json={
        "model": "default", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
        "enable_code_execution": True, "max_tool_rounds": 0,
        "files": [{"name": "table.csv", "format": "csv", "description": "a table"}, "notes.txt"]})
    assert reply.status_code == 200, reply.text
    assert [(f["name"], f["error"]["code"]) for f in reply.json["files"]] == [
        ("table.csv", "not_produced"), ("notes.txt", "not_produced")]


def test_a_server_without_the_runtime_refuses_the_fields(tiny_model):
    engine = start_engine(tiny_model)
    try:
        reply = testing.TestClient(create_app(engine)).simulate_post("/v1/chat/completions", json={
            "model": "default", "messages": [{"role": "user", "content": "Hi"}], "session_id": "x"})
        assert reply.status_code == 400 and reply.json["error"]["param"] == "session_id"
    finally:
        engine.stop()


def test_the_document_lists_the_agent_routes_it_serves(tiny_client):
    document = tiny_client.simulate_get("/openapi.json").json
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert served_routes(tiny_client.app) == documented
    assert ("/v1/agent/approvals/{approval_id}", "post") in documented
