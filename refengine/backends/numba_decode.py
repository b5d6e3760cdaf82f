"""The numba backend's decode step: forward.layers for B sequences of one new token each, every layer in one
compiled call.

Why one call: through forward.layers a step calls the backend ~11 times a layer, 330 times for SmolLM2's 30
layers, each call a few microseconds of Python (checks, allocations, numba's dispatch) around kernels that
often take less. On the default model, single stream, everything but the weight products took 1.9 ms of an
18 ms step that way. Here the same operations run in the same order, with the same float32 arithmetic as
the per-operation kernels (numba_kernels' rows, numba_matmul's panels), over the layers' weights stacked
[L, ...] at load (numba_backend.StackedLayers); the threads meet only at the end of each weight product and
of attention.

The caches are found through a pointer table, built once per step (numba_backend.DecodeStep): block i is a
cache array pair, keys [L, Hkv, hd, capacity[i]] at keys_at[i] and values [L, Hkv, capacity[i], hd] at
values_at[i] (addresses of C-contiguous float32 arrays the step keeps alive); sequence b's positions lie in
blocks first_block[b] .. first_block[b+1]-1 (a shared prompt, then its own), counts[i] positions of block i
in use, and its new key and value go to block own[b] at index slots[b]. numba's typed lists would do the
same, but unboxing one costs ~10 us a call.

Inside a parallel loop arrays are indexed in full (`scores[g, p]`), never sliced into a view (`scores[g]`):
each view takes and drops a reference on the array's shared counter, atomically, from every thread at
once, which measured 3-5x slower on the weight products.

Notation as in numpy_backend: B sequences, D hidden size, H query heads, Hkv key/value heads, G = H / Hkv,
hd head size, F MLP size, S cached positions, L layers, P panels of 32 outputs.
"""
from __future__ import annotations

import numpy as np
from numba import carray, njit, prange, types
from numba.extending import intrinsic

from .numba_cache import use_kernel_cache
from .numba_kernels import FAST, exp32, rms_norm_row, swiglu_row
from .numba_matmul import NB, PANEL, block16, panel_f32, panel_q8, part_of

use_kernel_cache()

# From this many sequences a step's row by row work (RMSNorm, RoPE + KV store, SwiGLU) runs on all threads
# (below, starting threads costs more than it saves: a SmolLM2 step's 30 RoPE + KV stores took 0.34 ms for one
# sequence on two threads, 0.25 on one; for 8 sequences 0.5 ms on two, 1.1 on one).
PARALLEL_ROWS = 4


@intrinsic
def float32s_at(typingctx, address):
    """The float32 pointer at an integer address (a cache array's data, from its __array_interface__)."""
    sig = types.CPointer(types.float32)(types.int64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))
    return sig, codegen


@njit(inline="always")
def _keys(keys_at, capacity, i, layer, kv_heads, hd):
    """Block i's keys of one layer, [Hkv, hd, capacity]."""
    plane = kv_heads * hd * capacity[i]
    return carray(float32s_at(keys_at[i] + 4 * layer * plane), (kv_heads, hd, capacity[i]))


@njit(inline="always")
def _values(values_at, capacity, i, layer, kv_heads, hd):
    """Block i's values of one layer, [Hkv, capacity, hd]."""
    plane = kv_heads * hd * capacity[i]
    return carray(float32s_at(values_at[i] + 4 * layer * plane), (kv_heads, capacity[i], hd))


@njit(inline="always")
def _floats(address, offset, n):
    """n float32s starting `offset` floats past `address`, as a 1-D array indexed from 0: the hot loops index
    from 0 with their loop counter, which lets LLVM drop numba's negative-index check and vectorize."""
    return carray(float32s_at(address + 4 * offset), (n,))


@njit(inline="always")
def _rope_and_store(b, qkv, positions, cos, sin, keys_at, values_at, capacity, own, slots, layer, num_heads,
                    kv_heads, queries):
    """Sequence b's new token at positions[b], row b of qkv [B, (H + 2 Hkv) hd]: its rotated queries to rows
    b H .. b H + H - 1 of queries [B H, hd], its rotated key and its value into its own cache arrays. cos,
    sin: the model's tables [P, hd/2] (rotate-half layout, as numpy_backend.apply_rope)."""
    hd = queries.shape[1]
    half = hd // 2
    p, t = positions[b], slots[b]
    keys = _keys(keys_at, capacity, own[b], layer, kv_heads, hd)                # [Hkv, hd, capacity]
    values = _values(values_at, capacity, own[b], layer, kv_heads, hd)          # [Hkv, capacity, hd]
    for h in range(num_heads):
        for i in range(half):
            x1, x2 = qkv[b, h * hd + i], qkv[b, h * hd + half + i]
            queries[b * num_heads + h, i] = x1 * cos[p, i] - x2 * sin[p, i]
            queries[b * num_heads + h, half + i] = x2 * cos[p, i] + x1 * sin[p, i]
    for h in range(kv_heads):
        at = (num_heads + h) * hd
        for i in range(half):
            x1, x2 = qkv[b, at + i], qkv[b, at + half + i]
            keys[h, i, t] = x1 * cos[p, i] - x2 * sin[p, i]
            keys[h, half + i, t] = x2 * cos[p, i] + x1 * sin[p, i]
        at = (num_heads + kv_heads + h) * hd
        for d in range(hd):
            values[h, t, d] = qkv[b, at + d]


@njit(inline="always")
def _attend_chunk(task, chunks, queries, num_heads, keys_at, values_at, capacity, first_block, counts, layer,
                  window, kv_heads, partial_out, partial_max, partial_sum):
    """One task of a step's attention: sequence b, kv head h, chunk c of the `chunks` equal runs of the
    positions b attends (its last `window` only, when window > 0), for the G queries that share head h, rows
    b H + h G .. of queries [B H, hd] (1/sqrt(hd) folded in). Leaves the chunk's softmax unnormalised for
    _merge_chunks: per query its top score partial_max[task, g], the sum of exp(score - top)
    partial_sum[task, g], and the values weighted by those exps, row task G + g of partial_out [tasks G, hd].
    Chunks let the threads share one sequence's few heads evenly. Both products go through block16, 16
    positions (or value columns) at a time from the caches; hd is a multiple of 16. All in float32."""
    hd = queries.shape[1]
    G = num_heads // kv_heads
    b, h, c = task // (kv_heads * chunks), task // chunks % kv_heads, task % chunks
    query0 = b * num_heads + h * G                                  # this head's first query row
    S = 0
    for i in range(first_block[b], first_block[b + 1]):
        S += counts[i]
    lo = S - window if 0 < window < S else 0                        # first position attended
    c0, c1 = lo + (S - lo) * c // chunks, lo + (S - lo) * (c + 1) // chunks     # this chunk's positions
    scores = np.zeros((G, c1 - c0), dtype=np.float32)              # [G, c1 - c0] this task's own
    start = 0                                                       # the block's first position
    for i in range(first_block[b], first_block[b + 1]):
        p0, n = max(c0, start), min(c1, start + counts[i]) - max(c0, start)     # its positions in the chunk
        if n > 0:
            row0 = (layer * kv_heads + h) * hd * capacity[i] + p0 - start          # keys[layer, h, 0, p0]
            whole = n - n % 16
            for j in range(0, whole, 16):                           # scores[:, j..j+15] = queries @ keys
                for g in range(0, G, NB):
                    block16(queries, query0 + g, 0, min(NB, G - g), hd, keys_at[i] + 4 * (row0 + j),
                            capacity[i], scores, g, p0 - c0 + j)
            for g in range(G):                                      # the last n % 16 positions
                for d in range(hd):
                    qd = queries[query0 + g, d]
                    keys = _floats(keys_at[i], row0 + d * capacity[i], n)          # keys[layer, h, d, p0:]
                    for j in range(whole, n):
                        scores[g, p0 - c0 + j] += qd * keys[j]
        start += counts[i]
    for g in range(G):
        top = np.float32(-3.0e38)                                   # (an empty chunk weighs e^-87 x 0)
        for p in range(c1 - c0):
            top = max(top, scores[g, p])
        total = np.float32(0)
        for p in range(c1 - c0):
            scores[g, p] = exp32(scores[g, p] - top)
            total += scores[g, p]
        partial_max[task, g], partial_sum[task, g] = top, total
        for d in range(hd):
            partial_out[task * G + g, d] = 0
    start = 0
    for i in range(first_block[b], first_block[b + 1]):
        p0, n = max(c0, start), min(c1, start + counts[i]) - max(c0, start)
        if n > 0:
            row0 = ((layer * kv_heads + h) * capacity[i] + p0 - start) * hd      # values[layer, h, p0, 0]
            for column in range(0, hd, 16):                         # partial_out += exps @ values
                for g in range(0, G, NB):
                    block16(scores, g, p0 - c0, min(NB, G - g), n, values_at[i] + 4 * (row0 + column), hd,
                            partial_out, task * G + g, column)
        start += counts[i]


@njit(inline="always")
def _merge_chunks(chunks, kv_heads, partial_out, partial_max, partial_sum, out):
    """out [B, H hd]: each query's chunks rescaled to their common top score and normalised, the softmax
    over all its positions (as flash-decoding merges its splits)."""
    B, G, hd = out.shape[0], partial_max.shape[1], partial_out.shape[1]
    for b in range(B):
        for h in range(kv_heads):
            first = (b * kv_heads + h) * chunks
            for g in range(G):
                top = partial_max[first, g]
                for c in range(1, chunks):
                    top = max(top, partial_max[first + c, g])
                total = np.float32(0)
                for c in range(chunks):
                    total += partial_sum[first + c, g] * exp32(partial_max[first + c, g] - top)
                for d in range(hd):
                    out[b, (h * G + g) * hd + d] = 0
                for c in range(chunks):
                    weight = exp32(partial_max[first + c, g] - top) / total
                    for d in range(hd):
                        out[b, (h * G + g) * hd + d] += weight * partial_out[(first + c) * G + g, d]


@njit
def _panels(x, weights, scales, layer, out, p0, p1):
    """out[:, 32 p0 : 32 p1] = x [B, K] @ panels p0 .. p1-1 of layer `layer`'s matrix: float32 panels
    [L, P, K, 32] (scales None), or int8 ones with their scales [L, P, K / 32, 32]. numba compiles one
    branch only: it prunes the other by the type of `scales`."""
    if scales is None:
        w = weights[layer]
        for p in range(p0, p1):
            for b in range(0, x.shape[0], NB):
                panel_f32(x, b, min(NB, x.shape[0] - b), w, p, out)
    else:
        w, s = weights[layer], scales[layer]
        for p in range(p0, p1):
            for b in range(0, x.shape[0], NB):
                panel_q8(x, b, min(NB, x.shape[0] - b), w, s, p, out)


@njit(inline="always")
def _product(x, weights, scales, layer, out, parts):
    """out [B, 32 P] = x [B, K] @ layer `layer`'s panels, each of `parts` threads a contiguous share of them."""
    for part in prange(parts):
        p0, p1 = part_of(weights.shape[1], part, parts)
        _panels(x, weights, scales, layer, out, p0, p1)


@njit(inline="always")
def _rms_norm_rows(x, weight, eps, out):
    """out [B, D] = RMSNorm of x's rows, on all threads from PARALLEL_ROWS rows."""
    if x.shape[0] < PARALLEL_ROWS:
        for b in range(x.shape[0]):
            rms_norm_row(x, b, weight, eps, out)
    else:
        for b in prange(x.shape[0]):
            rms_norm_row(x, b, weight, eps, out)


@njit(inline="always")
def _add_rows(x, added):
    """x [B, D] += added[:, :D] (a product's output, padded to whole panels)."""
    for b in range(x.shape[0]):
        for d in range(x.shape[1]):
            x[b, d] += added[b, d]


@njit(parallel=True, fastmath=FAST, error_model="numpy", cache=True, nogil=True)
def decode_layers(x, attn_norm, qkv, qkv_scales, qkv_bias, out, out_scales, mlp_norm, gate_up, gate_up_scales,
                  down, down_scales, eps, positions, cos, sin, keys_at, values_at, capacity, first_block, counts,
                  own, slots, window, num_heads, kv_heads, parts):
    """forward.layers' loop for a decode step: x [B, D], the embedded new tokens, becomes the residual stream
    after the last layer (in place); each layer's new keys and values are stored in the caches.

    The layers' weights are stacked: norms [L, D]; each product's panels [L, P, K, 32], float32 with scales
    None or int8 with scales [L, P, K / 32, 32]; qkv_bias [L, (H + 2 Hkv) hd] or None. window > 0 attends
    the last `window` positions only. parts: the threads each product is split over (the caller's
    numba.get_num_threads(): calling it in here stops cache=True working). nogil: while a step runs, the
    server's other threads (a token's SSE chunk) run beside it instead of queueing for the GIL after it:
    through HTTP, single stream, 0.93x the gemv ceiling with it and 0.91x without (medians of 5 rounds)."""
    B, D = x.shape
    hd = 2 * cos.shape[1]
    F = down.shape[2]
    h = np.empty((B, D), dtype=np.float32)                                  # [B, D] a normed copy
    qkv_rows = np.empty((B, qkv.shape[1] * PANEL), dtype=np.float32)       # [B, (H + 2 Hkv) hd] (+ padding)
    queries = np.empty((B * num_heads, hd), dtype=np.float32)               # [B H, hd]
    attended = np.empty((B, num_heads * hd), dtype=np.float32)             # [B, H hd]
    added = np.empty((B, max(out.shape[1], down.shape[1]) * PANEL), dtype=np.float32)   # [B, D] (+ padding)
    gate_up_rows = np.empty((B, gate_up.shape[1] * PANEL), dtype=np.float32)            # [B, 2F] (+ padding)
    activated = np.empty((B, F), dtype=np.float32)                          # [B, F]
    chunks = max(1, -(-2 * parts // (B * kv_heads)))               # attention tasks: at least two a thread
    G = num_heads // kv_heads
    partial_out = np.empty((B * kv_heads * chunks * G, hd), dtype=np.float32)
    partial_max = np.empty((B * kv_heads * chunks, G), dtype=np.float32)
    partial_sum = np.empty((B * kv_heads * chunks, G), dtype=np.float32)
    for layer in range(attn_norm.shape[0]):
        _rms_norm_rows(x, attn_norm[layer], eps, h)
        _product(h, qkv, qkv_scales, layer, qkv_rows, parts)                # [B, D] -> [B, (H + 2 Hkv) hd]
        if qkv_bias is not None:
            for b in range(B):
                for c in range(qkv_bias.shape[1]):
                    qkv_rows[b, c] += qkv_bias[layer, c]
        if B < PARALLEL_ROWS:                                               # [B H, hd]; keys, values cached
            for b in range(B):
                _rope_and_store(b, qkv_rows, positions, cos, sin, keys_at, values_at, capacity, own, slots, layer,
                                num_heads, kv_heads, queries)
        else:
            for b in prange(B):
                _rope_and_store(b, qkv_rows, positions, cos, sin, keys_at, values_at, capacity, own, slots, layer,
                                num_heads, kv_heads, queries)
        for task in prange(B * kv_heads * chunks):                          # [B H, hd] -> [B, H hd]
            _attend_chunk(task, chunks, queries, num_heads, keys_at, values_at, capacity, first_block, counts,
                          layer, window, kv_heads, partial_out, partial_max, partial_sum)
        _merge_chunks(chunks, kv_heads, partial_out, partial_max, partial_sum, attended)
        _product(attended, out, out_scales, layer, added, parts)            # [B, H hd] -> [B, D]
        _add_rows(x, added)
        _rms_norm_rows(x, mlp_norm[layer], eps, h)
        _product(h, gate_up, gate_up_scales, layer, gate_up_rows, parts)    # [B, D] -> [B, 2F]
        if B < PARALLEL_ROWS:                                               # [B, 2F] -> [B, F]
            for b in range(B):
                swiglu_row(gate_up_rows, b, activated)
        else:
            for b in prange(B):
                swiglu_row(gate_up_rows, b, activated)
        _product(activated, down, down_scales, layer, added, parts)         # [B, F] -> [B, D]
        _add_rows(x, added)
