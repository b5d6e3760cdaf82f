"""The trace over HTTP: `"trace": true` on chat and legacy completions, as a body field or the stream's last
event; bad values are a 400 naming the field; a request without a trace answers exactly as before."""
from __future__ import annotations

import json

import jsonschema
import pytest
from falcon import testing

from refengine.trace import SCHEMA_PATH
from web.app import create_app
from web.engine import start_engine

SCHEMA = json.loads(SCHEMA_PATH.read_text())
USER = [{"role": "user", "content": "The quick brown fox"}]


@pytest.fixture(scope="module")
def client(tiny_model):
    engine = start_engine(tiny_model, max_batch=4, max_queue=8)
    yield testing.TestClient(create_app(engine))
    engine.stop()


def sse_events(text: str) -> list[tuple[str | None, str]]:
    """(event name, data) of each SSE event."""
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


def test_chat_body_carries_a_valid_trace(client):
    body = {"model": "default", "messages": USER, "max_tokens": 5, "temperature": 0, "trace": True, "trace_top_k": 3}
    answer = client.simulate_post("/v1/chat/completions", json=body).json
    trace = answer["trace"]
    jsonschema.validate(trace, SCHEMA)
    assert trace["input"]["messages"] == USER
    assert len(trace["prompt"]["tokens"]) == answer["usage"]["prompt_tokens"]
    tokens = trace["choices"][0]["tokens"]
    assert len(tokens) == answer["usage"]["completion_tokens"]
    assert "".join(t["emitted"] for t in tokens) == answer["choices"][0]["message"]["content"]
    assert all(len(stage["top"]) <= 3 for t in tokens for stage in t["stages"])
    assert [t["stage"] for t in trace["timings"]] == ["template", "tokenize"]
    assert trace["choices"][0]["finish_reason"] == answer["choices"][0]["finish_reason"]


def test_streamed_trace_is_the_last_event_before_done(client):
    body = {"model": "default", "messages": USER, "max_tokens": 4, "temperature": 0, "stream": True, "trace": True}
    events = sse_events(client.simulate_post("/v1/chat/completions", json=body).text)
    assert events[-1] == (None, "[DONE]")
    name, data = events[-2]
    assert name == "trace"
    trace = json.loads(data)
    jsonschema.validate(trace, SCHEMA)
    content = "".join(json.loads(d)["choices"][0]["delta"].get("content") or ""
                      for n, d in events[:-2] if json.loads(d)["choices"])
    assert "".join(t["emitted"] for t in trace["choices"][0]["tokens"]) == content
    assert all(n is None for n, _ in events[:-2])


def test_completions_trace_holds_the_prompt(client):
    body = {"model": "default", "prompt": "Hello there", "max_tokens": 3, "temperature": 0, "trace": True}
    answer = client.simulate_post("/v1/completions", json=body).json
    jsonschema.validate(answer["trace"], SCHEMA)
    assert answer["trace"]["input"] == {"prompt": "Hello there"}
    assert answer["trace"]["prompt"]["text"] == "Hello there"


def test_without_a_trace_the_answer_is_unchanged(client):
    base = {"model": "default", "messages": USER, "max_tokens": 6, "temperature": 0}
    answers = [client.simulate_post("/v1/chat/completions", json=body).json
               for body in (base, {**base, "trace": False}, {**base, "trace": True})]
    for answer in answers:
        answer.pop("id"), answer.pop("created")
    answers[2].pop("trace")
    assert answers[0] == answers[1] == answers[2]
    assert "trace" not in answers[1]


@pytest.mark.parametrize("fields, param", [
    ({"trace": "yes"}, "trace"),
    ({"trace": True, "trace_top_k": 0}, "trace_top_k"),
    ({"trace": True, "trace_top_k": 51}, "trace_top_k"),
    ({"trace_top_k": 5}, "trace_top_k"),
])
def test_bad_trace_values_are_a_400_naming_the_field(client, fields, param):
    for path, body in (("/v1/chat/completions", {"model": "default", "messages": USER}),
                       ("/v1/completions", {"model": "default", "prompt": "Hi"})):
        result = client.simulate_post(path, json={**body, **fields})
        assert result.status_code == 400
        assert result.json["error"]["param"] == param


def test_a_trace_follows_one_prompt(client):
    result = client.simulate_post("/v1/completions", json={"model": "default", "prompt": ["a", "b"], "trace": True})
    assert result.status_code == 400
    assert result.json["error"]["param"] == "trace"
