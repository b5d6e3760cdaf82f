"""Decode steps replayed as CUDA graphs: the ~330 launches of a step as one call."""
from __future__ import annotations

from dataclasses import dataclass

import cupy
import numpy as np

from ..config import ModelConfig
from .cuda_kernels import step_tables


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

    def __init__(self, backend, max_batch: int = 256):
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
