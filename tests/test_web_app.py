"""The Falcon app (web.app) on the tiny model, through falcon.testing: shapes validated against OpenAI's
schemas, streaming rules, every error path, disconnects, the queue limit, loading, metrics, tokenize."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from falcon import testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refengine.generate import generate
from refengine.model import load_model
from refengine.prompt import chat_prompt_ids
from refengine.request import GenerationRequest, SamplingParams, StoppingParams
from tiny_model import GatedModel, write_tiny_llama
from web import sse
from web.app import create_app
from web.engine import EngineSlot, start_engine

SCHEMAS = Path(__file__).resolve().parent.parent / "conformance" / "schemas"
USER = [{"role": "user", "content": "The quick brown fox"}]


def schema_validator(name: str) -> jsonschema.Draft202012Validator:
    """OpenAI's component, generated from the OpenAPI spec with `nullable` translated (conformance/schemas)."""
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / f"{name}.json").read_text()))


def completion_chunk_validator(echo_scored: bool = False) -> jsonschema.Draft202012Validator:
    """OpenAI streams legacy completions as CreateCompletionResponse objects whose finish_reason (and, with
    include_usage, usage) is null until the end; the spec has no chunk schema for them, so allow those nulls."""
    schema = completion_schema(echo_scored)
    choice = schema["properties"]["choices"]["items"]["properties"]
    choice["finish_reason"] = {"anyOf": [choice["finish_reason"], {"type": "null"}]}
    schema["properties"]["usage"] = {"anyOf": [schema["properties"]["usage"], {"type": "null"}]}
    return jsonschema.Draft202012Validator(schema)


def completion_schema(echo_scored: bool = False) -> dict:
    """CreateCompletionResponse; `echo_scored`: an echoed prompt's first token has a null logprob and null
    top_logprobs, as OpenAI and vLLM answer, which the spec's item types leave out."""
    schema = json.loads((SCHEMAS / "CreateCompletionResponse.json").read_text())
    if echo_scored:
        logprobs = schema["properties"]["choices"]["items"]["properties"]["logprobs"]["anyOf"][0]["properties"]
        for key in ("token_logprobs", "top_logprobs"):
            logprobs[key]["items"] = {"anyOf": [logprobs[key]["items"], {"type": "null"}]}
    return schema


CHAT_RESPONSE = schema_validator("CreateChatCompletionResponse")
CHAT_CHUNK = schema_validator("CreateChatCompletionStreamResponse")
COMPLETION_RESPONSE = schema_validator("CreateCompletionResponse")
COMPLETION_CHUNK = completion_chunk_validator()
ERROR_RESPONSE = schema_validator("ErrorResponse")
MODEL_LIST = schema_validator("ListModelsResponse")
MODEL = schema_validator("Model")


@pytest.fixture(scope="module")
def engine(tiny_model):
    engine = start_engine(tiny_model, max_batch=8, max_queue=16)
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def client(engine):
    return testing.TestClient(create_app(engine))


@pytest.fixture
def lone_engine(tiny_model):
    """An engine of its own (one sequence at a time) for tests that fill its queue or stop it."""
    engine = start_engine(tiny_model, max_batch=1, max_queue=1)
    yield engine
    engine.stop()


def occupy(engine, n: int = 16, max_tokens: int = 250):
    """Submit a long request straight to the scheduler and wait until it runs (it holds the batch)."""
    handle = engine.scheduler.submit(GenerationRequest((1,), stopping=StoppingParams(max_tokens=max_tokens,
                                                                                     ignore_eos=True), n=n))
    deadline = time.monotonic() + 10
    while engine.scheduler.stats()["running_requests"] == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    return handle


def post_chat(client, **fields):
    return client.simulate_post("/v1/chat/completions", json={"model": "default", "messages": USER, **fields})


def error_of(result, status: int) -> dict:
    assert result.status_code == status, result.text
    assert result.headers["content-type"].startswith("application/json")
    ERROR_RESPONSE.validate(result.json)
    return result.json["error"]


def sse_data(text: str) -> list[str]:
    """The data of each event, checking the framing: `data: ...` lines or comments, blank-line separated."""
    assert text.endswith("\n\n")
    data = []
    for block in text[:-2].split("\n\n"):
        lines = [line for line in block.split("\n") if not line.startswith(":")]
        if not lines:
            continue                                     # a keep-alive comment
        assert len(lines) == 1 and lines[0].startswith("data: "), block
        data.append(lines[0][len("data: "):])
    return data


def stream_chunks(result, validator=CHAT_CHUNK) -> list[dict]:
    assert result.status_code == 200, result.text
    assert result.headers["content-type"] == "text/event-stream"
    data = sse_data(result.text)
    assert data[-1] == "[DONE]" and data.count("[DONE]") == 1
    chunks = [json.loads(d) for d in data[:-1]]
    for chunk in chunks:
        validator.validate(chunk)
    return chunks


def engine_text(model, messages, max_tokens, **sampling) -> tuple[str, str, list]:
    """The engine's own answer (refengine.generate, no server), to compare the server's against."""
    ids = chat_prompt_ids(model, messages)
    request = GenerationRequest(tuple(ids), SamplingParams(temperature=0, **sampling),
                                StoppingParams(max_tokens=max_tokens))
    events = list(generate(model, request))
    return "".join(e.text for e in events), events[-1].finish_reason, ids


# ---- chat: the non-streamed response ----

def test_chat_completion_matches_the_spec_and_the_engine(client, tiny_model):
    result = post_chat(client, temperature=0, max_tokens=12)
    assert result.status_code == 200 and result.headers["content-type"].startswith("application/json")
    body = result.json
    CHAT_RESPONSE.validate(body)
    text, finish, ids = engine_text(tiny_model, USER, 12)
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == tiny_model.name
    assert body["system_fingerprint"].startswith("fp_")
    assert abs(body["created"] - time.time()) < 60
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": text, "refusal": None}
    assert (choice["index"], choice["finish_reason"], choice["logprobs"]) == (0, finish, None)
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(ids)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] <= 12


def test_max_tokens_gives_length_after_exactly_n_tokens(client):
    for field in ("max_tokens", "max_completion_tokens"):
        body = post_chat(client, ignore_eos=True, **{field: 7}).json
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"]["completion_tokens"] == 7


def test_logprobs_are_one_entry_per_completion_token(client, tiny_model):
    body = post_chat(client, temperature=0, max_tokens=8, ignore_eos=True, logprobs=True, top_logprobs=3).json
    CHAT_RESPONSE.validate(body)
    entries = body["choices"][0]["logprobs"]["content"]
    assert body["choices"][0]["logprobs"]["refusal"] is None
    assert len(entries) == body["usage"]["completion_tokens"] == 8
    for entry in entries:
        tops = entry["top_logprobs"]
        assert len(tops) == 3 and all(t["logprob"] <= 0 for t in tops)
        assert [t["logprob"] for t in tops] == sorted((t["logprob"] for t in tops), reverse=True)
        assert entry["logprob"] == pytest.approx(tops[0]["logprob"])          # greedy: the top token
        assert entry["token"] == tops[0]["token"] and entry["bytes"] == tops[0]["bytes"]
    _, _, ids = engine_text(tiny_model, USER, 8)
    produced = list(generate(tiny_model, GenerationRequest(tuple(ids), SamplingParams(temperature=0),
                                                           StoppingParams(max_tokens=8, ignore_eos=True))))
    assert [e["bytes"] for e in entries] == [list(tiny_model.tokenizer.token_bytes[e.token_id]) or
                                             list(tiny_model.tokenizer.token_strings[e.token_id].encode())
                                             for e in produced]


def test_top_logprobs_zero_gives_empty_alternatives(client):
    entries = post_chat(client, max_tokens=3, logprobs=True).json["choices"][0]["logprobs"]["content"]
    assert entries and all(e["top_logprobs"] == [] for e in entries)


def test_n_choices_and_seed_determinism(client):
    first = post_chat(client, n=3, temperature=1.0, seed=42, max_tokens=6).json
    again = post_chat(client, n=3, temperature=1.0, seed=42, max_tokens=6).json
    CHAT_RESPONSE.validate(first)
    assert [c["index"] for c in first["choices"]] == [0, 1, 2]
    texts = [c["message"]["content"] for c in first["choices"]]
    assert texts == [c["message"]["content"] for c in again["choices"]]
    assert len(set(texts)) > 1                                   # each choice has its own random stream
    assert first["usage"]["completion_tokens"] <= 3 * 6
    assert first["usage"]["prompt_tokens"] == post_chat(client, max_tokens=1).json["usage"]["prompt_tokens"]


def test_stop_string_cuts_the_text_before_it(client, tiny_model):
    text, _, _ = engine_text(tiny_model, USER, 40)
    ascii_runs = [text[i:i + 2] for i in range(4, len(text) - 1) if text[i:i + 2].isascii()
                  and text[i:i + 2].strip() and text.find(text[i:i + 2]) >= 4]
    assert ascii_runs, text
    stop = ascii_runs[0]
    body = post_chat(client, temperature=0, max_tokens=40, stop=[stop, "\u2603never"]).json
    assert body["choices"][0]["message"]["content"] == text[:text.find(stop)]
    assert body["choices"][0]["finish_reason"] == "stop"


def test_context_length_exceeded_and_truncation(client):
    long_messages = [{"role": "system", "content": "Be brief."}] + [
        {"role": "user", "content": "The quick brown fox jumps over the lazy dog. " * 8}] * 6
    error = error_of(post_chat(client, messages=long_messages, max_tokens=4), 400)
    assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")
    body = post_chat(client, messages=long_messages, max_tokens=4, truncate_sequence=True).json
    CHAT_RESPONSE.validate(body)
    assert body["usage"]["prompt_tokens"] + 4 <= 256


def test_too_many_max_tokens_names_the_field(client):
    error = error_of(post_chat(client, max_tokens=100000), 400)
    assert error["param"] == "max_tokens"


# ---- chat: the stream ----

def test_stream_follows_openai_rules(client):
    expected = post_chat(client, temperature=0, max_tokens=10).json
    chunks = stream_chunks(post_chat(client, temperature=0, max_tokens=10, stream=True))
    assert len({(c["id"], c["created"], c["model"], c["system_fingerprint"]) for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)
    deltas = [c["choices"][0] for c in chunks]
    assert deltas[0]["delta"]["role"] == "assistant"
    assert [d["finish_reason"] for d in deltas if d["finish_reason"]] == [expected["choices"][0]["finish_reason"]]
    assert deltas[-1]["finish_reason"] is not None and deltas[-1]["delta"] == {}
    assert "".join(d["delta"].get("content", "") for d in deltas) == expected["choices"][0]["message"]["content"]


def without_cached(usage: dict) -> dict:
    """Usage less `prompt_tokens_details` (how much of the prompt the prefix cache held)."""
    return {k: v for k, v in usage.items() if k != "prompt_tokens_details"}


def test_stream_include_usage(client):
    expected = post_chat(client, temperature=0, max_tokens=6).json
    chunks = stream_chunks(post_chat(client, temperature=0, max_tokens=6, stream=True,
                                     stream_options={"include_usage": True}))
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and without_cached(chunks[-1]["usage"]) == without_cached(expected["usage"])
    # the same prompt again: all of it but its last token comes from the prefix cache
    cached = chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached == expected["usage"]["prompt_tokens"] - 1


def test_stream_n_choices_each_complete(client):
    chunks = stream_chunks(post_chat(client, n=2, seed=3, max_tokens=5, stream=True))
    for index in (0, 1):
        mine = [choice for c in chunks for choice in c["choices"] if choice["index"] == index]
        assert mine[0]["delta"]["role"] == "assistant"
        assert sum(1 for m in mine if m["finish_reason"]) == 1 and mine[-1]["finish_reason"]


def test_stream_logprobs(client):
    chunks = stream_chunks(post_chat(client, max_tokens=5, ignore_eos=True, stream=True, logprobs=True,
                                     top_logprobs=2, stream_options={"include_usage": True}))
    entries = [e for c in chunks for choice in c["choices"] for e in (choice["logprobs"] or {}).get("content") or []]
    assert len(entries) == chunks[-1]["usage"]["completion_tokens"] == 5
    assert all(len(e["top_logprobs"]) == 2 for e in entries)


def test_invalid_stream_request_is_a_plain_400(client):
    error_of(post_chat(client, stream=True, temperature=5), 400)


def test_keepalive_comments_while_queued(lone_engine, tiny_model):
    """A request waiting behind another gets `: keep-alive` comments instead of silence."""
    client = testing.TestClient(create_app(lone_engine, keepalive_s=0.02))
    ahead = occupy(lone_engine, n=4)
    result = post_chat(client, max_tokens=3, stream=True)
    assert ": keep-alive\n\n" in result.text
    stream_chunks(result)
    assert sum(1 for _ in ahead) == 4 * 250


def test_interleave_reports_silence_and_errors():
    def slow(items, pause):
        for item in items:
            time.sleep(pause)
            yield item

    def failing():
        yield "a"
        raise RuntimeError("boom")

    got = list(sse.interleave([slow("xy", 0.05)], silence_s=0.01))
    assert [g for g in got if g is not None] == [(0, "x"), (0, "y")] and None in got
    merged = [g for g in sse.interleave([iter("ab"), iter("cd")], silence_s=1.0) if g is not None]
    assert sorted(merged) == [(0, "a"), (0, "b"), (1, "c"), (1, "d")]
    with pytest.raises(RuntimeError, match="boom"):
        list(sse.interleave([failing()], silence_s=1.0))


def open_wsgi_stream(app, body: dict):
    """Call the WSGI app as gunicorn does, to read a stream part-way and then close it like a client that left."""
    environ = testing.create_environ(path="/v1/chat/completions", method="POST", body=json.dumps(body),
                                     headers={"Content-Type": "application/json"})
    started = {}
    iterable = app(environ, lambda status, headers, exc_info=None: started.update(status=status))
    return started, iterable


def test_client_disconnect_cancels_the_sequence(tiny_model):
    engine = start_engine(tiny_model)
    gated = GatedModel(tiny_model, free=2)                # the scheduler waits at its third pass
    engine.scheduler.model = gated
    app = create_app(engine)
    try:
        started, iterable = open_wsgi_stream(app, {"model": "default", "messages": USER, "stream": True, "n": 4,
                                                   "max_tokens": 200, "ignore_eos": True})
        chunks = iter(iterable)
        assert started["status"].startswith("200")
        assert next(chunks).startswith(b"data: ")
        iterable.close()                                  # what gunicorn does when the write fails
        gated.gate.set()
        deadline = time.monotonic() + 10                  # a hang guard
        while engine.scheduler.stats()["running_requests"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.scheduler.stats()["running_requests"] == 0
        assert engine.scheduler.stats()["completion_tokens"] <= 4 * 3      # stopped, not run to 4 × 200
        metrics = testing.TestClient(app).simulate_get("/metrics").text
        assert "refengine_client_disconnects_total 1.0" in metrics
    finally:
        gated.gate.set()
        engine.stop()


def test_error_mid_stream_is_an_event_then_the_end(lone_engine):
    app = create_app(lone_engine, keepalive_s=0.05)
    occupy(lone_engine)
    started, iterable = open_wsgi_stream(app, {"model": "default", "messages": USER, "stream": True, "max_tokens": 5})
    chunks = iter(iterable)
    first = next(chunks)                                  # the role delta; the request waits in the queue
    assert json.loads(first[len(b"data: "):])["choices"][0]["delta"]["role"] == "assistant"
    lone_engine.stop()                                    # every request still in the engine fails
    rest = b"".join(chunks).decode()
    data = sse_data(rest)
    ERROR_RESPONSE.validate(json.loads(data[-1]))
    assert json.loads(data[-1])["error"]["type"] == "server_error"
    assert "[DONE]" not in data


def test_queue_full_is_429_with_retry_after(lone_engine):
    client = testing.TestClient(create_app(lone_engine))
    running = occupy(lone_engine)
    waiting = lone_engine.scheduler.submit(GenerationRequest((1,), stopping=StoppingParams(max_tokens=2)))
    result = post_chat(client, max_tokens=2)
    running.cancel()
    waiting.cancel()
    error = error_of(result, 429)
    assert result.headers["retry-after"] == "1"
    assert error["code"] == "rate_limit_exceeded"


# ---- /v1/completions ----

def post_completion(client, **fields):
    return client.simulate_post("/v1/completions", json={"model": "default", "prompt": "The quick", **fields})


def test_completion_matches_the_spec_and_the_engine(client, tiny_model):
    body = post_completion(client, temperature=0, max_tokens=6).json
    COMPLETION_RESPONSE.validate(body)
    ids = tiny_model.tokenizer.encode("The quick")
    events = list(generate(tiny_model, GenerationRequest(tuple(ids), SamplingParams(temperature=0),
                                                         StoppingParams(max_tokens=6))))
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["choices"][0]["text"] == "".join(e.text for e in events)
    assert body["usage"]["prompt_tokens"] == len(ids)
    same = post_completion(client, temperature=0, max_tokens=6, prompt=ids).json   # token ids as the prompt
    assert same["choices"][0]["text"] == body["choices"][0]["text"]


def test_completion_prompts_n_echo_and_logprobs(client):
    body = post_completion(client, prompt=["The quick", "Hello"], n=2, max_tokens=4, ignore_eos=True,
                           logprobs=2, seed=1).json
    COMPLETION_RESPONSE.validate(body)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    for choice in body["choices"]:
        logprobs = choice["logprobs"]
        assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == len(logprobs["top_logprobs"]) == 4
        for token, value, top in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"]):
            assert top[token] == pytest.approx(value) and 2 <= len(top) <= 3
        assert logprobs["text_offset"][0] == 0
    assert body["usage"]["completion_tokens"] == 16
    echoed = post_completion(client, temperature=0, max_tokens=3, echo=True).json
    plain = post_completion(client, temperature=0, max_tokens=3).json
    assert echoed["choices"][0]["text"] == "The quick" + plain["choices"][0]["text"]


def test_completion_echo_with_logprobs_scores_the_prompt(client, tiny_model):
    """lm-eval-style scoring: each prompt token's logprob given the tokens before it, the first one null."""
    prompt = "The quick brown fox jumps over the lazy dog"
    body = post_completion(client, prompt=prompt, echo=True, logprobs=2, max_tokens=2, temperature=0).json
    jsonschema.Draft202012Validator(completion_schema(echo_scored=True)).validate(body)
    logprobs = body["choices"][0]["logprobs"]
    ids = tiny_model.tokenizer.encode(prompt)
    assert len(logprobs["tokens"]) == len(ids) + 2 and "".join(logprobs["tokens"][:len(ids)]) == prompt
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    logits = tiny_model.forward([ids], [tiny_model.new_cache(len(ids))], all_logits=True)      # [P, V]
    log_softmax = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    expected = [float(log_softmax[i, ids[i + 1]]) for i in range(len(ids) - 1)]
    np.testing.assert_allclose(logprobs["token_logprobs"][1:len(ids)], expected, atol=1e-4)
    for token, value, top in zip(logprobs["tokens"][1:], logprobs["token_logprobs"][1:], logprobs["top_logprobs"][1:]):
        assert top[token] == pytest.approx(value) and 2 <= len(top) <= 3
    assert logprobs["text_offset"][:3] == [0, len(logprobs["tokens"][0]), len("".join(logprobs["tokens"][:2]))]
    assert logprobs["text_offset"][len(ids)] == len(prompt)                      # the completion follows
    chunks = stream_chunks(post_completion(client, prompt=prompt, echo=True, logprobs=2, max_tokens=2,
                                           temperature=0, stream=True),
                           validator=completion_chunk_validator(echo_scored=True))
    streamed = [c["choices"][0]["logprobs"] for c in chunks if c["choices"] and c["choices"][0]["logprobs"]]
    assert {key: [x for part in streamed for x in part[key]] for key in logprobs} == logprobs
    assert chunks[0]["choices"][0]["text"] == prompt
    # max_tokens 0 (OpenAI's minimum for this API): the scored prompt alone
    only = post_completion(client, prompt=prompt, echo=True, logprobs=2, max_tokens=0).json
    choice = only["choices"][0]
    assert (choice["text"], choice["finish_reason"], only["usage"]["completion_tokens"]) == (prompt, "length", 0)
    assert choice["logprobs"] == {key: value[:len(ids)] for key, value in logprobs.items()}
    chunks = stream_chunks(post_completion(client, prompt=prompt, echo=True, logprobs=2, max_tokens=0,
                                           stream=True), validator=completion_chunk_validator(echo_scored=True))
    assert "".join(c["choices"][0]["text"] for c in chunks) == prompt
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, "length"]


def test_best_of_returns_the_most_likely_choices(client, tiny_model):
    body = post_completion(client, best_of=4, n=1, temperature=1.0, seed=9, max_tokens=5, ignore_eos=True).json
    ids = tiny_model.tokenizer.encode("The quick")
    events = list(generate(tiny_model, GenerationRequest(
        tuple(ids), SamplingParams(temperature=1.0, seed=9), StoppingParams(max_tokens=5, ignore_eos=True),
        n=4, logprobs=True)))
    score = {i: sum(e.logprob.logprob for e in events if e.index == i) for i in range(4)}
    text = {i: "".join(e.text for e in events if e.index == i) for i in range(4)}
    assert body["choices"][0]["text"] == text[max(score, key=score.get)]
    assert body["choices"][0]["logprobs"] is None and len(body["choices"]) == 1
    assert body["usage"]["completion_tokens"] == 20                 # every generated choice counts


def test_completion_stream(client):
    expected = post_completion(client, prompt=["The quick", "Hello"], temperature=0, max_tokens=5).json
    result = post_completion(client, prompt=["The quick", "Hello"], temperature=0, max_tokens=5, stream=True,
                             stream_options={"include_usage": True}, echo=True)
    chunks = stream_chunks(result, validator=COMPLETION_CHUNK)
    for index, prompt in enumerate(("The quick", "Hello")):
        mine = [choice for c in chunks for choice in c["choices"] if choice["index"] == index]
        assert "".join(m["text"] for m in mine) == prompt + expected["choices"][index]["text"]
        assert [m["finish_reason"] for m in mine if m["finish_reason"]] == [expected["choices"][index]["finish_reason"]]
    assert chunks[-1]["choices"] == [] and without_cached(chunks[-1]["usage"]) == without_cached(expected["usage"])
    assert chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 0      # under MIN_REUSE tokens each


def test_completion_errors(client):
    assert error_of(post_completion(client, prompt=""), 400)["param"] == "prompt"
    assert error_of(post_completion(client, prompt="hi " * 300), 400)["code"] == "context_length_exceeded"
    assert error_of(post_completion(client, model="davinci-002"), 404)["code"] == "model_not_found"


# ---- models, health, metrics, tokenize ----

def test_models(client, tiny_model):
    listing = client.simulate_get("/v1/models").json
    MODEL_LIST.validate(listing)
    assert [m["id"] for m in listing["data"]] == [tiny_model.name]
    assert listing["data"][0]["max_model_len"] == 256
    for name in (tiny_model.name, "default"):
        item = client.simulate_get(f"/v1/models/{name}").json
        MODEL.validate(item)
        assert item["id"] == tiny_model.name
    error = error_of(client.simulate_get("/v1/models/org/other-model"), 404)
    assert error["code"] == "model_not_found"


def test_health_is_503_until_the_engine_is_set(engine):
    slot = EngineSlot()
    client = testing.TestClient(create_app(slot))
    assert client.simulate_get("/health").status_code == 503
    error = error_of(post_chat(client), 503)
    assert error["code"] == "model_loading"
    assert "refengine_model_loaded 0.0" in client.simulate_get("/metrics").text
    slot.set(engine)
    assert client.simulate_get("/health").json == {"status": "ok", "model": engine.model_id}


def test_metrics_count_requests_tokens_and_first_tokens(engine):
    client = testing.TestClient(create_app(engine))
    body = post_chat(client, max_tokens=3, ignore_eos=True).json
    post_chat(client, temperature=9)
    result = client.simulate_get("/metrics")
    assert result.headers["content-type"].startswith("text/plain; version=0.0.4")
    values = dict(line.rsplit(" ", 1) for line in result.text.splitlines() if not line.startswith("#"))
    assert values['refengine_requests_total{endpoint="/v1/chat/completions",method="POST",status="200"}'] == "1.0"
    assert values['refengine_requests_total{endpoint="/v1/chat/completions",method="POST",status="400"}'] == "1.0"
    assert float(values["refengine_prompt_tokens_total"]) == body["usage"]["prompt_tokens"]
    assert float(values["refengine_generation_tokens_total"]) == 3
    assert values["refengine_time_to_first_token_seconds_count"] == "1.0"
    assert values['refengine_time_to_first_token_seconds_bucket{le="+Inf"}'] == "1.0"
    for gauge in ("refengine_queue_depth", "refengine_batch_size", "refengine_running_requests"):
        assert float(values[gauge]) >= 0
    assert float(values["refengine_prefix_cache_bytes"]) > 0
    post_chat(client, max_tokens=3, ignore_eos=True)                   # the same prompt again
    after = dict(line.rsplit(" ", 1) for line in client.simulate_get("/metrics").text.splitlines()
                 if not line.startswith("#"))
    assert float(after["refengine_prefix_cache_hits_total"]) == float(values["refengine_prefix_cache_hits_total"]) + 1
    reused = (float(after["refengine_prefix_cache_reused_tokens_total"])
              - float(values["refengine_prefix_cache_reused_tokens_total"]))
    assert reused == body["usage"]["prompt_tokens"] - 1


def test_tokenize_and_detokenize(client, tiny_model):
    result = client.simulate_post("/tokenize", json={"prompt": "Hello, world!", "return_token_strs": True}).json
    expected = tiny_model.tokenizer.encode("Hello, world!")
    assert result["tokens"] == expected and result["count"] == len(expected) and result["max_model_len"] == 256
    assert result["token_strs"] == [tiny_model.tokenizer.token_strings[t] for t in expected]
    chat = client.simulate_post("/tokenize", json={"model": "default", "messages": USER}).json
    assert chat["tokens"] == chat_prompt_ids(tiny_model, USER)
    back = client.simulate_post("/detokenize", json={"tokens": expected}).json
    assert back == {"prompt": "Hello, world!"}
    assert error_of(client.simulate_post("/detokenize", json={"tokens": [1, 10 ** 6]}), 400)["param"] == "tokens[1]"
    assert error_of(client.simulate_post("/tokenize", json={}), 400)["param"] == "prompt"
    assert error_of(client.simulate_post("/tokenize", json={"prompt": "x", "model": "nope"}), 404)["param"] == "model"


def test_tokenize_renders_exactly_what_chat_renders(tmp_path):
    """Tool-call history (an assistant message with null content), tools, template kwargs and special-token
    text: /tokenize's ids are the prompt chat completions runs (it was a 400 on the null content)."""
    roomy = load_model(write_tiny_llama(tmp_path, extra_config={"max_position_embeddings": 2048}))
    engine = start_engine(roomy)
    client = testing.TestClient(create_app(engine))
    tool = {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"type": "string"}}}}}
    messages = [{"role": "user", "content": "What time is it? <|im_end|>"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "12:00"}]
    try:
        for fields in ({}, {"tools": [tool]}, {"tools": [tool], "tool_choice": "none"}, {"enable_thinking": False}):
            tokens = client.simulate_post("/tokenize", json={"model": "default", "messages": messages, **fields})
            assert tokens.status_code == 200, tokens.text
            chat = client.simulate_post("/v1/chat/completions", json={
                "model": "default", "messages": messages, "max_tokens": 1, **fields})
            assert chat.status_code == 200, chat.text
            assert tokens.json["count"] == chat.json["usage"]["prompt_tokens"]
        bare = client.simulate_post("/tokenize", json={"messages": messages, "add_generation_prompt": False}).json
        assert bare["count"] < tokens.json["count"]
    finally:
        engine.stop()


# ---- HTTP-level errors ----

def test_routes_methods_and_malformed_bodies(client):
    assert error_of(client.simulate_get("/v1/nothing-here"), 404)["message"] == "Invalid URL (GET /v1/nothing-here)"
    error_of(client.simulate_delete("/v1/chat/completions"), 405)
    error_of(client.simulate_get("/v1/chat/completions"), 405)
    for raw in (b"", b"{", b"[]", b'"x"', b"\xff"):
        error_of(client.simulate_post("/v1/chat/completions", body=raw), 400)
    assert client.simulate_get("/v1/models/").status_code == 200          # a trailing slash is the same route


def test_oversized_body_is_413(engine):
    client = testing.TestClient(create_app(engine, max_body_bytes=300))
    error = error_of(post_chat(client, messages=[{"role": "user", "content": "x" * 400}]), 413)
    assert error["code"] == "request_too_large"
    assert post_chat(client, max_tokens=1).status_code == 200


def test_api_key(engine):
    client = testing.TestClient(create_app(engine, api_key="sk-right"))
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "Basic sk-right"}):
        result = client.simulate_post("/v1/chat/completions", headers=headers,
                                      json={"model": "default", "messages": USER, "max_tokens": 1})
        assert error_of(result, 401)["code"] == "invalid_api_key"
    error_of(client.simulate_get("/v1/models"), 401)
    assert client.simulate_get("/v1/models", headers={"Authorization": "Bearer sk-right"}).status_code == 200
    assert client.simulate_get("/health").status_code == 200
    assert error_of(client.simulate_get("/metrics"), 401)["code"] == "invalid_api_key"
    assert client.simulate_get("/metrics", headers={"Authorization": "Bearer sk-right"}).status_code == 200


def test_metrics_public_opens_only_metrics(engine):
    client = testing.TestClient(create_app(engine, api_key="sk-right", metrics_public=True))
    assert "refengine_model_loaded 1.0" in client.simulate_get("/metrics").text
    assert client.simulate_get("/health").status_code == 200
    assert error_of(client.simulate_get("/v1/models"), 401)["code"] == "invalid_api_key"
    open_without_key = testing.TestClient(create_app(engine, metrics_public=True))
    assert open_without_key.simulate_get("/v1/models").status_code == 200


def test_strict_params(engine):
    client = testing.TestClient(create_app(engine, strict_params=True))
    error = error_of(post_chat(client, max_tokens=1, frobnicate=True), 400)
    assert error["param"] == "frobnicate"
    assert post_chat(testing.TestClient(create_app(engine)), max_tokens=1, frobnicate=True).status_code == 200


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-300, 300) | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0.0, 1.0, 2.0, 0.5, 128.0]) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)
SMALL_MAX_TOKENS = st.sampled_from([1, 2, 2.0, 0, -1, "2", True, [2]])
CHAT_FIELDS = ["model", "messages", "temperature", "top_p", "n", "stop", "logprobs", "top_logprobs", "logit_bias",
               "seed", "stream", "stream_options", "tools", "tool_choice", "response_format", "top_k", "min_p",
               "repetition_penalty", "dry_multiplier", "dry_sequence_breakers", "min_tokens", "ignore_eos"]
COMPLETION_FIELDS = ["prompt", "n", "best_of", "echo", "logprobs", "suffix", "stop", "seed", "stream", "top_k"]
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "x"])},
                                optional={"content": JSON_VALUES | st.text(max_size=20), "name": JSON_VALUES,
                                          "tool_call_id": JSON_VALUES, "tool_calls": JSON_VALUES})
FUZZ = settings(max_examples=120, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def answered_without_a_500(result) -> None:
    assert result.status_code < 500, result.text
    if result.status_code != 200:
        ERROR_RESPONSE.validate(result.json)


@FUZZ
@given(body=st.dictionaries(st.sampled_from(CHAT_FIELDS), JSON_VALUES, max_size=6),
       messages=st.lists(MESSAGE, max_size=3), model=st.sampled_from(["default", None, "other"]),
       max_tokens=SMALL_MAX_TOKENS)
def test_nothing_a_client_sends_to_chat_is_a_500(client, body, messages, model, max_tokens):
    body = {"messages": messages, **body, "max_tokens": max_tokens}
    if model is not None:
        body["model"] = model
    answered_without_a_500(client.simulate_post("/v1/chat/completions", json=body))


@FUZZ
@given(body=st.dictionaries(st.sampled_from(COMPLETION_FIELDS), JSON_VALUES, max_size=5),
       prompt=JSON_VALUES | st.lists(st.integers(-1, 500), max_size=5), max_tokens=SMALL_MAX_TOKENS)
def test_nothing_a_client_sends_to_completions_is_a_500(client, body, prompt, max_tokens):
    body = {"model": "default", "prompt": prompt, **body, "max_tokens": max_tokens}
    answered_without_a_500(client.simulate_post("/v1/completions", json=body))


@pytest.mark.parametrize("path,raw", [
    ("/v1/chat/completions", b'{"model": "default", "messages": [{"role": "user", "content": "a\\ud800"}]}'),
    ("/v1/completions", b'{"model": "default", "prompt": "a\\udc00"}'),
    ("/tokenize", b'{"prompt": "a\\ud800"}'),
])
def test_lone_surrogates_are_a_400(client, path, raw):
    error_of(client.simulate_post(path, body=raw), 400)


def test_integer_valued_floats_are_integers(client):
    body = post_chat(client, max_tokens=3.0, n=2.0, seed=7.0, top_k=5.0, ignore_eos=True, logprobs=True,
                     top_logprobs=2.0).json
    assert body["usage"]["completion_tokens"] == 6 and len(body["choices"]) == 2


# ---- the default model: real text, an end-of-sequence finish ----

def test_default_model_logprobs_reassemble_the_text_and_skip_the_end_token(smollm2):
    """SmolLM2 answers this in 7 tokens then EOS: the EOS is neither content, nor a logprobs entry, nor counted."""
    engine = start_engine(smollm2, max_batch=2, max_queue=2)
    try:
        client = testing.TestClient(create_app(engine))
        question = [{"role": "user", "content": "What is 2+2? Answer with a number only."}]
        fields = dict(messages=question, temperature=0, max_tokens=8, logprobs=True, top_logprobs=1)
        streamed = {}
        thread = threading.Thread(target=lambda: streamed.update(result=post_chat(
            client, stream=True, stream_options={"include_usage": True}, **fields)))
        thread.start()                                    # both requests share the scheduler's batch
        body = post_chat(client, **fields).json
        thread.join(120)
        chunks = stream_chunks(streamed["result"])
    finally:
        engine.stop()
    CHAT_RESPONSE.validate(body)
    choice = body["choices"][0]
    entries = choice["logprobs"]["content"]
    assert choice["finish_reason"] == "stop"
    assert len(entries) == body["usage"]["completion_tokens"] < 8
    assert b"".join(bytes(e["bytes"]) for e in entries) == choice["message"]["content"].encode()
    assert all(e["token"] == bytes(e["bytes"]).decode() for e in entries)
    streamed = [e for c in chunks for ch in c["choices"] for e in (ch["logprobs"] or {}).get("content") or []]
    assert "".join(ch["delta"].get("content", "") for c in chunks for ch in c["choices"]) == \
        choice["message"]["content"]
    # the two ran in batches of different sizes, which BLAS may round differently in the last bits
    assert [(e["token"], e["bytes"]) for e in streamed] == [(e["token"], e["bytes"]) for e in entries]
    assert [e["logprob"] for e in streamed] == pytest.approx([e["logprob"] for e in entries], abs=1e-4)
    assert without_cached(chunks[-1]["usage"]) == without_cached(body["usage"])   # one may reuse the other
