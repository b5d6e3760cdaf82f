"""The cupy backend: the forward pass on an NVIDIA GPU.

Weights live on the device; the weight products are cuBLAS's sgemm, called directly (float32, TF32 off, so
logits match the numpy reference to float32 error; cupy's matmul refuses to run under graph capture, and
costs more Python per call: `cublas.py`); RMSNorm, RoPE + KV store, decode attention and SwiGLU are
kernels of ours (`cuda_kernels.py`). Logits come back to the host
only for the rows sampled.

The KV cache stays the engine's own per-sequence `KVCache` (cupy arrays): kernels reach every sequence's
arrays through a pointer table built once per step, so one launch serves the whole batch, whatever the
sequences' lengths, and a sequence read in two blocks (a prompt shared by n choices, then its own tokens).

A decode step (every sequence one new token) can run as a CUDA graph, one per batch size: the step's
~330 launches replayed by one call. Its inputs (token ids, pointer tables) sit in device buffers the graph
reads; each step refills them and replays (`cuda_graphs.py`). Everything else (processors, constraints, server) is unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import cupy
import numpy as np

from ..config import ModelConfig
from .cublas import Cublas
from .cuda_graphs import DecodeGraphs
from .cuda_kernels import ROW_FIELDS, SEQ_FIELDS, SWIGLU, kernel, step_tables
from .numpy_backend import NumpyBackend, Step

THREADS = 256        # threads of an attention / norm block; a multiple of the head size (see `attends`)
SHARED_LIMIT = 200 * 1024   # dynamic shared memory we ask for at most (an H100/H200 block may use 227 KiB)


@dataclass
class DeviceStep(Step):
    """A step whose tables are on the device: one int64 buffer holding ids [N], rows [N, 5], seqs [B, 9]."""
    ids_device: object = None
    rows_device: object = None
    seqs_device: object = None               # None: not a decode step (attention falls back to the reference)
    score_room: int = 0                      # scores each attention block keeps in shared memory


class CupyBackend(NumpyBackend):
    name = "cupy"

    def __init__(self, graphs: bool = True):
        super().__init__(cupy)
        self.graphs = DecodeGraphs(self) if graphs else None
        self._capturing: cupy.ndarray | None = None   # the static table buffer while a graph is captured
        self.cublas = Cublas()

    def attends(self, config: ModelConfig, span: int) -> bool:
        """Whether the decode kernel serves heads of this size over `span` positions."""
        return THREADS % config.head_dim == 0 and (span + config.head_dim + THREADS) * 4 <= SHARED_LIMIT

    def forward(self, config, weights, tokens: list, caches: list, all_logits):
        if self.graphs is not None and all_logits is False and all(len(t) == 1 for t in tokens):
            logits = self.graphs.run(config, weights, tokens, caches)
            if logits is not None:
                return logits
        return super().forward(config, weights, tokens, caches, all_logits)

    def start_step(self, config: ModelConfig, rope_cos, rope_sin, caches, lengths, ids) -> DeviceStep:
        positions = np.concatenate([np.arange(c.length, c.length + n) for c, n in zip(caches, lengths)])
        starts = np.cumsum([0] + lengths)
        N, B = len(ids), len(caches)
        decode = max(lengths) == 1
        spans = [end - max(0, end - config.sliding_window) if config.sliding_window else end
                 for end in (c.length + n for c, n in zip(caches, lengths))]
        if self._capturing is not None:                  # inside a graph capture: the tables are in place
            table, score_room = self._capturing, config.max_position_embeddings
        else:
            decode = decode and self.attends(config, max(spans))
            host = step_tables(caches, lengths, ids, decode)
            if host is None:
                decode, host = False, step_tables(caches, lengths, ids, False)
            table, score_room = cupy.asarray(host), max(spans)
        return DeviceStep(
            config=config, caches=caches, lengths=lengths, ids=ids,
            spans=[slice(int(starts[i]), int(starts[i + 1])) for i in range(B)], positions=positions,
            cos=rope_cos, sin=rope_sin, decode_only=B > 1 and decode,
            ids_device=table[:N], rows_device=table[N:N * (1 + ROW_FIELDS)],
            seqs_device=table[N * (1 + ROW_FIELDS):N * (1 + ROW_FIELDS) + B * SEQ_FIELDS] if decode else None,
            score_room=score_room)

    def matmul(self, x, w):
        if x.dtype == w.dtype == cupy.float32 and x.flags.c_contiguous and w.flags.c_contiguous:
            return self.cublas.matmul(x, w)
        return x @ w

    def embed(self, table, step: DeviceStep):
        return table[step.ids_device]                                # [V, D] -> [N, D]

    def rms_norm(self, x, weight, eps: float):
        if x.dtype != cupy.float32 or not x.flags.c_contiguous:
            return super().rms_norm(x, weight, eps)
        N, D = x.shape
        out = cupy.empty_like(x)                                     # [N, D]
        kernel("rms_norm")((N,), (THREADS,), (x, weight, out, np.int32(D), np.float32(eps)))
        return out

    def swiglu(self, gate_up):
        F = gate_up.shape[1] // 2
        return SWIGLU(gate_up[:, :F], gate_up[:, F:])                # [N, 2F] -> [N, F]

    def rope_and_store(self, qkv, step: DeviceStep, layer: int):
        config = step.config
        H, Hkv, hd = config.num_heads, config.num_kv_heads, config.head_dim
        N = qkv.shape[0]
        q = cupy.empty((N, H, hd), dtype=cupy.float32)               # [N, H, hd]
        kernel("rope_and_store")(
            (N, H + 2 * Hkv), (hd // 2,),
            (cupy.ascontiguousarray(qkv), step.rows_device, step.cos, step.sin, q,
             np.int32(H), np.int32(Hkv), np.int32(hd), np.int32(layer)))
        return q

    def attention(self, q, step: DeviceStep, layer: int):
        if step.seqs_device is None:
            return super().attention(q, step, layer)                 # prompt chunks: the reference, in cupy
        config = step.config
        B, H, hd = q.shape
        out = cupy.empty((B, H * hd), dtype=cupy.float32)            # [B, H hd]
        function = kernel("decode_attention")
        shared = (step.score_room + hd + THREADS) * 4
        if shared > 48 * 1024:
            function.max_dynamic_shared_size_bytes = shared
        function((B, H), (THREADS,),
                 (q, step.seqs_device, out, np.int32(H), np.int32(config.num_kv_heads), np.int32(hd),
                  np.int32(layer), np.int32(config.sliding_window or 0), np.int32(step.score_room)),
                 shared_mem=shared)
        return out

    def to_host(self, x) -> np.ndarray:
        return cupy.asnumpy(x)


