"""The llama-family transformer forward pass: token ids + KV caches → next-token logits.

One function, `forward`, runs a batch of sequences through the model in one go: the rows of all sequences
are stacked for every matrix product ([N, D] with N = all new tokens), and each sequence attends over its
own KV cache. The same call serves a prefill (one sequence, many tokens), a batched decode step (many
sequences, one token each), or a mix. `xp` is the array module: numpy, or cupy on a GPU.

Notation: N new tokens in the batch, D hidden size, H query heads, Hkv key/value heads, G = H / Hkv,
hd head size, F MLP size, V vocabulary, T one sequence's new tokens, S its cached + new positions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import ModelConfig, ModelLoadError, RopeScaling
from .kvcache import KVCache


# Matrices are stored [in, out], contiguous, so that `x @ w` maps [N, in] -> [N, out]: numpy multiplies a
# contiguous right operand several times faster than a transposed view of HF's [out, in] layout.
@dataclass(frozen=True)
class LayerWeights:
    attn_norm: object                        # [D]
    qkv: object                              # [D, (H + 2 Hkv) hd]  q, k, v projections side by side
    qkv_bias: object | None                  # [(H + 2 Hkv) hd]     qwen2 only
    out: object                              # [H hd, D]
    mlp_norm: object                         # [D]
    gate_up: object                          # [D, 2F]              gate and up projections side by side
    down: object                             # [F, D]


@dataclass(frozen=True)
class ModelWeights:
    embed: object                            # [V, D]  rows looked up by token id
    layers: tuple[LayerWeights, ...]
    norm: object                             # [D]
    lm_head: object                          # [D, V]  (a transposed copy of the embedding when tied)
    rope_cos: object                         # [P, hd/2]  cos(position * frequency)
    rope_sin: object                         # [P, hd/2]


def rope_frequencies(config: ModelConfig) -> np.ndarray:
    """Rotary inverse frequencies [hd/2], computed in float32 as transformers does, with rope scaling."""
    exponents = np.arange(0, config.head_dim, 2, dtype=np.float32) / np.float32(config.head_dim)
    inv_freq = (np.float32(1.0) / np.float32(config.rope_theta) ** exponents).astype(np.float32)
    scaling: RopeScaling | None = config.rope_scaling
    if scaling is None:
        return inv_freq
    if scaling.kind == "linear":
        return (inv_freq / np.float32(scaling.factor)).astype(np.float32)
    # llama3: keep high frequencies, divide low ones by `factor`, interpolate smoothly in between
    low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def load_model_weights(config: ModelConfig, tensors: dict, xp=np) -> ModelWeights:
    """Arrange HF tensors for the forward pass: stack q/k/v and gate/up so each is one matrix product."""
    def get(name):
        if name not in tensors:
            raise ModelLoadError(f"weights lack the tensor {name!r}")
        return tensors[name]

    # attention's 1/sqrt(hd) is folded into the query projection (RoPE is linear, so it commutes)
    query_scale = np.float32(1.0 / math.sqrt(config.head_dim))

    def scaled(name):
        return get(name) * query_scale if ".q_proj." in name else get(name)

    def matrix(*names):
        """HF [out, in] matrices → one [in, sum of outs] contiguous matrix."""
        return xp.asarray(np.ascontiguousarray(np.concatenate([scaled(n) for n in names], axis=0).T))

    def vector(*names):
        return xp.asarray(np.concatenate([scaled(n) for n in names]))

    layers = []
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        attn = [p + f"self_attn.{x}_proj" for x in "qkv"]
        layers.append(LayerWeights(
            attn_norm=xp.asarray(get(p + "input_layernorm.weight")),
            qkv=matrix(*(a + ".weight" for a in attn)),
            qkv_bias=vector(*(a + ".bias" for a in attn)) if config.attention_bias else None,
            out=matrix(p + "self_attn.o_proj.weight"),
            mlp_norm=xp.asarray(get(p + "post_attention_layernorm.weight")),
            gate_up=matrix(p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"),
            down=matrix(p + "mlp.down_proj.weight"),
        ))
    embed = xp.asarray(get("model.embed_tokens.weight"))
    tied = config.tie_word_embeddings or "lm_head.weight" not in tensors
    positions = np.arange(config.max_position_embeddings, dtype=np.float32)
    angles = np.outer(positions, rope_frequencies(config))          # [P, hd/2]
    return ModelWeights(
        embed=embed,
        layers=tuple(layers),
        norm=xp.asarray(get("model.norm.weight")),
        lm_head=matrix("model.embed_tokens.weight" if tied else "lm_head.weight"),
        rope_cos=xp.asarray(np.cos(angles)), rope_sin=xp.asarray(np.sin(angles)),
    )


def rms_norm(x, weight, eps: float, xp):
    mean_square = (x * x).sum(axis=-1, keepdims=True) * np.float32(1 / x.shape[-1])   # [N, D] -> [N, 1]
    return x * (np.float32(1) / xp.sqrt(mean_square + np.float32(eps))) * weight      # [N, D]


def silu(x, xp):
    return x * (np.float32(0.5) * (np.float32(1) + xp.tanh(np.float32(0.5) * x)))  # x·sigmoid(x), no overflow


def apply_rope(x, cos, sin, xp):
    """Rotate each head's halves (HF's rotate-half layout): [N, heads, hd] with cos/sin [N, 1, hd/2]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]                            # [N, heads, hd/2] each
    return xp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)  # [N, heads, hd]


def attention_mask(positions, length: int, config: ModelConfig, xp):
    """Additive mask [T, S] for new tokens at `positions` over `length` keys: 0 visible, -inf hidden."""
    key_positions = xp.arange(length)
    hidden = key_positions[None, :] > positions[:, None]            # [T, S] causal: no future keys
    if config.sliding_window is not None:
        hidden |= key_positions[None, :] <= positions[:, None] - config.sliding_window
    return xp.where(hidden, np.float32(-np.inf), np.float32(0))


def attention(q, keys_t, values, mask, xp):
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


def decode_attention(q, segments: list, xp):
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


def joined(segments: list, xp) -> tuple:
    """One sequence's segments as one keys_t [Hkv, hd, S] and values [Hkv, S, hd] (a copy when two)."""
    if len(segments) == 1:
        return segments[0]
    return (xp.concatenate([k for k, _ in segments], axis=-1),     # [Hkv, hd, S]
            xp.concatenate([v for _, v in segments], axis=1))      # [Hkv, S, hd]


def forward(config: ModelConfig, weights: ModelWeights, tokens: list, caches: list[KVCache],
            *, all_logits: bool | list[bool] = False, xp=np):
    """Run new `tokens[i]` (a list of ids) of sequence i on top of `caches[i]`; advance the caches.

    Returns logits [B, V] for the last new token of each sequence, or [N, V] for every new token when
    `all_logits` is set (parity checks, prompt logprobs); a list of flags asks it per sequence (the rows
    of each in turn: all of them, or its last).
    """
    lengths = [len(t) for t in tokens]
    ids = xp.asarray(np.concatenate([np.asarray(t, dtype=np.int64) for t in tokens]))          # [N]
    positions = xp.asarray(np.concatenate([np.arange(c.length, c.length + n) for c, n in zip(caches, lengths)]))
    for cache, n in zip(caches, lengths):
        cache.reserve(n)
    H, Hkv, hd = config.num_heads, config.num_kv_heads, config.head_dim
    cos = weights.rope_cos[positions][:, None, :]                    # [N, 1, hd/2]
    sin = weights.rope_sin[positions][:, None, :]
    starts = np.cumsum([0] + lengths)
    spans = [slice(starts[i], starts[i + 1]) for i in range(len(caches))]
    # A decode step of several sequences (one new token each) attends as one group, its softmax a few
    # whole-group operations (numpy's reduceat), and a sliding window is just a slice of each cache.
    # Otherwise each sequence attends on its own; a run of new tokens (a prompt chunk) under a causal mask,
    # its cache's segments (a shared prompt, then its own tokens) joined into one.
    window = config.sliding_window
    grouped = len(caches) > 1 and max(lengths) == 1 and xp is np
    masks = [None if grouped or (n == 1 and window is None) else
             attention_mask(positions[rows], cache.length + n, config, xp)
             for rows, cache, n in zip(spans, caches, lengths)]

    x = weights.embed[ids]                                           # [N, D]
    for layer_index, layer in enumerate(weights.layers):
        h = rms_norm(x, layer.attn_norm, config.rms_norm_eps, xp)    # [N, D]
        qkv = h @ layer.qkv                                        # [N, D] -> [N, (H + 2 Hkv) hd]
        if layer.qkv_bias is not None:
            qkv += layer.qkv_bias
        qk = apply_rope(qkv[:, :(H + Hkv) * hd].reshape(-1, H + Hkv, hd), cos, sin, xp)  # [N, H + Hkv, hd]
        q, k = qk[:, :H], qk[:, H:]                                  # [N, H, hd], [N, Hkv, hd]
        v = qkv[:, (H + Hkv) * hd:].reshape(-1, Hkv, hd)             # [N, Hkv, hd]
        if grouped:
            seen = [cache.write(layer_index, k[i:i + 1], v[i:i + 1]) for i, cache in enumerate(caches)]
            if window is not None:
                seen = [last_positions(segments, window) for segments in seen]
            attended = decode_attention(q, seen, xp)                 # [B, H hd]
        else:
            mixed = []
            for rows, cache, mask in zip(spans, caches, masks):
                segments = cache.write(layer_index, k[rows], v[rows])
                if mask is None and len(segments) > 1 and xp is np:   # one token over a shared prompt: no copy
                    mixed.append(decode_attention(q[rows], [segments], xp))          # [1, H hd]
                else:
                    mixed.append(attention(q[rows], *joined(segments, xp), mask, xp))   # [T, H hd]
            attended = mixed[0] if len(mixed) == 1 else xp.concatenate(mixed, axis=0)   # [N, H hd]
        x = x + attended @ layer.out                               # [N, H hd] -> [N, D]
        h = rms_norm(x, layer.mlp_norm, config.rms_norm_eps, xp)     # [N, D]
        gate_up = h @ layer.gate_up                                # [N, D] -> [N, 2F]
        F = gate_up.shape[1] // 2
        x = x + (silu(gate_up[:, :F], xp) * gate_up[:, F:]) @ layer.down   # [N, F] -> [N, D]
    for cache, n in zip(caches, lengths):
        cache.advance(n)

    if all_logits is not True:
        every = all_logits or [False] * len(lengths)
        kept = np.concatenate([np.arange(starts[i] if every[i] else starts[i + 1] - 1, starts[i + 1])
                               for i in range(len(lengths))])
        x = x[kept]                                                  # [N, D] -> [M, D] the rows asked for
    x = rms_norm(x, weights.norm, config.rms_norm_eps, xp)
    return x @ weights.lm_head                                     # [B, D] -> [B, V]
