"""KV memory: caches grow a block at a time, and n choices share their prompt's keys and values (tiny models).

Logits of different computation paths (a shared prompt read in two segments, or one) are compared on a
float64 copy of the model, where rounding is ~1e-16 of a value and a wrong cache read moves a logit by O(1):
the comparison then shows the same function is computed, whatever BLAS or the machine's load do.
"""
import numpy as np
import pytest

from refengine.generate import Generation
from refengine.kvcache import BLOCK
from refengine.model import load_model
from refengine.prefixcache import PrefixCache
from refengine.request import GenerationRequest, SamplingParams, StoppingParams
from tiny_model import FLOAT64_RELATIVE, float64_model, write_tiny_llama

SAMPLED = SamplingParams(temperature=0.9, top_k=50, seed=1234)
LONG_CONTEXT = 4096                          # well above a block, so "the whole context" and "a block" differ
@pytest.fixture(scope="module")
def long_model(tmp_path_factory):
    return load_model(write_tiny_llama(tmp_path_factory.mktemp("long"),
                                       extra_config={"max_position_embeddings": LONG_CONTEXT}))


@pytest.fixture(scope="module", params=["llama", "qwen2-bias", "mistral-window"])
def model64(request, tmp_path_factory):
    variants = {"llama": {}, "qwen2-bias": dict(architecture="Qwen2ForCausalLM"),
                "mistral-window": dict(architecture="MistralForCausalLM", extra_config={"sliding_window": 6})}
    return float64_model(load_model(write_tiny_llama(tmp_path_factory.mktemp(request.param),
                                                     **variants[request.param])))


def owned_bytes(generation: Generation) -> int:
    """Bytes of all the KV arrays a generation holds, each counted once."""
    caches = {id(c): c for c in [generation.cache] + [choice.cache for choice in generation.choices]}
    return sum(c.nbytes for c in caches.values())


def test_a_cache_grows_a_block_at_a_time_up_to_its_max_length(tiny_model):
    cache = tiny_model.new_cache(0)
    assert cache.capacity == 0 and cache.nbytes == 0
    cache.reserve(1)
    assert cache.capacity == BLOCK and cache.nbytes == BLOCK * cache.bytes_per_position
    cache.advance(BLOCK)
    cache.reserve(1)
    assert cache.capacity == 2 * BLOCK
    capped = tiny_model.new_cache(0)
    capped.max_length = BLOCK + 10
    capped.reserve(BLOCK + 1)
    assert capped.capacity == BLOCK + 10                 # a block would pass what it can ever hold


def test_a_generation_without_max_tokens_holds_its_prompt_not_the_context(long_model):
    prompt = tuple(range(3, 303))                        # 300 tokens, max_tokens unset: up to 4096 - 300 more
    generation = Generation(long_model, GenerationRequest(prompt_ids=prompt))
    assert generation.cache.nbytes == 0                  # nothing allocated before the first chunk
    generation.prefill()
    assert generation.cache.length == len(prompt)
    assert generation.cache.capacity < len(prompt) + BLOCK          # the old cache: all 4096 positions
    assert generation.cache.nbytes == generation.cache.capacity * generation.cache.bytes_per_position


def test_n_choices_hold_one_prompt_and_their_own_tails(long_model):
    prompt = tuple(range(3, 303))
    config = long_model.config
    per_position = config.num_layers * config.num_kv_heads * config.head_dim * 2 * 4     # keys + values, f32
    for max_tokens, tail in ((None, BLOCK), (8, 8)):         # a tail is a block, or all it may ever need
        request = GenerationRequest(prompt_ids=prompt, n=4, sampling=SAMPLED,
                                    stopping=StoppingParams(max_tokens=max_tokens, ignore_eos=True))
        generation = Generation(long_model, request).prefill()
        assert owned_bytes(generation) == len(prompt) * per_position     # the old code: 4 whole caches
        assert all(c.cache.shared is generation.cache for c in generation.choices)
        for choice in generation.choices:
            generation.choose(choice, generation.first_logits)
        long_model.forward([[c.last_token] for c in generation.choices], [c.cache for c in generation.choices])
        assert owned_bytes(generation) == (len(prompt) + 4 * tail) * per_position
        assert generation.cache.read_only


def test_n_choices_logits_equal_single_runs_of_their_tokens(model64):
    """Each of 4 choices reading one shared prompt gets, at every step, the logits a single sequence of its
    tokens gets: through grouped decode steps, a step with one choice alone, and a mixed step where one
    choice takes two tokens at once (its segments joined) beside one-token choices."""
    prompt = tuple(model64.tokenizer.encode("The quick brown fox jumps over the lazy dog."))
    request = GenerationRequest(prompt_ids=prompt, n=4, sampling=SAMPLED,
                                stopping=StoppingParams(max_tokens=12, ignore_eos=True))
    generation = Generation(model64, request).prefill()
    choices = generation.choices
    rows = {c.index: generation.first_logits for c in choices}            # [V] float64 each
    tokens = {c.index: [] for c in choices}
    seen = {c.index: [] for c in choices}        # (position of the last token fed, the logits row after it)

    def step(batch, forced=None):
        for choice in batch:
            seen[choice.index].append((len(prompt) + len(tokens[choice.index]) - 1, rows[choice.index]))
            generation.choose(choice, rows[choice.index].astype(np.float32))
            tokens[choice.index].append(choice.last_token)
        if forced is not None:                   # a second token for this choice in the same step
            tokens[forced.index].append(7)
        fed = [[c.last_token] + ([7] if c is forced else []) for c in batch]
        logits = model64.forward(fed, [c.cache for c in batch])            # [B, V]
        rows.update({c.index: row for c, row in zip(batch, logits)})

    for _ in range(3):
        step(choices)                                                      # grouped: B = 4, two segments each
    step(choices[2:3])                                                     # one choice alone
    step(choices, forced=choices[1])                                       # mixed: one choice feeds 2 tokens
    step(choices)
    for choice in choices:
        ids = list(prompt) + tokens[choice.index]
        single = model64.forward([ids], [model64.new_cache(0)], all_logits=True)   # [P + t, V]
        positions, got = zip(*seen[choice.index])
        expected = single[list(positions)]                                 # [steps, V]
        np.testing.assert_allclose(np.stack(got), expected, rtol=0,
                                   atol=FLOAT64_RELATIVE * np.abs(expected).max())


def test_fork_of_a_branch_copies_the_shared_prompt_and_its_own_tokens(tiny_model):
    prompt = tiny_model.tokenizer.encode("Hello, world! How are you today?")
    cache = tiny_model.new_cache(0)
    tiny_model.forward([prompt], [cache])
    one, two = cache.branch(), cache.branch()
    tiny_model.forward([[5, 6, 7], [9]], [one, two])
    flat = one.fork()
    assert flat.shared is None and flat.length == len(prompt) + 3 and flat.capacity == flat.length
    np.testing.assert_array_equal(flat.keys, np.concatenate([cache.keys[..., :len(prompt)], one.keys[..., :3]], axis=3))
    np.testing.assert_array_equal(flat.values, np.concatenate([cache.values[:, :, :len(prompt)],
                                                               one.values[:, :, :3]], axis=2))
    short = two.fork(length=len(prompt) - 2)                              # within the shared prompt only
    np.testing.assert_array_equal(short.keys, cache.keys[..., :len(prompt) - 2])
    before = one.keys.copy()
    tiny_model.forward([[11]], [flat])                                     # the fork goes on on its own
    np.testing.assert_array_equal(one.keys, before)
    store = PrefixCache(max_bytes=2**30, min_reuse=1)
    store.store(prompt + [9], two)                                         # a prefix entry from a branch
    assert store.bytes == (len(prompt) + 1) * two.bytes_per_position
    with pytest.raises(RuntimeError, match="read-only"):
        tiny_model.forward([[1]], [cache])                                 # the shared prompt stays as it is
