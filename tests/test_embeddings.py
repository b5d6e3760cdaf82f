"""Embeddings (refengine/embed.py, web/embeddings.py) on the tiny model: the hidden states are the forward
pass's (the logits follow from them), vectors are unit length and independent of their batch, OpenAI's
shapes (floats, base64), token-id inputs, usage, and each refusal naming its field."""
from __future__ import annotations

import base64

import numpy as np
import pytest
from falcon import testing

from refengine.embed import batches, embed, hidden_states
from web.app import create_app
from web.engine import start_engine

TEXTS = ["The quick brown fox", "def add(a, b):", "café au lait"]


@pytest.fixture(scope="module")
def engine(tiny_model):
    engine = start_engine(tiny_model, max_batch=4, max_queue=8)
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def client(engine):
    return testing.TestClient(create_app(engine))


def post(client, **fields):
    return client.simulate_post("/v1/embeddings", json={"model": "default", **fields})


def ids(model, text: str) -> list[int]:
    return model.tokenizer.encode(text, add_bos=model.tokenizer.special.add_bos)


def test_the_hidden_states_are_the_forward_pass_before_its_head(tiny_model):
    sequences = [ids(tiny_model, t) for t in TEXTS]
    states, spans = hidden_states(tiny_model, sequences)
    last_rows = np.stack([tiny_model.backend.to_host(states)[span.stop - 1] for span in spans])
    head = tiny_model.backend.to_host(tiny_model.weights.lm_head)
    logits = tiny_model.forward(sequences, [tiny_model.new_cache(len(s)) for s in sequences])
    np.testing.assert_allclose((last_rows @ head)[:, :tiny_model.vocab_size], logits, rtol=1e-4, atol=1e-4)


def test_vectors_are_unit_means_and_do_not_depend_on_their_batch(tiny_model):
    sequences = [ids(tiny_model, t) for t in TEXTS]
    together = embed(tiny_model, sequences)
    assert together.shape == (3, tiny_model.config.hidden_size)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1, atol=1e-5)
    alone = np.concatenate([embed(tiny_model, [s]) for s in sequences])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    states, spans = hidden_states(tiny_model, sequences[:1])
    mean = tiny_model.backend.to_host(states)[spans[0]].mean(axis=0)
    np.testing.assert_allclose(together[0], mean / np.linalg.norm(mean), atol=1e-5)
    assert batches([[1] * 3, [1] * 3, [1] * 3], limit=6) == [[0, 1], [2]]
    assert batches([[1] * 9, [1]], limit=6) == [[0], [1]]             # a long one goes alone


def test_openai_shapes_usage_and_encodings(client, tiny_model):
    body = post(client, input=TEXTS).json
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" and len(d["embedding"]) == tiny_model.config.hidden_size
               for d in body["data"])
    tokens = sum(len(ids(tiny_model, t)) for t in TEXTS)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    expected = embed(tiny_model, [ids(tiny_model, t) for t in TEXTS])
    np.testing.assert_allclose(np.array([d["embedding"] for d in body["data"]]), expected, atol=1e-6)
    single = post(client, input=TEXTS[0]).json["data"][0]["embedding"]       # (a batch may round otherwise)
    packed = post(client, input=TEXTS[0], encoding_format="base64").json["data"][0]["embedding"]
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(packed), dtype="<f4"), np.float32(single))
    assert post(client, input=ids(tiny_model, TEXTS[0])).json["data"][0]["embedding"] == single
    lists = post(client, input=[ids(tiny_model, t) for t in TEXTS[:2]]).json["data"]
    np.testing.assert_allclose([d["embedding"] for d in lists], expected[:2], atol=1e-6)
    size = tiny_model.config.hidden_size
    assert post(client, input="x", dimensions=size).status_code == 200


@pytest.mark.parametrize("fields, status, param", [
    ({"input": "x", "dimensions": 8}, 400, "dimensions"),
    ({"input": ""}, 400, "input"),
    ({"input": ["a", ""]}, 400, "input[1]"),
    ({"input": [10 ** 6]}, 400, "input"),
    ({"input": ["a", 1]}, 400, "input"),
    ({"input": []}, 400, "input"),
    ({"input": "x " * 400}, 400, "input"),
    ({"input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
    ({"input": "x", "model": "text-embedding-3-small"}, 404, "model"),
])
def test_refusals_name_the_field(client, fields, status, param):
    result = client.simulate_post("/v1/embeddings", json={"model": "default", **fields})
    assert result.status_code == status and result.json["error"]["param"] == param, result.text


def test_embeddings_run_beside_generation(client, engine):
    """The forward passes run between the scheduler's steps: a stream in flight and embeddings both finish."""
    streamed = client.simulate_post("/v1/chat/completions", json={
        "model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20, "stream": True})
    assert post(client, input=TEXTS).status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
    assert engine.scheduler.between_steps(lambda: 42).result(timeout=60) == 42
