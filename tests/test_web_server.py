"""The real server: `web.serve` (gunicorn, gthread) in a subprocess on a free loopback port, driven by the
`openai` SDK and by raw HTTP, on the tiny model."""
from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

import openai
import pytest

from serving import free_port, running_server

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "sk-integration"
MAX_BODY = 100_000
USER = [{"role": "user", "content": "The quick brown fox"}]


def get(port: int, path: str, headers: dict | None = None) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    """The port of a running server; stopped (and its output checked) at the end of the module."""
    port = free_port()
    code = (f"from web.serve import serve; serve({str(tiny_model_dir)!r}, host='127.0.0.1', port={port}, "
            f"api_key={API_KEY!r}, max_batch=8, max_queue=8, max_body_bytes={MAX_BODY}, keepalive_s=0.5)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with running_server([sys.executable, "-c", code], port, timeout=60, env=env, cwd=ROOT):
        yield port


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def test_sdk_chat_non_stream(client):
    response = client.chat.completions.create(model="default", messages=USER, max_tokens=5, temperature=0)
    choice = response.choices[0]
    assert response.object == "chat.completion" and response.system_fingerprint.startswith("fp_")
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.message.refusal is None and choice.finish_reason in ("stop", "length")
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_sdk_stream_equals_non_stream(client):
    expected = client.chat.completions.create(model="default", messages=USER, max_tokens=8, temperature=0)
    stream = client.chat.completions.create(model="default", messages=USER, max_tokens=8, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == expected.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])


def test_sdk_stream_helper_accumulates(client):
    """The SDK's own stream helper rebuilds a ChatCompletion from the chunks: it must accept ours."""
    with client.chat.completions.stream(model="default", messages=USER, max_tokens=6, temperature=0,
                                        logprobs=True, top_logprobs=2) as stream:
        for _ in stream:                  # (get_final_completion refuses a "length" finish: use the snapshot)
            pass
        final = stream.current_completion_snapshot
    plain = client.chat.completions.create(model="default", messages=USER, max_tokens=6, temperature=0)
    assert final.choices[0].message.content == plain.choices[0].message.content
    assert len(final.choices[0].logprobs.content) == plain.usage.completion_tokens


def test_sdk_n_logprobs_and_stop(client):
    response = client.chat.completions.create(model="default", messages=USER, max_tokens=6, n=2, seed=5,
                                              logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    assert [c.index for c in response.choices] == [0, 1]
    for choice in response.choices:
        assert len(choice.logprobs.content) == 6
        assert all(len(entry.top_logprobs) == 3 for entry in choice.logprobs.content)
    greedy = client.chat.completions.create(model="default", messages=USER, max_tokens=30, temperature=0)
    text = greedy.choices[0].message.content
    stop = next(text[i:i + 2] for i in range(3, len(text) - 1) if text[i:i + 2].isascii() and text[i:i + 2].strip())
    cut = client.chat.completions.create(model="default", messages=USER, max_tokens=30, temperature=0, stop=stop)
    assert cut.choices[0].message.content == text[:text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_sdk_completions_and_models(client, tiny_model_dir):
    response = client.completions.create(model="default", prompt=["Hello", "The quick"], max_tokens=3)
    assert [c.index for c in response.choices] == [0, 1] and response.object == "text_completion"
    streamed = list(client.completions.create(model="default", prompt="Hello", max_tokens=3, stream=True))
    assert sum(1 for c in streamed for choice in c.choices if choice.finish_reason) == 1
    assert [m.id for m in client.models.list().data] == [tiny_model_dir.name]
    assert client.models.retrieve("default").id == tiny_model_dir.name


def test_sdk_errors(client, server):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=USER)
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="default", messages=USER, temperature=5)
    assert caught.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as caught:           # a bad stream request is not a stream
        client.chat.completions.create(model="default", messages=[{"role": "wizard", "content": "x"}], stream=True)
    assert caught.value.param == "messages[0].role"
    wrong = openai.OpenAI(base_url=f"http://127.0.0.1:{server}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def test_concurrent_streams_all_complete(client, server):
    results = {}

    def run(i):
        stream = client.chat.completions.create(model="default", messages=USER, max_tokens=12, seed=i,
                                                stream=True, extra_body={"ignore_eos": True})
        results[i] = [c.choices[0].finish_reason for c in stream if c.choices and c.choices[0].finish_reason]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {i: ["length"] for i in range(6)}
    assert metric(server, "refengine_decode_steps_total") > 0


# ---- raw HTTP ----

def raw(port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json", **(headers or {})}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def envelope(status_headers_body, status: int) -> dict:
    got, headers, body = status_headers_body
    assert got == status, body
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_raw_malformed_requests(server):
    assert envelope(raw(server, "POST", "/v1/chat/completions", b'{"model": "default", "messages": ['), 400)
    assert envelope(raw(server, "POST", "/v1/chat/completions", b"[]"), 400)
    assert envelope(raw(server, "POST", "/v1/chat/completions", b""), 400)
    assert envelope(raw(server, "GET", "/v1/nope"), 404)["message"] == "Invalid URL (GET /v1/nope)"
    envelope(raw(server, "PUT", "/v1/models"), 405)
    big = json.dumps({"model": "default", "messages": [{"role": "user", "content": "x" * MAX_BODY}]}).encode()
    assert envelope(raw(server, "POST", "/v1/chat/completions", big), 413)["code"] == "request_too_large"
    assert envelope(raw(server, "GET", "/v1/models", headers={"Authorization": "Bearer nope"}), 401)["code"] == \
        "invalid_api_key"
    status, _, body = raw(server, "GET", "/health", headers={"Authorization": ""})
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_raw_chunked_request_body(server):
    body = json.dumps({"model": "default", "messages": USER, "max_tokens": 2}).encode()
    connection = http.client.HTTPConnection("127.0.0.1", server, timeout=30)
    connection.request("POST", "/v1/chat/completions", body=iter([body[:10], body[10:]]),
                       headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
                       encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 200 and json.loads(response.read())["object"] == "chat.completion"
    connection.close()


def metric(port: int, name: str) -> float:
    status, text = get(port, "/metrics", {"Authorization": f"Bearer {API_KEY}"})    # guarded like the API
    assert status == 200, text
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith(name + " ")))


def test_client_disconnect_mid_stream_cancels_and_server_keeps_serving(server):
    before = metric(server, "refengine_client_disconnects_total")
    body = json.dumps({"model": "default", "messages": USER, "stream": True, "n": 4, "max_tokens": 200,
                       "ignore_eos": True}).encode()
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", server), timeout=30) as connection:
        connection.sendall(request)
        received = b""
        while b"data: " not in received:
            received += connection.recv(4096)
        assert received.startswith(b"HTTP/1.1 200")
    deadline = time.monotonic() + 20
    while metric(server, "refengine_client_disconnects_total") == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(server, "refengine_client_disconnects_total") == before + 1
    while metric(server, "refengine_running_requests") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(server, "refengine_running_requests") == 0
    status, _, answer = raw(server, "POST", "/v1/chat/completions",
                            json.dumps({"model": "default", "messages": USER, "max_tokens": 2}).encode())
    assert status == 200 and json.loads(answer)["choices"][0]["message"]["role"] == "assistant"
