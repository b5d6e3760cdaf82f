"""The numba backend: CPU kernels for the decode loop, the numpy reference everywhere else.

Why: OpenBLAS's sgemm packs the whole weight matrix on every call, so x @ W over all of a model's weights
costs nearly as much for 2 rows as for 8 (SmolLM2-135M on 2 cores: 22 ms for 1 row, 52 for 2, 46 for 8),
and batching streams gains little. Here a small batch (up to MAX_KERNEL_ROWS rows) multiplies each weight
row, read once from memory, with all its rows (numba_kernels.matmul_f32); larger ones (a prompt) stay on
BLAS. A decode step (every sequence one new token) also gets its RoPE + KV store and its attention over all
sequences as one kernel call per layer each, instead of numpy's handful of calls per sequence.

`weights="q8"` keeps every matrix (lm_head included; the embedding stays float32) as int8 blocks of 32
inputs with a float32 scale each (Q8_0), dequantized inside the product: 3.6x fewer bytes to stream per
token. Models in another dtype (tests build float64 ones) are left unprepared and take the numpy path.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace

import numba
import numpy as np

from . import numba_kernels as kernels
from .numpy_backend import NumpyBackend, Step

# The most rows a product takes through the numba kernel; more go to BLAS. Measured on this 2-core machine
# (one pass of x @ W over all of SmolLM2-135M's weights, ms, numba kernel / BLAS): 16 rows 44 / 79,
# 24 rows 61 / 86, 32 rows 81 / 95, 48 rows 118 / 118, 64 rows 152 / 139. Past 48 BLAS's packing pays off.
MAX_KERNEL_ROWS = 48
# The same for int8 weights against dequantizing tiles of Q8_TILE_ROWS rows for BLAS: kernel / tiles
# 16 rows 27 / 113, 32 rows 66 / 132, 48 rows 103 / 153, 64 rows 138 / 176.
MAX_Q8_KERNEL_ROWS = 64
Q8_TILE_ROWS = 1024                          # 2.4 MB float32 tiles of a 576-input matrix: L2/L3-sized
# Past this many runnable threads per core (the 1-minute load average), steps run their kernels on one thread.
# A parallel kernel splits its rows evenly and waits for every thread at its end, so when other processes
# hold the cores each of a step's ~150 kernel calls waits for its second thread to be scheduled: measured
# with a load average of 10 on 2 cores, 1.7 s per SmolLM2 token on two threads, 0.19 s on one.
CROWDED_LOAD_PER_CORE = 2.0


class Rows:
    """A float32 weight matrix prepared for the kernels: `rows` [out, in] contiguous, HF's own layout, so a
    dot product reads a weight row in order. Reads as the [in, out] matrix it replaces (np.asarray)."""

    def __init__(self, rows: np.ndarray):
        self.rows = rows                                             # [out, in]

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows.shape[::-1]

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.rows.T, dtype=dtype)                  # [in, out]


class Q8Rows(Rows):
    """An int8 weight matrix: q [out, in] and a float32 scale per 32 inputs, scales [out, in / 32]."""

    def __init__(self, q: np.ndarray, scales: np.ndarray):
        self.q, self.scales = q, scales

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape[::-1]

    @property
    def nbytes(self) -> int:
        return self.q.nbytes + self.scales.nbytes

    @property
    def rows(self) -> np.ndarray:
        """The dequantized [out, in] matrix (a float32 copy)."""
        out = np.empty(self.q.shape, dtype=np.float32)
        kernels.dequantize(self.q, self.scales, 0, out, numba.get_num_threads())
        return out


@dataclass
class DecodeStep(Step):
    """A step in which every sequence adds one token, with the table of cache arrays the decode kernels read
    (numba_kernels.decode_attention): sequence b's blocks are first_block[b] .. first_block[b+1]-1, its own
    arrays the last of them, `counts` positions of each in use. Cache arrays only change on `reserve`, which
    comes before the step starts, so the table holds for all layers of the step."""
    arrays: list = None                      # the tabled arrays, kept alive while the step runs
    keys_at: np.ndarray = None               # [blocks] address of keys [L, Hkv, hd, capacity]
    values_at: np.ndarray = None             # [blocks] address of values [L, Hkv, capacity, hd]
    capacity: np.ndarray = None              # [blocks]
    first_block: np.ndarray = None           # [B + 1]
    counts: np.ndarray = None                # [blocks]
    own: np.ndarray = None                   # [B] each sequence's own arrays in the table
    slots: np.ndarray = None                 # [B] index of the new position in its own arrays
    rope_cos: np.ndarray = None              # [P, hd/2] the model's tables
    rope_sin: np.ndarray = None


class NumbaBackend(NumpyBackend):
    name = "numba"

    def __init__(self, weights: str = "f32"):
        super().__init__(np)
        self.weights = weights
        self.threads = numba.get_num_threads()  # for uncrowded steps
        self.cores = len(os.sched_getaffinity(0))
        self._step_threads, self._load_checked = self.threads, -1.0

    def _set_threads(self) -> None:
        """numba's thread count for this step's kernels: one while the machine is crowded (the load average
        read at most once a second). numba keeps the count per calling thread, so it is set every step; the
        kernels split their rows into as many parts (numba.get_num_threads() costs 4 us a call)."""
        now = time.monotonic()
        if now - self._load_checked >= 1.0:
            self._load_checked = now
            crowded = os.getloadavg()[0] > CROWDED_LOAD_PER_CORE * self.cores
            self._step_threads = 1 if crowded else self.threads
        numba.set_num_threads(self._step_threads)

    # ---- weights ----

    def prepare(self, weights):
        """Re-lay each matrix as [out, in] rows (f32) or quantize it (q8). One copy of each matrix is kept:
        a tied lm_head (a transposed copy of the embedding) becomes the embedding itself, read as rows."""
        if weights.embed.dtype != np.float32:
            return weights                                           # the numpy path, unchanged
        self.warm_up()
        matrix = self.prepare_matrix
        layers = tuple(replace(layer, qkv=matrix(layer.qkv), out=matrix(layer.out), gate_up=matrix(layer.gate_up),
                               down=matrix(layer.down)) for layer in weights.layers)
        lm_head = weights.lm_head                                    # [D, V]
        if self.weights == "f32" and lm_head.shape == weights.embed.shape[::-1] and np.array_equal(
                lm_head.T, weights.embed):
            lm_head = Rows(weights.embed)                            # tied: [V, D] is already its rows
        else:
            lm_head = matrix(lm_head)
        return replace(weights, layers=layers, lm_head=lm_head)

    def prepare_matrix(self, matrix: np.ndarray) -> Rows:
        """[in, out] -> rows [out, in], int8 blocks for q8 (when the inputs come in whole blocks of 32)."""
        if self.weights == "q8" and matrix.shape[0] % kernels.QBLOCK == 0:
            return Q8Rows(*kernels.quantize(matrix.T))
        return Rows(np.ascontiguousarray(matrix.T))

    def warm_up(self) -> None:
        """Compile every kernel now, on tiny inputs, rather than at the first request. numba compiles at first
        call, ~1 min for all of them on 2 cores; cache=True keeps the result on disk for later starts."""
        from tqdm import tqdm
        f32 = np.float32
        x, out = np.ones((1, 32), f32), np.empty((1, 4), f32)
        q, scales = kernels.quantize(np.ones((4, 32), f32))
        cache = [np.zeros((1, 1, 2, 4), f32), np.zeros((1, 1, 4, 2), f32)]        # keys, values
        keys_at, values_at = (np.array([a.__array_interface__["data"][0]]) for a in cache)
        one, zero, four = np.ones(1, np.int64), np.zeros(1, np.int64), np.full(1, 4)
        table = np.ones((4, 1), f32)
        runs = [
            lambda: kernels.matmul_f32(x, np.ones((4, 32), f32), out, 1),
            lambda: kernels.matmul_q8(x, q, scales, out, 1),
            lambda: kernels.dequantize(q, scales, 0, np.empty((4, 32), f32), 1),
            lambda: kernels.rms_norm(x, x[0], f32(1e-5), np.empty_like(x)),
            lambda: kernels.rope_and_store(np.ones((1, 6), f32), zero, table, table, keys_at, values_at, four,
                                           zero, zero, 0, np.empty((1, 1, 2), f32)),
            lambda: kernels.decode_attention(np.ones((1, 1, 2), f32), keys_at, values_at, four,
                                             np.array([0, 1]), one, 0, 0, 1, np.empty((1, 2), f32)),
        ]
        for run in tqdm(runs, desc="compiling numba kernels (first start only)", unit="kernel", delay=2,
                        leave=False):
            run()

    # ---- operations ----

    def matmul(self, x, w):
        if not isinstance(w, Rows) or x.dtype != np.float32:
            return x @ np.asarray(w)                                 # unprepared weights: the reference
        x = np.ascontiguousarray(x)
        if isinstance(w, Q8Rows):
            if x.shape[0] > MAX_Q8_KERNEL_ROWS:
                return self._tiled_q8(x, w)
            out = np.empty((x.shape[0], w.q.shape[0]), dtype=np.float32)            # [N, out]
            kernels.matmul_q8(x, w.q, w.scales, out, self._step_threads)
            return out
        if x.shape[0] > MAX_KERNEL_ROWS:
            return x @ w.rows.T                                      # [N, in] @ [in, out] (BLAS, transposed)
        out = np.empty((x.shape[0], w.rows.shape[0]), dtype=np.float32)             # [N, out]
        kernels.matmul_f32(x, w.rows, out, self._step_threads)
        return out

    def _tiled_q8(self, x, w: Q8Rows):
        """A prompt's product with int8 weights: BLAS on float32 tiles of Q8_TILE_ROWS rows dequantized in
        turn, so no float32 copy of the whole matrix is ever made."""
        M, K = w.q.shape
        out = np.empty((x.shape[0], M), dtype=np.float32)                           # [N, out]
        tile = np.empty((min(Q8_TILE_ROWS, M), K), dtype=np.float32)                # [T, in]
        for j0 in range(0, M, Q8_TILE_ROWS):
            rows = tile[:min(Q8_TILE_ROWS, M - j0)]
            kernels.dequantize(w.q, w.scales, j0, rows, self._step_threads)
            out[:, j0:j0 + rows.shape[0]] = x @ rows.T                             # [N, in] @ [in, T]
        return out

    def rms_norm(self, x, weight, eps: float):
        if x.dtype != np.float32 or weight.dtype != np.float32:
            return super().rms_norm(x, weight, eps)
        x = np.ascontiguousarray(x)
        out = np.empty_like(x)                                       # [N, D]
        kernels.rms_norm(x, weight, np.float32(eps), out)
        return out

    # swiglu stays numpy's: its SIMD tanh beats numba's scalar libm call 3-9x.

    def start_step(self, config, rope_cos, rope_sin, caches, lengths, ids) -> Step:
        step = super().start_step(config, rope_cos, rope_sin, caches, lengths, ids)
        self._set_threads()
        if max(lengths) != 1 or rope_cos.dtype != np.float32 or any(
                c.keys.dtype != np.float32 or c.read_only for c in caches):
            return step                              # a prompt chunk in the batch, or float64: numpy's way
        arrays, first, counts = [], [0], []
        for cache, end in zip(caches, step.ends):
            for keys, values, count in cache.blocks(end):
                arrays += (keys, values)
                counts.append(count)
            first.append(len(counts))
        if not all(a.flags.c_contiguous for a in arrays):
            return step
        addresses = np.array([a.__array_interface__["data"][0] for a in arrays], dtype=np.int64)
        first_block = np.array(first, dtype=np.int64)
        return DecodeStep(**vars(step), arrays=arrays, keys_at=addresses[0::2], values_at=addresses[1::2],
                          capacity=np.array([k.shape[3] for k in arrays[0::2]], dtype=np.int64),
                          first_block=first_block, counts=np.array(counts, dtype=np.int64),
                          own=first_block[1:] - 1,
                          slots=np.array([c.length - c.start for c in caches], dtype=np.int64),
                          rope_cos=rope_cos, rope_sin=rope_sin)

    def rope_and_store(self, qkv, step: Step, layer: int):
        if not isinstance(step, DecodeStep):
            return super().rope_and_store(qkv, step, layer)
        config = step.config
        q = np.empty((qkv.shape[0], config.num_heads, config.head_dim), dtype=np.float32)   # [B, H, hd]
        kernels.rope_and_store(np.ascontiguousarray(qkv), step.positions, step.rope_cos, step.rope_sin,
                               step.keys_at, step.values_at, step.capacity, step.own, step.slots, layer, q)
        return q

    def attention(self, q, step: Step, layer: int):
        if not isinstance(step, DecodeStep):
            return super().attention(q, step, layer)
        out = np.empty((q.shape[0], q.shape[1] * q.shape[2]), dtype=np.float32)     # [B, H hd]
        kernels.decode_attention(q, step.keys_at, step.values_at, step.capacity, step.first_block, step.counts,
                                 layer, step.config.sliding_window or 0, step.config.num_kv_heads, out)
        return out
