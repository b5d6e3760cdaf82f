"""The CPU backends against the numpy reference: logits of prefills, batched decode steps, mixed batches and
n-choice branches on the tiny fixtures and the default model; int8 weights against float32; load errors.

Tolerance: both sides compute in float32, but in other orders (the numba kernels sum each output along its
inputs with fused multiply-adds, BLAS in blocks of its own), so logits differ by float32 rounding: measured
~1e-6 of the largest |logit| on the tiny model and ~2e-6 on the 30-layer default model. 1e-4 of it leaves a 50x
margin and still catches a real fault (a misread cache position or a wrong rotation moves logits by ~1e-1).
No test here depends on speed.
"""
import dataclasses

import numpy as np
import pytest

from refengine.backends import BackendError, load_backend, numba_installed
from refengine.backends.numpy_backend import NumpyBackend
from refengine.model import load_model
from refengine.prompt import chat_prompt_ids
from tiny_model import float64_model, write_tiny_llama

CPU_BACKENDS = ["numpy"] + (["numba"] if numba_installed() else [])
RELATIVE = 1e-4
PROMPTS = ("Hello, world!", "The quick brown fox jumps over the lazy dog. 0123456789", "def add(a, b):")
VARIANTS = {
    "llama": dict(architecture="LlamaForCausalLM"),
    "llama-tied": dict(architecture="LlamaForCausalLM", tie_word_embeddings=True),
    "qwen2-bias": dict(architecture="Qwen2ForCausalLM"),
    "mistral-window": dict(architecture="MistralForCausalLM", extra_config={"sliding_window": 6}),
    "head-size-12": dict(architecture="LlamaForCausalLM", hidden_size=48),     # numba: not its decode kernel's
    "llama3-rope": dict(architecture="LlamaForCausalLM", extra_config={"rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}}),
}
needs_numba = pytest.mark.skipif(not numba_installed(), reason="needs numba")


def assert_close(actual, expected, relative=RELATIVE):
    np.testing.assert_allclose(actual, expected, rtol=0, atol=relative * np.abs(expected).max())


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def folder(request, tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp(request.param), **VARIANTS[request.param])


@pytest.fixture(scope="module")
def reference(folder):
    return load_model(folder, backend="numpy")


def greedy(logits) -> list:
    return [[int(t)] for t in logits.argmax(axis=1)]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_prefill_and_batched_decode_match_numpy(folder, reference, backend):
    """Three prompts prefilled in one batch, then ten decode steps of all three at their own lengths (past
    the sliding window of 6; caches of 2 positions grow on the way), and one sequence decoding alone."""
    model = load_model(folder, backend=backend)
    prompts = [reference.tokenizer.encode(t) for t in PROMPTS]
    ours, theirs = [model.new_cache(2) for _ in prompts], [reference.new_cache(2) for _ in prompts]
    expected = reference.forward(prompts, theirs)
    assert_close(model.forward(prompts, ours), expected)
    for _ in range(10):
        tokens = greedy(expected)
        expected = reference.forward(tokens, theirs)
        assert_close(model.forward(tokens, ours), expected)
    for _ in range(3):
        tokens = greedy(expected[:1])
        expected = reference.forward(tokens, theirs[:1])
        assert_close(model.forward(tokens, ours[:1]), expected)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_long_prompt_every_row_matches_numpy(folder, reference, backend):
    """A prompt past the rows a small-batch kernel takes (BLAS then), every row's logits."""
    model = load_model(folder, backend=backend)
    ids = (reference.tokenizer.encode(" ".join(PROMPTS)) * 4)[:120]
    expected = reference.forward([ids], [reference.new_cache(len(ids))], all_logits=True)
    assert_close(model.forward([ids], [model.new_cache(len(ids))], all_logits=True), expected)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_mixed_batch_matches_numpy(folder, reference, backend):
    """Two sequences decode while a third reads its next prompt chunk, in one forward pass."""
    model = load_model(folder, backend=backend)
    prompts = [reference.tokenizer.encode(t) for t in PROMPTS]
    ours, theirs = [model.new_cache(4) for _ in prompts], [reference.new_cache(4) for _ in prompts]
    first = [prompts[0], prompts[1][:5], prompts[2]]
    assert_close(model.forward(first, ours), reference.forward(first, theirs))
    mixed = [[7], prompts[1][5:], [9]]
    assert_close(model.forward(mixed, ours), reference.forward(mixed, theirs))
    assert_close(model.forward([[3], [4], [5]], ours), reference.forward([[3], [4], [5]], theirs))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_branches_over_a_shared_prompt_match_numpy(folder, reference, backend):
    """n choices of one prompt: each branch reads the prompt's cache, then its own tokens (two blocks),
    decoding together with an unrelated sequence of one block."""
    model = load_model(folder, backend=backend)
    prompt, other = reference.tokenizer.encode(PROMPTS[1]), reference.tokenizer.encode(PROMPTS[0])
    ours, theirs = model.new_cache(len(prompt)), reference.new_cache(len(prompt))
    model.forward([prompt], [ours])
    reference.forward([prompt], [theirs])
    ours_other, theirs_other = model.new_cache(len(other)), reference.new_cache(len(other))
    model.forward([other], [ours_other])
    reference.forward([other], [theirs_other])
    ours = [ours.branch() for _ in range(3)] + [ours_other]
    theirs = [theirs.branch() for _ in range(3)] + [theirs_other]
    tokens = [[3], [4], [5], [6]]
    for _ in range(8):
        expected = reference.forward(tokens, theirs)
        assert_close(model.forward(tokens, ours), expected)
        tokens = greedy(expected)
    expected = reference.forward(tokens[:1], theirs[:1])          # one branch alone
    assert_close(model.forward(tokens[:1], ours[:1]), expected)


@needs_numba
def test_numba_decode_on_one_thread_matches_numpy(folder, reference):
    """A crowded machine's steps run on one thread (CROWDED_LOAD_PER_CORE): attention then takes no chunks."""
    model = load_model(folder, backend="numba")
    model.backend.threads, model.backend._load_checked = 1, -1.0       # as if the load average were high
    prompts = [reference.tokenizer.encode(t) for t in PROMPTS]
    ours, theirs = [model.new_cache(2) for _ in prompts], [reference.new_cache(2) for _ in prompts]
    expected = reference.forward(prompts, theirs)
    model.forward(prompts, ours)
    for rows in (3, 3, 1, 1):                        # three sequences, then the first alone
        tokens = greedy(expected[:rows])
        expected = reference.forward(tokens, theirs[:rows])
        assert_close(model.forward(tokens, ours[:rows]), expected)
    assert model.backend._step_threads == 1


@needs_numba
def test_numba_leaves_float64_models_to_the_numpy_path(tiny_model):
    """Weights in another dtype are not prepared (never passed to a float32 kernel): same results as numpy."""
    reference = float64_model(tiny_model)
    backend = load_backend("numba")
    assert backend.prepare(reference.weights) is reference.weights
    model = dataclasses.replace(reference, backend=backend)
    ids = [tiny_model.tokenizer.encode(t) for t in PROMPTS]
    ours, theirs = [model.new_cache(2) for _ in ids], [reference.new_cache(2) for _ in ids]
    for tokens in (ids, [[3], [4], [5]]):
        np.testing.assert_array_equal(model.forward(tokens, ours), reference.forward(tokens, theirs))


@needs_numba
@pytest.mark.parametrize("weights", ["f32", "q8"])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 8, 16, 17, 49, 65, 130])
def test_numba_products_of_every_batch_size_match_numpy(weights, rows, monkeypatch):
    """Every path of the product (batch rows in groups of 8 and their leftovers, an output count not a
    multiple of the 32-output panels, BLAS past the kernel's rows on weights unpacked in several tiles,
    int8 weights) against numpy with the same (dequantized) weights."""
    from refengine.backends import numba_backend
    monkeypatch.setattr(numba_backend, "TILE_PANELS", 2)
    rng = np.random.default_rng(rows)
    backend = load_backend("numba", weights=weights)
    matrix = rng.standard_normal((96, 203)).astype(np.float32)    # [in, out]
    prepared = backend.prepare_matrix(matrix)
    x = rng.standard_normal((rows, 96)).astype(np.float32)
    assert_close(backend.matmul(x, prepared), x @ np.asarray(prepared))


@needs_numba
def test_q8_quantization_error_is_within_half_a_step():
    from refengine.backends.numba_matmul import QBLOCK, quantize
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((4 * QBLOCK, 8)).astype(np.float32)      # [in, out]
    matrix[:QBLOCK, 0] = 0                                         # an all-zero block: scale 0, no division
    q, scales = quantize(matrix)                                   # [in, out], [in / 32, out]
    blocks = matrix.reshape(4, QBLOCK, 8)
    assert q.dtype == np.int8 and np.abs(q).max() == 127 and scales[0, 0] == 0
    np.testing.assert_allclose(scales, np.abs(blocks).max(axis=1) / 127, rtol=1e-6)
    error = np.abs(q.reshape(4, QBLOCK, 8) * scales[:, None, :] - blocks)
    assert (error <= scales[:, None, :] / 2 * (1 + 1e-5)).all()


# ---- the default model --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2_numpy(smollm2_dir):
    return load_model(smollm2_dir, backend="numpy")


@pytest.fixture(scope="module")
def smollm2_q8(smollm2_dir):
    return load_model(smollm2_dir, backend="numba", weights="q8")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_default_model_prefill_and_batched_decode_match_numpy(smollm2_dir, smollm2_numpy, backend):
    model = load_model(smollm2_dir, backend=backend)
    prompts = [smollm2_numpy.tokenizer.encode(t) for t in PROMPTS]
    ours = [model.new_cache(len(p) + 4) for p in prompts]
    theirs = [smollm2_numpy.new_cache(len(p) + 4) for p in prompts]
    expected = smollm2_numpy.forward(prompts, theirs)
    assert_close(model.forward(prompts, ours), expected)
    for _ in range(4):
        tokens = greedy(expected)
        expected = smollm2_numpy.forward(tokens, theirs)
        assert_close(model.forward(tokens, ours), expected)


@needs_numba
@pytest.mark.parametrize("weights", ["f32", "q8"])
def test_default_model_decode_steps_match_one_prefill_of_the_same_tokens(smollm2_dir, weights):
    """The one-call decode step (numba_decode) against the prompt path (BLAS over the same weights, unpacked
    or dequantized), which shares none of its code: a prompt's logits row by row, read once as one prefill
    and once a token at a time, alone and beside a second sequence."""
    model = load_model(smollm2_dir, backend="numba", weights=weights)
    ids = model.tokenizer.encode(" ".join(PROMPTS))
    expected = model.forward([ids], [model.new_cache(len(ids))], all_logits=True)           # [T, V]
    alone, other = model.new_cache(len(ids)), model.new_cache(len(ids))
    model.forward([ids[:4]], [alone])
    model.forward([ids[:9]], [other])
    for t in range(4, len(ids)):
        steps = model.forward([[ids[t]], [ids[t % 9]]], [alone, other]) if t % 2 else model.forward([[ids[t]]], [alone])
        assert_close(steps[0], expected[t])


# Q8_0 weights (blocks of 32, round to nearest) against float32 on the default model, measured over 8 chat
# prompts x 16 greedy tokens (teacher-forced along the float32 path): the largest |logit difference| was
# 5.8% of the largest |logit| (mean 2.4%), the top token agreed at 125 of 128 positions (97.7%), and
# free-running greedy decodes kept the same tokens for 12 of 16 on average. The bounds leave room for other
# prompts (12% of scale, 90% agreement) and still fail a broken scale or block layout (logits unrelated).
Q8_RELATIVE = 0.12
Q8_AGREEMENT = 0.9
Q8_PROMPTS = ("What is the capital of France?", "Write a short poem about the sea.", "def fibonacci(n):",
              "List three colors.")


@needs_numba
def test_default_model_q8_logits_stay_close_to_float32(smollm2, smollm2_q8):
    differences, agreements = [], []
    for text in Q8_PROMPTS:
        ids = chat_prompt_ids(smollm2, [{"role": "user", "content": text}])
        full, quantized = smollm2.new_cache(len(ids) + 16), smollm2_q8.new_cache(len(ids) + 16)
        a, b = smollm2.forward([ids], [full])[0], smollm2_q8.forward([ids], [quantized])[0]
        for _ in range(16):
            differences.append(np.abs(a - b).max() / np.abs(a).max())
            agreements.append(a.argmax() == b.argmax())
            token = [[int(a.argmax())]]                            # both follow the float32 path
            a, b = smollm2.forward(token, [full])[0], smollm2_q8.forward(token, [quantized])[0]
    assert max(differences) <= Q8_RELATIVE, max(differences)
    assert np.mean(agreements) >= Q8_AGREEMENT, np.mean(agreements)


@needs_numba
def test_default_model_q8_keeps_int8_matrices_and_a_float32_embedding(smollm2_q8):
    from refengine.backends.numba_backend import Q8Panels
    weights = smollm2_q8.weights
    matrices = [m for layer in weights.layers for m in (layer.qkv, layer.out, layer.gate_up, layer.down)]
    assert all(isinstance(m, Q8Panels) for m in matrices + [weights.lm_head])
    assert weights.embed.dtype == np.float32
    assert weights.lm_head.shape == weights.embed.shape[::-1]


# ---- loading --------------------------------------------------------------------------------------------------

def test_load_backend_refuses_what_cannot_run():
    with pytest.raises(BackendError, match="unknown backend"):
        load_backend("tensorflow")
    with pytest.raises(BackendError, match="q8"):
        load_backend("numpy", weights="q8")
    with pytest.raises(BackendError, match="weight format"):
        load_backend("numba", weights="q4")
    with pytest.raises(BackendError):
        load_backend("cupy", device="cpu")                        # the GPU backend on the CPU
    assert issubclass(BackendError, ValueError)
    assert isinstance(load_backend("numpy"), NumpyBackend)


def test_cupy_without_a_gpu_is_a_backend_error():
    try:
        backend = load_backend("cupy", device="gpu")
    except BackendError:
        return
    pytest.skip(f"a GPU is present here ({backend.name})")
