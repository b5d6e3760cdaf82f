"""The forward pass and KV cache: consistency on the tiny model, golden parity on the default model."""
import json
from pathlib import Path

import numpy as np
import pytest

from refengine.backends.numpy_backend import attention, decode_attention, joined, last_positions
from refengine.forward import rope_frequencies
from refengine.config import config_from_dict
from refengine.model import load_model
from tiny_model import assert_same_function, float64_model, write_tiny_llama

FIXTURES = Path(__file__).parent / "fixtures"
PROMPT = "Hello, world! The quick brown fox jumps over the lazy dog. 0123456789"

VARIANTS = {
    "llama": dict(architecture="LlamaForCausalLM"),
    "llama-tied": dict(architecture="LlamaForCausalLM", tie_word_embeddings=True),
    "qwen2-bias": dict(architecture="Qwen2ForCausalLM"),
    "mistral-window": dict(architecture="MistralForCausalLM", extra_config={"sliding_window": 6}),
    "llama3-rope": dict(architecture="LlamaForCausalLM", extra_config={"rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}}),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request, tmp_path_factory):
    """Each variant in float64: these tests compare computation paths of one function (see FLOAT64_RELATIVE)."""
    return float64_model(load_model(write_tiny_llama(tmp_path_factory.mktemp(request.param),
                                                     **VARIANTS[request.param])))


def test_prefill_equals_step_by_step_decode(variant):
    ids = variant.tokenizer.encode(PROMPT)
    assert len(ids) > 12
    whole = variant.forward([ids], [variant.new_cache(len(ids))], all_logits=True)   # [T, V]
    cache = variant.new_cache(2)             # too small on purpose: the cache must grow
    steps = [variant.forward([ids[:4]], [cache])[0]]
    steps += [variant.forward([[token]], [cache])[0] for token in ids[4:]]
    assert cache.length == len(ids)
    assert_same_function(np.stack(steps), whole[3:])


def test_logits_are_float32(tiny_model):
    ids = tiny_model.tokenizer.encode(PROMPT)
    assert tiny_model.forward([ids], [tiny_model.new_cache(len(ids))], all_logits=True).dtype == np.float32


def test_batched_sequences_equal_single_runs(variant):
    prompts = [variant.tokenizer.encode(t) for t in ("Hello, world!", PROMPT, "def add(a, b):")]
    alone = [variant.forward([p], [variant.new_cache(len(p) + 2)])[0] for p in prompts]
    caches = [variant.new_cache(len(p) + 2) for p in prompts]
    together = variant.forward(prompts, caches)                     # mixed-length prefill in one batch
    assert_same_function(together, np.stack(alone))
    # one decode step for all three, each at its own position
    next_tokens = [[int(np.argmax(row))] for row in together]
    batched = variant.forward(next_tokens, caches)
    for prompt, token, row in zip(prompts, next_tokens, batched):
        cache = variant.new_cache(len(prompt) + 1)
        expected = variant.forward([prompt + token], [cache])[0]
        assert_same_function(row, expected)


def test_mixed_batch_of_decode_steps_and_prompt_chunks_equals_single_runs(variant):
    """One forward pass that decodes two sequences while it feeds another's next prompt chunk."""
    prompts = [variant.tokenizer.encode(t) for t in ("Hello, world!", PROMPT, "def add(a, b):")]
    caches = [variant.new_cache(len(p) + 4) for p in prompts]
    variant.forward([prompts[0], prompts[1][:5], prompts[2]], caches)
    mixed = variant.forward([[7], prompts[1][5:], [9]], caches)        # [3, V]
    for prompt, extra, row in zip(prompts, ([7], [], [9]), mixed):
        expected = variant.forward([prompt + extra], [variant.new_cache(len(prompt) + 1)])[0]
        assert_same_function(row, expected)


def test_logits_for_every_row_of_chosen_sequences_only(tiny_model):
    model = float64_model(tiny_model)
    first, second = model.tokenizer.encode("Hello, world!"), model.tokenizer.encode("def add(a, b):")
    logits = model.forward([first, second], [model.new_cache(len(first)), model.new_cache(len(second))],
                           all_logits=[True, False])                # [len(first) + 1, V]
    whole = model.forward([first], [model.new_cache(len(first))], all_logits=True)
    last = model.forward([second], [model.new_cache(len(second))])
    assert_same_function(logits, np.concatenate([whole, last]))


def test_forked_cache_is_independent(tiny_model):
    model = float64_model(tiny_model)
    ids = model.tokenizer.encode(PROMPT)
    cache = model.new_cache(len(ids) + 4)
    model.forward([ids[:-2]], [cache])
    fork = cache.fork()
    a = model.forward([ids[-2:-1]], [cache])[0]
    b = model.forward([ids[-1:]], [fork])[0]                  # a different token on the fork
    c = model.forward([ids[-2:-1]], [fork.fork()])             # fork of fork, back to the first token
    assert not np.allclose(a, b)
    reference = model.forward([ids[:-2] + ids[-1:]], [model.new_cache(len(ids))])[0]
    assert_same_function(b, reference)
    assert c.shape == (1, model.vocab_size)


def test_grouped_decode_attention_over_two_segment_caches_equals_the_concatenated_cache():
    """Sequences whose keys/values lie in two segments (a prompt shared by n choices, then a choice's own
    tokens) attend as over one concatenated cache. In float64, where the only difference (the order of the
    weighted sum of values, split at the segment boundary) is ~1e-16 relative; a lost or misplaced segment
    would be O(1)."""
    rng = np.random.default_rng(0)
    Hkv, G, hd = 2, 3, 16

    def segment(S):
        return rng.standard_normal((Hkv, hd, S)), rng.standard_normal((Hkv, S, hd))   # keys_t, values

    segments = [[segment(5), segment(3)], [segment(7)], [segment(4), segment(1)]]  # [B] sequences
    q = rng.standard_normal((len(segments), Hkv * G, hd))                           # [B, H, hd]
    two = decode_attention(q, segments, np)                                          # [B, H hd]
    whole = [joined(s, np) for s in segments]                                        # one segment each
    one = decode_attention(q, [[w] for w in whole], np)
    alone = np.concatenate([attention(q[i:i + 1], k, v, None, np) for i, (k, v) in enumerate(whole)])
    np.testing.assert_allclose(two, one, rtol=0, atol=1e-12)       # |values| ~ 1, weights sum to 1
    np.testing.assert_allclose(two, alone, rtol=0, atol=1e-12)
    single = decode_attention(q[:1], segments[:1], np)                               # B = 1, two segments
    np.testing.assert_allclose(single, alone[:1], rtol=0, atol=1e-12)


def test_last_positions_of_two_segments_are_the_window_of_the_whole():
    rng = np.random.default_rng(1)
    segments = [(rng.standard_normal((2, 4, S)), rng.standard_normal((2, S, 4))) for S in (5, 3)]
    keys_t, values = joined(segments, np)                                            # [2, 4, 8], [2, 8, 4]
    for window in (1, 3, 4, 8, 20):
        kept = last_positions(segments, window)
        assert len(kept) == (1 if window <= 3 else 2)
        np.testing.assert_array_equal(joined(kept, np)[0], keys_t[..., -window:])
        np.testing.assert_array_equal(joined(kept, np)[1], values[:, -window:])


def test_rope_frequencies_match_closed_form():
    config = config_from_dict({"architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 64,
                               "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 4,
                               "rope_theta": 10000.0})
    expected = 1.0 / 10000.0 ** (np.arange(0, 16, 2) / 16)
    np.testing.assert_allclose(rope_frequencies(config), expected, rtol=1e-6)
    assert rope_frequencies(config).dtype == np.float32


# Golden fixtures written by tools/parity.py from transformers (torch, fp32) on the default model.
def _golden():
    return json.loads((FIXTURES / "parity_smollm2.json").read_text())


def test_default_model_config(smollm2):
    config = smollm2.config
    assert (config.num_layers, config.hidden_size, config.num_heads, config.num_kv_heads) == (30, 576, 9, 3)
    assert config.tie_word_embeddings
    np.testing.assert_array_equal(smollm2.weights.lm_head, smollm2.weights.embed.T)
    assert 2 in smollm2.eos_ids


def test_default_model_logits_match_transformers(smollm2):
    golden = _golden()
    assert golden["cases"], "fixtures hold no case"
    for case in golden["cases"]:
        ids = case["prompt_ids"]
        logits = smollm2.forward([ids], [smollm2.new_cache(len(ids))])[0]        # [V]
        top_ids = np.asarray(case["top_ids"])
        assert int(np.argmax(logits)) == top_ids[0]
        difference = np.abs(logits[top_ids] - np.asarray(case["top_logits"], dtype=np.float32)).max()
        assert difference <= golden["tolerance"], (case["prompt"], difference)


def test_default_model_greedy_continuation_matches_transformers(smollm2):
    for case in _golden()["cases"]:
        ids = list(case["prompt_ids"])
        cache = smollm2.new_cache(len(ids) + len(case["greedy_ids"]))
        logits = smollm2.forward([ids], [cache])[0]
        produced = []
        for _ in case["greedy_ids"]:
            produced.append(int(np.argmax(logits)))
            logits = smollm2.forward([[produced[-1]]], [cache])[0]
        assert produced == case["greedy_ids"], case["prompt"]
