"""The CUDA kernels of the cupy backend: RMSNorm, RoPE + KV store, decode attention, SwiGLU.

Each kernel does one stage of `refengine/backends/numpy_backend.py` for a whole batch in one launch; the
numpy function is the specification (tests and tools/gpu_check.py compare the two). Kernels reach each
sequence's cache through pointer tables (see `cupy_backend.step_tables`).
"""
from __future__ import annotations

import cupy
import numpy as np

from ..kvcache import KVCache

ROW_FIELDS = 5       # per new token: own keys pointer, own values pointer, own capacity, slot, position
SEQ_FIELDS = 9       # per sequence: length, then up to two blocks of (keys ptr, values ptr, capacity, count)

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


SWIGLU = cupy.ElementwiseKernel(
    "float32 gate, float32 up", "float32 out",
    "out = gate * (0.5f * (1.0f + tanhf(0.5f * gate))) * up",      # silu(gate)·up, as the reference
    "refengine_swiglu")


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
