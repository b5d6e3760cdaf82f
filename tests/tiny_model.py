"""A seeded random tiny llama in Hugging Face format, for fast tests of the whole pipeline."""
from __future__ import annotations

import json
import threading
from dataclasses import fields
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from refengine.backends.numpy_backend import NumpyBackend
from refengine.forward import load_model_weights
from refengine.kvcache import KVCache
from refengine.model import Model
from refengine.weights import load_weights

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog. 0123456789",
    "Hello, world! How are you today? I am fine, thank you.",
    "def add(a, b):\n    return a + b\n",
    '{"name": "refengine", "tokens": [1, 2, 3], "ok": true}',
    "Ünïcödé text: café, naïve, 日本語, emoji 🙂👍",
]


def build_tokenizer(vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(TRAINING_TEXT * 4, trainer)
    return tokenizer


def write_tiny_llama(out_dir: Path, *, seed: int = 0, architecture: str = "LlamaForCausalLM",
                     hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, num_kv_heads: int = 2,
                     intermediate_size: int = 96, tie_word_embeddings: bool = False,
                     extra_config: dict | None = None, vocab_padding: int = 0) -> Path:
    """`vocab_padding`: rows of embedding and lm_head past the tokenizer's ids (config.vocab_size counts
    them), as Qwen2.5 pads 151665 tokens to 151936 rows."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(400)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    vocab_size = tokenizer.get_vocab_size() + vocab_padding
    head_dim = hidden_size // num_heads
    config = {
        "architectures": [architecture], "model_type": architecture.replace("ForCausalLM", "").lower(),
        "vocab_size": vocab_size, "hidden_size": hidden_size, "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers, "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads, "head_dim": head_dim, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "max_position_embeddings": 256, "tie_word_embeddings": tie_word_embeddings,
        "bos_token_id": 0, "eos_token_id": 2, "torch_dtype": "float32", "hidden_act": "silu",
        **(extra_config or {}),
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": CHATML_TEMPLATE, "bos_token": "<|endoftext|>", "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "add_bos_token": False}, indent=2))
    rng = np.random.default_rng(seed)

    def rand(*shape, scale=0.15):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    bias = config.get("attention_bias", architecture == "Qwen2ForCausalLM")
    tensors = {"model.embed_tokens.weight": rand(vocab_size, hidden_size, scale=1.0),
               "model.norm.weight": (1 + rand(hidden_size)).astype(np.float32)}
    if not tie_word_embeddings:
        tensors["lm_head.weight"] = rand(vocab_size, hidden_size)
    for i in range(num_layers):
        p = f"model.layers.{i}."
        tensors.update({
            p + "input_layernorm.weight": (1 + rand(hidden_size)).astype(np.float32),
            p + "post_attention_layernorm.weight": (1 + rand(hidden_size)).astype(np.float32),
            p + "self_attn.q_proj.weight": rand(num_heads * head_dim, hidden_size),
            p + "self_attn.k_proj.weight": rand(num_kv_heads * head_dim, hidden_size),
            p + "self_attn.v_proj.weight": rand(num_kv_heads * head_dim, hidden_size),
            p + "self_attn.o_proj.weight": rand(hidden_size, num_heads * head_dim),
            p + "mlp.gate_proj.weight": rand(intermediate_size, hidden_size),
            p + "mlp.up_proj.weight": rand(intermediate_size, hidden_size),
            p + "mlp.down_proj.weight": rand(hidden_size, intermediate_size),
        })
        if bias:
            for name, rows in (("q", num_heads), ("k", num_kv_heads), ("v", num_kv_heads)):
                tensors[p + f"self_attn.{name}_proj.bias"] = rand(rows * head_dim)
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": 2}))
    return out_dir


# Comparing two computation paths of the same function (a prefill against step-by-step decoding, a batch
# against single runs, a shared prompt read in two segments against one) in float32 measures BLAS's rounding
# spread (differently shaped products sum in other orders; ~2e-5 here, more under load), not the code. In
# float64 the unit roundoff is 2^-53 ≈ 1.1e-16 and a tiny model's logit ends a chain of well under 10^4
# roundings (2 layers, sums of at most 96 terms), so two float64 paths agree to ~1e-12 of the logits' scale;
# 1e-9 leaves a thousandfold margin and stays far below any real difference (a misread position moves a
# logit by ~0.1).
FLOAT64_RELATIVE = 1e-9


class Float64Model(Model):
    """The same model with float64 weights and float64 caches (only the rope tables stay float32)."""

    def new_cache(self, capacity: int) -> KVCache:
        return KVCache(self.config, capacity, np, dtype=np.float64)


def float64_model(model: Model) -> Float64Model:
    tensors = {name: t.astype(np.float64) for name, t in load_weights(model.path).items()}
    values = {f.name: getattr(model, f.name) for f in fields(model)}
    return Float64Model(**{**values, "weights": load_model_weights(model.config, tensors),
                           "backend": NumpyBackend()})


def assert_same_function(actual, expected) -> None:
    """Two float64 paths' logits agree to FLOAT64_RELATIVE of their scale."""
    np.testing.assert_allclose(actual, expected, rtol=0, atol=FLOAT64_RELATIVE * np.abs(expected).max())


class GatedModel:
    """The model, whose forward passes after the first `free` ones wait until the test opens the gate: the
    request cannot run ahead of the test, however the threads are scheduled."""

    def __init__(self, model, free: int):
        self._model, self.free, self.gate = model, free, threading.Event()

    def forward(self, *args, **kwargs):
        if self.free == 0:
            assert self.gate.wait(60), "the gate was never opened"
        else:
            self.free -= 1
        return self._model.forward(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)
