"""Embeddings: a text's vector from the model's final hidden states, mean-pooled over its tokens, L2-normalised.

    vectors = embed(model, [ids_1, ids_2])        # [B, D] float32, each row of length 1

The sequences go through the transformer as one batch, as a prefill does (every row stacked for each matrix
product, each sequence attending over its own fresh KV cache): the layers of `refengine.forward`, by the
model's backend; only the end differs: the final RMSNorm's output is kept instead of being projected onto the
vocabulary. Run it where the backend may be used: on the scheduler's thread (`Scheduler.between_steps`), or
with no scheduler running.

A chat model's embeddings are weaker than a dedicated embedding model's (trained for it, often with another
pooling): good enough to rank near-duplicates and topical neighbours, not a retrieval benchmark's best.
"""
from __future__ import annotations

import numpy as np

from . import forward
from .model import Model

MAX_BATCH_TOKENS = 4096                      # tokens per forward pass; longer batches are split


def hidden_states(model: Model, sequences: list[list[int]]):
    """The final hidden states [N, D] (all sequences' rows stacked, after the last RMSNorm) and each
    sequence's rows (slices), on the backend's device."""
    config, weights, backend = model.config, model.weights, model.backend
    caches = [model.new_cache(len(s)) for s in sequences]
    step = forward.new_step(config, weights, sequences, caches, backend)
    x = forward.layers(config, weights, step, backend)               # [N, D]
    return backend.rms_norm(x, weights.norm, config.rms_norm_eps), step.spans


def pooled(states: np.ndarray, spans: list[slice]) -> np.ndarray:
    """Each sequence's rows averaged, then scaled to length 1: [N, D] -> [B, D]."""
    means = np.stack([states[span].mean(axis=0, dtype=np.float64) for span in spans])   # [B, D]
    norms = np.linalg.norm(means, axis=1, keepdims=True)                                # [B, 1]
    return (means / np.maximum(norms, 1e-12)).astype(np.float32)


def batches(sequences: list[list[int]], limit: int = MAX_BATCH_TOKENS) -> list[list[int]]:
    """Indexes of `sequences` grouped into passes of at most `limit` tokens (a longer one goes alone)."""
    groups, current, size = [], [], 0
    for i, sequence in enumerate(sequences):
        if current and size + len(sequence) > limit:
            groups.append(current)
            current, size = [], 0
        current.append(i)
        size += len(sequence)
    return groups + ([current] if current else [])


def embed(model: Model, sequences: list[list[int]]) -> np.ndarray:
    """One unit vector per sequence [B, D] (float32 on the host)."""
    vectors = np.zeros((len(sequences), model.config.hidden_size), dtype=np.float32)
    for group in batches(sequences):
        states, spans = hidden_states(model, [sequences[i] for i in group])
        vectors[group] = pooled(model.backend.to_host(states), spans)
    return vectors
