"""GPU check for the cupy backend: logits against the numpy reference, then decode speed beside torch.

    python tools/gpu_check.py [--out results.json]

For a GPU machine with numpy and cupy (torch + transformers for the comparison; skipped when absent) and
this repo; no model files: it builds a seeded random model of SmolLM2-135M's shapes (the real weights are
538 MB) plus small variants (sliding window, qkv bias, 128-wide heads). It checks, against the numpy
backend on the same weights (float32 both, |diff| <= 1e-3 of the largest logit): a mixed-length prefill,
batched decode, n choices branching off one prompt (a cache read in two blocks), and decode steps replayed
as CUDA graphs. Then it times greedy decode (logits copied to the host each step and argmax'd there, as the
engine samples) at 1, 16 and 64 streams, eager and as graphs, and the same model in transformers (torch
CUDA eager, its default attention), and prints one table. Every section reports its own failure and the
script goes on, so one run says as much as it can. It takes about a minute or two.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from refengine.backends.numpy_backend import NumpyBackend  # noqa: E402
from refengine.config import config_from_dict  # noqa: E402
from refengine.forward import load_model_weights  # noqa: E402
from refengine.kvcache import KVCache  # noqa: E402

TOLERANCE = 1e-3          # the bound, relative to the largest |logit|
SMOLLM2 = dict(architectures=["LlamaForCausalLM"], hidden_size=576, intermediate_size=1536,
               num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
               rms_norm_eps=1e-5, rope_theta=100000.0, max_position_embeddings=8192, vocab_size=49152,
               tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
VARIANTS = {
    "window-8": dict(SMOLLM2, architectures=["MistralForCausalLM"], num_hidden_layers=2, vocab_size=512,
                     sliding_window=8, max_position_embeddings=256),
    "qwen2-bias": dict(SMOLLM2, architectures=["Qwen2ForCausalLM"], num_hidden_layers=2, vocab_size=512,
                       attention_bias=True, tie_word_embeddings=False, max_position_embeddings=256),
    "head-128": dict(SMOLLM2, num_hidden_layers=2, vocab_size=512, hidden_size=512, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=128, max_position_embeddings=256),
}
results: dict = {"checks": {}, "timings": {}, "errors": []}


_tensors: dict = {}


def random_tensors(raw: dict, seed: int = 0) -> dict:
    """HF-named float32 tensors; projections scaled 1/sqrt(fan_in) so activations stay O(1) over 30 layers."""
    key = json.dumps([raw, seed], sort_keys=True)
    if key not in _tensors:
        _tensors[key] = _random_tensors(raw, seed)
    return _tensors[key]


def _random_tensors(raw: dict, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    D, F, V = raw["hidden_size"], raw["intermediate_size"], raw["vocab_size"]
    H, Hkv, hd = raw["num_attention_heads"], raw["num_key_value_heads"], raw["head_dim"]

    def rand(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(shape[-1]))).astype(np.float32)

    def norm():
        return (1 + 0.1 * rng.standard_normal(D, dtype=np.float32)).astype(np.float32)

    tensors = {"model.embed_tokens.weight": rng.standard_normal((V, D), dtype=np.float32),
               "model.norm.weight": norm()}
    if not raw["tie_word_embeddings"]:
        tensors["lm_head.weight"] = rand(V, D)
    for i in range(raw["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors.update({p + "input_layernorm.weight": norm(), p + "post_attention_layernorm.weight": norm(),
                        p + "self_attn.q_proj.weight": rand(H * hd, D), p + "self_attn.k_proj.weight": rand(Hkv * hd, D),
                        p + "self_attn.v_proj.weight": rand(Hkv * hd, D), p + "self_attn.o_proj.weight": rand(D, H * hd),
                        p + "mlp.gate_proj.weight": rand(F, D), p + "mlp.up_proj.weight": rand(F, D),
                        p + "mlp.down_proj.weight": rand(D, F)})
        if raw.get("attention_bias"):
            for name, rows in (("q", H), ("k", Hkv), ("v", Hkv)):
                tensors[p + f"self_attn.{name}_proj.bias"] = (0.1 * rng.standard_normal(rows * hd)).astype(np.float32)
    return tensors


class Engine:
    """One backend's forward over one model: caches, forward passes, logits on the host."""

    def __init__(self, config, tensors, backend):
        self.config, self.backend = config, backend
        self.weights = backend.prepare(load_model_weights(config, tensors, backend.xp))

    def cache(self, capacity: int = 0) -> KVCache:
        return KVCache(self.config, capacity, self.backend.xp)

    def forward(self, tokens, caches) -> np.ndarray:
        logits = self.backend.forward(self.config, self.weights, tokens, caches, False)
        return self.backend.to_host(logits[:, :self.config.vocab_size])


def relative(actual, expected) -> float:
    return float(np.abs(np.asarray(actual) - expected).max() / np.abs(expected).max())


def check(name: str, actual, expected) -> None:
    error = relative(actual, expected)
    results["checks"][name] = error
    print(f"  {'ok  ' if error <= TOLERANCE else 'FAIL'} {name}: max |diff| / max |logit| = {error:.2e}", flush=True)


def section(function):
    def run(*args):
        started = time.perf_counter()
        print(f"== {function.__name__}", flush=True)
        try:
            function(*args)
        except Exception:
            text = traceback.format_exc()
            results["errors"].append({"section": function.__name__, "traceback": text})
            print(text, flush=True)
        print(f"   ({time.perf_counter() - started:.1f} s)", flush=True)
    return run


def correctness(name: str, raw: dict, graphs: bool) -> None:
    """Prefill, batched decode, branches and graph replays: cupy against numpy, step by step."""
    from refengine.backends.cupy_backend import CupyBackend
    config = config_from_dict(raw)
    tensors = random_tensors(raw)
    reference, gpu = Engine(config, tensors, NumpyBackend()), Engine(config, tensors, CupyBackend(graphs=graphs))
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, config.vocab_size, n).tolist() for n in (5, 17, 40)]
    ref_caches, gpu_caches = [reference.cache() for _ in prompts], [gpu.cache() for _ in prompts]
    expected = reference.forward(prompts, ref_caches)
    check(f"{name}: prefill of 3 prompts (5, 17, 40 tokens) in one batch", gpu.forward(prompts, gpu_caches), expected)
    for step in range(6):                    # with graphs: step 0 eager, 1 captured, then replays
        tokens = [[int(t)] for t in expected.argmax(axis=1)]
        expected = reference.forward(tokens, ref_caches)
        check(f"{name}: batched decode step {step} of 3 sequences", gpu.forward(tokens, gpu_caches), expected)
    # n = 2 choices branching off one prompt: each reads the prompt's cache, then its own (two blocks)
    ref_prompt, gpu_prompt = reference.cache(), gpu.cache()
    first = reference.forward([prompts[2]], [ref_prompt])
    gpu.forward([prompts[2]], [gpu_prompt])
    ref_branches = [ref_prompt.branch() for _ in range(2)]
    gpu_branches = [gpu_prompt.branch() for _ in range(2)]
    tokens = [[int(first[0].argmax())], [int(first[0].argsort()[-2])]]
    for step in range(4):
        expected = reference.forward(tokens, ref_branches)
        check(f"{name}: decode step {step} of 2 branches over a shared prompt", gpu.forward(tokens, gpu_branches), expected)
        tokens = [[int(t)] for t in expected.argmax(axis=1)]
    # one sequence: the single-stream path (the decode kernel, and a graph of batch size 1)
    ref_one, gpu_one = reference.cache(), gpu.cache()
    expected = reference.forward([prompts[1]], [ref_one])
    gpu.forward([prompts[1]], [gpu_one])
    for step in range(4):
        tokens = [[int(expected[0].argmax())]]
        expected = reference.forward(tokens, [ref_one])
        check(f"{name}: single-stream decode step {step}", gpu.forward(tokens, [gpu_one]), expected)
    if graphs:
        graph_state = gpu.backend.graphs
        results["checks"][f"{name}: graphs captured"] = sorted(graph_state.captured)
        print(f"  graphs captured for batch sizes {sorted(graph_state.captured)}; capture failure: {graph_state.failed}")


def decode_rate(engine, streams: int, steps: int, prompt_length: int = 16) -> float:
    """Aggregate greedy decode tokens/s of `streams` sequences decoded together."""
    import cupy
    rng = np.random.default_rng(2)
    prompts = [rng.integers(0, engine.config.vocab_size, prompt_length).tolist() for _ in range(streams)]
    caches = [engine.cache(prompt_length + steps + 8) for _ in prompts]
    logits = engine.forward(prompts, caches)
    for _ in range(3):                       # warm-up: compile, size pools, capture graphs
        logits = engine.forward([[int(t)] for t in logits.argmax(axis=1)], caches)
    cupy.cuda.Stream.null.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        logits = engine.forward([[int(t)] for t in logits.argmax(axis=1)], caches)
    return streams * steps / (time.perf_counter() - started)


def torch_model(raw: dict, tensors: dict):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(**{k: v for k, v in raw.items() if k != "architectures"})
    model = LlamaForCausalLM(config).to(dtype=torch.float32)
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    return model.cuda().eval()


def torch_decode_rate(model, vocab: int, streams: int, steps: int, prompt_length: int = 16) -> float:
    import torch
    rng = np.random.default_rng(2)
    ids = torch.tensor(rng.integers(0, vocab, (streams, prompt_length)), device="cuda")
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
        past, host = out.past_key_values, out.logits[:, -1].float().cpu().numpy()
        for i in range(steps + 3):
            if i == 3:
                torch.cuda.synchronize()
                started = time.perf_counter()
            tokens = torch.from_numpy(host.argmax(axis=1)).to("cuda")[:, None]
            out = model(input_ids=tokens, past_key_values=past, use_cache=True)
            past, host = out.past_key_values, out.logits[:, -1].float().cpu().numpy()
    return streams * steps / (time.perf_counter() - started)


@section
def environment():
    import cupy
    props = cupy.cuda.runtime.getDeviceProperties(0)
    info = {"gpu": props["name"].decode(), "cupy": cupy.__version__,
            "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(), "numpy": np.__version__,
            "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        import torch
        import transformers
        info.update(torch=torch.__version__, transformers=transformers.__version__)
    except ImportError as error:
        info["torch"] = f"absent ({error})"
    results["environment"] = info
    print("  " + json.dumps(info), flush=True)


@section
def correctness_default_shapes():
    correctness("smollm2-shapes eager", SMOLLM2, graphs=False)
    correctness("smollm2-shapes graphs", SMOLLM2, graphs=True)


@section
def correctness_variants():
    for name, raw in VARIANTS.items():
        correctness(name, raw, graphs=True)


@section
def torch_agrees_with_reference():
    """The random model means the same to transformers as to us (so the speed comparison is like for like)."""
    import torch
    tensors = random_tensors(SMOLLM2)
    config = config_from_dict(SMOLLM2)
    reference = Engine(config, tensors, NumpyBackend())
    ids = np.random.default_rng(3).integers(0, config.vocab_size, 24).tolist()
    expected = reference.forward([ids], [reference.cache()])
    with torch.inference_mode():
        logits = torch_model(SMOLLM2, tensors)(input_ids=torch.tensor([ids], device="cuda")).logits
    check("transformers (torch CUDA) vs numpy reference, prefill of 24 tokens", logits[0, -1].float().cpu().numpy()[None], expected)


@section
def speed():
    from refengine.backends.cupy_backend import CupyBackend
    tensors = random_tensors(SMOLLM2)
    config = config_from_dict(SMOLLM2)
    plan = ((1, 128), (16, 64), (64, 64))
    rows = results["timings"]
    for label, graphs in (("refengine cupy, eager", False), ("refengine cupy, CUDA graphs", True)):
        engine = Engine(config, tensors, CupyBackend(graphs=graphs))
        rows[label] = {streams: decode_rate(engine, streams, steps) for streams, steps in plan}
        print(f"  {label}: " + ", ".join(f"{s} streams {r:,.0f} tok/s" for s, r in rows[label].items()), flush=True)
        if graphs:
            state = engine.backend.graphs
            results["graphs"] = {"captured": sorted(state.captured), "failure": state.failed}
            print(f"  graphs captured for batch sizes {sorted(state.captured)}; capture failure: {state.failed}")
        del engine
    try:
        model = torch_model(SMOLLM2, tensors)
    except ImportError as error:
        print(f"  torch comparison skipped: {error}")
        return
    label = "transformers, torch CUDA eager"
    rows[label] = {streams: torch_decode_rate(model, config.vocab_size, streams, steps) for streams, steps in plan}
    print(f"  {label}: " + ", ".join(f"{s} streams {r:,.0f} tok/s" for s, r in rows[label].items()), flush=True)


def report() -> None:
    print("\n| decode, greedy, float32 (tokens/s, aggregate) | 1 stream | 16 streams | 64 streams |")
    print("|---|---|---|---|")
    for label, rates in results["timings"].items():
        print(f"| {label} | " + " | ".join(f"{rates.get(s, float('nan')):,.0f}" for s in (1, 16, 64)) + " |")
    errors = [v for v in results["checks"].values() if isinstance(v, float)]
    worst = max(errors) if errors else float("nan")
    print(f"\ncorrectness: {len(errors)} comparisons, worst {worst:.2e} (bound {TOLERANCE:.0e}); "
          f"{sum(e > TOLERANCE for e in errors)} over the bound; {len(results['errors'])} sections raised")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    environment()
    correctness_default_shapes()
    correctness_variants()
    torch_agrees_with_reference()
    if not args.skip_speed:
        speed()
    report()
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str))
    failed = results["errors"] or any(isinstance(v, float) and v > TOLERANCE for v in results["checks"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
