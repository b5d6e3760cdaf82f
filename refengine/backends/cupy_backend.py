"""The cupy backend: the forward pass on an NVIDIA GPU.

Weights live on the device; the weight products are cuBLAS's sgemm, called directly (float32, TF32 off, so
logits match the numpy reference to float32 error; cupy's matmul refuses to run under graph capture, and
costs more Python per call); RMSNorm, RoPE + KV store and decode
attention are CUDA kernels of ours (below); SwiGLU is an elementwise kernel. Logits come back to the host
only for the rows sampled.

The KV cache stays the engine's own per-sequence `KVCache` (cupy arrays): kernels reach every sequence's
arrays through a pointer table built once per step, so one launch serves the whole batch, whatever the
sequences' lengths, and a sequence read in two blocks (a prompt shared by n choices, then its own tokens).

A decode step (every sequence one new token) can run as a CUDA graph, one per batch size: the step's
~330 launches replayed by one call. Its inputs (token ids, pointer tables) sit in device buffers the graph
reads; each step refills them and replays. Everything else (processors, constraints, server) is unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import ctypes
import os

import cupy
import numpy as np

from ..config import ModelConfig
from ..kvcache import KVCache
from .numpy_backend import NumpyBackend, Step

ROW_FIELDS = 5       # per new token: own keys pointer, own values pointer, own capacity, slot, position
SEQ_FIELDS = 9       # per sequence: length, then up to two blocks of (keys ptr, values ptr, capacity, count)
THREADS = 256        # threads of an attention / norm block; a multiple of the head size (see `attends`)
SHARED_LIMIT = 200 * 1024   # dynamic shared memory we ask for at most (an H100/H200 block may use 227 KiB)

KERNELS = r"""
extern "C" {

// v reduced over the block (max or sum); every thread gets the result. `scratch`: a float per warp.
__device__ float block_reduce(float v, float* scratch, bool is_max) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        float other = __shfl_xor_sync(0xffffffff, v, offset);
        v = is_max ? fmaxf(v, other) : v + other;
    }
    __syncthreads();                         // an earlier reduction's readers are done with scratch
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
    __syncthreads();
    v = scratch[0];
    for (int w = 1; w < (blockDim.x >> 5); ++w) v = is_max ? fmaxf(v, scratch[w]) : v + scratch[w];
    return v;
}

// out[n] = x[n] / sqrt(mean(x[n]^2) + eps) * weight; one block per row.
__global__ void rms_norm(const float* x, const float* weight, float* out, int D, float eps) {
    __shared__ float scratch[32];
    const float* row = x + (long long)blockIdx.x * D;
    float* result = out + (long long)blockIdx.x * D;
    float sum = 0.f;
    for (int i = threadIdx.x; i < D; i += blockDim.x) sum += row[i] * row[i];
    float scale = 1.f / sqrtf(block_reduce(sum, scratch, false) * (1.f / D) + eps);
    for (int i = threadIdx.x; i < D; i += blockDim.x) result[i] = row[i] * scale * weight[i];
}

// Rotate the query and key heads of qkv [N, (H + 2 Hkv) hd] (HF's rotate-half layout); queries to
// q_out [N, H, hd], keys and values into their sequence's cache at its slot. Grid (N, H + 2 Hkv), hd/2 threads.
// Cache layouts: keys [L, Hkv, hd, capacity], values [L, Hkv, capacity, hd].
__global__ void rope_and_store(const float* qkv, const long long* rows, const float* cos_table,
                               const float* sin_table, float* q_out, int H, int Hkv, int hd, int layer) {
    int n = blockIdx.x, head = blockIdx.y, i = threadIdx.x, half = hd / 2;
    const long long* row = rows + (long long)n * 5;
    float* keys = (float*)row[0];
    float* values = (float*)row[1];
    long long capacity = row[2], slot = row[3], position = row[4];
    const float* x = qkv + (long long)n * (H + 2 * Hkv) * hd + (long long)head * hd;
    if (head < H + Hkv) {
        float c = cos_table[position * half + i], s = sin_table[position * half + i];
        float x1 = x[i], x2 = x[i + half];
        float r1 = x1 * c - x2 * s, r2 = x2 * c + x1 * s;
        if (head < H) {
            float* q = q_out + ((long long)n * H + head) * hd;
            q[i] = r1;
            q[i + half] = r2;
        } else {
            float* k = keys + ((long long)layer * Hkv + (head - H)) * hd * capacity + slot;
            k[(long long)i * capacity] = r1;
            k[(long long)(i + half) * capacity] = r2;
        }
    } else {
        float* v = values + (((long long)layer * Hkv + (head - H - Hkv)) * capacity + slot) * hd;
        v[i] = x[i];
        v[i + half] = x[i + half];
    }
}

// One new query per sequence over its cached keys: out [B, H, hd]. Grid (B, H), blockDim a multiple of hd.
// Dynamic shared memory: [score_room] scores, [hd] the query, [blockDim] scratch. Sequence b's positions
// lie in up to two blocks (seqs row: length, then keys ptr, values ptr, capacity, count per block); with a
// sliding window only the last `window` positions are attended.
__global__ void decode_attention(const float* q, const long long* seqs, float* out, int H, int Hkv, int hd,
                                 int layer, int window, int score_room) {
    extern __shared__ float shared[];
    float* scores = shared;
    float* query = shared + score_room;
    float* scratch = query + hd;
    int b = blockIdx.x, head = blockIdx.y, h = head / (H / Hkv);
    const long long* seq = seqs + (long long)b * 9;
    int length = (int)seq[0], split = (int)seq[4];
    int first = (window > 0 && length > window) ? length - window : 0;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) query[d] = q[((long long)b * H + head) * hd + d];
    __syncthreads();

    float peak = -__int_as_float(0x7f800000);   // -inf
    for (int j = first + threadIdx.x; j < length; j += blockDim.x) {
        const long long* block = seq + (j < split ? 1 : 5);
        long long capacity = block[2];
        const float* k = (const float*)block[0] + ((long long)layer * Hkv + h) * hd * capacity
                         + (j < split ? j : j - split);
        float score = 0.f;
        for (int d = 0; d < hd; ++d) score += query[d] * k[(long long)d * capacity];
        scores[j - first] = score;
        peak = fmaxf(peak, score);
    }
    peak = block_reduce(peak, scratch, true);
    float total = 0.f;
    for (int j = threadIdx.x; j < length - first; j += blockDim.x) {
        float e = expf(scores[j] - peak);
        scores[j] = e;
        total += e;
    }
    total = block_reduce(total, scratch, false);

    int groups = blockDim.x / hd, d = threadIdx.x % hd, group = threadIdx.x / hd;
    float acc = 0.f;
    for (int j = first + group; j < length; j += groups) {
        const long long* block = seq + (j < split ? 1 : 5);
        long long capacity = block[2];
        const float* v = (const float*)block[1] + (((long long)layer * Hkv + h) * capacity
                         + (j < split ? j : j - split)) * hd;
        acc += scores[j - first] * v[d];
    }
    __syncthreads();
    scratch[threadIdx.x] = acc;
    __syncthreads();
    if (group == 0) {
        float sum = 0.f;
        for (int g = 0; g < groups; ++g) sum += scratch[g * hd + d];
        out[((long long)b * H + head) * hd + d] = sum / total;
    }
}

}
"""

_kernels: dict = {}


def kernel(name: str) -> cupy.RawKernel:
    """One of KERNELS, compiled by NVRTC at first use (cupy caches the compiled source on disk)."""
    if name not in _kernels:
        _kernels[name] = cupy.RawKernel(KERNELS, name)
    return _kernels[name]


class Cublas:
    """cuBLAS's sgemm on a handle of our own, called through ctypes. cupy's bindings set the handle's stream
    before every call and refuse to while a stream is being captured (cupy 14), though cuBLAS itself records
    into a graph: so the backend keeps its own handle, with a workspace of its own (no allocation inside a
    capture), and sets its stream only when the stream changes."""
    WORKSPACE = 32 * 2**20                   # what NVIDIA suggests for Hopper

    def __init__(self):
        cupy.cuda.device.get_cublas_handle()         # makes cupy load libcublas; we use the same library
        self.lib = ctypes.CDLL(loaded_library("libcublas.so"))
        c = ctypes
        self.lib.cublasSgemm_v2.argtypes = [c.c_void_p, c.c_int, c.c_int, c.c_int, c.c_int, c.c_int, c.c_void_p,
                                            c.c_void_p, c.c_int, c.c_void_p, c.c_int, c.c_void_p, c.c_void_p, c.c_int]
        self.lib.cublasSetStream_v2.argtypes = [c.c_void_p, c.c_void_p]
        self.lib.cublasSetWorkspace_v2.argtypes = [c.c_void_p, c.c_void_p, c.c_size_t]
        self.handle = c.c_void_p()
        self._check(self.lib.cublasCreate_v2(c.byref(self.handle)), "cublasCreate")
        self.workspace = cupy.empty(self.WORKSPACE, dtype=cupy.uint8)
        self._check(self.lib.cublasSetWorkspace_v2(self.handle, self.workspace.data.ptr, self.WORKSPACE),
                    "cublasSetWorkspace")
        self.alpha, self.beta = c.c_float(1.0), c.c_float(0.0)     # host pointer mode, cuBLAS's default
        self.stream = None

    @staticmethod
    def _check(status: int, call: str) -> None:
        if status != 0:
            raise RuntimeError(f"{call} failed with cuBLAS status {status}")

    def matmul(self, x, w):
        """x [N, K] @ w [K, M] -> [N, M], both row-major. cuBLAS is column-major: there the same memory holds
        x^T [K, N] and w^T [M, K], so it computes out^T [M, N] = w^T · x^T."""
        N, K = x.shape
        M = w.shape[1]
        out = cupy.empty((N, M), dtype=cupy.float32)                 # [N, M]
        stream = cupy.cuda.get_current_stream().ptr
        if stream != self.stream:
            self._check(self.lib.cublasSetStream_v2(self.handle, stream), "cublasSetStream")
            self.stream = stream
        self._check(self.lib.cublasSgemm_v2(self.handle, 0, 0, M, N, K, ctypes.byref(self.alpha), w.data.ptr, M,
                                            x.data.ptr, K, ctypes.byref(self.beta), out.data.ptr, M), "cublasSgemm")
        return out


def loaded_library(prefix: str) -> str:
    """The path of a shared library this process has loaded whose file name starts with `prefix`."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1] if len(line.split()) >= 6 else ""
            if os.path.basename(path).startswith(prefix):
                return path
    raise RuntimeError(f"no {prefix}* is loaded")


SWIGLU = cupy.ElementwiseKernel(
    "float32 gate, float32 up", "float32 out",
    "out = gate * (0.5f * (1.0f + tanhf(0.5f * gate))) * up",      # silu(gate)·up, as the reference
    "refengine_swiglu")


@dataclass
class DeviceStep(Step):
    """A step whose tables are on the device: one int64 buffer holding ids [N], rows [N, 5], seqs [B, 9]."""
    ids_device: object = None
    rows_device: object = None
    seqs_device: object = None               # None: not a decode step (attention falls back to the reference)
    score_room: int = 0                      # scores each attention block keeps in shared memory


def step_tables(caches: list[KVCache], lengths: list[int], ids: np.ndarray, decode: bool) -> np.ndarray | None:
    """The host image of a step's device tables: ids, then a row per new token (where its key and value go),
    then (decode steps) a row per sequence (where its positions are). None when a sequence lies in more
    than two blocks, which the kernels do not read (a branch of a branch; the engine makes none)."""
    rows, seqs = [], []
    for cache, n in zip(caches, lengths):
        if cache.read_only:
            raise RuntimeError("this cache is shared by branches: it is read-only")
        end = cache.length + n
        capacity = cache.keys.shape[-1]
        for position in range(cache.length, end):
            rows.append((cache.keys.data.ptr, cache.values.data.ptr, capacity, position - cache.start, position))
        if decode:
            blocks = cache.blocks(end)
            if len(blocks) > 2:
                return None
            seq = [end]
            for keys, values, count in blocks + [(None, None, 0)] * (2 - len(blocks)):
                seq += [0, 0, 0, 0] if keys is None else [keys.data.ptr, values.data.ptr, keys.shape[-1], count]
            seqs.append(seq)
    parts = [ids.astype(np.int64), np.asarray(rows, dtype=np.int64).reshape(-1)]
    if decode:
        parts.append(np.asarray(seqs, dtype=np.int64).reshape(-1))
    return np.concatenate(parts)


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


@dataclass
class CapturedStep:
    graph: object
    table: cupy.ndarray                      # the buffer its kernels read the step's ids and tables from
    logits: cupy.ndarray                     # [B, V] where each replay leaves its logits


class DecodeGraphs:
    """Decode steps replayed as CUDA graphs, one per batch size.

    A batch size's first step runs eagerly (it compiles the kernels and sizes the memory pool); its second
    is captured: the forward pass runs once with the stream recording instead of executing, reading its
    inputs from a table buffer of its own, its intermediates drawn from a pool of the graphs' own (so no
    eager allocation ever reuses memory a graph writes). Each later step fills the buffer and replays.
    """

    def __init__(self, backend: CupyBackend, max_batch: int = 256):
        self.backend = backend
        self.max_batch = max_batch
        self.captured: dict[int, CapturedStep] = {}
        self.seen: set[int] = set()
        self.failed: str | None = None       # why capture failed, if it did (graphs are then off)
        self.pool = cupy.cuda.MemoryPool()
        self.stream = cupy.cuda.Stream(non_blocking=True)

    def run(self, config: ModelConfig, weights, tokens: list, caches: list):
        """Logits [B, V] of a decode step on the device, or None where this step does not run as a graph."""
        B = len(caches)
        backend = self.backend
        if self.failed or B > self.max_batch or not backend.attends(config, config.max_position_embeddings):
            return None
        if B not in self.seen:
            self.seen.add(B)
            return None
        for cache in caches:
            cache.reserve(1)
        ids = np.asarray([t[0] for t in tokens], dtype=np.int64)
        host = step_tables(caches, [1] * B, ids, decode=True)
        if host is None:
            return None
        captured = self.captured.get(B)
        if captured is None:
            captured = self._capture(config, weights, tokens, caches, host.size)
            if captured is None:
                return None
        captured.table.set(host)
        captured.graph.launch(stream=cupy.cuda.Stream.null)
        for cache in caches:
            cache.advance(1)
        return captured.logits

    def _capture(self, config, weights, tokens, caches, size: int) -> CapturedStep | None:
        from ..forward import forward
        backend = self.backend
        with cupy.cuda.using_allocator(self.pool.malloc):
            table = cupy.zeros(size, dtype=cupy.int64)
        cupy.cuda.Stream.null.synchronize()
        lengths = [c.length for c in caches]
        backend._capturing = table
        try:
            with self.stream, cupy.cuda.using_allocator(self.pool.malloc):
                self.stream.begin_capture()
                try:
                    logits = forward(config, weights, tokens, caches, backend=backend)
                finally:
                    graph = self.stream.end_capture()
        except Exception as error:           # e.g. an operation capture does not allow: eager from now on
            self.failed = f"{type(error).__name__}: {error}"
            return None
        finally:
            backend._capturing = None
            for cache, length in zip(caches, lengths):   # the capture only recorded; nothing ran
                cache.length = length
        captured = CapturedStep(graph=graph, table=table, logits=logits)
        self.captured[len(caches)] = captured
        return captured
