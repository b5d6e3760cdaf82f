"""MaskBench: compile each JSON schema, walk each test instance's tokens through the constraint.

    .venv/bin/python tools/maskbench.py ../shared/data/maskbench-dev [--json OUT] [--limit N] [--timeout S]

Protocol (../shared/README.md): for every file's schema, compile it with the default model's tokenizer
(timed); for each test, tokenize json.dumps(data, ensure_ascii=False) and walk the tokens: a valid instance
must be allowed at every token and end accepting; an invalid one must be refused at some token or end in a
non-accepting state. A schema passes when it compiles and every test is judged right. Prints schemas
compiled / passing, wrong accepts, compile time p50/p90, time to first mask p50/p99 (compile + the start
state's mask: what a user waits before the first token, as llguidance's MaskBench reports it), per-token
mask time p50/p99/max, per-token advance time p50/p99/max (the state after the chosen token: where the
mask's walk took a token without following it, it is followed here), the most common failure reasons
and, last, `passing N/M`.
"""
from __future__ import annotations

import argparse
import collections
import json
import resource
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from refengine.constrain import (SPEC_STYLE, ConstraintCompiler, ConstraintError, JsonStyle, Vocab,  # noqa: E402
                                 compile_constraint)
from refengine.convert import default_model_dir  # noqa: E402
from refengine.tokenizer import Tokenizer  # noqa: E402


class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout()


def judge(constraint, token_ids: list[int], mask_times: list[float], advance_times: list[float]) -> bool:
    """True when the constraint accepts the whole token sequence (every token allowed, end accepting)."""
    state = constraint.initial_state
    for token_id in token_ids:
        start = time.perf_counter()
        mask = constraint.allowed(state)
        mask_times.append(time.perf_counter() - start)
        if not mask[token_id]:
            return False
        start = time.perf_counter()
        state = constraint.advance(state, token_id)
        advance_times.append(time.perf_counter() - start)
    return constraint.is_accepting(state)


def run_one(path: Path, tokenizer: Tokenizer, vocab: Vocab, timeout: float, mask_times: list[float],
            style: JsonStyle, advance_times: list[float] | None = None) -> dict:
    case = json.loads(path.read_text())
    record = {"file": path.name, "tests": len(case["tests"]), "compiled": False, "passed": False,
              "compile_s": None, "reason": None}
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        start = time.perf_counter()
        try:
            constraint = compile_constraint("json_schema", case["schema"], vocab, style)
        except ConstraintError as e:
            record["reason"] = f"unsupported: {e.keyword}"
            record["detail"] = e.message[:200]
            return record
        record["compile_s"] = time.perf_counter() - start
        constraint.allowed(constraint.initial_state)
        record["first_mask_s"] = time.perf_counter() - start
        record["compiled"] = True
        wrong = []
        for i, test in enumerate(case["tests"]):
            text = json.dumps(test["data"], ensure_ascii=False)
            accepted = judge(constraint, tokenizer.encode(text), mask_times,
                             advance_times if advance_times is not None else [])
            if accepted != test["valid"]:
                wrong.append((i, "wrong reject" if test["valid"] else "wrong accept"))
        if wrong:
            record["reason"] = wrong[0][1]
            record["wrong_tests"] = [i for i, _ in wrong]
            record["wrong_accepts"] = sum(kind == "wrong accept" for _, kind in wrong)
        else:
            record["passed"] = True
        record["states"] = constraint.automaton.n_states
    except Timeout:
        record["reason"] = "timeout"
    except ConstraintError as e:
        record["reason"] = f"limit: {e.keyword}"
        record["detail"] = e.message[:200]
    except RecursionError:
        record["reason"] = "crash: RecursionError"
    except Exception as e:            # a benchmark reports crashes instead of stopping on them
        record["reason"] = f"crash: {type(e).__name__}"
        record["detail"] = str(e)[:200]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return record


def percentile(values, q):
    return float(np.percentile(values, q)) if len(values) else float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path)
    parser.add_argument("--json", type=Path, help="write per-schema results here")
    parser.add_argument("--limit", type=int, help="only the first N files (sorted by name)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per schema (compile + tests)")
    parser.add_argument("--only", help="only files whose name contains this")
    parser.add_argument("--schema-order", action="store_true",
                        help="declared properties in schema order (as generation writes them), not any order")
    args = parser.parse_args(argv)

    files = sorted(args.dir.glob("*.json"))
    if args.only:
        files = [f for f in files if args.only in f.name]
    if args.limit:
        files = files[:args.limit]
    if not files:
        parser.error(f"no schema files (*.json) in {args.dir}")
    tokenizer = Tokenizer.from_dir(default_model_dir(progress=False))
    vocab = Vocab.from_tokenizer(tokenizer)
    ConstraintCompiler(vocab).warm_up()           # the tries and the compiled walk, once, outside the timings
    signal.signal(signal.SIGALRM, _alarm)

    records, mask_times, advance_times = [], [], []
    started = time.perf_counter()
    for path in files:
        # validating, so the letter of JSON Schema (not the server's generation style, which closes objects)
        records.append(run_one(path, tokenizer, vocab, args.timeout, mask_times,
                               replace(SPEC_STYLE, any_order=not args.schema_order), advance_times))
    elapsed = time.perf_counter() - started

    compiled = [r for r in records if r["compiled"]]
    passing = [r for r in records if r["passed"]]
    compile_times = [r["compile_s"] for r in compiled]
    first_mask_times = [r["first_mask_s"] for r in compiled if r.get("first_mask_s") is not None]
    wrong_accepts = sum(r.get("wrong_accepts", 0) for r in records)
    reasons = collections.Counter(r["reason"] for r in records if not r["passed"])
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"schemas:             {len(records)} ({elapsed:.1f} s total)")
    print(f"compiled:            {len(compiled)}")
    print(f"passing:             {len(passing)} ({100 * len(passing) / max(len(records), 1):.1f}%)")
    print(f"wrong accepts:       {wrong_accepts} tests")
    print(f"compile p50 / p90:   {1e3 * percentile(compile_times, 50):.2f} ms / "
          f"{1e3 * percentile(compile_times, 90):.2f} ms (max {1e3 * max(compile_times, default=0):.0f} ms)")
    print(f"first mask p50 / p99: {1e3 * percentile(first_mask_times, 50):.2f} ms / "
          f"{1e3 * percentile(first_mask_times, 99):.2f} ms (compile + the start state's mask)")
    print(f"mask p50 / p99 / max: {1e6 * percentile(mask_times, 50):.1f} us / "
          f"{1e6 * percentile(mask_times, 99):.1f} us / {1e3 * max(mask_times, default=0):.1f} ms per token "
          f"({len(mask_times)} tokens)")
    print(f"advance p50 / p99 / max: {1e6 * percentile(advance_times, 50):.1f} us / "
          f"{1e6 * percentile(advance_times, 99):.1f} us / {1e3 * max(advance_times, default=0):.1f} ms per token "
          "(the state after the token; following a token the walk took without following it)")
    print(f"peak memory:         {peak_rss_mb:.0f} MB")
    print("failure reasons:")
    for reason, count in reasons.most_common(15):
        print(f"  {count:5d}  {reason}")
    if args.json:
        args.json.write_text(json.dumps({"records": records, "passing": len(passing), "total": len(records)},
                                        indent=1))
    print(f"passing {len(passing)}/{len(records)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
