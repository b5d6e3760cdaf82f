"""Model folders: configs, safetensors dtypes and shards, and the clear errors for broken folders."""
import json
import shutil
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from refengine.config import ModelLoadError, load_config
from refengine.model import load_model
from refengine.weights import load_weights, read_safetensors
from tiny_model import write_tiny_llama


def test_float16_and_bfloat16_are_widened_exactly(tmp_path):
    values = np.array([[1.5, -2.25], [3.0e-3, 65504.0]], dtype=np.float32)
    bf16_bits = (values.view(np.uint32) >> 16).astype(np.uint16)          # exact: these values fit bf16
    path = tmp_path / "mixed.safetensors"
    header = {"half": {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 8]},
              "brain": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [8, 16]},
              "full": {"dtype": "F32", "shape": [2, 2], "data_offsets": [16, 32]}}
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + values.astype(np.float16).tobytes()
                     + bf16_bits.tobytes() + values.tobytes())
    tensors = read_safetensors(path)
    assert all(t.dtype == np.float32 for t in tensors.values())
    np.testing.assert_array_equal(tensors["half"], values.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(tensors["brain"], np.array([[1.5, -2.25], [0.0029907227, 65280.0]],
                                                             dtype=np.float32))
    np.testing.assert_array_equal(tensors["full"], values)


def test_sharded_checkpoint_loads_the_union_of_its_shards(tiny_model_dir, tmp_path):
    folder = tmp_path / "sharded"
    shutil.copytree(tiny_model_dir, folder)
    tensors = load_weights(folder)
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for file, part in shards.items():
        save_file({n: np.ascontiguousarray(tensors[n]) for n in part}, str(folder / file))
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {n: f for f, part in shards.items() for n in part}}))
    reloaded = load_weights(folder)
    assert sorted(reloaded) == names
    for name in names:
        np.testing.assert_array_equal(reloaded[name], tensors[name])
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="lacks shards"):
        load_weights(folder)


@pytest.fixture
def folder(tiny_model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    return copy


def test_missing_files_are_named(folder):
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match="tokenizer.json"):
        load_model(folder)
    (folder / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(folder)
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(folder / "nowhere")


def test_unsupported_architecture_is_named(folder):
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["GPTNeoXForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="GPTNeoXForCausalLM"):
        load_model(folder)


def test_corrupt_and_truncated_safetensors(folder):
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])                       # a truncated download
    with pytest.raises(ModelLoadError, match="outside the file"):
        load_model(folder)
    weights.write_bytes(struct.pack("<Q", 10**12) + data[8:])          # absurd header length
    with pytest.raises(ModelLoadError, match="corrupt safetensors header"):
        load_model(folder)
    weights.write_bytes(struct.pack("<Q", 12) + b"{not json!!}" + data[8:])
    with pytest.raises(ModelLoadError, match="corrupt safetensors header"):
        load_model(folder)
    weights.write_bytes(b"abc")
    with pytest.raises(ModelLoadError, match="corrupt"):
        load_model(folder)


def test_missing_tensor_is_named(folder):
    tensors = {k: np.ascontiguousarray(v) for k, v in load_weights(folder).items()}
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="model.layers.1.mlp.down_proj.weight"):
        load_model(folder)


def test_generation_config_widens_eos_ids(folder):
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 1]}))
    assert load_config(folder).eos_token_ids == (2, 1)
    assert load_model(folder).eos_ids == frozenset({1, 2})


def test_qwen2_ignores_its_unused_sliding_window(tmp_path):
    folder = write_tiny_llama(tmp_path, architecture="Qwen2ForCausalLM",
                              extra_config={"sliding_window": 4, "use_sliding_window": False})
    config = load_config(folder)
    assert config.sliding_window is None and config.attention_bias and config.architecture == "qwen2"
