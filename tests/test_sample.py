"""Seeded sampling and raw-logit logprobs."""
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from refengine.sample import _inverse_cdf, choice_rngs, sample, token_logprobs

NEG_INF = np.float32(-np.inf)


def draws(logits, seed, count, stream=0, n=1):
    rng = choice_rngs(seed, n)[stream]
    return [sample(logits, rng) for _ in range(count)]


def test_same_seed_same_tokens():
    logits = np.random.default_rng(1).standard_normal(3000).astype(np.float32)
    assert draws(logits, 1234, 50) == draws(logits, 1234, 50)
    assert draws(logits, 1234, 50) != draws(logits, 1235, 50)


def test_choice_streams_are_independent_and_do_not_depend_on_n():
    logits = np.zeros(1000, dtype=np.float32)                  # uniform: the stream decides
    streams = [draws(logits, 7, 40, stream=i, n=3) for i in range(3)]
    assert len({tuple(s) for s in streams}) == 3
    assert draws(logits, 7, 40, stream=1, n=3) == draws(logits, 7, 40, stream=1, n=8)
    assert draws(logits, 7, 40, stream=0, n=3) == draws(logits, 7, 40, stream=0, n=1)


def test_each_sample_consumes_one_draw_even_when_greedy():
    greedy = np.full(10, NEG_INF)
    greedy[4] = 0.0
    uniform = np.zeros(10, dtype=np.float32)
    rng = choice_rngs(3, 1)[0]
    mixed = [sample(greedy, rng), sample(uniform, rng), sample(greedy, rng), sample(uniform, rng)]
    plain = draws(uniform, 3, 4)
    assert mixed[0] == mixed[2] == 4
    assert [mixed[1], mixed[3]] == [plain[1], plain[3]]


def test_unseeded_generators_work():
    assert 0 <= sample(np.zeros(5, np.float32), choice_rngs(None, 2)[1]) < 5


def test_single_finite_logit_is_chosen():
    logits = np.full(49152, NEG_INF)
    logits[31337] = -3.0
    assert draws(logits, 0, 5) == [31337] * 5


def test_all_masked_raises():
    with pytest.raises(ValueError):
        sample(np.full(8, NEG_INF), choice_rngs(0, 1)[0])


@pytest.mark.parametrize("size", [4, 5000])                   # one-level and two-level inverse CDF
def test_frequencies_follow_the_softmax(size):
    probabilities = np.array([0.5, 0.25, 0.15, 0.1])
    heavy = np.array([0, 1, 2, size - 1])                       # spread over blocks when large
    logits = np.full(size, NEG_INF, dtype=np.float32)
    logits[heavy] = np.log(probabilities).astype(np.float32)
    count = 20000
    tokens = np.array(draws(logits, 42, count))
    assert set(np.unique(tokens)) <= set(heavy.tolist())
    observed = np.array([np.count_nonzero(tokens == t) for t in heavy]) / count
    sigma = np.sqrt(probabilities * (1 - probabilities) / count)
    assert np.all(np.abs(observed - probabilities) < 5 * sigma)


def test_frequencies_over_a_dense_vocabulary():
    size = 49152
    logits = np.zeros(size, dtype=np.float32)
    logits[size - 1] = np.float32(np.log(size))                # half the mass on the last token
    tokens = np.array(draws(logits, 5, 4000))
    share = np.count_nonzero(tokens == size - 1) / tokens.size
    assert abs(share - 0.5) < 5 * np.sqrt(0.25 / tokens.size)
    assert len(np.unique(tokens)) > 1000                       # the rest spreads out


@settings(max_examples=200, deadline=None)
@given(weights=st.lists(st.sampled_from([0.0, 0.0, 1e-30, 0.5, 1.0, 3.0]), min_size=1, max_size=3000),
       u=st.sampled_from([0.0, 1e-12, 0.3, 0.5, 0.999999, 1 - 2**-53]))
@example(weights=[1.0] * 1500 + [0.0] * 1500, u=1 - 2**-53)      # last blocks empty, target at the end
@example(weights=[0.0] * 2047 + [1e-30], u=1 - 2**-53)
def test_inverse_cdf_never_picks_a_zero_weight(weights, u):
    weights = np.asarray(weights, dtype=np.float32)
    if not np.any(weights > 0):
        weights[-1] = 1.0
    index = _inverse_cdf(weights, u)
    assert 0 <= index < weights.size and weights[index] > 0
    cumulative = np.cumsum(weights.astype(np.float64))
    target = u * cumulative[-1]
    # the chosen token's slice of [0, total) holds the target (up to float32 rounding)
    slack = 1e-5 * cumulative[-1]
    assert cumulative[index] - weights[index] - slack <= target <= cumulative[index] + slack


def reference_logprobs(logits):
    x = logits.astype(np.float64)
    return x - (x.max() + np.log(np.exp(x - x.max()).sum()))


@pytest.mark.parametrize("offset", [0.0, 1e4, -1e4])
def test_token_logprobs_match_a_float64_reference(offset):
    rng = np.random.default_rng(9)
    logits = (rng.standard_normal(49152) * 4 + offset).astype(np.float32)
    reference = reference_logprobs(logits)
    chosen, top = token_logprobs(logits, 123, 20)
    assert chosen == pytest.approx(reference[123], abs=2e-3)
    expected_ids = np.argsort(-reference, kind="stable")[:20]
    assert [i for i, _ in top] == expected_ids.tolist()
    np.testing.assert_allclose([lp for _, lp in top], reference[expected_ids], atol=2e-3)
    assert all(a[1] >= b[1] for a, b in zip(top, top[1:]))


def test_token_logprobs_small_case_by_hand():
    logits = np.log(np.array([0.5, 0.25, 0.25], dtype=np.float32))
    chosen, top = token_logprobs(logits, 2, 2)
    assert chosen == pytest.approx(np.log(0.25), abs=1e-6)
    assert [i for i, _ in top] == [0, 1]                       # tie between 1 and 2: lower id
    assert [lp for _, lp in top] == pytest.approx([np.log(0.5), np.log(0.25)], abs=1e-6)
    assert token_logprobs(logits, 0, 0) == (pytest.approx(np.log(0.5), abs=1e-6), [])


def test_token_logprobs_top_n_bounds():
    logits = np.zeros(5, dtype=np.float32)
    assert len(token_logprobs(logits, 0, 5)[1]) == 5
    assert len(token_logprobs(logits, 0, 20)[1]) == 5
    with pytest.raises(ValueError):
        token_logprobs(logits, 0, 21)
