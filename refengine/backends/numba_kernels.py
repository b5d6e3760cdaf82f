"""The numba backend's kernels besides the weight products (numba_matmul): RMSNorm, and the decode step's
RoPE + KV store and attention over all sequences at once.

Everything stays float32: a float64 value (a Python float, `1.0 / D`) would silently upcast the arithmetic
around it, so constants are wrapped in np.float32 and eps arrives as one. `FAST` lets LLVM reassociate
float sums (and fuse a*b+c): without it a running sum is one serial chain that no compiler may split into
SIMD lanes. The sums still run in float32; only their order changes (the freedom BLAS takes too). NaN and
inf keep their meaning (no `nnan`/`ninf`).

Inside a parallel loop arrays are indexed in full (`scores[g, p]`), never sliced into a view (`scores[g]`):
each view takes and drops a reference on the array's shared counter, atomically, from every thread at
once, which measured 3-5x slower on the weight products.

Notation as in numpy_backend: B sequences (one new token each), D hidden size, H query heads, Hkv key/value
heads, G = H / Hkv, hd head size, S cached positions.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import carray, njit, prange, types
from numba.extending import intrinsic

FAST = {"reassoc", "contract"}


@intrinsic
def _float_with_bits(typingctx, bits):
    """The float32 whose bit pattern is the int32 `bits`."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return sig, codegen


@njit(inline="always", fastmath=FAST)
def _exp(x):
    """e^x in float32 within ~1 ulp (measured 8e-8 relative), as arithmetic a loop vectorizes: numba calls
    libm's expf one value at a time, 7x slower, and exp was most of long-context attention. Cephes' expf:
    e^x = 2^n e^r, n = round(x / ln 2), e^r by a polynomial on |r| <= ln 2 / 2, 2^n built from its bits.
    x is clamped to [-87, 88], where 2^n stays a normal float (e^-87 ~ 1.6e-38 stands for anything less)."""
    x = min(max(x, np.float32(-87.0)), np.float32(88.0))
    n = np.floor(x * np.float32(1.44269504088896341) + np.float32(0.5))
    r = x - n * np.float32(0.693359375) + n * np.float32(2.12194440e-4)       # x - n ln 2, in two parts
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    return (p * r * r + r + np.float32(1)) * _float_with_bits((np.int32(n) + np.int32(127)) << np.int32(23))


@njit(fastmath=FAST, cache=True)
def rms_norm(x, weight, eps, out):
    """out [N, D] = x / sqrt(mean(x²) + eps) * weight, as numpy_backend.rms_norm orders it."""
    inverse_d = np.float32(1.0 / x.shape[1])
    for n in range(x.shape[0]):
        sum_squares = np.float32(0)
        for k in range(x.shape[1]):
            sum_squares += x[n, k] * x[n, k]
        scale = np.float32(1) / np.sqrt(sum_squares * inverse_d + eps)
        for k in range(x.shape[1]):
            out[n, k] = x[n, k] * scale * weight[k]


@njit(fastmath=FAST, error_model="numpy", cache=True)
def swiglu(gate_up, out):
    """out [N, F] = silu(gate) * up, gate_up [N, 2F] the two side by side; silu(x) = x / (1 + e^-x), the
    reference's x (1 + tanh(x / 2)) / 2 rearranged. error_model="numpy": numba's default checks every
    division for a zero divisor, a branch that stops the loop vectorizing (9x slower)."""
    F = out.shape[1]
    for n in range(gate_up.shape[0]):
        for f in range(F):
            gate = gate_up[n, f]
            out[n, f] = gate / (np.float32(1) + _exp(-gate)) * gate_up[n, F + f]


@intrinsic
def float32s_at(typingctx, address):
    """The float32 pointer at an integer address (a cache array's data, from its __array_interface__)."""
    sig = types.CPointer(types.float32)(types.int64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))
    return sig, codegen


# A decode step finds its caches through a pointer table, built once per step: block i is a cache array pair
# keys [L, Hkv, hd, capacity[i]] at keys_at[i], values [L, Hkv, capacity[i], hd] at values_at[i] (addresses
# of C-contiguous float32 arrays the step keeps alive). numba's typed lists would do the same, but unboxing
# one costs ~10 us per kernel call, 2 ms per step of SmolLM2's 30 layers.

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
def _rope_and_store(b, qkv, positions, cos, sin, keys_at, values_at, capacity, own, slots, layer, q_out):
    num_heads, hd = q_out.shape[1], q_out.shape[2]
    half = hd // 2
    kv_heads = (qkv.shape[1] // hd - num_heads) // 2
    p, t = positions[b], slots[b]
    keys = _keys(keys_at, capacity, own[b], layer, kv_heads, hd)                # [Hkv, hd, capacity]
    values = _values(values_at, capacity, own[b], layer, kv_heads, hd)          # [Hkv, capacity, hd]
    for h in range(num_heads):
        for i in range(half):
            x1, x2 = qkv[b, h * hd + i], qkv[b, h * hd + half + i]
            q_out[b, h, i] = x1 * cos[p, i] - x2 * sin[p, i]
            q_out[b, h, half + i] = x2 * cos[p, i] + x1 * sin[p, i]
    for h in range(kv_heads):
        at = (num_heads + h) * hd
        for i in range(half):
            x1, x2 = qkv[b, at + i], qkv[b, at + half + i]
            keys[h, i, t] = x1 * cos[p, i] - x2 * sin[p, i]
            keys[h, half + i, t] = x2 * cos[p, i] + x1 * sin[p, i]
        at = (num_heads + kv_heads + h) * hd
        for d in range(hd):
            values[h, t, d] = qkv[b, at + d]


@njit(fastmath=FAST, cache=True)
def rope_and_store(qkv, positions, cos, sin, keys_at, values_at, capacity, own, slots, layer, q_out):
    """A decode step's RoPE and KV write: row b of qkv [B, (H + 2 Hkv) hd] is sequence b's new token at
    positions[b]; its rotated queries go to q_out [B, H, hd], its rotated key and its value into its own
    cache arrays, block own[b] of the table, at index slots[b]. cos, sin: the model's tables [P, hd/2]
    (rotate-half layout, as apply_rope)."""
    for b in range(qkv.shape[0]):
        _rope_and_store(b, qkv, positions, cos, sin, keys_at, values_at, capacity, own, slots, layer, q_out)


@njit(parallel=True, fastmath=FAST, cache=True)
def rope_and_store_parallel(qkv, positions, cos, sin, keys_at, values_at, capacity, own, slots, layer, q_out):
    """The same, sequences in parallel: a key's hd values land in hd cache lines (keys are stored
    [hd, positions]), so the time goes to fetching lines, which two cores do twice as fast."""
    for b in prange(qkv.shape[0]):
        _rope_and_store(b, qkv, positions, cos, sin, keys_at, values_at, capacity, own, slots, layer, q_out)


@njit(inline="always")
def _floats(address, offset, n):
    """n float32s starting `offset` floats past `address`, as a 1-D array indexed from 0: the hot loops index
    from 0 with their loop counter, which lets LLVM drop numba's negative-index check and vectorize."""
    return carray(float32s_at(address + 4 * offset), (n,))


@njit(parallel=True, fastmath=FAST, cache=True)
def decode_attention(q, keys_at, values_at, capacity, first_block, counts, layer, window, kv_heads, out):
    """Attention of B sequences' one new query each over their caches, one task per (sequence, kv head).

    q [B, H, hd] (1/sqrt(hd) folded in); sequence b's positions lie in blocks first_block[b] ..
    first_block[b+1]-1 of the table, counts[i] positions of block i in use (a shared prompt, then its own).
    window > 0 attends the last `window` positions only. out [B, H hd]. The softmax subtracts each row's
    max before exp, all in float32."""
    B, H, hd = q.shape
    G = H // kv_heads
    for task in prange(B * kv_heads):
        b, h = task // kv_heads, task % kv_heads
        S = 0
        for i in range(first_block[b], first_block[b + 1]):
            S += counts[i]
        lo = S - window if 0 < window < S else 0                    # first position attended
        scores = np.zeros((G, S - lo), dtype=np.float32)            # [G, S - lo] this task's own
        start = 0                                                   # the block's first position
        for i in range(first_block[b], first_block[b + 1]):
            p0, n = max(lo, start), start + counts[i] - max(lo, start)          # its positions attended
            if n > 0:
                row0 = (layer * kv_heads + h) * hd * capacity[i] + p0 - start      # keys[layer, h, 0, p0]
                for g in range(G):
                    attended = scores[g, p0 - lo:p0 - lo + n]
                    for d in range(hd):
                        qd = q[b, h * G + g, d]
                        keys = _floats(keys_at[i], row0 + d * capacity[i], n)      # keys[layer, h, d, p0:]
                        for j in range(n):
                            attended[j] += qd * keys[j]
            start += counts[i]
        for g in range(G):
            top = scores[g, 0]
            for p in range(1, S - lo):
                top = max(top, scores[g, p])
            total = np.float32(0)
            for p in range(S - lo):
                scores[g, p] = _exp(scores[g, p] - top)
                total += scores[g, p]
            inverse = np.float32(1) / total
            for p in range(S - lo):
                scores[g, p] *= inverse
        mixed = np.zeros((G, hd), dtype=np.float32)                 # [G, hd] the weighted sum of values
        start = 0
        for i in range(first_block[b], first_block[b + 1]):
            p0, n = max(lo, start), start + counts[i] - max(lo, start)
            row0 = ((layer * kv_heads + h) * capacity[i] + p0 - start) * hd      # values[layer, h, p0, 0]
            for j in range(max(n, 0)):
                values = _floats(values_at[i], row0 + j * hd, hd)                  # values[layer, h, p0 + j]
                for g in range(G):
                    weight = scores[g, p0 - lo + j]
                    into = mixed[g]
                    for d in range(hd):
                        into[d] += weight * values[d]
            start += counts[i]
        for g in range(G):
            for d in range(hd):
                out[b, (h * G + g) * hd + d] = mixed[g, d]
