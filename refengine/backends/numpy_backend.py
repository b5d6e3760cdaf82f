"""The numpy backend: every operation of the forward pass in plain array code, the reference.

Every other backend is tested against this one (same inputs, logits within float32 error), and
`--backend numpy` runs the whole pipeline in it, for teaching and audit. Each function is written for an
array module `xp` (numpy; cupy runs the same code on a GPU where its backend has no kernel of its own).

Notation: N new tokens in the batch, D hidden size, H query heads, Hkv key/value heads, G = H / Hkv,
hd head size, F MLP size, T one sequence's new tokens, S its cached + new positions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import ModelConfig
from ..kvcache import KVCache


def rms_norm(x, weight, eps: float, xp=np):
    mean_square = (x * x).sum(axis=-1, keepdims=True) * np.float32(1 / x.shape[-1])   # [N, D] -> [N, 1]
    return x * (np.float32(1) / xp.sqrt(mean_square + np.float32(eps))) * weight      # [N, D]


def silu(x, xp=np):
    return x * (np.float32(0.5) * (np.float32(1) + xp.tanh(np.float32(0.5) * x)))  # x·sigmoid(x), no overflow


def swiglu(gate_up, xp=np):
    """The MLP's gated activation: silu(gate) · up, from the side-by-side product [N, 2F] -> [N, F]."""
    F = gate_up.shape[1] // 2
    return silu(gate_up[:, :F], xp) * gate_up[:, F:]


def apply_rope(x, cos, sin, xp=np):
    """Rotate each head's halves (HF's rotate-half layout): [N, heads, hd] with cos/sin [N, 1, hd/2]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]                            # [N, heads, hd/2] each
    return xp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)  # [N, heads, hd]


def attention_mask(positions, length: int, config: ModelConfig, xp=np):
    """Additive mask [T, S] for new tokens at `positions` over `length` keys: 0 visible, -inf hidden."""
    key_positions = xp.arange(length)
    hidden = key_positions[None, :] > positions[:, None]            # [T, S] causal: no future keys
    if config.sliding_window is not None:
        hidden |= key_positions[None, :] <= positions[:, None] - config.sliding_window
    return xp.where(hidden, np.float32(-np.inf), np.float32(0))


def attention(q, keys_t, values, mask, xp=np):
    """One sequence's attention. q [T, H, hd]; keys_t [Hkv, hd, S]; values [Hkv, S, hd]; mask [T, S]|None."""
    T, H, hd = q.shape
    Hkv, _, S = keys_t.shape
    G = H // Hkv
    q = q.reshape(T, Hkv, G, hd).transpose(1, 2, 0, 3).reshape(Hkv, G * T, hd)   # [Hkv, G T, hd]
    scores = (q @ keys_t).reshape(Hkv, G, T, S)                      # [Hkv, G, T, S]
    if mask is not None:
        scores += mask                                               # [T, S] broadcast over heads
    scores -= scores.max(axis=-1, keepdims=True)
    weights = xp.exp(scores, out=scores)
    weights /= weights.sum(axis=-1, keepdims=True)                   # softmax over keys
    out = weights.reshape(Hkv, G * T, S) @ values                    # [Hkv, G T, hd]
    return out.reshape(Hkv, G, T, hd).transpose(2, 0, 1, 3).reshape(T, H * hd)   # [T, H hd]


def decode_attention(q, segments: list, xp=np):
    """Attention for B sequences with one new token each, over caches of different lengths S_i.

    q [B, H, hd]; segments[i] is sequence i's keys and values in order as one or two (keys_t [Hkv, hd, S_ij],
    values [Hkv, S_ij, hd]) pairs (two: a prompt shared by n choices, then the choice's own tokens). The
    scores of all sequences lie side by side in one [Hkv, G, ΣS] buffer, each segment's matmul writing its
    span, so the softmax is a few whole-batch operations (reductions over each sequence's span) rather than a
    few per sequence; only the products stay per segment.
    """
    B, H, hd = q.shape
    Hkv = segments[0][0][0].shape[0]
    G = H // Hkv
    lengths = np.array([sum(k.shape[-1] for k, _ in s) for s in segments])    # [B] S_i
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])          # [B] start of each sequence's span
    pieces = []                              # (sequence, span in the buffer, keys_t, values, first of its own)
    for i, (offset, sequence) in enumerate(zip(offsets.tolist(), segments)):
        for j, (keys_t, values) in enumerate(sequence):
            pieces.append((i, slice(offset, offset + keys_t.shape[-1]), keys_t, values, j == 0))
            offset += keys_t.shape[-1]
    q = q.reshape(B, Hkv, G, hd)                                     # [B, Hkv, G, hd]
    scores = xp.empty((Hkv, G, int(lengths.sum())), dtype=q.dtype)   # [Hkv, G, ΣS]
    for i, span, keys_t, _, _ in pieces:
        xp.matmul(q[i], keys_t, out=scores[:, :, span])              # [Hkv, G, hd] @ [Hkv, hd, S_ij]
    scores -= xp.repeat(xp.maximum.reduceat(scores, offsets, axis=-1), lengths, axis=-1)
    weights = xp.exp(scores, out=scores)
    weights *= xp.repeat(np.float32(1) / xp.add.reduceat(weights, offsets, axis=-1), lengths, axis=-1)
    out = xp.empty((B, Hkv, G, hd), dtype=q.dtype)                   # [B, Hkv, G, hd]
    for i, span, _, values, first in pieces:
        if first:
            xp.matmul(weights[:, :, span], values, out=out[i])       # [Hkv, G, S_ij] @ [Hkv, S_ij, hd]
        else:
            out[i] += weights[:, :, span] @ values                   # the next segment's share, added
    return out.reshape(B, H * hd)                                    # [B, H hd]


def last_positions(segments: list, count: int) -> list:
    """The last `count` positions of one sequence's segments (a sliding window): views, no copy."""
    kept = []
    for keys_t, values in reversed(segments):                       # [Hkv, hd, S_j], [Hkv, S_j, hd]
        if count <= 0:
            break
        kept.insert(0, (keys_t[..., -count:], values[:, -count:]))
        count -= keys_t.shape[-1]
    return kept


def joined(segments: list, xp=np) -> tuple:
    """One sequence's segments as one keys_t [Hkv, hd, S] and values [Hkv, S, hd] (a copy when two)."""
    if len(segments) == 1:
        return segments[0]
    return (xp.concatenate([k for k, _ in segments], axis=-1),     # [Hkv, hd, S]
            xp.concatenate([v for _, v in segments], axis=1))      # [Hkv, S, hd]


@dataclass
class Step:
    """One forward pass's batch, as every layer sees it: sequence i's new rows are `spans[i]` of the N rows,
    at `positions` (host int64 [N]) of its cache, which already has room for them (`reserve`d)."""
    config: ModelConfig
    caches: list[KVCache]
    lengths: list[int]                       # new tokens of each sequence
    ids: np.ndarray                          # [N] the new tokens, host int64
    spans: list[slice]                       # each sequence's rows among the N
    positions: np.ndarray                    # [N]
    cos: object                              # [N, 1, hd/2]
    sin: object
    decode_only: bool                        # several sequences, one new token each

    @property
    def ends(self) -> list[int]:
        """Each sequence's cache length once this step's rows are stored."""
        return [cache.length + n for cache, n in zip(self.caches, self.lengths)]


class NumpyBackend:
    """The operations the forward pass calls, in plain array code. Weights arrive as `load_model_weights`
    lays them out (matrices [in, out] contiguous); `prepare` is where another backend re-lays or quantizes."""
    name = "numpy"

    def __init__(self, xp=np):
        self.xp = xp

    def prepare(self, weights):
        return weights

    def forward(self, config: ModelConfig, weights, tokens: list, caches: list[KVCache], all_logits):
        """One forward pass (`refengine.forward.forward`) computed by this backend; a backend may run some
        steps otherwise (the GPU replays a decode step as a CUDA graph)."""
        from ..forward import forward
        return forward(config, weights, tokens, caches, all_logits=all_logits, backend=self)

    def start_step(self, config: ModelConfig, rope_cos, rope_sin, caches: list[KVCache], lengths: list[int],
                   ids: np.ndarray) -> Step:
        positions = np.concatenate([np.arange(c.length, c.length + n) for c, n in zip(caches, lengths)])  # [N]
        starts = np.cumsum([0] + lengths)
        on_device = self.xp.asarray(positions)
        return Step(config=config, caches=caches, lengths=lengths, ids=ids,
                    spans=[slice(int(starts[i]), int(starts[i + 1])) for i in range(len(caches))],
                    positions=positions, cos=rope_cos[on_device][:, None, :], sin=rope_sin[on_device][:, None, :],
                    decode_only=len(caches) > 1 and max(lengths) == 1)

    def run_layers(self, weights, x, step: Step):
        """forward.layers' loop over the layers, run by the backend in one call where it can (the numba
        backend's decode steps: numba_decode), from the embedded new tokens x [N, D]; None: it cannot."""
        return None

    def embed(self, table, step: Step):
        return table[self.xp.asarray(step.ids)]                       # [V, D] -> [N, D]

    def rms_norm(self, x, weight, eps: float):
        return rms_norm(x, weight, eps, self.xp)

    def matmul(self, x, w):
        return x @ w                                                 # [N, in] @ [in, out] -> [N, out]

    def swiglu(self, gate_up):
        return swiglu(gate_up, self.xp)

    def rope_and_store(self, qkv, step: Step, layer: int):
        """Rotate the queries and keys of qkv [N, (H + 2 Hkv) hd]; store keys and values in the caches.
        Returns the rotated queries [N, H, hd]."""
        H, Hkv, hd = step.config.num_heads, step.config.num_kv_heads, step.config.head_dim
        qk = apply_rope(qkv[:, :(H + Hkv) * hd].reshape(-1, H + Hkv, hd), step.cos, step.sin, self.xp)
        k = qk[:, H:]                                                # [N, Hkv, hd]
        v = qkv[:, (H + Hkv) * hd:].reshape(-1, Hkv, hd)             # [N, Hkv, hd]
        for rows, cache in zip(step.spans, step.caches):
            cache.store(layer, k[rows], v[rows])
        return qk[:, :H]                                             # [N, H, hd]

    def attention(self, q, step: Step, layer: int):
        """Each sequence's new queries q [N, H, hd] over its cache (this step's keys stored) -> [N, H hd].

        A decode step of several sequences (one new token each) attends as one group, its softmax a few
        whole-group operations (numpy's reduceat), a sliding window just a slice of each cache. Otherwise
        each sequence attends on its own: a run of new tokens (a prompt chunk) under a causal mask, its
        cache's segments (a shared prompt, then its own tokens) joined into one.
        """
        xp, window = self.xp, step.config.sliding_window
        seen = [cache.read(layer, end) for cache, end in zip(step.caches, step.ends)]
        if step.decode_only and xp is np:
            if window is not None:
                seen = [last_positions(segments, window) for segments in seen]
            return decode_attention(q, seen, xp)                     # [B, H hd]
        out = []
        for rows, n, segments, end in zip(step.spans, step.lengths, seen, step.ends):
            if n == 1 and window is None and len(segments) > 1 and xp is np:   # over a shared prompt: no copy
                out.append(decode_attention(q[rows], [segments], xp))              # [1, H hd]
                continue
            mask = None if n == 1 and window is None else attention_mask(
                xp.asarray(step.positions[rows]), end, step.config, xp)            # [T, S]
            out.append(attention(q[rows], *joined(segments, xp), mask, xp))        # [T, H hd]
        return out[0] if len(out) == 1 else xp.concatenate(out, axis=0)            # [N, H hd]

    def to_host(self, x) -> np.ndarray:
        return x
