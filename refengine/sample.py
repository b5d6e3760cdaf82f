"""Choose a token from processed logits, and report logprobs of the raw ones.

    rngs = choice_rngs(seed, n)                        # one independent stream per choice
    token = sample(processed_logits, rngs[i])          # processed: from processors.apply_processors
    chosen, top = token_logprobs(raw_logits, token, top_n)

Reproducibility: choice i's stream depends only on (seed, i) — SeedSequence(seed).spawn gives child
i the same entropy whatever n is — and every `sample` call consumes exactly one uniform draw, so the
same seed and the same logits give the same tokens, whatever else runs in the process.
"""
from __future__ import annotations

import numpy as np

from refengine.processors import NEG_INF, top_indices

MAX_TOP_LOGPROBS = 20
_CDF_BLOCK = 1024          # two-level inverse CDF: a full-vocabulary cumsum is slow in numpy


def choice_rngs(seed: int | None, n: int) -> list[np.random.Generator]:
    """n independent generators derived from one seed (None: fresh OS entropy)."""
    children = np.random.SeedSequence(seed).spawn(n)
    return [np.random.Generator(np.random.PCG64(child)) for child in children]


def sample(logits: np.ndarray, rng: np.random.Generator) -> int:
    """Draw a token id with probability softmax(logits); -inf tokens are never drawn.

    logits: [V] processed logits. When exactly one is finite (temperature 0: greedy) that one is
    returned. Raises ValueError when none is finite.
    """
    return sample_with_draw(logits, rng)[0]


def sample_with_draw(logits: np.ndarray, rng: np.random.Generator) -> tuple[int, float]:
    """`sample`, also saying the uniform draw in [0, 1) that chose the token (a trace shows it)."""
    u = rng.random()                                             # exactly one draw per call
    live = np.flatnonzero(logits > NEG_INF)                      # [N]
    if live.shape[0] == 0:
        raise ValueError("no token can be sampled: every logit is -inf")
    if live.shape[0] == 1:
        return int(live[0]), u
    values = logits if live.shape[0] == logits.shape[0] else logits[live]   # [N]
    weights = np.exp(values - values.max())                      # [N] float32, the max maps to 1
    return int(live[_inverse_cdf(weights, u)]), u


def _inverse_cdf(weights: np.ndarray, u: float) -> int:
    """The index i with cumsum(weights)[i-1] <= u * total < cumsum(weights)[i]; weights[i] > 0.

    Blocks of _CDF_BLOCK: a cumsum over the block sums finds the block, one within it the index.
    """
    size = weights.shape[0]
    if size <= _CDF_BLOCK:
        offset, block = 0, weights
        target = np.float32(u) * np.sum(weights, dtype=np.float32)
    else:
        block_sums = np.add.reduceat(weights, np.arange(0, size, _CDF_BLOCK))   # [B]
        block_cumulative = np.cumsum(block_sums)                                # [B]
        target = np.float32(u) * block_cumulative[-1]
        chosen = int(np.searchsorted(block_cumulative, target, side="right"))
        if chosen == block_sums.shape[0]:                        # rounding: past the end
            chosen = int(np.flatnonzero(block_sums > 0)[-1])
            target = block_cumulative[-1]
        if chosen > 0:
            target -= block_cumulative[chosen - 1]
        offset = chosen * _CDF_BLOCK
        block = weights[offset:offset + _CDF_BLOCK]
    cumulative = np.cumsum(block)                                # [<= _CDF_BLOCK]
    index = int(np.searchsorted(cumulative, target, side="right"))
    if index >= block.shape[0] or block[index] <= 0:
        # rounding pushed the target past the end (or onto an empty stretch): take the last
        # positive weight at or before it
        index = int(np.flatnonzero(block[:index + 1] > 0)[-1])
    return offset + index


def token_logprobs(raw_logits: np.ndarray, token_id: int,
                   top_n: int = 0) -> tuple[float, list[tuple[int, float]]]:
    """log-softmax of the RAW model logits (OpenAI / vLLM semantics, not the processed ones).

    Returns (the chosen token's logprob, the top_n (id, logprob) pairs by descending logprob;
    ties: lower id first). top_n is 0..20. float32, stable (max subtracted before exp).
    """
    if not 0 <= top_n <= MAX_TOP_LOGPROBS:
        raise ValueError(f"top_n must be in 0..{MAX_TOP_LOGPROBS}, got {top_n}")
    peak = raw_logits.max()
    log_total = peak + np.log(np.sum(np.exp(raw_logits - peak), dtype=np.float32))  # [V] -> []
    chosen = float(raw_logits[token_id] - log_total)
    top = top_indices(raw_logits, top_n)                         # [top_n]
    pairs = [(int(i), float(v)) for i, v in zip(top, raw_logits[top] - log_total)]
    return chosen, pairs
