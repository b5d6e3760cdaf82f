"""The generation loop and the scheduler, on the tiny model and the default model."""
import json
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from refengine.detokenize import IncrementalDetokenizer
from refengine.generate import ContextLengthError, generate
from refengine.prompt import chat_prompt_ids
from refengine.request import GenerationRequest, RequestError, SamplingParams, StoppingParams
from refengine.scheduler import QueueFullError, Scheduler

SAMPLED = SamplingParams(temperature=0.9, top_k=50, top_p=0.95, seed=1234)


def request_for(model, text, **fields):
    ids = tuple(model.tokenizer.encode(text))
    return GenerationRequest(prompt_ids=ids, **fields)


def texts(events, n=1):
    return ["".join(e.text for e in events if e.index == i) for i in range(n)]


def finishes(events, n=1):
    return [[e.finish_reason for e in events if e.index == i and e.finish_reason] for i in range(n)]


def test_greedy_generation_matches_transformers_greedy(smollm2):
    golden = json.loads((Path(__file__).parent / "fixtures" / "parity_smollm2.json").read_text())
    for case in golden["cases"]:
        expected = case["greedy_ids"]
        eos_at = next((i for i, t in enumerate(expected) if t in smollm2.eos_ids), None)
        request = GenerationRequest(prompt_ids=tuple(case["prompt_ids"]), sampling=SamplingParams(temperature=0),
                                    stopping=StoppingParams(max_tokens=len(expected)))
        events = list(generate(smollm2, request))
        produced = [e.token_id for e in events]
        assert produced == expected[:eos_at + 1 if eos_at is not None else None]
        assert events[-1].finish_reason == ("stop" if eos_at is not None else "length")
        assert texts(events)[0] == smollm2.tokenizer.decode(produced)


def test_same_seed_same_text_and_n_choices_differ(tiny_model):
    request = request_for(tiny_model, "Hello, world!", sampling=SAMPLED, n=3,
                          stopping=StoppingParams(max_tokens=12, ignore_eos=True))
    first = list(generate(tiny_model, request))
    second = list(generate(tiny_model, request))
    assert texts(first, 3) == texts(second, 3)
    assert len(set(texts(first, 3))) > 1, "n choices drew the same stream"
    assert all(f == ["length"] for f in finishes(first, 3))
    assert [sum(1 for e in first if e.index == i) for i in range(3)] == [12, 12, 12]
    other_seed = list(generate(tiny_model, replace(request, sampling=replace(SAMPLED, seed=99))))
    assert texts(other_seed, 3) != texts(first, 3)
    # choice 0's stream depends on the seed only, not on n
    alone = list(generate(tiny_model, replace(request, n=1)))
    assert texts(alone)[0] == texts(first, 3)[0]


def test_stop_string_across_token_boundary_is_excluded(smollm2):
    request = request_for(smollm2, "The capital of France is", sampling=SamplingParams(temperature=0),
                          stopping=StoppingParams(max_tokens=24, ignore_eos=True))
    events = list(generate(smollm2, request))
    full = texts(events)[0]
    # a stop string made of the end of one token and the start of the next
    boundary = len(events[2].text) + len(events[1].text) + len(events[0].text)
    stop = full[boundary - 2:boundary + 2]
    assert len(stop) == 4 and full.find(stop) == boundary - 2
    stopped = list(generate(smollm2, replace(request, stopping=StoppingParams(max_tokens=24, stop=(stop,)))))
    assert texts(stopped)[0] == full[:boundary - 2]
    ends = np.cumsum([len(e.text) for e in events])
    completed_at = int(np.argmax(ends >= boundary + 2))       # the token that completes the stop string
    assert stopped[-1].finish_reason == "stop" and len(stopped) == completed_at + 1


def test_max_tokens_min_tokens_and_ignore_eos(tiny_model):
    eos = next(iter(tiny_model.eos_ids))
    always_eos = replace(SAMPLED, logit_bias={eos: 100.0})
    events = list(generate(tiny_model, request_for(tiny_model, "Hi", sampling=always_eos)))
    assert [e.token_id for e in events] == [eos] and events[0].finish_reason == "stop" and events[0].text == ""
    events = list(generate(tiny_model, request_for(tiny_model, "Hi", sampling=always_eos,
                                                   stopping=StoppingParams(max_tokens=10, min_tokens=5))))
    assert len(events) == 6 and events[-1].token_id == eos and events[-1].finish_reason == "stop"
    events = list(generate(tiny_model, request_for(tiny_model, "Hi", sampling=always_eos,
                                                   stopping=StoppingParams(max_tokens=7, ignore_eos=True))))
    assert len(events) == 7 and eos not in [e.token_id for e in events] and events[-1].finish_reason == "length"


def test_logprobs_are_log_softmax_of_raw_logits(tiny_model):
    request = request_for(tiny_model, "Hello", sampling=SamplingParams(temperature=0), logprobs=True,
                          top_logprobs=3, stopping=StoppingParams(max_tokens=1))
    (event,) = generate(tiny_model, request)
    logits = tiny_model.forward([list(request.prompt_ids)], [tiny_model.new_cache(8)])[0].astype(np.float64)
    expected = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
    assert event.logprob.token_id == event.token_id == int(np.argmax(logits))
    assert event.logprob.logprob == pytest.approx(expected[event.token_id], abs=1e-4)
    assert [t.token_id for t in event.top_logprobs] == list(np.argsort(-expected)[:3])
    assert bytes(event.logprob.bytes) == tiny_model.tokenizer.token_bytes[event.token_id]
    assert event.text == bytes(event.logprob.bytes).decode("utf-8", errors="replace")   # the one token, flushed


def test_emoji_split_over_tokens_is_never_half_emitted(smollm2):
    text = "Smiles 🙂👍 and café ☕ 日本語"
    ids = smollm2.tokenizer.encode(text)
    assert len(ids) > len(text.split()), "expected multi-byte characters split over tokens"
    detokenizer = IncrementalDetokenizer(smollm2.tokenizer.token_bytes)
    pieces = [detokenizer.push(t) for t in ids] + [detokenizer.flush()]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
    assert "" in pieces, "some token should have ended mid-character"


def test_context_length_error_and_truncation(tiny_model):
    context = tiny_model.config.max_position_embeddings
    long_text = "The quick brown fox jumps over the lazy dog. " * 40
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": long_text}, {"role": "assistant", "content": "Ok."},
                {"role": "user", "content": "Hello, world!"}]
    with pytest.raises(ContextLengthError):
        chat_prompt_ids(tiny_model, messages, max_tokens=16)
    ids = chat_prompt_ids(tiny_model, messages, max_tokens=16, truncate=True)
    assert len(ids) + 16 <= context
    text = tiny_model.tokenizer.decode(ids)
    assert text.startswith("system\nBe brief.") and text.endswith("user\nHello, world!\nassistant\n")
    # the last message alone too long: keep the system prompt and the generation prompt
    ids = chat_prompt_ids(tiny_model, messages[:2], max_tokens=16, truncate=True)
    assert len(ids) + 16 <= context
    assert tiny_model.tokenizer.decode(ids).startswith("system\nBe brief.")
    assert tiny_model.tokenizer.decode(ids).endswith("lazy dog. \nassistant\n")
    too_long = GenerationRequest(prompt_ids=tuple(range(context)), stopping=StoppingParams(max_tokens=1))
    with pytest.raises(ContextLengthError):
        list(generate(tiny_model, too_long))


def run_to_end(scheduler: Scheduler, handles: list) -> list[list]:
    """Drive a scheduler that has no thread step by step until every handle's choices have finished: no
    timing is involved, each step is exactly one admission round and one batched forward pass."""
    events = [[] for _ in handles]
    for _ in range(10_000):
        if all(sum(1 for e in got if e.finish_reason) == h.request.n for got, h in zip(events, handles)):
            return events
        scheduler.step()
        for got, handle in zip(events, handles):
            got += handle.ready_events()
    raise AssertionError("the requests did not finish in 10000 steps")


def test_kv_bytes_count_the_prompt_once_and_each_choice_s_new_tokens(tiny_model):
    """Admission's KV need: prompt P (shared by the n choices) + n × max_tokens M positions."""
    config = tiny_model.config
    per_position = config.num_layers * config.num_kv_heads * config.head_dim * 2 * 4    # keys + values, f32
    scheduler = Scheduler(tiny_model)
    for prompt_length, n, max_tokens in ((10, 1, 5), (10, 4, 5), (30, 3, 100)):
        request = GenerationRequest(prompt_ids=(5,) * prompt_length, n=n,
                                    stopping=StoppingParams(max_tokens=max_tokens))
        assert scheduler._kv_bytes(request) == (prompt_length + n * max_tokens) * per_position
    unset = GenerationRequest(prompt_ids=(5,) * 10, n=2)                       # max_tokens: the context's rest
    assert scheduler._kv_bytes(unset) == (10 + 2 * (config.max_position_embeddings - 10)) * per_position


def test_scheduler_batches_requests_without_mixing_them(tiny_model):
    prompts = ["Hello, world!", "def add(a, b):", "The quick brown fox", "café 日本語"]
    requests = [request_for(tiny_model, p, sampling=replace(SAMPLED, seed=i), n=1 + i % 2,
                            stopping=StoppingParams(max_tokens=10 + i, ignore_eos=True))
                for i, p in enumerate(prompts)]
    expected = [texts(list(generate(tiny_model, r)), r.n) for r in requests]
    scheduler = Scheduler(tiny_model, max_batch=8)
    handles = [scheduler.submit(r) for r in requests]
    results = [texts(events, r.n) for events, r in zip(run_to_end(scheduler, handles), requests)]
    assert results == expected
    stats = scheduler.stats()
    assert stats["requests_finished"] == 4 and stats["completion_tokens"] == sum(
        (10 + i) * r.n for i, r in enumerate(requests))
    # all four were admitted together: one prefill pass, then one pass per token of the longest request but
    # its last (chosen from the logits of the pass before)
    assert stats["steps"] == 1 + max(10 + i for i in range(len(requests))) - 1


def test_scheduler_thread_serves_requests_from_several_threads(tiny_model):
    requests = [request_for(tiny_model, p, sampling=replace(SAMPLED, seed=i),
                            stopping=StoppingParams(max_tokens=8, ignore_eos=True))
                for i, p in enumerate(["Hello, world!", "def add(a, b):"])]
    expected = [texts(list(generate(tiny_model, r))) for r in requests]
    scheduler = Scheduler(tiny_model, max_batch=8).start()
    try:
        results = [None] * len(requests)

        def run(i):
            results[i] = texts(list(scheduler.submit(requests[i])))
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert results == expected
    finally:
        scheduler.stop()


def test_scheduler_keeps_decoding_while_it_reads_a_long_prompt(tiny_model):
    """A long prompt goes in a chunk per step, each step also decoding the running request (driven step by
    step, so what happens in each step is exact, whatever the machine's load)."""
    scheduler = Scheduler(tiny_model, max_batch=4, prefill_chunk=8)
    running = scheduler.submit(request_for(tiny_model, "Hi", stopping=StoppingParams(max_tokens=120,
                                                                                      ignore_eos=True)))
    produced = []
    while not produced:
        scheduler.step()
        produced += running.ready_events()
    arriving = scheduler.submit(GenerationRequest(prompt_ids=tuple(range(3, 67)),      # 64 tokens: 8 chunks of 8
                                                  stopping=StoppingParams(max_tokens=2, ignore_eos=True)))
    arrived, steps, before = [], 0, len(produced)
    while not arrived:
        scheduler.step()
        steps += 1
        produced += running.ready_events()
        arrived += arriving.ready_events()
    assert steps == 9                           # 8 prompt chunks, then its first token
    assert len(produced) - before == steps, "the running request stalled during the prefill"
    events = run_to_end(scheduler, [running, arriving])
    assert len(produced + events[0]) == 120 and len(arrived + events[1]) == 2


def test_scheduler_cancel_errors_and_queue_limit(tiny_model):
    scheduler = Scheduler(tiny_model, max_batch=2, max_queue=1)
    long = request_for(tiny_model, "Hello", stopping=StoppingParams(max_tokens=200, ignore_eos=True))
    handle = scheduler.submit(long)
    for _ in range(3):
        scheduler.step()
    assert len(handle.ready_events()) == 2
    handle.cancel()
    scheduler.step()                             # the cancelled request is dropped at the next step
    assert handle.ready_events() == [] and list(handle) == []
    assert scheduler.stats()["running_requests"] == 0
    with pytest.raises(ContextLengthError):
        scheduler.submit(GenerationRequest(prompt_ids=(1,) * 300))
    for bad, field in ((GenerationRequest(prompt_ids=(1, 10**6)), "prompt"),
                       (GenerationRequest(prompt_ids=(1, 2), sampling=SamplingParams(logit_bias={-1: 1.0})),
                        "logit_bias")):
        with pytest.raises(RequestError) as refused:
            scheduler.submit(bad)
        assert refused.value.field == field
    many = GenerationRequest(prompt_ids=(1, 2), n=128, stopping=StoppingParams(max_tokens=250))
    with pytest.raises(RequestError, match="KV cache") as refused:
        Scheduler(tiny_model, max_kv_bytes=2**20).submit(many)
    assert refused.value.field == "n"                  # one choice would fit
    with pytest.raises(RequestError, match="KV cache") as refused:
        Scheduler(tiny_model, max_kv_bytes=2**10).submit(GenerationRequest(prompt_ids=(1, 2)))
    assert refused.value.field == "max_tokens"         # not even one choice fits
    queued = [scheduler.submit(long)]
    with pytest.raises(QueueFullError):
        for _ in range(3):
            queued.append(scheduler.submit(long))
    for h in queued:
        h.cancel()
    ok = scheduler.submit(request_for(tiny_model, "Hi", stopping=StoppingParams(max_tokens=3, ignore_eos=True)))
    assert [len(events) for events in run_to_end(scheduler, [ok])] == [3]
    assert scheduler.stats()["running_requests"] == 0
