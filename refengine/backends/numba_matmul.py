"""The numba backend's weight products: int8 and float32 panels multiplied by a small batch, and unpacked for
BLAS (prompts). The innermost loops are LLVM IR (numba intrinsics), where numba's own code is slow: numba
gives LLVM no aliasing information, so a loop that loads one array and stores another of fixed short
length is unrolled into scalar code (the loads might alias the stores), and a running sum can only stay in
SIMD registers across a whole loop, never across blocks of one. Here the vectors are explicit: <16 x float>
values, llvm.fma, and loads and stores of whole vectors.

Weights are laid out in panels of PANEL = 32 output rows, [M / 32, K, 32] (`pack`): for each input k the
32 weights of a panel are adjacent, so a panel is one contiguous stream and each k is two vector loads. The
micro-kernel multiplies one panel by up to NB batch rows at once: 2 x nb accumulators of 16 lanes, each
weight vector loaded once and used nb times, no horizontal sums (a lane is an output). Measured on this
2-core machine over all of SmolLM2-135M's weights (one pass, ms) against dot products of [out, in] rows
(the first version of this backend) and BLAS: 1 row 16.1 / 16.5 / 21.6, 8 rows 15.1 / 34.0 / 46,
16 rows 22.6 / 40.6 / 60.

The decode step (numba_decode) calls the panel intrinsics too; numba_cache keeps compiled kernels from
going stale when a file they call into changes.
"""
from __future__ import annotations

import numpy as np
from llvmlite import binding, ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .numba_cache import use_kernel_cache

use_kernel_cache()

PANEL = 32                                   # output rows per panel: two 16-lane vectors
# Batch rows per micro-kernel call: its 2 NB accumulators must stay in registers. AVX-512 has 32 registers of
# 16 floats: 8 rows, 16 accumulators, with room for the weights and the broadcast input. AVX2 has 16 of 8
# floats, a 16-float vector taking two: 2 rows (8 registers of sums). Only the AVX-512 case is measured here.
NB = 8 if binding.get_host_cpu_features().get("avx512f") else 2
QBLOCK = 32                                  # int8 weights per float32 scale, along the input dimension

F32 = ir.FloatType()
I32 = ir.IntType(32)
V16 = ir.VectorType(F32, 16)
V16I8 = ir.VectorType(ir.IntType(8), 16)


def _pointer(context, builder, array_type, array, indices):
    """The address of array[indices] (no wraparound, no bounds check)."""
    a = context.make_array(array_type)(context, builder, array)
    return cgutils.get_item_pointer2(context, builder, a.data, cgutils.unpack_tuple(builder, a.shape),
                                     cgutils.unpack_tuple(builder, a.strides), array_type.layout, indices)


def _vector(builder, pointer, offset, vector_type=V16):
    """A pointer to the vector at pointer + offset elements (offset a Python int or an LLVM value). Loads and
    stores through it must say align=4 (1 for int8): numpy aligns arrays to 16 bytes at best, and LLVM
    would otherwise assume a whole vector's alignment (64 bytes) and use aligned moves, which fault."""
    if isinstance(offset, int):
        offset = ir.Constant(ir.IntType(64), offset)
    return builder.bitcast(builder.gep(pointer, [offset]), vector_type.as_pointer())


def _splat(builder, scalar):
    lane0 = builder.insert_element(ir.Constant(V16, ir.Undefined), scalar, ir.Constant(I32, 0))
    zeros = ir.Constant(ir.VectorType(I32, 16), [0] * 16)
    return builder.shuffle_vector(lane0, ir.Constant(V16, ir.Undefined), zeros)


def _contiguous(*arrays) -> bool:
    """The micro-kernels step through rows by pointer: C-contiguous arrays only (others fail to compile)."""
    return all(isinstance(a, types.Array) and a.layout == "C" for a in arrays)


def _per_row_count(context, builder, nb, label: str, emit) -> None:
    """A switch on the row count nb: `emit(n)` writes the code specialised for n rows, for each n in 1..NB
    (so that each n's sums live in registers); a count outside 1..NB does nothing."""
    intp = context.get_value_type(types.intp)
    end = builder.append_basic_block(f"{label}.end")
    switch = builder.switch(nb, end)
    for n in range(1, NB + 1):
        case = builder.append_basic_block(f"{label}.rows{n}")
        switch.add_case(ir.Constant(intp, n), case)
        builder.position_at_end(case)
        emit(n)
        builder.branch(end)
    builder.position_at_end(end)


def _panel_codegen(quantized: bool):
    """out[b0 + b, 32 p : 32 p + 32] = x[b0 + b] @ panel p, for b < nb (1..NB, one specialised loop each)."""
    def codegen(context, builder, signature, args):
        if quantized:
            x, b0, nb, weights, scales, p, out = args
            x_type, _, _, w_type, s_type, _, out_type = signature.args
        else:
            x, b0, nb, weights, p, out = args
            x_type, _, _, w_type, _, out_type = signature.args
        intp = context.get_value_type(types.intp)
        zero, block = ir.Constant(intp, 0), ir.Constant(intp, QBLOCK)
        K = cgutils.unpack_tuple(builder, context.make_array(x_type)(context, builder, x).shape)[1]
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(V16, [V16, V16, V16]),
                                             "llvm.fma.v16f32")
        sums = [[cgutils.alloca_once(builder, V16) for _ in range(2)] for _ in range(NB)]
        panel = _pointer(context, builder, w_type, weights, [p, zero, zero])          # [K, 32]

        def rows_of(n):
            rows = [_pointer(context, builder, x_type, x, [builder.add(b0, ir.Constant(intp, b)), zero])
                    for b in range(n)]
            for b in range(n):
                for half in range(2):
                    builder.store(ir.Constant(V16, [0.0] * 16), sums[b][half])

            def accumulate(k, w):                # sums[b] += w * x[b0 + b, k], w the two weight vectors at k
                for b in range(n):
                    xk = _splat(builder, builder.load(builder.gep(rows[b], [k])))
                    for half in range(2):
                        builder.store(builder.call(fma, [w[half], xk, builder.load(sums[b][half])]), sums[b][half])

            if quantized:                        # int8 weights times the scales of their block of 32 inputs
                scale_panel = _pointer(context, builder, s_type, scales, [p, zero, zero])      # [K / 32, 32]
                with cgutils.for_range(builder, builder.udiv(K, block)) as blocks:
                    at = builder.mul(blocks.index, ir.Constant(intp, PANEL))
                    scale = [builder.load(_vector(builder, scale_panel, builder.add(
                        at, ir.Constant(intp, 16 * h))), align=4) for h in range(2)]
                    with cgutils.for_range(builder, block) as inner:
                        k = builder.add(builder.mul(blocks.index, block), inner.index)
                        at = builder.mul(k, ir.Constant(intp, PANEL))
                        w = [builder.fmul(builder.sitofp(builder.load(
                            _vector(builder, panel, builder.add(at, ir.Constant(intp, 16 * h)), V16I8), align=1),
                            V16), scale[h]) for h in range(2)]
                        accumulate(k, w)
            else:
                with cgutils.for_range(builder, K) as loop:
                    at = builder.mul(loop.index, ir.Constant(intp, PANEL))
                    accumulate(loop.index, [builder.load(_vector(builder, panel, builder.add(
                        at, ir.Constant(intp, 16 * h))), align=4) for h in range(2)])
            column = builder.mul(p, ir.Constant(intp, PANEL))
            for b in range(n):
                target = _pointer(context, builder, out_type, out, [builder.add(b0, ir.Constant(intp, b)), column])
                for half in range(2):
                    builder.store(builder.load(sums[b][half]), _vector(builder, target, 16 * half), align=4)

        _per_row_count(context, builder, nb, "panel", rows_of)
        return context.get_dummy_value()
    return codegen


@intrinsic
def panel_f32(typingctx, x, b0, nb, weights, p, out):
    """x [B, K], weights [P, K, 32] float32, out [B, 32 P]."""
    if _contiguous(x, weights, out):
        return types.void(x, types.intp, types.intp, weights, types.intp, out), _panel_codegen(False)


@intrinsic
def panel_q8(typingctx, x, b0, nb, q, scales, p, out):
    """x [B, K], q [P, K, 32] int8, scales [P, K / 32, 32] float32, out [B, 32 P]."""
    if _contiguous(x, q, scales, out):
        return types.void(x, types.intp, types.intp, q, scales, types.intp, out), _panel_codegen(True)


def _unpack_codegen(quantized: bool):
    """out[row, column : column + 32] = weights of panel p at input k (dequantized)."""
    def codegen(context, builder, signature, args):
        if quantized:
            q, scales, p, k, out, row, column = args
            w_type, s_type, _, _, out_type, _, _ = signature.args
        else:
            q, p, k, out, row, column = args
            w_type, _, _, out_type, _, _ = signature.args
        intp = context.get_value_type(types.intp)
        source = _pointer(context, builder, w_type, q, [p, k, ir.Constant(intp, 0)])
        target = _pointer(context, builder, out_type, out, [row, column])
        if quantized:
            scale = _pointer(context, builder, s_type, scales, [p, builder.udiv(k, ir.Constant(intp, QBLOCK)),
                                                                 ir.Constant(intp, 0)])
        for half in range(2):
            if quantized:
                value = builder.fmul(builder.sitofp(builder.load(_vector(builder, source, 16 * half, V16I8),
                                                                 align=1), V16),
                                     builder.load(_vector(builder, scale, 16 * half), align=4))
            else:
                value = builder.load(_vector(builder, source, 16 * half), align=4)
            builder.store(value, _vector(builder, target, 16 * half), align=4)
        return context.get_dummy_value()
    return codegen


@intrinsic
def unpack_f32(typingctx, weights, p, k, out, row, column):
    if _contiguous(weights, out):
        return types.void(weights, types.intp, types.intp, out, types.intp, types.intp), _unpack_codegen(False)


@intrinsic
def unpack_q8(typingctx, q, scales, p, k, out, row, column):
    if _contiguous(q, scales, out):
        return types.void(q, scales, types.intp, types.intp, out, types.intp, types.intp), _unpack_codegen(True)


def _block16_codegen(context, builder, signature, args):
    """out[o0 + r, column : column + 16] += sum over k < count of x[x0 + r, k0 + k] * W[k, 0:16], r < nb
    (1..NB, one specialised loop each), W's row k the 16 floats at address + 4 k stride."""
    x, x0, k0, nb, count, address, stride, out, o0, column = args
    x_type, out_type = signature.args[0], signature.args[7]
    intp = context.get_value_type(types.intp)
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(V16, [V16, V16, V16]), "llvm.fma.v16f32")
    sums = [cgutils.alloca_once(builder, V16) for _ in range(NB)]
    base = builder.inttoptr(address, F32.as_pointer())

    def rows_of(n):
        rows = [_pointer(context, builder, x_type, x, [builder.add(x0, ir.Constant(intp, r)), k0]) for r in range(n)]
        for r in range(n):
            builder.store(ir.Constant(V16, [0.0] * 16), sums[r])
        with cgutils.for_range(builder, count) as loop:
            w = builder.load(_vector(builder, base, builder.mul(loop.index, stride)), align=4)
            for r in range(n):
                xk = _splat(builder, builder.load(builder.gep(rows[r], [loop.index])))
                builder.store(builder.call(fma, [w, xk, builder.load(sums[r])]), sums[r])
        for r in range(n):
            target = _vector(builder, _pointer(context, builder, out_type, out,
                                               [builder.add(o0, ir.Constant(intp, r)), column]), 0)
            builder.store(builder.fadd(builder.load(target, align=4), builder.load(sums[r])), target, align=4)

    _per_row_count(context, builder, nb, "block16", rows_of)
    return context.get_dummy_value()


@intrinsic
def block16(typingctx, x, x0, k0, nb, count, address, stride, out, o0, column):
    """A product of nb <= NB rows of x [R, K] (from column k0, count of them) by a [count, 16] float32 block at
    an address, rows `stride` floats apart, added into 16 columns of out [R', C]: the decode step's attention
    products (queries by a run of keys; weights by a run of values), read straight from the caches."""
    if _contiguous(x, out):
        return types.void(x, types.intp, types.intp, types.intp, types.intp, types.int64, types.intp, out,
                          types.intp, types.intp), _block16_codegen


def pack_shape(shape: tuple) -> tuple:
    """The panels' shape of an [in, out] = [K, M] matrix: [ceil(M / 32), K, 32]."""
    K, M = shape
    return -(-M // PANEL), K, PANEL


def pack(matrix: np.ndarray) -> np.ndarray:
    """An [in, out] = [K, M] matrix as panels [ceil(M / 32), K, 32]: panel p holds outputs 32p..32p+31,
    input by input. Outputs past M are zero rows."""
    K, M = matrix.shape
    panels, _, _ = pack_shape(matrix.shape)
    padded = np.zeros((K, panels * PANEL), dtype=matrix.dtype)
    padded[:, :M] = matrix
    return np.ascontiguousarray(padded.reshape(K, -1, PANEL).transpose(1, 0, 2))


def quantize(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q8_0 of an [in, out] = [K, M] float32 matrix, K a multiple of 32: each output's inputs in blocks of 32,
    a float32 scale per block = max|w| / 127, int8 values rounded to nearest (w ≈ q * scale within scale / 2).
    Returns q [K, M] int8 and scales [K / 32, M]."""
    K, M = matrix.shape
    q, scales = np.empty((K, M), dtype=np.int8), np.empty((K // QBLOCK, M), dtype=np.float32)
    for start in range(0, M, 4096):                                 # a few MB of float temporaries at a time
        blocks = np.asarray(matrix[:, start:start + 4096], dtype=np.float32).reshape(K // QBLOCK, QBLOCK, -1)
        scale = np.abs(blocks).max(axis=1) / np.float32(127)        # [K / 32, columns]
        inverse = np.divide(np.float32(1), scale, out=np.zeros_like(scale), where=scale > 0)
        q[:, start:start + 4096] = np.rint(blocks * inverse[:, None, :]).reshape(K, -1)
        scales[:, start:start + 4096] = scale
    return q, scales


@njit(inline="always")
def part_of(n, part, parts):
    return n * part // parts, n * (part + 1) // parts


@njit(parallel=True, cache=True, nogil=True)
def matmul_f32(x, weights, out, parts):
    """out [B, 32 P] = x [B, K] @ the panels weights [P, K, 32]: each of `parts` threads a contiguous share
    of the panels, each panel read once from memory for up to NB rows, again from L2 for the next NB.
    (`parts`: the caller's numba.get_num_threads(); calling that in here stops cache=True working.)"""
    for part in prange(parts):
        p0, p1 = part_of(weights.shape[0], part, parts)
        for p in range(p0, p1):
            for b in range(0, x.shape[0], NB):
                panel_f32(x, b, min(NB, x.shape[0] - b), weights, p, out)


@njit(parallel=True, cache=True, nogil=True)
def matmul_q8(x, q, scales, out, parts):
    """The same with int8 panels q [P, K, 32] and their scales [P, K / 32, 32], dequantized as they are read:
    memory traffic is the int8 weights plus 1/8 of scales, 3.6x less than float32."""
    for part in prange(parts):
        p0, p1 = part_of(q.shape[0], part, parts)
        for p in range(p0, p1):
            for b in range(0, x.shape[0], NB):
                panel_q8(x, b, min(NB, x.shape[0] - b), q, scales, p, out)


@njit(parallel=True, cache=True)
def unpack(weights, p0, out, parts):
    """out [K, T] = the float32 [in, out] matrix of panels p0 .. p0 + T/32 - 1: a tile for BLAS (prompts)."""
    for part in prange(parts):
        k0, k1 = part_of(out.shape[0], part, parts)
        for k in range(k0, k1):
            for p in range(out.shape[1] // PANEL):
                unpack_f32(weights, p0 + p, k, out, k, p * PANEL)


@njit(parallel=True, cache=True)
def dequantize(q, scales, p0, out, parts):
    """The same for int8 panels: out [K, T] in float32."""
    for part in prange(parts):
        k0, k1 = part_of(out.shape[0], part, parts)
        for k in range(k0, k1):
            for p in range(out.shape[1] // PANEL):
                unpack_q8(q, scales, p0 + p, k, out, k, p * PANEL)
