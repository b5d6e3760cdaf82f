"""Read `*.safetensors` weights into float32 numpy arrays.

The format is an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape and
byte range, then the raw bytes. The file is memory-mapped: float32 tensors are zero-copy views of it, float16
and bfloat16 are widened to float32 (numpy has no bfloat16: its bits are the top half of a float32's).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .config import ModelLoadError

MAX_HEADER_BYTES = 100_000_000


def _widen(raw: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "F32":
        return raw.view("<f4")
    if dtype == "F16":
        return raw.view("<f2").astype(np.float32)
    if dtype == "BF16":
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
    raise ModelLoadError(f"unsupported tensor dtype {dtype} (supported: F32, F16, BF16)")


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of one file, as float32 arrays backed by a read-only memory map where possible."""
    path = Path(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    if data.size < 8:
        raise ModelLoadError(f"{path}: corrupt safetensors file (shorter than its header length)")
    header_len = int(data[:8].view("<u8")[0])
    if header_len > min(MAX_HEADER_BYTES, data.size - 8):
        raise ModelLoadError(f"{path}: corrupt safetensors header (declared length {header_len})")
    try:
        header = json.loads(bytes(data[8:8 + header_len]))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{path}: corrupt safetensors header ({error})") from None
    body = data[8 + header_len:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            shape, dtype = tuple(info["shape"]), info["dtype"]
        except (KeyError, TypeError, ValueError):
            raise ModelLoadError(f"{path}: corrupt safetensors header entry for {name!r}") from None
        if not 0 <= begin <= end <= body.size:
            raise ModelLoadError(f"{path}: tensor {name!r} lies outside the file (truncated download?)")
        array = _widen(body[begin:end], dtype)
        if array.size != int(np.prod(shape)):
            raise ModelLoadError(f"{path}: tensor {name!r} has {array.size} values for shape {shape}")
        tensors[name] = array.reshape(shape)
    return tensors


def load_weights(model_dir: Path) -> dict[str, np.ndarray]:
    """Every tensor of a model folder; sharded checkpoints are the union of their files."""
    index = Path(model_dir) / "model.safetensors.index.json"
    if index.is_file():                      # the index names the shards (some folders hold other copies too)
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        files = [Path(model_dir) / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelLoadError(f"{model_dir} lacks shards named in its index: {', '.join(missing)}")
    else:
        files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{model_dir} has no *.safetensors weights")
    tensors: dict[str, np.ndarray] = {}
    for file in files:
        tensors.update(read_safetensors(file))
    return tensors
