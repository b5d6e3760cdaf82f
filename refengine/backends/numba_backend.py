"""The numba backend: CPU kernels for the decode loop, the numpy reference everywhere else.

Why: OpenBLAS's sgemm packs the whole weight matrix on every call, so x @ W over all of a model's weights
costs nearly as much for 2 rows as for 8 (SmolLM2-135M on 2 cores: 22 ms for 1 row, 52 for 2, 46 for 8),
and batching streams gains little. Here the weights are laid out once, at load, in panels of 32 outputs
that a small batch (up to MAX_KERNEL_ROWS rows) multiplies in one pass, each weight read once from memory
for 8 rows at a time (numba_matmul); larger batches (a prompt) stay on BLAS, over the panels unpacked a
tile at a time. A decode step (every sequence one new token) runs all its layers in one compiled call
(numba_decode), attention over all sequences included, instead of numpy's handful of calls per sequence.

`weights="q8"` keeps every matrix (lm_head included; the embedding stays float32) as int8 blocks of 32
inputs with a float32 scale each (Q8_0), dequantized inside the product: 3.6x fewer bytes to stream per
token. Models in another dtype (tests build float64 ones) are left unprepared and take the numpy path.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, replace
from types import SimpleNamespace

import numba
import numpy as np

from . import numba_decode as decode
from . import numba_kernels as kernels
from . import numba_matmul as products
from .numpy_backend import NumpyBackend, Step

# The most rows a product takes through the numba kernel; more (a prompt) go to BLAS. Measured on this 2-core
# Zen 4 machine (AVX-512), one pass over all of SmolLM2-135M's weights, ms, kernel / BLAS on tiles unpacked
# from the panels / numpy's BLAS on plain [in, out] arrays: 1 row 15.2 / - / 19.0, 8 rows 12.1 / - / 48,
# 16 rows 22.4 / - / 60, 64 rows 80.7 / 154 / 126, 256 rows 311 / 414 / 411, 512 rows 616 / - / 805.
# The kernel beat BLAS at every size measured, so there is no crossover here: this limit keeps prompts on
# BLAS, as the issue asks (its blocking is the tested path for long prompts, and on AVX2 machines the
# kernel takes 2 rows a pass instead of 8 and loses its lead sooner), and costs this machine's prefill ~1.3x.
MAX_KERNEL_ROWS = 64
# The same for int8 weights, kernel / BLAS on dequantized tiles: 1 row 4.2 / 30.7, 16 rows 25.4 / 68.6,
# 64 rows 95 / 144, 256 rows 374 / 396.
MAX_Q8_KERNEL_ROWS = 64
TILE_PANELS = 32                             # 1024 outputs: 2.4 MB float32 tiles of a 576-input matrix
# Past this many runnable threads per core (the 1-minute load average), steps run their kernels on one thread.
# A parallel kernel splits its rows evenly and waits for every thread at its end, so when other processes
# hold the cores each of a step's ~150 kernel calls waits for its second thread to be scheduled: measured
# with a load average of 10 on 2 cores, 1.7 s per SmolLM2 token on two threads, 0.19 s on one.
CROWDED_LOAD_PER_CORE = 2.0


class Panels:
    """A float32 weight matrix prepared for the kernels: the [in, out] = [K, M] matrix as panels [P, K, 32]
    of 32 outputs each (numba_matmul.pack), read in one stream per panel. Reads as the [K, M] matrix it
    replaces (np.asarray)."""

    def __init__(self, shape: tuple, weights: np.ndarray):
        self.shape = shape                                           # (K, M)
        self.weights = weights                                       # [P, K, 32]

    @classmethod
    def stack(cls, matrices: list) -> tuple[list, np.ndarray, None]:
        """Equal-shaped matrices (one per layer) packed into one [L, P, K, 32] array, and each as Panels of
        its own slice of it; no scales."""
        stacked = np.empty((len(matrices), *products.pack_shape(matrices[0].shape)), dtype=np.float32)
        for i, matrix in enumerate(matrices):
            stacked[i] = products.pack(matrix)
        return [cls(m.shape, stacked[i]) for i, m in enumerate(matrices)], stacked, None

    @property
    def panels(self) -> int:
        return self.weights.shape[0]

    @property
    def nbytes(self) -> int:
        return self.weights.nbytes

    def product(self, x, out, parts: int) -> None:
        products.matmul_f32(x, self.weights, out, parts)             # [B, K] -> [B, 32 P]

    def tile(self, p0: int, out, parts: int) -> None:
        products.unpack(self.weights, p0, out, parts)                # [K, T] float32

    def __array__(self, dtype=None, copy=None):
        out = np.empty((self.shape[0], self.panels * products.PANEL), dtype=np.float32)
        self.tile(0, out, numba.get_num_threads())
        return np.asarray(out[:, :self.shape[1]], dtype=dtype)       # [K, M]


class Q8Panels(Panels):
    """An int8 weight matrix: panels q [P, K, 32] and a float32 scale per 32 inputs, scales [P, K / 32, 32]."""

    def __init__(self, shape: tuple, weights: np.ndarray, scales: np.ndarray):
        super().__init__(shape, weights)
        self.scales = scales

    @classmethod
    def stack(cls, matrices: list) -> tuple[list, np.ndarray, np.ndarray]:
        """The same, quantized: [L, P, K, 32] int8 and their scales [L, P, K / 32, 32]."""
        K, M = matrices[0].shape
        stacked = np.empty((len(matrices), *products.pack_shape((K, M))), dtype=np.int8)
        scales = np.empty((len(matrices), *products.pack_shape((K // products.QBLOCK, M))), dtype=np.float32)
        for i, matrix in enumerate(matrices):
            q, scale = products.quantize(matrix)                     # [K, M] int8, [K / 32, M]
            stacked[i], scales[i] = products.pack(q), products.pack(scale)
        return [cls(m.shape, stacked[i], scales[i]) for i, m in enumerate(matrices)], stacked, scales

    @property
    def nbytes(self) -> int:
        return self.weights.nbytes + self.scales.nbytes

    def product(self, x, out, parts: int) -> None:
        products.matmul_q8(x, self.weights, self.scales, out, parts)

    def tile(self, p0: int, out, parts: int) -> None:
        products.dequantize(self.weights, self.scales, p0, out, parts)


@dataclass(frozen=True)
class StackedLayers:
    """Every layer's weights of each kind in one array, [L, ...], as the one-call decode step reads them
    (numba_decode.decode_layers); each layer's Panels are views of these. Scales are None for float32."""
    attn_norm: np.ndarray                    # [L, D]
    qkv: np.ndarray                          # [L, P, D, 32]
    qkv_scales: np.ndarray | None
    qkv_bias: np.ndarray | None              # [L, (H + 2 Hkv) hd]
    out: np.ndarray                          # [L, P, H hd, 32]
    out_scales: np.ndarray | None
    mlp_norm: np.ndarray                     # [L, D]
    gate_up: np.ndarray                      # [L, P, D, 32]
    gate_up_scales: np.ndarray | None
    down: np.ndarray                         # [L, P, F, 32]
    down_scales: np.ndarray | None

    def decode(self, x, step: "DecodeStep", threads: int) -> None:
        """x [B, D] through every layer, in place (numba_decode.decode_layers)."""
        config = step.config
        decode.decode_layers(
            x, self.attn_norm, self.qkv, self.qkv_scales, self.qkv_bias, self.out, self.out_scales, self.mlp_norm,
            self.gate_up, self.gate_up_scales, self.down, self.down_scales, np.float32(config.rms_norm_eps),
            step.positions, step.rope_cos, step.rope_sin, step.keys_at, step.values_at, step.capacity,
            step.first_block, step.counts, step.own, step.slots, config.sliding_window or 0, config.num_heads,
            config.num_kv_heads, threads)


@dataclass
class DecodeStep(Step):
    """A step in which every sequence adds one token, with the table of cache arrays the decode kernels read
    (numba_decode.decode_layers): sequence b's blocks are first_block[b] .. first_block[b+1]-1, its own
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
        self.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
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
        """Each matrix (lm_head included) as panels, int8 ones for q8; each kind of layer matrix stacked
        [L, ...] for the one-call decode step (StackedLayers), the layers' Panels views of the stacks; the
        embedding stays as it is."""
        if weights.embed.dtype != np.float32:
            return weights                                           # the numpy path, unchanged
        layers = weights.layers
        panels, stacks = {}, {}
        for kind in ("qkv", "out", "gate_up", "down"):
            matrices = [getattr(layer, kind) for layer in layers]
            panels[kind], stacks[kind], stacks[kind + "_scales"] = self.panel_type(matrices[0]).stack(matrices)
        stacked = StackedLayers(attn_norm=np.stack([layer.attn_norm for layer in layers]),
                                qkv_bias=None if layers[0].qkv_bias is None else np.stack(
                                    [layer.qkv_bias for layer in layers]),
                                mlp_norm=np.stack([layer.mlp_norm for layer in layers]), **stacks)
        self.warm_up(stacked)
        layers = tuple(replace(layer, **{kind: panels[kind][i] for kind in panels}) for i, layer in enumerate(layers))
        return replace(weights, layers=layers, lm_head=self.prepare_matrix(weights.lm_head), stacked=stacked)

    def panel_type(self, matrix: np.ndarray) -> type:
        """Panels, or Q8Panels for q8 (when the inputs, [in, out], come in whole blocks of 32)."""
        return Q8Panels if self.weights == "q8" and matrix.shape[0] % products.QBLOCK == 0 else Panels

    def prepare_matrix(self, matrix: np.ndarray) -> Panels:
        """One [in, out] matrix as the kernels read it (lm_head; the layers' are stacked)."""
        return self.panel_type(matrix).stack([matrix])[0][0]

    def warm_up(self, stacked: StackedLayers) -> None:
        """Compile every kernel now, on tiny inputs of the types `stacked` has, rather than at the first request.
        numba compiles at first call, ~1 min for all of them on 2 cores; cache=True keeps the result on disk
        for later starts. The tiny model: D = hd = 32, one head, F = 32, one layer, a cache of 4 positions."""
        from tqdm import tqdm
        f32 = np.float32
        x, out, tile = np.ones((1, 32), f32), np.empty((1, 96), f32), np.empty((32, 32), f32)
        panels, tiny = {}, {}
        for kind, shape in (("qkv", (32, 96)), ("out", (32, 32)), ("gate_up", (32, 64)), ("down", (32, 32))):
            kind_type = Panels if getattr(stacked, kind + "_scales") is None else Q8Panels
            (panels[kind],), tiny[kind], tiny[kind + "_scales"] = kind_type.stack([np.ones(shape, f32)])
        norms = np.ones((1, 32), f32)
        tiny = StackedLayers(attn_norm=norms, mlp_norm=norms, **tiny,
                             qkv_bias=None if stacked.qkv_bias is None else np.zeros((1, 96), f32))
        cache = [np.zeros((1, 1, 32, 4), f32), np.zeros((1, 1, 4, 32), f32)]      # keys, values
        zero, table = np.zeros(1, np.int64), np.ones((4, 16), f32)
        step = DecodeStep(config=SimpleNamespace(rms_norm_eps=1e-5, sliding_window=None, num_heads=1, num_kv_heads=1),
                          caches=[], lengths=[1], ids=zero, spans=[slice(0, 1)], positions=zero, cos=None, sin=None,
                          decode_only=False, arrays=cache, capacity=np.full(1, 4), first_block=np.array([0, 1]),
                          counts=np.ones(1, np.int64), own=zero, slots=zero, rope_cos=table, rope_sin=table,
                          **{f"{kind}_at": np.array([a.__array_interface__["data"][0]], dtype=np.int64)
                             for kind, a in zip(("keys", "values"), cache)})
        runs = [
            *(lambda p=p: p.product(x, out, 1) for p in panels.values()),
            *(lambda p=p: p.tile(0, tile, 1) for p in panels.values()),
            lambda: kernels.rms_norm(x, x[0], f32(1e-5), np.empty_like(x)),
            lambda: kernels.swiglu(x, np.empty((1, 16), f32)),
            lambda: tiny.decode(np.ones((1, 32), f32), step, 1),
        ]

        failures = []

        def compile_all():
            try:
                for run in tqdm(runs, desc="compiling numba kernels (first start only)", unit="kernel", delay=2,
                                leave=False):
                    run()
            except BaseException as error:
                failures.append(error)
        # On a thread that then ends: the first parallel kernel a thread runs gives it a team of OpenMP
        # threads for life, and while two teams exist (more OpenMP threads than cores) libgomp stops its idle
        # threads spinning, so every parallel kernel wakes them from sleep: 12-17 us a start instead of 1.5.
        # A model loaded on the main thread and served from the scheduler's thread decoded 25% slower so.
        compiling = threading.Thread(target=compile_all, name="refengine-numba-warm-up")
        compiling.start()
        compiling.join()
        if failures:
            raise failures[0]

    # ---- operations ----

    def matmul(self, x, w):
        if not isinstance(w, Panels) or x.dtype != np.float32:
            return x @ np.asarray(w)                                 # unprepared weights: the reference
        x = np.ascontiguousarray(x)
        M = w.shape[1]
        out = np.empty((x.shape[0], w.panels * products.PANEL), dtype=np.float32)    # [N, 32 P]
        if x.shape[0] <= (MAX_Q8_KERNEL_ROWS if isinstance(w, Q8Panels) else MAX_KERNEL_ROWS):
            w.product(x, out, self._step_threads)
        else:
            self._tiled_product(x, w, out)
        return out if out.shape[1] == M else np.ascontiguousarray(out[:, :M])       # [N, M]

    def _tiled_product(self, x, w: Panels, out) -> None:
        """A prompt's product on BLAS: the weights unpacked (dequantized) into [K, T] float32 tiles of
        TILE_PANELS panels in turn, so no float32 copy of the whole matrix is ever made."""
        K = w.shape[0]
        buffer = np.empty(K * min(TILE_PANELS, w.panels) * products.PANEL, dtype=np.float32)
        for p0 in range(0, w.panels, TILE_PANELS):
            columns = min(TILE_PANELS, w.panels - p0) * products.PANEL
            tile = buffer[:K * columns].reshape(K, columns)                         # [K, T]
            w.tile(p0, tile, self._step_threads)
            out[:, p0 * products.PANEL:p0 * products.PANEL + columns] = x @ tile   # [N, K] @ [K, T]

    def rms_norm(self, x, weight, eps: float):
        if x.dtype != np.float32 or weight.dtype != np.float32:
            return super().rms_norm(x, weight, eps)
        x = np.ascontiguousarray(x)
        out = np.empty_like(x)                                       # [N, D]
        kernels.rms_norm(x, weight, np.float32(eps), out)
        return out

    def swiglu(self, gate_up):
        if gate_up.dtype != np.float32:
            return super().swiglu(gate_up)
        gate_up = np.ascontiguousarray(gate_up)
        out = np.empty((gate_up.shape[0], gate_up.shape[1] // 2), dtype=np.float32)   # [N, F]
        kernels.swiglu(gate_up, out)
        return out

    def start_step(self, config, rope_cos, rope_sin, caches, lengths, ids) -> Step:
        self._set_threads()
        if max(lengths) != 1 or rope_cos.dtype != np.float32 or config.head_dim % 16 or any(
                c.keys.dtype != np.float32 or c.read_only for c in caches):
            return super().start_step(config, rope_cos, rope_sin, caches, lengths, ids)   # numpy's way
        arrays, first, counts = [], [0], []
        for cache in caches:
            for keys, values, count in cache.blocks(cache.length + 1):
                arrays += (keys, values)
                counts.append(count)
            first.append(len(counts))
        if not all(a.flags.c_contiguous for a in arrays):
            return super().start_step(config, rope_cos, rope_sin, caches, lengths, ids)
        addresses = np.array([a.__array_interface__["data"][0] for a in arrays], dtype=np.int64)
        first_block = np.array(first, dtype=np.int64)
        # no per-row cos and sin (numpy's rope_and_store gathers them): the kernel reads the tables at `positions`
        return DecodeStep(config=config, caches=caches, lengths=lengths, ids=ids,
                          spans=[slice(b, b + 1) for b in range(len(caches))],
                          positions=np.array([c.length for c in caches], dtype=np.int64), cos=None, sin=None,
                          decode_only=len(caches) > 1, arrays=arrays, keys_at=addresses[0::2],
                          values_at=addresses[1::2],
                          capacity=np.array([k.shape[3] for k in arrays[0::2]], dtype=np.int64),
                          first_block=first_block, counts=np.array(counts, dtype=np.int64),
                          own=first_block[1:] - 1,
                          slots=np.array([c.length - c.start for c in caches], dtype=np.int64),
                          rope_cos=rope_cos, rope_sin=rope_sin)

    def run_layers(self, weights, x, step: Step):
        if not isinstance(step, DecodeStep):
            return None                       # (a DecodeStep's float32 model has its layers stacked)
        weights.stacked.decode(x, step, self._step_threads)          # [B, D] in place
        return x
