"""The cupy backend against the numpy reference on the tiny fixtures (skipped without cupy and a GPU).

`tools/gpu_check.py` runs the same comparisons at the default model's shapes and times them; these keep the
GPU path under the test suite wherever a GPU is present. float32 both sides: cuBLAS and the kernels sum in
other orders than numpy, so logits differ by float32 rounding (~1e-6 of their scale on a 2-layer model);
1e-4 of the largest |logit| leaves a wide margin and still catches a misread position (~1e-1).
"""
import numpy as np
import pytest

from refengine.backends import BackendError, load_backend
from refengine.generate import generate
from refengine.model import load_model
from refengine.request import GenerationRequest, SamplingParams, StoppingParams
from tiny_model import write_tiny_llama

try:
    load_backend("cupy", "gpu")
    GPU = True
except BackendError:
    GPU = False

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not GPU, reason="needs cupy and a GPU")]
RELATIVE = 1e-4
VARIANTS = {
    "llama": dict(architecture="LlamaForCausalLM"),
    "llama-tied": dict(architecture="LlamaForCausalLM", tie_word_embeddings=True),
    "qwen2-bias": dict(architecture="Qwen2ForCausalLM"),
    "mistral-window": dict(architecture="MistralForCausalLM", extra_config={"sliding_window": 6}),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def pair(request, tmp_path_factory):
    folder = write_tiny_llama(tmp_path_factory.mktemp(request.param), **VARIANTS[request.param])
    return load_model(folder, backend="numpy"), load_model(folder, device="gpu")


def assert_close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=0, atol=RELATIVE * np.abs(expected).max())


def test_prefill_decode_branches_and_graph_replays_match_numpy(pair):
    reference, gpu = pair
    prompts = [reference.tokenizer.encode(t) for t in ("Hello, world!", "def add(a, b):\n    return a + b", "x")]
    ref_caches, gpu_caches = [reference.new_cache(2) for _ in prompts], [gpu.new_cache(2) for _ in prompts]
    expected = reference.forward(prompts, ref_caches)
    assert_close(gpu.forward(prompts, gpu_caches), expected)
    for _ in range(5):                       # eager, captured, then replayed as a CUDA graph
        tokens = [[int(t)] for t in expected.argmax(axis=1)]
        expected = reference.forward(tokens, ref_caches)
        assert_close(gpu.forward(tokens, gpu_caches), expected)
    ref_branches, gpu_branches = [ref_caches[1].branch() for _ in range(2)], [gpu_caches[1].branch() for _ in range(2)]
    tokens = [[3], [4]]
    for _ in range(4):
        expected = reference.forward(tokens, ref_branches)
        assert_close(gpu.forward(tokens, gpu_branches), expected)
        tokens = [[int(t)] for t in expected.argmax(axis=1)]


def test_greedy_generation_is_the_same_tokens(pair):
    reference, gpu = pair
    request = GenerationRequest(prompt_ids=tuple(reference.tokenizer.encode("Hello")),
                                sampling=SamplingParams(temperature=0.0),
                                stopping=StoppingParams(max_tokens=24, ignore_eos=True))
    assert [e.token_id for e in generate(gpu, request)] == [e.token_id for e in generate(reference, request)]


def test_the_scheduler_batches_gpu_requests_to_the_same_tokens(pair):
    """Requests of different lengths decoded together (batch sizes change as they finish: eager steps,
    captures and graph replays mixed) give the tokens each gives alone on the numpy backend."""
    from refengine.scheduler import Scheduler
    reference, gpu = pair
    requests = [GenerationRequest(prompt_ids=tuple(reference.tokenizer.encode(text)),
                                  sampling=SamplingParams(temperature=0.0),
                                  stopping=StoppingParams(max_tokens=length, ignore_eos=True))
                for text, length in (("Hello", 20), ("def add(a, b):", 9), ("The quick brown fox", 14))]
    expected = [[e.token_id for e in generate(reference, r)] for r in requests]
    scheduler = Scheduler(gpu).start()
    try:
        handles = [scheduler.submit(r) for r in requests]
        assert [[e.token_id for e in handle] for handle in handles] == expected
    finally:
        scheduler.stop()


def test_embeddings_match_numpy(pair):
    from refengine.embed import embed
    reference, gpu = pair
    sequences = [reference.tokenizer.encode(t) for t in ("Hello, world!", "def add(a, b):")]
    np.testing.assert_allclose(embed(gpu, sequences), embed(reference, sequences), rtol=0, atol=1e-5)
