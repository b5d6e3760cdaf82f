"""Backends: who does the forward pass's arithmetic. One small set of operations (embedding lookup, matrix
product against a weight, RMSNorm, RoPE + KV store, attention over the caches, SwiGLU), three implementations:

- `numpy`: plain array code, the reference every other backend is tested against;
- `numba`: CPU kernels that read each weight once for a whole small batch (BLAS re-packs the weight matrix
  on every call, so batching a few streams costs it nearly as much as running them one by one), decode
  attention for all sequences in one call, and optional int8 weights (`--weights q8`);
- `cupy`: the GPU: weights resident on the device, cuBLAS products, CUDA kernels for the rest.
"""
from __future__ import annotations

import importlib.util

BACKENDS = ("numpy", "numba", "cupy")
WEIGHT_FORMATS = ("f32", "q8")


class BackendError(ValueError):
    """A backend that cannot run here (not installed, or no GPU), or a combination it does not support."""


def numba_installed() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def default_backend(device: str) -> str:
    """cupy on a GPU; on a CPU numba when it is installed, else numpy."""
    if device == "gpu":
        return "cupy"
    return "numba" if numba_installed() else "numpy"


def resolve_backend(name: str | None, device: str = "cpu", weights: str = "f32") -> str:
    """The backend `name` means here (None: the device's default), checked without starting it: a server
    checks this before it forks its workers, and CUDA must not be initialised in a process that forks."""
    name = name or default_backend(device)
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r} (one of {', '.join(BACKENDS)})")
    if weights not in WEIGHT_FORMATS:
        raise BackendError(f"unknown weight format {weights!r} (one of {', '.join(WEIGHT_FORMATS)})")
    if (name == "cupy") != (device == "gpu"):
        raise BackendError(f"the {name} backend runs on the {'gpu' if name == 'cupy' else 'cpu'}, "
                           f"not the {device}")
    if weights == "q8" and name != "numba":
        raise BackendError("--weights q8 needs the numba backend")
    if name == "numba" and not numba_installed():
        raise BackendError("the numba backend needs numba (pip install numba)")
    if name == "cupy" and importlib.util.find_spec("cupy") is None:
        raise BackendError("the cupy backend needs cupy: pip install 'refengine[gpu]' (CUDA 12) or "
                           "'refengine[gpu-cuda13]' (CUDA 13)")
    return name


def load_backend(name: str | None = None, device: str = "cpu", weights: str = "f32"):
    """The backend object for `name` (None: the device's default) with weights kept as `weights`."""
    name = resolve_backend(name, device, weights)
    if name == "numpy":
        from .numpy_backend import NumpyBackend
        return NumpyBackend()
    if name == "numba":
        from .numba_backend import NumbaBackend
        return NumbaBackend(weights=weights)
    try:
        import cupy
        cupy.cuda.runtime.getDeviceCount()
    except Exception as error:                       # CUDA finding no driver or no device
        raise BackendError(f"the cupy backend needs a GPU ({error})") from None
    from .cupy_backend import CupyBackend
    return CupyBackend()
