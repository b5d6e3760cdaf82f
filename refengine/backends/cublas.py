"""cuBLAS's sgemm for the cupy backend, on a handle of its own."""
from __future__ import annotations

import ctypes
import os

import cupy

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
