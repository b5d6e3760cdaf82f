"""What tracing costs: decode speed of the same request with and without a trace, in one run.

    python tools/bench_trace.py [--model DIR] [--tokens 64] [--repeats 3] [--top-k 10]

A traced token records the top-k candidates after the forward pass and after every processor, so the cost
grows with the processors that are on; this runs greedy (2 stages a token) and a full sampler configuration
(9 stages a token), each traced and untraced, alternating, and prints the best rate of each and the ratio.
"""
from __future__ import annotations

import argparse
import time

from refengine.convert import default_model_dir
from refengine.generate import generate
from refengine.model import load_model
from refengine.request import GenerationRequest, SamplingParams, StoppingParams
from refengine.trace import RequestTrace

CONFIGS = {
    "greedy": SamplingParams(temperature=0.0),
    "sampled": SamplingParams(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.1,
                              presence_penalty=0.5, frequency_penalty=0.3, logit_bias={42: 2.0}, seed=0),
}


def decode_rate(model, ids, sampling, tokens: int, top_k: int | None) -> float:
    request = GenerationRequest(prompt_ids=tuple(ids), sampling=sampling,
                                stopping=StoppingParams(max_tokens=tokens + 1, ignore_eos=True),
                                trace=RequestTrace(top_k) if top_k else None)
    stamps = [time.perf_counter() for _ in generate(model, request)]
    return tokens / (stamps[-1] - stamps[0])            # decode only: the first token's prefill left out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top-k", type=int, default=10)
    args = parser.parse_args()
    model = load_model(args.model or default_model_dir())
    ids = model.tokenizer.encode("Write a short poem about the sea.")
    print(f"{model.name}, backend {model.backend.name}, {args.tokens} decode tokens, best of {args.repeats}")
    print("| sampler | untraced tok/s | traced tok/s | traced / untraced |")
    print("|---|---|---|---|")
    for label, sampling in CONFIGS.items():
        plain, traced = [], []
        for _ in range(args.repeats):
            plain.append(decode_rate(model, ids, sampling, args.tokens, None))
            traced.append(decode_rate(model, ids, sampling, args.tokens, args.top_k))
        print(f"| {label} | {max(plain):.1f} | {max(traced):.1f} | {max(traced) / max(plain):.2f} |")


if __name__ == "__main__":
    main()
