"""The numba backend's kernels: weight products that read each weight once for a whole small batch, int8
weight blocks, RMSNorm, and the decode step's RoPE + KV store and attention over all sequences at once.

Everything stays float32: a float64 value (a Python float, `1.0 / D`) would silently upcast the arithmetic
around it, so constants are wrapped in np.float32 and eps arrives as one.

`FAST` lets LLVM reassociate float sums (and fuse a*b+c): without it, a dot product's running sum is one
serial chain that no compiler may split into SIMD lanes, and the kernels are ~10x slower. The sums still
run in float32; only their order changes (the same freedom BLAS takes), within float32 rounding. NaN and
inf keep their meaning (no `nnan`/`ninf`).

Weight matrices are [out, in] rows (HF's layout): the dot product of one weight row with each batch row
reads the row once from memory and again from L1 for the others. Notation as in numpy_backend: B rows,
K inputs, M outputs, H query heads, Hkv key/value heads, G = H / Hkv, hd head size, S cached positions.

Two numba habits matter here. Helpers are `inline="always"`: numba inlines them into the calling kernel,
whose fastmath flags then apply (a helper's own flags do not). And inside a parallel loop arrays are indexed
in full (`w[j, k]`), never sliced into a view (`w[j]`): each view takes and drops a reference on the array's
shared counter, atomically, from every thread at once, which measured 3-5x slower.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import carray, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

FAST = {"reassoc", "contract"}
QBLOCK = 32                                  # int8 weights per float32 scale, along the input dimension


# ---- weight products ------------------------------------------------------------------------------------

@njit(inline="always")
def _part(M, part, parts):
    """Rows [j0, j1) of M for one of `parts` threads: whole groups of four, the last part takes the rest."""
    j0 = (M * part // parts) // 4 * 4
    j1 = M if part == parts - 1 else (M * (part + 1) // parts) // 4 * 4
    return j0, j1


@njit(inline="always", fastmath=FAST)
def _dot(x, b, w, jw, out, jo):
    """out[b, jo] = x[b] · w[jw]: one weight row against one batch row."""
    s = np.float32(0)
    for k in range(x.shape[1]):
        s += x[b, k] * w[jw, k]
    out[b, jo] = s


@njit(inline="always", fastmath=FAST)
def _dot4x4(x, b, w, jw, out, jo):
    """out[b:b+4, jo:jo+4] = x[b:b+4] @ w[jw:jw+4].T: 16 running sums, each weight and input load feeding
    four of them (a 1x1 dot product does one multiply per two loads and is bound by loads once B > 2)."""
    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = np.float32(0)
    s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = np.float32(0)
    for k in range(x.shape[1]):
        a0 = x[b, k]
        a1 = x[b + 1, k]
        a2 = x[b + 2, k]
        a3 = x[b + 3, k]
        c = w[jw, k]
        s00 += a0 * c; s10 += a1 * c; s20 += a2 * c; s30 += a3 * c           # noqa: E702
        c = w[jw + 1, k]
        s01 += a0 * c; s11 += a1 * c; s21 += a2 * c; s31 += a3 * c           # noqa: E702
        c = w[jw + 2, k]
        s02 += a0 * c; s12 += a1 * c; s22 += a2 * c; s32 += a3 * c           # noqa: E702
        c = w[jw + 3, k]
        s03 += a0 * c; s13 += a1 * c; s23 += a2 * c; s33 += a3 * c           # noqa: E702
    out[b, jo] = s00; out[b, jo + 1] = s01; out[b, jo + 2] = s02; out[b, jo + 3] = s03              # noqa: E702
    out[b + 1, jo] = s10; out[b + 1, jo + 1] = s11; out[b + 1, jo + 2] = s12; out[b + 1, jo + 3] = s13  # noqa
    out[b + 2, jo] = s20; out[b + 2, jo + 1] = s21; out[b + 2, jo + 2] = s22; out[b + 2, jo + 3] = s23  # noqa
    out[b + 3, jo] = s30; out[b + 3, jo + 1] = s31; out[b + 3, jo + 2] = s32; out[b + 3, jo + 3] = s33  # noqa


@njit(inline="always", fastmath=FAST)
def _rows(x, w, jw, out, jo, count):
    """out[:, jo:jo+count] = x @ w[jw:jw+count].T for count <= 4 weight rows: in 4x4 blocks while four batch
    rows remain, then row by row. For B < 4 that reads the weight rows in order, one stream, which the
    hardware prefetcher follows best (a 4x1 block reading four rows side by side measured 1.4x slower)."""
    b = 0
    if count == 4:
        while b + 4 <= x.shape[0]:
            _dot4x4(x, b, w, jw, out, jo)
            b += 4
    for bb in range(b, x.shape[0]):
        for r in range(count):
            _dot(x, bb, w, jw + r, out, jo + r)


@njit(parallel=True, fastmath=FAST, cache=True)
def matmul_f32(x, w, out, parts):
    """out [B, M] = x [B, K] @ w [M, K].T, each of `parts` threads a contiguous share of the weight rows.
    (`parts` is numba.get_num_threads() from the caller: called in here it stops cache=True working.)"""
    M = w.shape[0]
    for part in prange(parts):
        j0, j1 = _part(M, part, parts)
        for j in range(j0, j1, 4):
            _rows(x, w, j, out, j, min(4, j1 - j))


@intrinsic
def _dequantize_block(typingctx, q, q_row, k, scale, out, out_row):
    """out[out_row, k:k+32] = q[q_row, k:k+32] * scale, as one <32 x i8> load, convert and multiply.

    Written in LLVM IR because numba gives LLVM no aliasing information: the same loop in Python is fully
    unrolled into 32 scalar converts (the int8 loads might alias the float stores), 10x slower."""
    sig = types.void(q, types.intp, types.intp, types.float32, out, types.intp)

    def codegen(context, builder, signature, args):
        def address(array_type, array, row):
            a = context.make_array(array_type)(context, builder, array)
            return cgutils.get_item_pointer2(context, builder, a.data, cgutils.unpack_tuple(builder, a.shape),
                                             cgutils.unpack_tuple(builder, a.strides), array_type.layout,
                                             [row, args[2]])
        floats, ints = ir.VectorType(ir.FloatType(), QBLOCK), ir.VectorType(ir.IntType(8), QBLOCK)
        source = builder.bitcast(address(signature.args[0], args[0], args[1]), ints.as_pointer())
        values = builder.sitofp(builder.load(source, align=1), floats)
        lane0 = builder.insert_element(ir.Constant(floats, ir.Undefined), args[3], ir.Constant(ir.IntType(32), 0))
        splat = builder.shuffle_vector(lane0, ir.Constant(floats, ir.Undefined),
                                       ir.Constant(ir.VectorType(ir.IntType(32), QBLOCK), [0] * QBLOCK))
        target = builder.bitcast(address(signature.args[4], args[4], args[5]), floats.as_pointer())
        builder.store(builder.fmul(values, splat), target, align=4)
        return context.get_dummy_value()
    return sig, codegen


@njit(inline="always")
def _dequantize(q, scales, j, count, out, at):
    """out[at:at+count] = weight rows j..j+count-1 in float32 (q int8 [M, K], scales [M, K/32])."""
    for r in range(count):
        for block in range(q.shape[1] // QBLOCK):
            _dequantize_block(q, j + r, block * QBLOCK, scales[j + r, block], out, at + r)


@njit(parallel=True, fastmath=FAST, cache=True)
def matmul_q8(x, q, scales, out, parts):
    """out [B, M] = x [B, K] @ (q * scales) [M, K].T: each group of four weight rows dequantized into an
    L1-resident buffer, then multiplied as float32 rows. Memory traffic is the int8 rows (plus 1/8 of
    scales), 3.6x less than float32."""
    M, K = q.shape
    for part in prange(parts):
        rows = np.empty((4, K), dtype=np.float32)                 # [4, K] this thread's buffer
        j0, j1 = _part(M, part, parts)
        for j in range(j0, j1, 4):
            count = min(4, j1 - j)
            _dequantize(q, scales, j, count, rows, 0)
            _rows(x, rows, 0, out, j, count)


@njit(parallel=True, cache=True)
def dequantize(q, scales, j0, out, parts):
    """out [T, K] = weight rows j0..j0+T-1 of (q, scales) in float32: a tile for a BLAS product (prefill)."""
    T = out.shape[0]
    for part in prange(parts):
        for t in range(T * part // parts, T * (part + 1) // parts):
            _dequantize(q, scales, j0 + t, 1, out, t)


def quantize(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q8_0: rows of a float32 [M, K] matrix as int8 [M, K] and a float32 scale per block of 32 inputs
    [M, K/32], scale = max|w| / 127 and round to nearest, so w ≈ q * scale within scale / 2."""
    M, K = matrix.shape
    q, scales = np.empty((M, K), dtype=np.int8), np.empty((M, K // QBLOCK), dtype=np.float32)
    for start in range(0, M, 4096):                                 # a few MB of float temporaries at a time
        blocks = np.asarray(matrix[start:start + 4096], dtype=np.float32).reshape(-1, K // QBLOCK, QBLOCK)
        scale = np.abs(blocks).max(axis=-1) / np.float32(127)       # [rows, K/32]
        inverse = np.divide(np.float32(1), scale, out=np.zeros_like(scale), where=scale > 0)
        q[start:start + 4096] = np.rint(blocks * inverse[..., None]).reshape(-1, K)
        scales[start:start + 4096] = scale
    return q, scales


# ---- the rest of a layer ----------------------------------------------------------------------------------

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


@intrinsic
def _float32s_at(typingctx, address):
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
    return carray(_float32s_at(keys_at[i] + 4 * layer * plane), (kv_heads, hd, capacity[i]))


@njit(inline="always")
def _values(values_at, capacity, i, layer, kv_heads, hd):
    """Block i's values of one layer, [Hkv, capacity, hd]."""
    plane = kv_heads * hd * capacity[i]
    return carray(_float32s_at(values_at[i] + 4 * layer * plane), (kv_heads, capacity[i], hd))


@njit(fastmath=FAST, cache=True)
def rope_and_store(qkv, positions, cos, sin, keys_at, values_at, capacity, own, slots, layer, q_out):
    """A decode step's RoPE and KV write: row b of qkv [B, (H + 2 Hkv) hd] is sequence b's new token at
    positions[b]; its rotated queries go to q_out [B, H, hd], its rotated key and its value into its own
    cache arrays, block own[b] of the table, at index slots[b]. cos, sin: the model's tables [P, hd/2]
    (rotate-half layout, as apply_rope)."""
    num_heads, hd = q_out.shape[1], q_out.shape[2]
    half = hd // 2
    kv_heads = (qkv.shape[1] // hd - num_heads) // 2
    for b in range(qkv.shape[0]):
        p, t = positions[b], slots[b]
        keys = _keys(keys_at, capacity, own[b], layer, kv_heads, hd)            # [Hkv, hd, capacity]
        values = _values(values_at, capacity, own[b], layer, kv_heads, hd)      # [Hkv, capacity, hd]
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
        scores = np.zeros((G, S - lo), dtype=np.float32)            # [G, S - lo]
        start = 0                                                   # the block's first position
        for i in range(first_block[b], first_block[b + 1]):
            keys = _keys(keys_at, capacity, i, layer, kv_heads, hd)                # [Hkv, hd, capacity]
            for d in range(hd):
                for g in range(G):
                    qd = q[b, h * G + g, d]
                    for p in range(max(lo, start), start + counts[i]):
                        scores[g, p - lo] += qd * keys[h, d, p - start]
            start += counts[i]
        for g in range(G):
            top = scores[g, 0]
            for p in range(1, S - lo):
                top = max(top, scores[g, p])
            total = np.float32(0)
            for p in range(S - lo):
                scores[g, p] = np.exp(scores[g, p] - top)
                total += scores[g, p]
            inverse = np.float32(1) / total
            for p in range(S - lo):
                scores[g, p] *= inverse
        for g in range(G):
            for d in range(hd):
                out[b, (h * G + g) * hd + d] = np.float32(0)
        start = 0
        for i in range(first_block[b], first_block[b + 1]):
            values = _values(values_at, capacity, i, layer, kv_heads, hd)          # [Hkv, capacity, hd]
            for p in range(max(lo, start), start + counts[i]):
                for g in range(G):
                    weight = scores[g, p - lo]
                    row = (h * G + g) * hd
                    for d in range(hd):
                        out[b, row + d] += weight * values[h, p - start, d]
            start += counts[i]
