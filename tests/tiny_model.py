"""A seeded random tiny llama in Hugging Face format, for fast tests of the whole pipeline."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

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
                     extra_config: dict | None = None) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(400)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    vocab_size = tokenizer.get_vocab_size()
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
