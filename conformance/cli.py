"""python -m conformance --base-url URL [...]: run the suite and report; non-zero exit on a MUST failure."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .check import CATEGORIES
from .checks import ALL_CHECKS, select
from .client import Client
from .context import Context, discover_model
from .report import MARKS, render_html, render_table, to_json
from .runner import must_failures, run_checks

EXIT_OK, EXIT_MUST_FAILED, EXIT_USAGE = 0, 1, 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="conformance",
                                description="Test an OpenAI-compatible server against the OpenAI contract.")
    p.add_argument("--base-url", help="API root including /v1, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", help="model id to test (default: the first one /models lists)")
    p.add_argument("--api-key", help="bearer token, if the server wants one")
    p.add_argument("--only", action="append", default=[], metavar="CATEGORY",
                   help=f"run only this category (repeatable, or comma-separated): {', '.join(CATEGORIES)}")
    p.add_argument("--check", action="append", default=[], metavar="NAME", help="run only this check (repeatable)")
    p.add_argument("--json", type=Path, metavar="OUT", help="write the JSON report here")
    p.add_argument("--html", type=Path, metavar="OUT", help="write the HTML report here")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S", help="seconds per request (default 120)")
    p.add_argument("--context-length", type=int, help="the model's context length, if /models does not say")
    p.add_argument("--list", action="store_true", help="list the checks and exit")
    p.add_argument("--quiet", action="store_true", help="no per-check progress lines")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    categories = tuple(c.strip() for item in args.only for c in item.split(",") if c.strip())
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        print(f"unknown category {unknown}; choose from {', '.join(CATEGORIES)}", file=sys.stderr)
        return EXIT_USAGE
    checks = select(categories, tuple(args.check))
    if args.list:
        for item in checks:
            print(f"{item.level:6} {item.name:48} {item.description}")
        return EXIT_OK
    if not args.base_url:
        print("--base-url is required", file=sys.stderr)
        return EXIT_USAGE
    if not checks:
        print(f"no check selected; names are: {', '.join(c.name for c in ALL_CHECKS)}", file=sys.stderr)
        return EXIT_USAGE
    client = Client(args.base_url, args.api_key, args.timeout)
    listed_model, listed_context = discover_model(client)
    model = args.model or listed_model
    if model is None:
        print(f"no --model given and {client.url('models')} lists none", file=sys.stderr)
        return EXIT_USAGE
    ctx = Context(client, model, args.context_length or (listed_context if model == listed_model else None))
    started = time.time()

    def progress(result):
        if not args.quiet:
            print(f"{MARKS[result.outcome]}  {result.name}  ({result.seconds:.1f}s)", file=sys.stderr, flush=True)
    results = run_checks(ctx, checks, progress)
    meta = {"base_url": args.base_url, "model": model, "context_length": ctx.context_length,
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
            "seconds": round(time.time() - started, 1), "requests": len(ctx.exchanges)}
    print(render_table(results))
    if args.json:
        args.json.write_text(json.dumps(to_json(results, meta), indent=2, ensure_ascii=False, default=str))
    if args.html:
        args.html.write_text(render_html(results, meta))
    failed = must_failures(results)
    print(f"\n{len(failed)} MUST check(s) failed" if failed else "\nevery MUST check passed")
    return EXIT_MUST_FAILED if failed else EXIT_OK
