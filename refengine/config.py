"""ModelConfig: the hyper-parameters of a llama-family model, read from a Hugging Face `config.json`."""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}


class ModelLoadError(Exception):
    """A model folder that cannot be loaded: missing file, unsupported architecture, corrupt weights."""


@dataclass(frozen=True)
class RopeScaling:
    kind: str                                # "llama3" | "linear"
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    architecture: str                        # "llama" | "mistral" | "qwen2"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool                     # q/k/v projections carry a bias (qwen2)
    sliding_window: int | None               # attend only to the last N positions
    rope_scaling: RopeScaling | None
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]


def _eos_ids(value) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, list) else (int(value),)


def _rope_scaling(raw: dict | None) -> RopeScaling | None:
    if not raw:
        return None
    kind = raw.get("rope_type", raw.get("type"))
    if kind in (None, "default"):
        return None
    if kind == "llama3":
        return RopeScaling(
            kind="llama3", factor=float(raw["factor"]),
            low_freq_factor=float(raw.get("low_freq_factor", 1.0)),
            high_freq_factor=float(raw.get("high_freq_factor", 4.0)),
            original_max_position_embeddings=int(raw.get("original_max_position_embeddings", 8192)))
    if kind == "linear":
        return RopeScaling(kind="linear", factor=float(raw["factor"]))
    raise ModelLoadError(f"unsupported rope_scaling type {kind!r} (supported: llama3, linear)")


def config_from_dict(raw: dict) -> ModelConfig:
    architectures = raw.get("architectures") or []
    known = [SUPPORTED_ARCHITECTURES[a] for a in architectures if a in SUPPORTED_ARCHITECTURES]
    if not known:
        raise ModelLoadError(
            f"unsupported architecture {architectures or raw.get('model_type')!r}; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    architecture = known[0]
    num_heads = int(raw["num_attention_heads"])
    hidden_size = int(raw["hidden_size"])
    sliding_window = raw.get("sliding_window")
    if architecture == "qwen2" and not raw.get("use_sliding_window", False):
        sliding_window = None                # Qwen2 configs carry a window they do not use
    return ModelConfig(
        architecture=architecture,
        vocab_size=int(raw["vocab_size"]),
        hidden_size=hidden_size,
        intermediate_size=int(raw["intermediate_size"]),
        num_layers=int(raw["num_hidden_layers"]),
        num_heads=num_heads,
        num_kv_heads=int(raw.get("num_key_value_heads") or num_heads),
        head_dim=int(raw.get("head_dim") or hidden_size // num_heads),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=float(raw.get("rope_theta", 10000.0)),
        max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        attention_bias=bool(raw.get("attention_bias", architecture == "qwen2")),
        sliding_window=int(sliding_window) if sliding_window else None,
        rope_scaling=_rope_scaling(raw.get("rope_scaling")),
        bos_token_id=raw.get("bos_token_id"),
        eos_token_ids=_eos_ids(raw.get("eos_token_id")),
    )


def load_config(model_dir: Path) -> ModelConfig:
    """config.json, with EOS ids widened by generation_config.json (chat models list their turn-end there)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ModelLoadError(f"{model_dir} has no config.json: not a Hugging Face model folder")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ModelLoadError(f"{path} is not valid JSON: {error}") from None
    try:
        config = config_from_dict(raw)
    except KeyError as error:
        raise ModelLoadError(f"{path} lacks the field {error.args[0]!r}") from None
    generation_path = Path(model_dir) / "generation_config.json"
    if generation_path.is_file():
        generation = json.loads(generation_path.read_text())
        extra = [i for i in _eos_ids(generation.get("eos_token_id")) if i not in config.eos_token_ids]
        if extra:
            config = replace(config, eos_token_ids=config.eos_token_ids + tuple(extra))
    return config

