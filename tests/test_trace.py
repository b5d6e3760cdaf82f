"""The per-request trace (engine side): each recorded stage is what that stage computes on its own.

Stages are compared by recomputing them here from a plain forward pass and the processors' own functions
(the same float32 arithmetic on the same inputs, so values agree exactly up to summation order: 1e-6 of
the logits' scale; ids exactly, away from ties). The document validates against refengine/trace.schema.json.
"""
import json

import jsonschema
import numpy as np
import pytest

from refengine import processors
from refengine.history import TokenHistory
from refengine.constrain import Vocab, compile_constraint
from refengine.generate import generate
from refengine.request import ConstraintSpec, GenerationRequest, SamplingParams, StoppingParams
from refengine.trace import SCHEMA_PATH, RequestTrace, tracing, stage

SCHEMA = json.loads(SCHEMA_PATH.read_text())


def traced(model, prompt: str, sampling: SamplingParams, max_tokens: int = 4, constraint=None, top_k: int = 8,
           stop=()) -> tuple[list, dict]:
    trace = RequestTrace(top_k)
    request = GenerationRequest(prompt_ids=tuple(model.tokenizer.encode(prompt)), sampling=sampling,
                                stopping=StoppingParams(max_tokens=max_tokens, stop=stop), constraint=constraint,
                                trace=trace)
    events = list(generate(model, request))
    document = trace.document()
    jsonschema.validate(document, SCHEMA)
    return events, document


def top_of(logits: np.ndarray, k: int) -> list[int]:
    order = np.argsort(-logits, kind="stable")
    return [int(i) for i in order[:k] if np.isfinite(logits[i])]


def assert_stage(stage: dict, logits: np.ndarray, k: int):
    assert [c["id"] for c in stage["top"]] == top_of(logits, k)
    scale = np.abs(logits[np.isfinite(logits)]).max()
    for candidate in stage["top"]:
        assert abs(candidate["logit"] - float(logits[candidate["id"]])) <= 1e-6 * scale
    assert stage["possible"] == int(np.isfinite(logits).sum())


def test_each_stage_is_that_processor_applied_alone(tiny_model):
    sampling = SamplingParams(temperature=0.7, top_k=30, top_p=0.9, min_p=0.02, repetition_penalty=1.3,
                              presence_penalty=0.4, frequency_penalty=0.2, logit_bias={7: 4.0}, seed=5)
    events, document = traced(tiny_model, "Hello, world!", sampling, max_tokens=1)
    record = document["choices"][0]["tokens"][0]
    ids = tiny_model.tokenizer.encode("Hello, world!")
    raw = tiny_model.forward([ids], [tiny_model.new_cache(len(ids))])[0]                # [V]
    history = TokenHistory.start(tuple(ids), tiny_model.vocab_size, None)
    expected = [("forward", raw)]
    logits = processors.logit_bias(raw, sampling.logit_bias)
    expected.append(("logit_bias", logits))
    logits = processors.repetition_penalty(logits, sampling.repetition_penalty, history.seen_token_ids())
    expected.append(("repetition_penalty", logits))
    logits = processors.presence_frequency_penalty(logits, sampling.presence_penalty, sampling.frequency_penalty,
                                                   *history.output_token_counts())
    expected.append(("presence_frequency_penalty", logits))
    scaled = processors.temperature(logits, sampling.temperature)
    expected.append(("temperature", scaled))
    after_k = processors.top_k(scaled, sampling.top_k)
    expected.append(("top_k", after_k))
    after_p = processors.top_p(after_k, sampling.top_p)
    expected.append(("top_p", after_p))
    expected.append(("min_p", processors.min_p(after_p, sampling.min_p)))
    assert [s["stage"] for s in record["stages"]] == [name for name, _ in expected]
    for stage_record, (_, logits) in zip(record["stages"], expected):
        assert_stage(stage_record, logits, document["top_k"])
    final = expected[-1][1]
    assert record["sampled"]["id"] == events[0].token_id
    finite = final[np.isfinite(final)]
    probability = np.exp(final[events[0].token_id] - finite.max()) / np.exp(finite - finite.max()).sum()
    assert record["sampled"]["probability"] == pytest.approx(float(probability), rel=1e-5)
    assert 0 <= record["sampled"]["draw"] < 1


def test_greedy_shows_the_argmax_and_text_pieces(tiny_model):
    events, document = traced(tiny_model, "def add(a, b):", SamplingParams(temperature=0.0), max_tokens=5)
    tokens = document["choices"][0]["tokens"]
    assert [t["sampled"]["id"] for t in tokens] == [e.token_id for e in events]
    for record in tokens:
        assert [s["stage"] for s in record["stages"]] == ["forward", "greedy"]
        assert record["stages"][1]["possible"] == 1
        assert record["sampled"]["id"] == record["stages"][0]["top"][0]["id"]
        assert record["sampled"]["probability"] == 1.0
    assert "".join(t["emitted"] for t in tokens) == "".join(e.text for e in events)
    assert document["choices"][0]["finish_reason"] == "length"
    assert document["choices"][0]["why"] == "max_tokens (5) reached"
    prompt = document["prompt"]
    assert [t["id"] for t in prompt["tokens"]] == tiny_model.tokenizer.encode("def add(a, b):")
    assert prompt["text"] == "def add(a, b):"
    kinds = [s["kind"] for s in document["steps"]]
    assert kinds[0] == "prefill" and set(kinds[1:]) == {"decode"}
    assert [t["step"] for t in tokens] == [s["step"] for s in document["steps"]]


def test_mask_count_is_the_constraints_popcount(tiny_model):
    vocab = Vocab(tuple(tiny_model.tokenizer.token_bytes[:tiny_model.vocab_size]), tiny_model.eos_ids,
                  tiny_model.tokenizer.special_ids)
    constraint = compile_constraint("regex", r"[0-9]{3}", vocab)
    events, document = traced(tiny_model, "Number:", SamplingParams(temperature=0.0), max_tokens=6,
                              constraint=ConstraintSpec(constraint))
    state = constraint.initial_state
    for record, event in zip(document["choices"][0]["tokens"], events):
        allowed = constraint.allowed(state)
        assert record["constraint"] == {"state": state, "allowed": int(allowed.sum()),
                                        "forced": int(allowed.sum()) == 1}
        assert "mask" in [s["stage"] for s in record["stages"]]
        mask_stage = next(s for s in record["stages"] if s["stage"] == "mask")
        assert mask_stage["possible"] <= int(allowed.sum())
        state = constraint.advance(state, event.token_id)


def test_timings_fit_in_the_wall_time(tiny_model):
    trace = RequestTrace(4)
    with tracing(trace):
        with stage("tokenize"):
            ids = tiny_model.tokenizer.encode("Hello")
    request = GenerationRequest(prompt_ids=tuple(ids), sampling=SamplingParams(temperature=0.0),
                                stopping=StoppingParams(max_tokens=6), trace=trace)
    list(generate(tiny_model, request))
    document = trace.document()
    spent = (sum(t["ms"] for t in document["timings"]) + sum(s["ms"] for s in document["steps"])
             + sum(sum(t["timings_ms"].values()) for c in document["choices"] for t in c["tokens"]))
    assert 0 < spent <= document["wall_ms"]


def test_stop_string_held_back_text_shows(tiny_model):
    events, plain = traced(tiny_model, "Hello", SamplingParams(temperature=0.0), max_tokens=8)
    text = "".join(e.text for e in events)
    stop = text[2:5]                      # a stop string that the greedy continuation will meet
    events, document = traced(tiny_model, "Hello", SamplingParams(temperature=0.0), max_tokens=8, stop=(stop,))
    tokens = document["choices"][0]["tokens"]
    assert document["choices"][0]["finish_reason"] == "stop"
    assert document["choices"][0]["why"] == "a stop string matched"
    assert "".join(t["emitted"] for t in tokens) == text[:2]
    assert "".join(t["piece"] for t in tokens).startswith(text[:5])
