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
from .backends.numpy_backend import NumpyBackend
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
    stacked: object = None                   # the layers' weights as a backend stacks them to run all at once


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


def forward(config: ModelConfig, weights: ModelWeights, tokens: list, caches: list[KVCache],
            *, all_logits: bool | list[bool] = False, backend=None):
    """Run new `tokens[i]` (a list of ids) of sequence i on top of `caches[i]`; advance the caches.

    Returns logits [B, V] for the last new token of each sequence, or [N, V] for every new token when
    `all_logits` is set (parity checks, prompt logprobs); a list of flags asks it per sequence (the rows
    of each in turn: all of them, or its last). `backend` does the arithmetic (numpy by default: the
    reference); the rows of all sequences are stacked for every matrix product.
    """
    backend = backend or NumpyBackend()
    step = new_step(config, weights, tokens, caches, backend)
    x = layers(config, weights, step, backend)                       # [N, D]
    for cache, n in zip(caches, step.lengths):
        cache.advance(n)

    if all_logits is not True:
        every = all_logits or [False] * len(step.lengths)
        kept = np.concatenate([np.arange(span.start if every[i] else span.stop - 1, span.stop)
                               for i, span in enumerate(step.spans)])
        if len(kept) < len(step.ids):                                # (a decode step keeps every row)
            x = x[backend.xp.asarray(kept)]                          # [N, D] -> [M, D] the rows asked for
    x = backend.rms_norm(x, weights.norm, config.rms_norm_eps)
    return backend.matmul(x, weights.lm_head)                        # [M, D] -> [M, V]


def new_step(config: ModelConfig, weights: ModelWeights, tokens: list, caches: list[KVCache], backend):
    """The step's batch as the backend sees it, the caches grown to hold its new tokens."""
    lengths = [len(t) for t in tokens]
    for cache, n in zip(caches, lengths):
        cache.reserve(n)
    ids = np.concatenate([np.asarray(t, dtype=np.int64) for t in tokens])                     # [N]
    return backend.start_step(config, weights.rope_cos, weights.rope_sin, caches, lengths, ids)


def layers(config: ModelConfig, weights: ModelWeights, step, backend):
    """The transformer's layers over the step's new tokens: the residual stream [N, D] after the last one
    (before the final norm), each layer's keys and values stored in the caches."""
    eps = config.rms_norm_eps
    x = backend.embed(weights.embed, step)                           # [N, D]
    run_by_backend = backend.run_layers(weights, x, step)            # the loop below in one call (numba decode)
    if run_by_backend is not None:
        return run_by_backend
    for layer_index, layer in enumerate(weights.layers):
        h = backend.rms_norm(x, layer.attn_norm, eps)                # [N, D]
        qkv = backend.matmul(h, layer.qkv)                           # [N, D] -> [N, (H + 2 Hkv) hd]
        if layer.qkv_bias is not None:
            qkv += layer.qkv_bias
        q = backend.rope_and_store(qkv, step, layer_index)           # [N, H, hd]; keys, values cached
        attended = backend.attention(q, step, layer_index)           # [N, H, hd] -> [N, H hd]
        x += backend.matmul(attended, layer.out)                     # [N, H hd] -> [N, D]
        h = backend.rms_norm(x, layer.mlp_norm, eps)                 # [N, D]
        gate_up = backend.matmul(h, layer.gate_up)                   # [N, D] -> [N, 2F]
        x += backend.matmul(backend.swiglu(gate_up), layer.down)     # [N, 2F] -> [N, F] -> [N, D]
    return x
