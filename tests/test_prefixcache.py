"""Prefix caching: the bookkeeping, and a reused prefix giving what a fresh prefill gives (tiny model)."""
import tracemalloc
from dataclasses import replace

from refengine.generate import Generation, generate
from refengine.prefixcache import PrefixCache
from refengine.request import GenerationRequest, SamplingParams, StoppingParams
from refengine.scheduler import Scheduler
from tiny_model import assert_same_function, float64_model

GREEDY_LOGPROBS = dict(sampling=SamplingParams(temperature=0.0), logprobs=True, top_logprobs=3)


def filled_cache(model, ids):
    cache = model.new_cache(len(ids))
    model.forward([list(ids)], [cache])
    return cache


def test_lookup_finds_the_longest_shared_beginning_and_leaves_the_last_token(tiny_model):
    store = PrefixCache(max_bytes=2**30, min_reuse=1)
    assert store.lookup([1, 2, 3]) is None
    store.store([5, 6, 7, 8], filled_cache(tiny_model, [5, 6, 7, 8]))
    store.store([5, 6, 9], filled_cache(tiny_model, [5, 6, 9]))
    assert store.lookup([5, 6, 7, 10, 11]).length == 3
    assert store.lookup([5, 6, 9, 1]).length == 3
    assert store.lookup([5, 6, 7, 8]).length == 3            # the whole prompt cached: its last token is fed again
    assert store.lookup([4, 5, 6]) is None
    assert store.stats()["prefix_cache_hits"] == 3 and store.stats()["prefix_cache_reused_tokens"] == 9
    picky = PrefixCache(max_bytes=2**30, min_reuse=3)
    picky.store([5, 6, 7, 8], filled_cache(tiny_model, [5, 6, 7, 8]))
    assert picky.lookup([5, 6, 1, 2]) is None and picky.lookup([5, 6, 7, 2]).length == 3


def test_store_drops_redundant_entries_and_evicts_the_least_recently_used(tiny_model):
    one = filled_cache(tiny_model, list(range(10, 20)))
    per_entry = one.fork(capacity=10).nbytes
    store = PrefixCache(max_bytes=2 * per_entry, min_reuse=1)
    store.store(list(range(10, 15)), filled_cache(tiny_model, list(range(10, 15))))
    store.store(list(range(10, 20)), one)                     # extends the first: replaces it
    assert store.stats()["prefix_cache_entries"] == 1 and store.bytes == per_entry
    store.store(list(range(10, 18)), filled_cache(tiny_model, list(range(10, 18))))  # held by the longer one
    assert store.stats()["prefix_cache_entries"] == 1
    store.store(list(range(30, 40)), filled_cache(tiny_model, list(range(30, 40))))
    store.lookup(list(range(10, 20)))                         # the first entry is now the most recent
    store.store(list(range(50, 60)), filled_cache(tiny_model, list(range(50, 60))))   # evicts 30..39
    assert store.lookup(list(range(30, 40))) is None and store.lookup(list(range(10, 20))).length == 9
    assert store.bytes <= store.max_bytes
    too_big = list(range(10, 40))                             # extends an entry, but cannot fit: keep the entry
    store.store(too_big, filled_cache(tiny_model, too_big))
    assert store.lookup(list(range(10, 20))).length == 9


def test_a_reused_prefix_gives_the_logits_of_a_fresh_prefill(tiny_model):
    tiny_model = float64_model(tiny_model)       # two paths of one function: compared in float64
    first = tuple(tiny_model.tokenizer.encode("The quick brown fox jumps over the lazy dog."))
    second = first[:8] + tuple(tiny_model.tokenizer.encode(" A different ending, much longer than that."))
    store = PrefixCache(max_bytes=2**30, min_reuse=1)
    store.store(first, filled_cache(tiny_model, first))
    request = GenerationRequest(prompt_ids=second, stopping=StoppingParams(max_tokens=4))
    reused = Generation(tiny_model, request)
    reused.reuse_prefix(store)
    reused.prefill()
    fresh = Generation(tiny_model, request).prefill()
    assert reused.cached_tokens == 8 and fresh.cached_tokens == 0
    scored = Generation(tiny_model, replace(request, prompt_logprobs=0))
    scored.reuse_prefix(store)                                  # a prompt to score takes nothing cached
    assert scored.cached_tokens == 0 and scored.cache.length == 0
    assert_same_function(reused.first_logits, fresh.first_logits)


def test_reuse_prefix_never_holds_two_full_size_caches(tiny_model):
    """Starting from a cached prefix allocates one cache, sized for the prompt (the old code held a cache of
    the whole context, then forked the prefix into a second one)."""
    first = tuple(tiny_model.tokenizer.encode("The quick brown fox jumps over the lazy dog."))
    store = PrefixCache(max_bytes=2**30, min_reuse=1)
    store.store(first, filled_cache(tiny_model, first))
    request = GenerationRequest(prompt_ids=first[:8] + (5, 6, 7))      # max_tokens unset: up to the context
    tracemalloc.start()
    try:
        generation = Generation(tiny_model, request)
        generation.reuse_prefix(store)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    cache = generation.cache
    assert generation.cached_tokens == 8 and cache.length == 8
    assert peak < cache.nbytes + cache.nbytes // 2                          # one cache (+ small objects)
    assert cache.capacity == cache.capacity_for(len(request.prompt_ids))     # room for the prompt, one block


def test_scheduler_reuses_a_finished_conversation_for_its_next_turn(tiny_model):
    tiny_model = float64_model(tiny_model)       # two paths of one function: compared in float64
    prompt = tuple(tiny_model.tokenizer.encode("Hello there, how are you today?"))
    turn = GenerationRequest(prompt_ids=prompt, stopping=StoppingParams(max_tokens=6, ignore_eos=True),
                             **GREEDY_LOGPROBS)
    caching, plain = Scheduler(tiny_model).start(), Scheduler(tiny_model, prefix_cache_bytes=0).start()
    try:
        handle = caching.submit(turn)
        reply = tuple(e.token_id for e in handle)
        assert handle.cached_tokens == 0
        follow_up = GenerationRequest(prompt_ids=prompt + reply + (5, 6, 7),
                                      stopping=StoppingParams(max_tokens=5, ignore_eos=True), **GREEDY_LOGPROBS)
        reused = caching.submit(follow_up)
        events = list(reused)
        assert reused.cached_tokens == len(prompt) + len(reply) - 1        # the reply's last token was never fed
        assert caching.stats()["prefix_cache_hits"] == 1
        alone = plain.submit(follow_up)
        expected = list(alone)
        assert alone.cached_tokens == 0 and "prefix_cache_hits" not in plain.stats()
        assert [e.token_id for e in events] == [e.token_id for e in expected]
        assert_same_function([e.logprob.logprob for e in events], [e.logprob.logprob for e in expected])
    finally:
        caching.stop()
        plain.stop()


def test_generate_reuses_and_feeds_a_prefix_cache(tiny_model):
    """The terminal chat's path: each turn's prompt repeats the last, and generate() starts where it ended."""
    tiny_model = float64_model(tiny_model)       # two paths of one function: compared in float64
    store = PrefixCache(max_bytes=2**30, min_reuse=1)
    prompt = tuple(tiny_model.tokenizer.encode("Hello there, how are you today?"))
    request = GenerationRequest(prompt_ids=prompt, stopping=StoppingParams(max_tokens=6, ignore_eos=True),
                                **GREEDY_LOGPROBS)
    reply = tuple(e.token_id for e in generate(tiny_model, request, store))
    assert store.stats()["prefix_cache_entries"] == 1 and store.stats()["prefix_cache_hits"] == 0
    follow_up = replace(request, prompt_ids=prompt + reply + (5, 6))
    cached = list(generate(tiny_model, follow_up, store))
    assert store.stats()["prefix_cache_hits"] == 1
    assert store.stats()["prefix_cache_reused_tokens"] == len(prompt) + len(reply) - 1
    fresh = list(generate(tiny_model, follow_up))
    assert [e.token_id for e in cached] == [e.token_id for e in fresh]
    assert_same_function([e.logprob.logprob for e in cached], [e.logprob.logprob for e in fresh])


def test_a_request_reuses_the_prompt_of_one_still_running(tiny_model):
    """A long shared beginning (a system prompt) is reusable as soon as the first request has read it."""
    shared = tuple(range(3, 43))
    scheduler = Scheduler(tiny_model).start()
    try:
        first = scheduler.submit(GenerationRequest(prompt_ids=shared + (50, 51),
                                                   stopping=StoppingParams(max_tokens=200, ignore_eos=True)))
        events = iter(first)
        next(events)                                            # its prompt is in
        second = scheduler.submit(GenerationRequest(prompt_ids=shared + (60,), stopping=StoppingParams(max_tokens=2)))
        assert len(list(second)) >= 1 and second.cached_tokens == len(shared)
        first.cancel()
        list(events)
    finally:
        scheduler.stop()


def test_requests_arriving_together_reuse_the_beginning_read_in_an_earlier_step(tiny_model):
    """The lookup happens at a request's first prompt chunk: one that waits for the prefill budget finds
    the shared beginning of those read before it."""
    shared = tuple(range(3, 43))
    scheduler = Scheduler(tiny_model, prefill_chunk=len(shared) + 1).start()   # one prompt per step
    try:
        handles = [scheduler.submit(GenerationRequest(prompt_ids=shared + (50 + i,),
                                                      stopping=StoppingParams(max_tokens=2))) for i in range(3)]
        for handle in handles:
            assert len(list(handle)) >= 1
        assert [h.cached_tokens for h in handles] == [0, len(shared), len(shared)]
    finally:
        scheduler.stop()
