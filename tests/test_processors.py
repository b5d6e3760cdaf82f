"""Logits processors: hand-computed cases, a naive DRY reference, and property tests for truncation."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refengine import history as H
from refengine import processors as P
from refengine.request import SamplingParams
from refengine.sample import sample

NEG_INF = -np.inf


def f32(values):
    return np.asarray(values, dtype=np.float32)


def history(prompt, outputs=(), vocab_size=8, breakers=None):
    h = H.TokenHistory.start(prompt, vocab_size, breakers)
    for token in outputs:
        h.append(token)
    return h


# ---------------------------------------------------------------------------------------------
# penalties, by hand


def test_logit_bias_adds_and_leaves_input_untouched():
    logits = f32([0.0, 1.0, 2.0, 3.0])
    out = P.logit_bias(logits, {1: 5.0, 3: -100.0})
    np.testing.assert_array_equal(out, f32([0.0, 6.0, 2.0, -97.0]))
    np.testing.assert_array_equal(logits, f32([0.0, 1.0, 2.0, 3.0]))
    assert out.dtype == np.float32
    assert P.logit_bias(logits, {}) is logits


def test_repetition_penalty_hf_rule_over_prompt_and_output():
    h = history(prompt=[0, 1, 0], outputs=[3], vocab_size=5)
    logits = f32([2.0, -2.0, 1.0, 0.5, 4.0])
    out = P.repetition_penalty(logits, 2.0, h.seen_token_ids())
    # seen: 0 (2 -> 1), 1 (-2 -> -4), 3 (0.5 -> 0.25); 2 and 4 untouched
    np.testing.assert_allclose(out, f32([1.0, -4.0, 1.0, 0.25, 4.0]))
    assert P.repetition_penalty(logits, 1.0, h.seen_token_ids()) is logits


def test_presence_and_frequency_penalty_openai_rule_over_output_only():
    h = history(prompt=[1, 1, 1], outputs=[0, 0, 2], vocab_size=4)
    ids, counts = h.output_token_counts()
    assert dict(zip(ids.tolist(), counts.tolist())) == {0: 2, 2: 1}
    out = P.presence_frequency_penalty(f32([1, 1, 1, 1]), 0.25, 0.5, ids, counts)
    # token 0: 1 - 2*0.5 - 0.25; token 2: 1 - 0.5 - 0.25; token 1 is only in the prompt
    np.testing.assert_allclose(out, f32([-0.25, 1.0, 0.25, 1.0]))


def test_token_history_grows_past_its_first_capacity():
    h = history(prompt=[5], vocab_size=300)
    for token in range(200):
        h.append(token)
    h.append(7)
    assert h.length == 202 and h.prompt_length == 1
    assert h.tokens().tolist() == [5, *range(200), 7]
    ids, counts = h.output_token_counts()
    assert ids.tolist() == list(range(200))
    assert counts[7] == 2 and counts[5] == 1 and counts.sum() == 201
    assert sorted(h.seen_token_ids().tolist()) == list(range(200))


# ---------------------------------------------------------------------------------------------
# DRY


def tokens_of(text):
    return np.array([ord(c) for c in text], dtype=np.int32)


def dry(context, breaker_sequences=(), multiplier=0.8, base=1.75, allowed=2, vocab_size=128):
    context = np.asarray(context, dtype=np.int32)
    breakers = H.DryBreakers.from_token_sequences(breaker_sequences, vocab_size)
    logits = np.zeros(vocab_size, dtype=np.float32)
    out = P.dry_penalty(logits, context, H.suffix_match_lengths(context), breakers,
                        multiplier, base, allowed)
    return {chr(i) if i >= 32 else i: float(-out[i]) for i in np.flatnonzero(out)}


def test_suffix_match_lengths_worked_example():
    # llama.cpp's example: the last three tokens (a b c) also end at index 2, etc.
    assert H.suffix_match_lengths(tokens_of("abccbcyabc")).tolist() == [0, 0, 3, 1, 0, 2, 0, 0, 0, 0]


def test_dry_worked_example():
    # a b c c b c y a b c: "abc" repeats at 0..2 (next: c, would make 4 > allowed 2 -> 0.8 * 1.75^1);
    # "bc" repeats at 4..5 (next: y -> 0.8 * 1.75^0); "c" at 3 is 1 < 2: no penalty for b.
    assert dry(tokens_of("abccbcyabc")) == pytest.approx({"c": 0.8 * 1.75, "y": 0.8})


def test_dry_penalty_grows_with_the_repeat_length():
    penalties = dry(tokens_of("abcdefXabcdef"), allowed=2, multiplier=1.0, base=2.0)
    assert penalties == pytest.approx({"X": 2.0 ** (6 - 2)})


def test_dry_never_penalises_a_breaker_token():
    # "b c" repeats before d and before X, but X (a breaker) may always be sampled
    penalties = dry(tokens_of("abcdabcXbc"), [[ord("X")]])
    assert penalties == pytest.approx({"d": 0.8})


def test_dry_repeat_stops_at_the_last_breaker():
    # "X b c" repeats, but matching stops at the breaker X: length 2, not 3
    assert dry(tokens_of("XbcdXbc"), [[ord("X")]]) == pytest.approx({"d": 0.8})
    assert dry(tokens_of("XbcdXbc")) == pytest.approx({"d": 0.8 * 1.75})


def test_dry_breaker_as_last_token_disables_the_penalty():
    assert dry(tokens_of("abcabX"), [[ord("X")]]) == {}
    assert dry(tokens_of("abcXab"), [[ord("X")]]) == pytest.approx({"c": 0.8})


def test_dry_multi_token_breaker_needs_its_whole_sequence():
    pq = [[ord("P"), ord("Q")]]
    # P Q completes a breaker: only "b c" after it may match
    assert dry(tokens_of("abcdPQbc"), pq) == pytest.approx({"d": 0.8})
    # P alone is no breaker: "a b c" matches fully and P itself is penalised
    assert dry(tokens_of("abcPabc"), pq) == pytest.approx({"P": 0.8 * 1.75})


def test_dry_disabled_or_too_short_changes_nothing():
    assert dry(tokens_of("abcabc"), multiplier=0.0) == {}
    assert dry(tokens_of("ab"), allowed=2) == {}
    assert dry(tokens_of("abcabc"), base=0.9) == {}          # llama.cpp: base < 1 disables


def test_dry_exponent_is_capped_so_the_penalty_stays_finite():
    context = np.tile(tokens_of("ab"), 200)                   # a 399-token repeat
    penalties = dry(context, multiplier=1.0, base=3.0)
    assert math.isfinite(penalties["a"]) and penalties["a"] > 1e38


def dry_reference(logits, context, breaker_sequences, multiplier, base, allowed):
    """DRY straight from its definition, quadratic and loop-based."""
    out = np.array(logits, dtype=np.float64)
    length = len(context)
    if multiplier == 0 or length <= allowed:
        return out
    repeat_limit = length
    for back in range(length):                                # most recent head first
        head_at = length - 1 - back
        tails = [s[1:] for s in breaker_sequences if s[0] == context[head_at]]
        fitting = [len(t) for t in tails
                   if len(t) <= back and list(context[head_at + 1:head_at + 1 + len(t)]) == list(t)]
        if fitting:
            repeat_limit = back - max(fitting)
            break
    if repeat_limit < allowed:
        return out
    singles = {s[0] for s in breaker_sequences if len(s) == 1}
    longest = {}
    for end in range(length - 1):
        n = 0
        while n <= end and context[end - n] == context[length - 1 - n]:
            n += 1
        n = min(n, repeat_limit)
        if n >= allowed and context[end + 1] not in singles:
            longest[context[end + 1]] = max(longest.get(context[end + 1], 0), n)
    for token, n in longest.items():
        out[token] -= multiplier * base ** (n - allowed)
    return out


@settings(max_examples=150, deadline=None)
@given(context=st.lists(st.integers(0, 3), min_size=0, max_size=40),
       breakers=st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=3), max_size=3),
       allowed=st.integers(1, 4), multiplier=st.sampled_from([0.0, 0.5, 2.0]))
def test_dry_matches_the_naive_reference(context, breakers, allowed, multiplier):
    context = np.array(context, dtype=np.int32)
    table = H.DryBreakers.from_token_sequences(breakers, 6)
    logits = np.linspace(-1, 1, 6).astype(np.float32)
    out = P.dry_penalty(logits, context, H.suffix_match_lengths(context), table, multiplier, 1.5, allowed)
    expected = dry_reference(logits, context.tolist(), breakers, multiplier, 1.5, allowed)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@settings(max_examples=100, deadline=None)
@given(prompt=st.lists(st.integers(0, 2), max_size=20), outputs=st.lists(st.integers(0, 2), max_size=30))
def test_incremental_suffix_matches_equal_recomputed_ones(prompt, outputs):
    h = history(prompt, vocab_size=3, breakers=H.DryBreakers.from_token_sequences([], 3))
    for token in outputs:
        h.append(token)
        np.testing.assert_array_equal(h.suffix_matches[:h.length], H.suffix_match_lengths(h.tokens()))


def test_dry_sequence_breakers_from_strings():
    vocab = [b"a", b"\n", b"x\ny", b":", b"Us", b"er", b"User:", b"e", b"r:", b"b"]
    table = {piece.decode(): i for i, piece in enumerate(vocab)}

    def tokenize(text):                                       # greedy longest match over `vocab`
        ids = []
        while text:
            piece = max((p for p in table if text.startswith(p)), key=len)
            ids.append(table[piece])
            text = text[len(piece):]
        return ids

    simple = H.dry_sequence_breakers(["\n", ":"], vocab)
    assert set(np.flatnonzero(simple.is_breaker).tolist()) == {1, 2, 3, 6, 8}
    assert all(tails == ((),) for tails in simple.tails.values())

    user = H.dry_sequence_breakers(["User:"], vocab, tokenize)
    assert user.tails[6] == ((),)                             # contains "User:" whole
    assert set(user.tails[4]) == {(table["er"], table[":"])}  # "Us" + tokenize("er:")
    assert 7 not in user.tails and 0 not in user.tails
    assert np.flatnonzero(user.is_breaker).tolist() == [6]
    assert np.flatnonzero(user.is_head).tolist() == [4, 6]

    assert H.dry_sequence_breakers(["User:"], vocab).tails == {6: ((),)}   # no tokenizer: whole only


def test_apply_penalties_runs_dry_from_the_history():
    breakers = H.DryBreakers.from_token_sequences([[9]], 10)
    h = history(prompt=[1, 2, 3, 1, 2], vocab_size=10, breakers=breakers)
    params = SamplingParams(dry_multiplier=1.0, dry_base=2.0, dry_allowed_length=2)
    out = P.apply_penalties(np.zeros(10, np.float32), params, h)
    np.testing.assert_allclose(out, f32([0, 0, 0, -1, 0, 0, 0, 0, 0, 0]))
    with pytest.raises(ValueError):
        P.apply_penalties(np.zeros(10, np.float32), params, history([1, 2], vocab_size=10))


# ---------------------------------------------------------------------------------------------
# warpers, by hand


def test_temperature_scales_and_zero_is_greedy():
    np.testing.assert_allclose(P.temperature(f32([1, 2]), 0.5), f32([2, 4]))
    np.testing.assert_array_equal(P.temperature(f32([1, 3, 3]), 0.0), f32([NEG_INF, 3, NEG_INF]))
    logits = f32([1, 2])
    assert P.temperature(logits, 1.0) is logits


def test_top_k_keeps_the_k_largest_and_ties():
    logits = f32([1, 3, 2, 3, 0])
    np.testing.assert_array_equal(P.top_k(logits, 3), f32([NEG_INF, 3, 2, 3, NEG_INF]))
    np.testing.assert_array_equal(P.top_k(logits, 1), f32([NEG_INF, 3, NEG_INF, 3, NEG_INF]))
    assert P.top_k(logits, 0) is logits and P.top_k(logits, -1) is logits and P.top_k(logits, 5) is logits


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = np.log(f32([0.5, 0.3, 0.15, 0.05]))
    kept = lambda p: np.flatnonzero(P.top_p(logits, p) > NEG_INF).tolist()
    assert kept(0.4) == [0]
    assert kept(0.75) == [0, 1]
    assert kept(0.85) == [0, 1, 2]
    assert kept(0.99) == [0, 1, 2, 3]
    assert P.top_p(logits, 1.0) is logits


def test_top_p_on_a_flat_distribution_keeps_the_lowest_ids_of_a_tie():
    kept = np.flatnonzero(P.top_p(np.zeros(5000, dtype=np.float32), 0.5) > NEG_INF)
    assert kept.tolist() == list(range(2500))


def test_min_p_drops_tokens_below_a_fraction_of_the_top():
    logits = np.log(f32([0.5, 0.3, 0.15, 0.05]))
    kept = np.flatnonzero(P.min_p(logits, 0.2) > NEG_INF).tolist()
    assert kept == [0, 1, 2]                                  # 0.05 < 0.2 * 0.5
    assert P.min_p(logits, 0.0) is logits


def test_filters_keep_a_token_when_the_input_is_mostly_masked():
    logits = np.full(100, NEG_INF, dtype=np.float32)
    logits[37] = -5.0
    for filtered in (P.top_k(logits, 5), P.top_p(logits, 0.5), P.min_p(logits, 0.9)):
        assert np.flatnonzero(filtered > NEG_INF).tolist() == [37]


# ---------------------------------------------------------------------------------------------
# apply_processors: order, greedy, mask, disabled


def test_disabled_processors_return_the_input_itself():
    logits = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    assert P.apply_processors(logits, SamplingParams(), history([1, 2], vocab_size=1000)) is logits


def test_order_bias_then_repetition_then_presence():
    # token 1: logit 1, bias +3, seen -> (1 + 3) / 2 = 2 (the other way round: 1 / 2 + 3)
    # token 2: logit 4, generated once -> 4 / 2 - 1 = 1 (the other way round: (4 - 1) / 2)
    h = history(prompt=[1], outputs=[2], vocab_size=4)
    params = SamplingParams(logit_bias={1: 3.0}, repetition_penalty=2.0, presence_penalty=1.0)
    out = P.apply_penalties(f32([0, 1, 4, 0]), params, h)
    np.testing.assert_allclose(out, f32([0, 2, 1, 0]))


def test_greedy_sees_the_penalties_and_the_mask():
    h = history(prompt=[3], vocab_size=5)
    params = SamplingParams(temperature=0.0, repetition_penalty=10.0, top_k=3, top_p=0.5)
    out = P.apply_processors(f32([0, 1, 2, 3, -1]), params, h)          # 3 falls to 0.3: 2 wins
    np.testing.assert_array_equal(out, f32([NEG_INF, NEG_INF, 2, NEG_INF, NEG_INF]))
    allowed = np.array([True, True, False, False, True])
    out = P.apply_processors(f32([0, 1, 2, 3, -1]), params, h, allowed)
    np.testing.assert_array_equal(out, f32([NEG_INF, 1, NEG_INF, NEG_INF, NEG_INF]))


def test_mask_applies_before_truncation():
    allowed = np.array([True, False, False, True])
    out = P.apply_processors(f32([0, 5, 4, 1]), SamplingParams(top_k=1), history([], vocab_size=4), allowed)
    np.testing.assert_array_equal(out, f32([NEG_INF, NEG_INF, NEG_INF, 1]))


# ---------------------------------------------------------------------------------------------
# properties of top-k / top-p / min-p on random vectors (small ones and vocabulary-sized ones)


def random_logits(seed, size, scale, ties, masked):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal(size) * scale).astype(np.float32)
    if ties:
        logits = np.round(logits).astype(np.float32)
    if masked and size > 1:
        logits[rng.random(size) < 0.5] = NEG_INF
        logits[rng.integers(size)] = np.float32(0.5)          # keep one finite
    return logits


logit_vectors = st.builds(random_logits, seed=st.integers(0, 2**32 - 1),
                          size=st.sampled_from([1, 2, 5, 64, 300, 5000, 49152]),
                          scale=st.sampled_from([0.01, 1.0, 4.0]), ties=st.booleans(),
                          masked=st.booleans())


def survivors(original, filtered):
    kept = filtered > NEG_INF
    assert kept.any(), "a filter must keep at least one token"
    np.testing.assert_array_equal(filtered[kept], original[kept])   # survivors keep their logit
    dropped = ~kept & (original > NEG_INF)
    if dropped.any():                                                # the top ones, nothing else
        assert original[kept].min() >= original[dropped].max()
    return kept


def probabilities(logits):
    x = logits.astype(np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


@settings(max_examples=60, deadline=None)
@given(logits=logit_vectors, k=st.integers(1, 100))
def test_top_k_properties(logits, k):
    kept = survivors(logits, P.top_k(logits, k))
    if k < logits.size:
        kth = np.sort(logits)[::-1][k - 1]
        assert kept.sum() == np.count_nonzero((logits >= kth) & (logits > NEG_INF))


@settings(max_examples=60, deadline=None)
@given(logits=logit_vectors, p=st.floats(0.01, 0.999))
def test_top_p_properties(logits, p):
    kept = survivors(logits, P.top_p(logits, p))
    probs = probabilities(logits)
    mass = probs[kept].sum()
    assert mass >= p - 1e-5
    smallest_kept = probs[kept].min()
    assert mass - smallest_kept < p + 1e-5                           # minimal: one less falls short


@settings(max_examples=60, deadline=None)
@given(logits=logit_vectors, p=st.floats(0.001, 1.0))
def test_min_p_properties(logits, p):
    kept = survivors(logits, P.min_p(logits, p))
    probs = probabilities(logits)
    assert np.all(probs[kept] >= p * probs.max() * (1 - 1e-5))
    assert np.all(probs[~kept] < p * probs.max() * (1 + 1e-5))


@settings(max_examples=40, deadline=None)
@given(logits=logit_vectors, t=st.sampled_from([0.5, 1.0, 1.3]), k=st.integers(0, 60),
       p=st.sampled_from([1.0, 0.9, 0.5]), m=st.sampled_from([0.0, 0.05, 0.3]))
def test_apply_warpers_equals_the_dense_chain(logits, t, k, p, m):
    params = SamplingParams(temperature=t, top_k=k, top_p=p, min_p=m)
    chained = P.min_p(P.top_p(P.top_k(P.temperature(logits, t), k), p), m)
    np.testing.assert_array_equal(P.apply_warpers(logits, params), chained)


@settings(max_examples=60, deadline=None)
@given(logits=logit_vectors, k=st.integers(0, 30))
def test_top_indices_equals_a_stable_sort(logits, k):
    expected = np.argsort(-logits.astype(np.float64), kind="stable")[:k]
    np.testing.assert_array_equal(P.top_indices(logits, k), expected)


@pytest.mark.parametrize("fields", [{"temperature": 1e-40}, {"temperature": 1e-6}, {"repetition_penalty": 5e-324},
                                    {"repetition_penalty": 1e-40, "temperature": 0.5}])
def test_tiny_positive_temperatures_and_penalties_never_overflow(fields):
    """Valid values (temperature > 0, penalty > 0) so small that dividing by them overflows float32 to inf
    (then inf - inf: NaN, and sampling failed with a 500) act as the smallest factor that does not."""
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal(50) * 10).astype(np.float32)
    history = H.TokenHistory.start(np.array([3, 7, 11]), 50)
    out = P.apply_processors(logits, SamplingParams(**fields), history)
    assert not np.isnan(out).any() and np.isposinf(out).sum() == 0
    token = sample(out, np.random.default_rng(1))
    assert 0 <= token < 50
