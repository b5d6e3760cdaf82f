"""Logits processors: one sequence's raw logits [V] -> the logits it samples from.

Each processor is a small pure function on a float32 numpy vector: it never mutates its input and
returns the input itself (no copy, ~no cost) when disabled. Filtering sets logits to -inf; a filter
always keeps at least one token (the best one).

    apply_processors(logits, params, history, allowed=None) -> logits    # what the generation loop calls
      = apply_warpers(mask(apply_penalties(logits, params, history), allowed), params)

Order, and why (the order HF `generate` and vLLM use):
  1. logit_bias               caller's explicit preference on the model's scale; OpenAI adds it to the
                              logits "prior to sampling" and vLLM applies it before the penalties.
  2. repetition_penalty       HF's multiplicative rule over prompt + output tokens.
  3. presence / frequency     OpenAI's additive rule over output tokens.
  4. DRY                      a repetition penalty too (koboldcpp, text-generation-webui and llama.cpp
                              run it with the penalties, before temperature and truncation).
     [allowed mask]           the constraint's mask: after the penalties, before truncation, so that
                              top-k/top-p/min-p pick among tokens that can actually be chosen.
  5. temperature              0 means greedy: only the argmax survives (steps 6-8 would keep it anyway).
  6. top_k  7. top_p  8. min_p   HF's warper order (temperature -> top-k -> top-p -> min-p); top-p's mass
                              is measured among top-k's survivors, as in HF and vLLM.
Steps 1-4 change which token is best, so greedy decoding sees them; 5-8 only reshape or truncate.

Per-sequence state lives in `TokenHistory` (history.py: prompt + output tokens, output counts, DRY's
suffix match lengths), updated incrementally with `history.append(token)` after each sampled token.

DRY (Don't Repeat Yourself, koboldcpp PR 982, ported to llama.cpp as `llama_sampler_dry_apply`):
a token that would extend a suffix of the context that already occurred earlier is penalised by
    multiplier * base ** (match_length - allowed_length)     when match_length >= allowed_length,
where match_length is the length of the repeated suffix (the earlier occurrence is followed by that
token). Matching stops at the most recent sequence breaker: the repeated suffix may not reach back
past it. A token that is on its own a sequence breaker is never penalised. The whole context
(prompt + output) is searched, like llama.cpp with dry_penalty_last_n = -1.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

from refengine.history import DryBreakers, TokenHistory
from refengine.request import SamplingParams

NEG_INF = np.float32(-np.inf)
# The smallest temperature or repetition penalty that divides logits: below it a logit of ~30 would overflow
# float32, and the distribution is one-hot already (a gap of 1e-3 between two logits is a factor e^100).
SMALLEST_FACTOR = 1e-5
_FLOAT32_MAX_LOG = 88.7228391     # log(float32 max): caps DRY's exponent so the penalty stays finite


# ----------------------------------------------------------------------------------------------
# Penalties: change which token is best


def logit_bias(logits: np.ndarray, bias: Mapping[int, float]) -> np.ndarray:
    """Add bias[token] to each listed token's logit (OpenAI: -100..100)."""
    if not bias:
        return logits
    ids = np.fromiter(bias.keys(), dtype=np.int64, count=len(bias))       # [B]
    values = np.fromiter(bias.values(), dtype=np.float32, count=len(bias))
    out = logits.copy()
    out[ids] += values
    return out


def repetition_penalty(logits: np.ndarray, penalty: float, seen_ids: np.ndarray) -> np.ndarray:
    """HF's rule for each distinct token seen (prompt + output): logit<0 ? logit*p : logit/p. A penalty
    below SMALLEST_FACTOR acts as SMALLEST_FACTOR (smaller ones overflow float32 to inf)."""
    if penalty == 1.0 or seen_ids.shape[0] == 0:
        return logits
    p = np.float32(max(penalty, SMALLEST_FACTOR))
    picked = logits[seen_ids]                                    # [N]
    out = logits.copy()
    out[seen_ids] = np.where(picked < 0, picked * p, picked / p)
    return out


def presence_frequency_penalty(logits: np.ndarray, presence: float, frequency: float,
                               output_ids: np.ndarray, output_counts: np.ndarray) -> np.ndarray:
    """OpenAI's rule over generated tokens: logit -= count * frequency + (count > 0) * presence."""
    if (presence == 0.0 and frequency == 0.0) or output_ids.shape[0] == 0:
        return logits
    penalty = output_counts.astype(np.float32) * np.float32(frequency) + np.float32(presence)   # [N]
    out = logits.copy()
    out[output_ids] -= penalty
    return out


def dry_penalty(logits: np.ndarray, context: np.ndarray, suffix_matches: np.ndarray,
                breakers: DryBreakers, multiplier: float, base: float,
                allowed_length: int) -> np.ndarray:
    """DRY: penalise tokens that would extend a repeat of the context's suffix (module docstring).

    context: [L] prompt + output tokens; suffix_matches: [L] from `suffix_match_lengths`.
    """
    length = context.shape[0]
    if multiplier == 0.0 or base < 1.0 or length <= allowed_length:
        return logits
    repeat_limit = _tokens_after_last_breaker(context, breakers)
    if repeat_limit < allowed_length:
        return logits
    # Each earlier position whose tokens repeat the current suffix: the token after it would extend it.
    ends = np.flatnonzero(suffix_matches[:length - 1] >= allowed_length)      # [M]
    if ends.shape[0] == 0:
        return logits
    repeat_lengths = np.minimum(suffix_matches[ends], repeat_limit)           # [M]
    next_tokens = context[ends + 1]                                           # [M]
    keep = ~breakers.is_breaker[next_tokens]                                   # breakers go free
    next_tokens, repeat_lengths = next_tokens[keep], repeat_lengths[keep]
    if next_tokens.shape[0] == 0:
        return logits
    # The longest repeat each token would extend decides its penalty.
    order = np.lexsort((repeat_lengths, next_tokens))                         # by token, then length
    next_tokens, repeat_lengths = next_tokens[order], repeat_lengths[order]
    last_of_token = np.append(next_tokens[1:] != next_tokens[:-1], True)
    next_tokens, repeat_lengths = next_tokens[last_of_token], repeat_lengths[last_of_token]
    exponents = repeat_lengths - allowed_length                               # [U]
    if base > 1.000001:
        exponents = np.minimum(exponents, int(_FLOAT32_MAX_LOG / math.log(base)))
    penalty = np.float32(multiplier) * np.power(np.float32(base), exponents.astype(np.float32))
    out = logits.copy()
    out[next_tokens] -= penalty.astype(np.float32)
    return out


def _tokens_after_last_breaker(context: np.ndarray, breakers: DryBreakers) -> int:
    """How many tokens follow the most recent complete breaker (the whole length if none).

    Scans back from the end in growing windows: breakers are usually a few tokens away.
    """
    length = context.shape[0]
    window_end, window = length, 64
    while window_end > 0:
        window_start = max(0, window_end - window)
        heads = np.flatnonzero(breakers.is_head[context[window_start:window_end]]) + window_start
        for head in heads[::-1].tolist():                          # most recent first
            after = length - 1 - head                              # tokens after the head
            longest_tail = -1
            for tail in breakers.tails[int(context[head])]:
                if longest_tail < len(tail) <= after and tuple(
                        context[head + 1:head + 1 + len(tail)].tolist()) == tail:
                    longest_tail = len(tail)
            if longest_tail >= 0:
                return after - longest_tail
        window_end, window = window_start, window * 4
    return length


Record = Callable[[str, np.ndarray], None]    # a trace's ear: (stage name, [V] logits after that stage)


def apply_penalties(logits: np.ndarray, params: SamplingParams, history: TokenHistory,
                    record: Record | None = None) -> np.ndarray:
    """Steps 1-4: logit_bias, repetition, presence/frequency, DRY. [V] -> [V], input untouched.
    `record` (a trace) hears each step that is on, with its output."""
    if params.logit_bias:
        logits = logit_bias(logits, params.logit_bias)
        if record:
            record("logit_bias", logits)
    if params.repetition_penalty != 1.0:
        logits = repetition_penalty(logits, params.repetition_penalty, history.seen_token_ids())
        if record:
            record("repetition_penalty", logits)
    if params.presence_penalty != 0.0 or params.frequency_penalty != 0.0:
        output_ids, output_counts = history.output_token_counts()
        logits = presence_frequency_penalty(logits, params.presence_penalty,
                                            params.frequency_penalty, output_ids, output_counts)
        if record:
            record("presence_frequency_penalty", logits)
    if params.dry_multiplier != 0.0:
        if history.suffix_matches is None or history.dry_breakers is None:
            raise ValueError("DRY is on but the TokenHistory was started without dry_breakers")
        logits = dry_penalty(logits, history.tokens(), history.suffix_matches[:history.length],
                             history.dry_breakers, params.dry_multiplier, params.dry_base,
                             params.dry_allowed_length)
        if record:
            record("dry", logits)
    return logits


# ----------------------------------------------------------------------------------------------
# Warpers: reshape and truncate the distribution
#
# Each filter has a dense form (top_k, top_p, min_p: [V] -> [V]) and a form that picks survivors out
# of a vector of values (_top_k_indices, ...: [N] -> indices into it). apply_warpers chains the
# latter, so after top-k the later filters work on k values instead of the whole vocabulary.


def temperature(logits: np.ndarray, value: float) -> np.ndarray:
    """Divide by the temperature; 0 (and anything below SMALLEST_FACTOR, as vLLM does) means greedy: only
    the (first) argmax keeps a finite logit."""
    if value == 1.0:
        return logits
    if value < SMALLEST_FACTOR:
        return greedy(logits)
    return logits / np.float32(value)


def greedy(logits: np.ndarray) -> np.ndarray:
    """Keep only the first argmax."""
    best = int(np.argmax(logits))
    return _only(logits, np.array([best]))


def top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest logits, and any tied with the k-th (as HF does); k <= 0 disables."""
    if k <= 0 or k >= logits.shape[0]:
        return logits
    return _only(logits, _top_k_indices(logits, k))


def top_p(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the fewest most likely tokens whose probability mass reaches p (always at least one).

    The same set as HF / vLLM, which drop the tokens whose ascending cumulative mass is <= 1 - p.
    """
    if p >= 1.0:
        return logits
    return _only(logits, _top_p_indices(logits, p))


def min_p(logits: np.ndarray, p: float) -> np.ndarray:
    """Drop tokens whose probability is below p times the top token's; p <= 0 disables."""
    if p <= 0.0:
        return logits
    return _only(logits, _min_p_indices(logits, p))


def apply_warpers(logits: np.ndarray, params: SamplingParams, record: Record | None = None) -> np.ndarray:
    """Steps 5-8: temperature (0 = greedy), top_k, top_p, min_p. [V] -> [V], input untouched."""
    if params.temperature == 0.0:
        logits = greedy(logits)                                  # 6-8 always keep the argmax
        if record:
            record("greedy", logits)
        return logits
    scaled = temperature(logits, params.temperature)             # [V]
    if params.temperature != 1.0 and record:
        record("temperature", scaled)
    survivors = None                                             # None: every token
    filters = (("top_k", _top_k_indices, params.top_k, 0 < params.top_k < logits.shape[0]),
               ("top_p", _top_p_indices, params.top_p, params.top_p < 1.0),
               ("min_p", _min_p_indices, params.min_p, params.min_p > 0.0))
    for name, pick, setting, enabled in filters:
        if enabled:
            values = scaled if survivors is None else scaled[survivors]     # [N]
            picked = pick(values, setting)                                  # [N] -> [M]
            survivors = picked if survivors is None else survivors[picked]
            if record:
                record(name, _only(scaled, survivors))
    return scaled if survivors is None else _only(scaled, survivors)


def apply_processors(logits: np.ndarray, params: SamplingParams, history: TokenHistory,
                     allowed: np.ndarray | None = None, record: Record | None = None) -> np.ndarray:
    """All processors in order; `allowed` is an optional [V] bool mask (True = may be sampled).

    logits: [V] raw model logits (float32, not modified). Returns [V] float32 with -inf for every
    token that may not be sampled; with temperature 0 exactly one token is finite. `record` (a trace)
    hears the logits after each stage that is on, the mask included.
    """
    logits = apply_penalties(logits, params, history, record)
    if allowed is not None:
        logits = np.where(allowed, logits, NEG_INF)
        if record:
            record("mask", logits)
    return apply_warpers(logits, params, record)


def _only(logits: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """[V] copy of `logits` with everything but `keep` set to -inf."""
    out = np.full_like(logits, NEG_INF)
    out[keep] = logits[keep]
    return out


def _top_k_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values plus any tied with the k-th. [N] -> [>= min(k, N)]."""
    if k >= values.shape[0]:
        return np.arange(values.shape[0])
    candidates = _superset_of_top(values, k)                     # [C], C >= k
    picked = values[candidates]
    kth = np.partition(picked, picked.shape[0] - k)[picked.shape[0] - k]
    return candidates[picked >= kth]


def _min_p_indices(values: np.ndarray, p: float) -> np.ndarray:
    """prob_i >= p * prob_max  <=>  value_i >= value_max + log(p): no softmax needed."""
    return np.flatnonzero(values >= values.max() + np.float32(math.log(p)))


def _top_p_indices(values: np.ndarray, p: float) -> np.ndarray:
    """Indices of the fewest largest values whose softmax mass reaches p. [N] -> [M >= 1].

    No sort of the vocabulary: usually the 64 largest already hold the mass; otherwise a histogram
    of the weights by logit finds the bucket where the mass is reached, and only that bucket is
    sorted. -inf entries weigh 0 and are never needed, so they are set aside first.
    """
    if values.min() == NEG_INF:
        live = np.flatnonzero(values > NEG_INF)                  # [L]
        if live.shape[0] == 0:
            return np.arange(values.shape[0])                    # nothing to choose from anyway
        return live[_top_p_indices(values[live], p)]
    peak = values.max()
    weights = np.exp(values - peak)                              # [N] float32, the top weighs 1
    target = np.float32(p) * np.sum(weights, dtype=np.float32)
    top = top_indices(values, 64)                                # [K] descending
    cumulative = np.cumsum(weights[top])                         # [K]
    if cumulative[-1] >= target or top.shape[0] == values.shape[0]:
        cut = min(int(np.searchsorted(cumulative, target, side="left")), top.shape[0] - 1)
        return top[:cut + 1]
    return _top_p_indices_by_histogram(values, weights, peak, p)


def _top_p_indices_by_histogram(values: np.ndarray, weights: np.ndarray, peak: np.float32,
                                p: float, n_buckets: int = 1024, span: float = 64.0) -> np.ndarray:
    """_top_p_indices for flat distributions: O(N) passes plus a sort of one bucket.

    Buckets split [peak - span, peak] evenly by logit (bucket 0 holds the largest); anything lower
    (weight < e^-64) shares the last bucket. Bucketing is monotonic, so every bucket before the one
    where the cumulative mass reaches p is kept whole.
    """
    span = min(float(peak - values.min()), span)                 # -inf values make it `span`
    scale = np.float32(n_buckets / span) if span > 0 else np.float32(0.0)
    bucket = np.minimum((peak - values) * scale, np.float32(n_buckets - 1)).astype(np.int32)   # [N]
    mass = np.bincount(bucket, weights=weights, minlength=n_buckets)        # [n_buckets] float64
    cumulative = np.cumsum(mass)
    target = p * cumulative[-1]
    boundary = min(int(np.searchsorted(cumulative, target, side="left")), n_buckets - 1)
    candidates = np.flatnonzero(bucket <= boundary)              # [C]
    inside = candidates[bucket[candidates] == boundary]
    inside = inside[np.lexsort((inside, -values[inside]))]       # descending value, then ascending id
    before = cumulative[boundary - 1] if boundary > 0 else 0.0
    inside_cumulative = before + np.cumsum(weights[inside], dtype=np.float64)
    cut = min(int(np.searchsorted(inside_cumulative, target, side="left")), inside.shape[0] - 1)
    return np.concatenate([candidates[bucket[candidates] < boundary], inside[:cut + 1]])


# ----------------------------------------------------------------------------------------------
# Shared: the k largest entries without sorting everything


def top_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first (ties: lower index first). [N] -> [min(k, N)]."""
    size = values.shape[0]
    k = min(k, size)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    candidates = _superset_of_top(values, k) if k < size else np.arange(size)   # [C], C >= k
    picked = values[candidates]                                  # [C]
    if candidates.shape[0] > k:
        # keep every tie of the k-th value (the superset holds them all), then the lowest ids win
        kth = np.partition(picked, picked.shape[0] - k)[picked.shape[0] - k]
        at_least_kth = picked >= kth
        candidates, picked = candidates[at_least_kth], picked[at_least_kth]
    order = np.lexsort((candidates, -picked))                    # descending value, then ascending id
    return candidates[order[:k]]


def _superset_of_top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of a (usually small) superset of the k largest values, in index order.

    The k-th largest of the block maxima is a lower bound on the k-th largest value (k blocks hold
    an element at least that large), so every top-k element passes the threshold.
    """
    size = values.shape[0]
    n_blocks = 4 * k
    if size < 8 * n_blocks:                                      # blocks too small to help
        return np.arange(size)
    block = -(-size // n_blocks)
    block_max = np.maximum.reduceat(values, np.arange(0, size, block))      # [B]
    threshold = np.partition(block_max, block_max.shape[0] - k)[block_max.shape[0] - k]
    if threshold == NEG_INF:                                     # mostly -inf: keep the finite ones
        finite = np.flatnonzero(values > NEG_INF)
        return finite if finite.shape[0] >= k else np.arange(size)
    return np.flatnonzero(values >= threshold)
