"""Time the per-token stages after the forward pass on a 49,152-token vocabulary.

    .venv/bin/python tools/bench_sampler.py [--steps N] [--context L]

Runs apply_processors + sample + token_logprobs (+ TokenHistory.append) on random logits, once with a
realistic configuration and once with every processor disabled, and prints microseconds per token.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from refengine.history import DryBreakers, TokenHistory
from refengine.processors import apply_processors
from refengine.request import SamplingParams
from refengine.sample import choice_rngs, sample, token_logprobs

VOCAB_SIZE = 49152

REALISTIC = SamplingParams(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05,
                           repetition_penalty=1.1, presence_penalty=0.5, frequency_penalty=0.3,
                           logit_bias={11: 5.0, 42: -100.0, 1234: 2.5, 30000: -3.0},
                           dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=2, seed=0)
DISABLED = SamplingParams(seed=0)


def time_config(name: str, params: SamplingParams, logits: np.ndarray, prompt: np.ndarray,
                breakers: DryBreakers | None, top_n: int) -> None:
    history = TokenHistory.start(prompt, VOCAB_SIZE, breakers)
    rng = choice_rngs(params.seed, 1)[0]
    stage_seconds = {"apply_processors": 0.0, "sample": 0.0, "token_logprobs": 0.0, "append": 0.0}
    cpu_start = time.process_time()
    for step_logits in logits:
        t0 = time.perf_counter()
        processed = apply_processors(step_logits, params, history)
        t1 = time.perf_counter()
        token = sample(processed, rng)
        t2 = time.perf_counter()
        token_logprobs(step_logits, token, top_n)
        t3 = time.perf_counter()
        history.append(token)
        t4 = time.perf_counter()
        for stage, seconds in zip(stage_seconds, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            stage_seconds[stage] += seconds
    steps = logits.shape[0]
    cpu = (time.process_time() - cpu_start) / steps
    total = sum(stage_seconds.values()) / steps
    detail = "  ".join(f"{stage} {seconds / steps * 1e6:6.1f}" for stage, seconds in stage_seconds.items())
    # CPU time next to wall time: on a shared machine the wall clock also counts other processes
    print(f"{name:<10} {total * 1e6:7.1f} us/token wall, {cpu * 1e6:7.1f} cpu   ({detail})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--context", type=int, default=2000, help="prompt length in tokens")
    parser.add_argument("--top-logprobs", type=int, default=5)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((args.steps, VOCAB_SIZE)) * 3).astype(np.float32)   # [S, V]
    # A prompt with some repetition, drawn from a small alphabet so DRY has matches to find.
    prompt = rng.integers(0, 400, size=args.context).astype(np.int32)
    breakers = DryBreakers.from_token_sequences([[198], [25], [1], [9]], VOCAB_SIZE)
    print(f"V={VOCAB_SIZE}  steps={args.steps}  prompt={args.context} tokens  "
          f"top_logprobs={args.top_logprobs}")
    time_config("realistic", REALISTIC, logits, prompt, breakers, args.top_logprobs)
    time_config("disabled", DISABLED, logits, prompt, None, 0)


if __name__ == "__main__":
    main()
