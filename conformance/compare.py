"""`refengine compare`: the same greedy request to two OpenAI-compatible servers, their outputs token by token.

    refengine compare --base-url http://A/v1 --base-url http://B/v1 --request req.json [--html diff.html]

The auditor's question is "does server B serve the same model the same way as A?". Both get the request
with sampling pinned (temperature 0, n 1, no stream) and logprobs asked for (5 alternatives), so each token
comes back with its bytes, its logprob and the top alternatives there. The report: where the outputs
diverge (the first token that differs, and what each server ranked there), and, over the common prefix, the
largest logprob difference. Exit status 0 when the outputs are the same tokens, 1 when they differ, 2 when a
server could not be asked. HTTP only, like the conformance suite: it works against any server.
"""
from __future__ import annotations

import argparse
import html
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from .client import Client, TransportError

TOP = 5
EXIT_SAME, EXIT_DIFFERENT, EXIT_ERROR = 0, 1, 2


@dataclass(frozen=True)
class Token:
    text: str
    bytes: tuple[int, ...]
    logprob: float | None
    top: tuple[tuple[str, float], ...]       # the alternatives the server ranked there


@dataclass(frozen=True)
class Output:
    server: str
    text: str
    tokens: tuple[Token, ...]
    finish_reason: str | None


def pinned(request: dict) -> tuple[str, dict]:
    """The endpoint and the body both servers get: greedy, one choice, not streamed, logprobs on."""
    body = {**request, "temperature": 0, "n": 1, "stream": False}
    body.pop("stream_options", None)
    if "messages" in body:
        return "chat/completions", {**body, "logprobs": True, "top_logprobs": TOP}
    if "prompt" in body:
        return "completions", {**body, "logprobs": TOP}
    raise ValueError("the request needs `messages` (chat) or `prompt` (completions)")


def chat_tokens(choice: dict) -> tuple[Token, ...]:
    entries = (choice.get("logprobs") or {}).get("content") or []
    return tuple(Token(e["token"], tuple(e.get("bytes") or e["token"].encode()), e.get("logprob"),
                       tuple((t["token"], t["logprob"]) for t in e.get("top_logprobs") or []))
                 for e in entries)


def completion_tokens(choice: dict) -> tuple[Token, ...]:
    logprobs = choice.get("logprobs") or {}
    tokens, values, tops = logprobs.get("tokens") or [], logprobs.get("token_logprobs") or [], logprobs.get("top_logprobs") or []
    return tuple(Token(t, tuple(t.encode()), v, tuple(sorted((top or {}).items(), key=lambda kv: -kv[1])))
                 for t, v, top in zip(tokens, values + [None] * len(tokens), tops + [None] * len(tokens)))


def ask(base_url: str, api_key: str | None, endpoint: str, body: dict, timeout: float) -> Output:
    exchange = Client(base_url, api_key, timeout).post(endpoint, body)
    if exchange.status != 200 or not exchange.is_json:
        raise RuntimeError(f"{base_url} answered {exchange.status}: {exchange.text[:300]}")
    choice = exchange.json["choices"][0]
    if endpoint == "chat/completions":
        return Output(base_url, choice["message"].get("content") or "", chat_tokens(choice), choice.get("finish_reason"))
    return Output(base_url, choice.get("text") or "", completion_tokens(choice), choice.get("finish_reason"))


@dataclass(frozen=True)
class Comparison:
    a: Output
    b: Output
    common: int                              # tokens the two outputs share from the start
    largest_logprob_gap: float               # over the common prefix (nan where a server sent none)

    @property
    def same(self) -> bool:
        return self.common == len(self.a.tokens) == len(self.b.tokens) and self.a.text == self.b.text


def compare(a: Output, b: Output) -> Comparison:
    common = 0
    for x, y in zip(a.tokens, b.tokens):
        if x.bytes != y.bytes:
            break
        common += 1
    gaps = [abs(x.logprob - y.logprob) for x, y in zip(a.tokens[:common], b.tokens[:common])
            if x.logprob is not None and y.logprob is not None]
    return Comparison(a, b, common, max(gaps) if gaps else math.nan)


def _shown(token: Token | None) -> str:
    if token is None:
        return "(end)"
    logprob = "" if token.logprob is None else f" ({token.logprob:.4f})"
    return json.dumps(token.text, ensure_ascii=False) + logprob


def report(comparison: Comparison) -> str:
    a, b = comparison.a, comparison.b
    lines = [f"A: {a.server}: {len(a.tokens)} tokens, finish {a.finish_reason}",
             f"B: {b.server}: {len(b.tokens)} tokens, finish {b.finish_reason}"]
    if comparison.same:
        lines.append(f"same output: all {comparison.common} tokens identical")
    else:
        at = comparison.common
        x = a.tokens[at] if at < len(a.tokens) else None
        y = b.tokens[at] if at < len(b.tokens) else None
        lines.append(f"outputs diverge at token {at}: A {_shown(x)} vs B {_shown(y)}")
        for name, token in (("A", x), ("B", y)):
            if token is not None and token.top:
                lines.append(f"  {name} ranked there: " + ", ".join(f"{json.dumps(t, ensure_ascii=False)} {v:.3f}"
                                                                   for t, v in token.top))
    if not math.isnan(comparison.largest_logprob_gap):
        lines.append(f"largest |logprob A - logprob B| over the {comparison.common} shared tokens: "
                     f"{comparison.largest_logprob_gap:.2e}")
    lines.append("token-by-token:")
    for i in range(max(len(a.tokens), len(b.tokens))):
        x = a.tokens[i] if i < len(a.tokens) else None
        y = b.tokens[i] if i < len(b.tokens) else None
        mark = " " if i < comparison.common else "≠"
        lines.append(f" {mark} {i:4d}  A {_shown(x):40}  B {_shown(y)}")
    return "\n".join(lines)


def html_report(comparison: Comparison) -> str:
    a, b = comparison.a, comparison.b
    rows = []
    for i in range(max(len(a.tokens), len(b.tokens))):
        x = a.tokens[i] if i < len(a.tokens) else None
        y = b.tokens[i] if i < len(b.tokens) else None
        differs = i >= comparison.common
        cells = "".join(f"<td>{html.escape(_shown(t))}</td><td>{html.escape(', '.join(f'{n!r} {v:.3f}' for n, v in (t.top if t else ())))}</td>"
                        for t in (x, y))
        rows.append(f"<tr class={'differs' if differs else 'same'}><td>{i}</td>{cells}</tr>")
    verdict = ("same output" if comparison.same else f"outputs diverge at token {comparison.common}")
    return f"""<!doctype html><meta charset="utf-8"><title>refengine compare</title>
<style>body{{font:14px system-ui}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:2px 6px;font-family:monospace}}
tr.differs td{{background:#fdecea}}</style>
<h1>{html.escape(verdict)}</h1>
<p>A: {html.escape(a.server)} ({len(a.tokens)} tokens, finish {html.escape(str(a.finish_reason))})<br>
B: {html.escape(b.server)} ({len(b.tokens)} tokens, finish {html.escape(str(b.finish_reason))})<br>
largest logprob gap over the shared tokens: {comparison.largest_logprob_gap:.2e}</p>
<table><tr><th>#</th><th>A token (logprob)</th><th>A alternatives</th><th>B token (logprob)</th><th>B alternatives</th></tr>
{''.join(rows)}</table>"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="refengine compare", description=__doc__.splitlines()[0])
    p.add_argument("--base-url", action="append", required=True, help="a server's /v1 URL (give two)")
    p.add_argument("--request", type=Path, required=True, help="a chat or completions request body (JSON)")
    p.add_argument("--api-key", action="append", help="the key of each server, in order (omit for none)")
    p.add_argument("--html", type=Path, help="also write the diff as an HTML page here")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if len(args.base_url) != 2:
        print("give exactly two --base-url", file=sys.stderr)
        return EXIT_ERROR
    keys = (args.api_key or []) + [None, None]
    try:
        endpoint, body = pinned(json.loads(args.request.read_text()))
        a, b = (ask(url, key, endpoint, body, args.timeout) for url, key in zip(args.base_url, keys))
    except (OSError, ValueError, RuntimeError, TransportError) as error:
        print(f"refengine compare: {error}", file=sys.stderr)
        return EXIT_ERROR
    comparison = compare(a, b)
    print(report(comparison))
    if args.html:
        args.html.write_text(html_report(comparison))
    return EXIT_SAME if comparison.same else EXIT_DIFFERENT
