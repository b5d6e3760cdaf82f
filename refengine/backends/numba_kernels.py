"""The numba backend's elementwise kernels (RMSNorm, SwiGLU, a float32 exp), for a prompt's rows and, row by
row, inside the one-call decode step (numba_decode). The weight products are numba_matmul's.

Everything stays float32: a float64 value (a Python float, `1.0 / D`) would silently upcast the arithmetic
around it, so constants are wrapped in np.float32 and eps arrives as one. `FAST` lets LLVM reassociate
float sums (and fuse a*b+c): without it a running sum is one serial chain that no compiler may split into
SIMD lanes. The sums still run in float32; only their order changes (the freedom BLAS takes too). NaN and
inf keep their meaning (no `nnan`/`ninf`).

Notation as in numpy_backend: N rows, D hidden size, F MLP size.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .numba_cache import use_kernel_cache

use_kernel_cache()

FAST = {"reassoc", "contract"}


@intrinsic
def _float_with_bits(typingctx, bits):
    """The float32 whose bit pattern is the int32 `bits`."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return sig, codegen


@njit(inline="always", fastmath=FAST)
def exp32(x):
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


@njit(inline="always", fastmath=FAST)
def rms_norm_row(x, n, weight, eps, out):
    """out[n] = x[n] / sqrt(mean(x[n]²) + eps) * weight, as numpy_backend.rms_norm orders it."""
    sum_squares = np.float32(0)
    for k in range(x.shape[1]):
        sum_squares += x[n, k] * x[n, k]
    scale = np.float32(1) / np.sqrt(sum_squares * np.float32(1.0 / x.shape[1]) + eps)
    for k in range(x.shape[1]):
        out[n, k] = x[n, k] * scale * weight[k]


@njit(fastmath=FAST, cache=True)
def rms_norm(x, weight, eps, out):
    """out [N, D] = RMSNorm of every row of x [N, D]."""
    for n in range(x.shape[0]):
        rms_norm_row(x, n, weight, eps, out)


@njit(inline="always", fastmath=FAST, error_model="numpy")
def swiglu_row(gate_up, n, out):
    """out[n] [F] = silu(gate) * up, gate_up[n] the two side by side (its first 2F columns); silu(x) =
    x / (1 + e^-x), the reference's x (1 + tanh(x / 2)) / 2 rearranged. error_model="numpy": numba's
    default checks every division for a zero divisor, a branch that stops the loop vectorizing (9x slower)."""
    F = out.shape[1]
    for f in range(F):
        gate = gate_up[n, f]
        out[n, f] = gate / (np.float32(1) + exp32(-gate)) * gate_up[n, F + f]


@njit(fastmath=FAST, error_model="numpy", cache=True)
def swiglu(gate_up, out):
    """out [N, F] = SwiGLU of every row of gate_up [N, 2F]."""
    for n in range(gate_up.shape[0]):
        swiglu_row(gate_up, n, out)
