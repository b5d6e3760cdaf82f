"""A padded vocabulary (config.vocab_size above the tokenizer's ids, as Qwen2.5 has: 151936 rows, 151665
tokens): padding ids are no tokens, so they are never sampled, never accepted as input, and constraint masks
(sized by the tokenizer) line up with the logits."""
from __future__ import annotations

import json

import numpy as np
import pytest
from falcon import testing
from safetensors.numpy import load_file, save_file

from refengine.forward import forward
from refengine.generate import generate
from refengine.model import load_model
from refengine.request import GenerationRequest, RequestError, SamplingParams, StoppingParams
from tiny_model import write_tiny_llama
from web.app import create_app
from web.engine import start_engine

PADDING = 37
PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def padded(tmp_path_factory):
    """A tiny model with 37 padding rows whose lm_head rows are 100× the best real token's row, so a padding
    id would win every greedy pick at the prompt's end if padding were not cut off."""
    folder = write_tiny_llama(tmp_path_factory.mktemp("padded"), vocab_padding=PADDING,
                              extra_config={"max_position_embeddings": 1024})   # room for the tool prompt
    model = load_model(folder)
    ids = model.tokenizer.encode(PROMPT)
    raw = forward(model.config, model.weights, [ids], [model.new_cache(len(ids))])[0]     # [V_config]
    best = int(np.argmax(raw[:model.tokenizer.vocab_size]))
    assert raw[best] > 0
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["lm_head.weight"][model.tokenizer.vocab_size:] = 100 * tensors["lm_head.weight"][best]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return load_model(folder)


def test_padding_would_win_but_is_cut_off(padded):
    tokens = padded.tokenizer.vocab_size
    assert padded.config.vocab_size == tokens + PADDING and padded.vocab_size == tokens
    ids = padded.tokenizer.encode(PROMPT)
    raw = forward(padded.config, padded.weights, [ids], [padded.new_cache(len(ids))])[0]
    assert int(np.argmax(raw)) >= tokens                     # the raw pass prefers a padding id
    logits = padded.forward([ids], [padded.new_cache(len(ids))])
    assert logits.shape == (1, tokens)
    for seed in range(3):
        request = GenerationRequest(tuple(ids), sampling=SamplingParams(temperature=1.0, seed=seed),
                                    stopping=StoppingParams(max_tokens=20, ignore_eos=True))
        assert all(event.token_id < tokens for event in generate(padded, request))


def test_padding_ids_are_refused_as_input(padded):
    with pytest.raises(RequestError) as refused:
        list(generate(padded, GenerationRequest((1, padded.tokenizer.vocab_size))))
    assert refused.value.field == "prompt"
    with pytest.raises(RequestError) as refused:
        list(generate(padded, GenerationRequest((1, 2), sampling=SamplingParams(
            logit_bias={padded.tokenizer.vocab_size + 1: 5.0}))))
    assert refused.value.field == "logit_bias"


@pytest.fixture(scope="module")
def client(padded):
    engine = start_engine(padded)
    yield testing.TestClient(create_app(engine))
    engine.stop()


def test_json_tools_and_grammars_work_on_a_padded_vocabulary(client):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 5}},
              "required": ["name"], "additionalProperties": False}
    reply = client.simulate_post("/v1/chat/completions", json={
        "model": "default", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 40, "seed": 1,
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}})
    assert reply.status_code == 200, reply.text
    if reply.json["choices"][0]["finish_reason"] == "stop":
        assert set(json.loads(reply.json["choices"][0]["message"]["content"])) == {"name"}
    tool = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {
        "zone": {"type": "string", "maxLength": 4}}, "required": ["zone"]}, "strict": True}}
    called = client.simulate_post("/v1/chat/completions", json={
        "model": "default", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 40,
        "tools": [tool], "tool_choice": "required"})
    assert called.status_code == 200, called.text
    regex = client.simulate_post("/v1/chat/completions", json={
        "model": "default", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8,
        "grammar": {"type": "regex", "value": "[0-9]{3}"}})
    assert regex.status_code == 200, regex.text
    text = regex.json["choices"][0]["message"]["content"]
    assert text.isdigit() and len(text) <= 3


def test_padding_ids_in_a_prompt_are_a_400_naming_it(client, padded):
    reply = client.simulate_post("/v1/completions", json={
        "model": "default", "prompt": [1, padded.tokenizer.vocab_size + 3], "max_tokens": 2})
    assert reply.status_code == 400 and reply.json["error"]["param"] == "prompt"
    bias = client.simulate_post("/v1/chat/completions", json={
        "model": "default", "messages": [{"role": "user", "content": "Hi"}],
        "logit_bias": {str(padded.tokenizer.vocab_size): 10}})
    assert bias.status_code == 400 and bias.json["error"]["param"] == "logit_bias"
    detok = client.simulate_post("/detokenize", json={"tokens": [1, padded.tokenizer.vocab_size]})
    assert detok.status_code == 400
