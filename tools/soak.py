"""Soak and load test of a running server on this machine: N client threads for M minutes, each looping
over a mix of requests, then what came back and how the server's memory moved.

    python tools/soak.py http://127.0.0.1:8000 --streams 8 --minutes 10 [--pid PID] [--api-key KEY]
                         [--max-requests N] [--max-tokens 32] [--seed 0] [--sample-seconds 60]

The mix, taken in a seeded random order by each thread: streamed chat, non-streamed chat, a JSON-schema
response_format, tools with tool_choice auto and required, n=2, legacy completions (streamed or not), and a
cancel: a long stream whose connection the client closes after a few chunks. Plain `http.client`, one
connection per request, so the client spends little of the CPU it shares with the server.

Prints requests/s, time to first token (p50 / p99, streamed requests: the first chunk that carries output,
not the role chunk sent before generation starts), latency of whole requests, answers by HTTP status,
in-band SSE error events by type, broken streams (no [DONE] and no error event, or a dropped connection),
and the server's resident memory (VmRSS of the process holding the listening socket and its children, read
from /proc; or of --pid and its children): at the start, every --sample-seconds, at the end.

Bounded by time (--minutes) and count (--max-requests); loopback servers only. Exit status 1 on any 5xx:
an HTTP status >= 500, an in-band `server_error` event, a broken stream or a failed connection.
"""
from __future__ import annotations

import argparse
import collections
import http.client
import ipaddress
import json
import random
import socket
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

from processes import children, server_root

MAX_STREAMS = 256
MAX_MINUTES = 24 * 60
CANCEL_AFTER_CHUNKS = 3

PERSON = {"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": {
    "type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                     "age": {"type": "integer", "minimum": 0, "maximum": 120}},
    "required": ["name", "age"], "additionalProperties": False}}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.", "strict": True, "parameters": {
        "type": "object", "properties": {"city": {"enum": ["Paris", "Oslo", "Rome"]}}, "required": ["city"],
        "additionalProperties": False}}}
QUESTIONS = ["Name three colors.", "What is the capital of France?", "Describe a cat.", "Count to five.",
             "Write a haiku about rain.", "What is two plus two?", "Say hello.", "Give me a fruit."]


# ---- the requests ----

@dataclass(frozen=True)
class Call:
    scenario: str
    path: str
    body: dict
    cancel: bool = False                     # close the connection after CANCEL_AFTER_CHUNKS chunks

    @property
    def streamed(self) -> bool:
        return bool(self.body.get("stream"))


def user(rng: random.Random) -> list[dict]:
    """A question with a random tag, so the prefix cache holds no more than the template's beginning."""
    return [{"role": "user", "content": f"[{rng.randrange(10 ** 6)}] {rng.choice(QUESTIONS)}"}]


def calls(rng: random.Random, max_tokens: int) -> list[Call]:
    """One round of the mix, in a random order."""
    chat = "/v1/chat/completions"
    base = {"model": "default", "max_tokens": max_tokens, "temperature": 0.8, "seed": rng.randrange(1000)}
    round_ = [
        Call("chat_stream", chat, {**base, "messages": user(rng), "stream": True,
                                   "stream_options": {"include_usage": True}}),
        Call("chat", chat, {**base, "messages": user(rng)}),
        Call("json_schema", chat, {**base, "messages": user(rng), "response_format": PERSON}),
        Call("tools_auto", chat, {**base, "messages": user(rng), "tools": [WEATHER], "tool_choice": "auto",
                                  "stream": rng.random() < 0.5}),
        Call("tools_required", chat, {**base, "messages": user(rng), "tools": [WEATHER],
                                      "tool_choice": "required", "stream": rng.random() < 0.5}),
        Call("n2", chat, {**base, "messages": user(rng), "n": 2, "stream": rng.random() < 0.5}),
        Call("completion", "/v1/completions", {**base, "prompt": f"[{rng.randrange(10 ** 6)}] The quick brown",
                                               "stream": rng.random() < 0.5, "logprobs": 1}),
        Call("cancel", chat, {**base, "messages": user(rng), "stream": True, "max_tokens": max_tokens * 8,
                              "ignore_eos": True}, cancel=True),
    ]
    rng.shuffle(round_)
    return round_


# ---- one request ----

@dataclass
class Outcome:
    scenario: str
    status: int | None = None                # None: no HTTP answer (the connection failed)
    ttft: float | None = None                # seconds to the first chunk with output (streamed)
    latency: float | None = None             # seconds to the end of the answer (not for cancels)
    error_events: list = field(default_factory=list)   # in-band error types
    broken: str | None = None                # a stream that ended without [DONE] or error event, or a failure
    cancelled: bool = False


def has_output(chunk: dict) -> bool:
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta")
        if delta is not None and (delta.get("content") or delta.get("tool_calls") or delta.get("reasoning_content")):
            return True
        if delta is None and choice.get("text"):
            return True
        if choice.get("finish_reason"):
            return True
    return False


def send(base: urllib.parse.SplitResult, call: Call, headers: dict, timeout: float) -> Outcome:
    outcome = Outcome(call.scenario)
    connection = http.client.HTTPConnection(base.hostname, base.port or 80, timeout=timeout)
    started = time.monotonic()
    try:
        connection.request("POST", call.path, body=json.dumps(call.body), headers=headers)
        response = connection.getresponse()
        outcome.status = response.status
        if response.status != 200 or not response.getheader("Content-Type", "").startswith("text/event-stream"):
            body = response.read()
            if response.status == 200 and call.streamed:
                outcome.broken = "a streamed request answered without an event stream"
            elif response.status == 200:
                json.loads(body)
            outcome.latency = time.monotonic() - started
            return outcome
        read_stream(response, call, outcome, started)
    except (OSError, http.client.HTTPException, ValueError) as error:
        outcome.broken = f"{type(error).__name__}: {error}"
    finally:
        connection.close()                   # for a cancel: the server sees the hang-up at its next write
    return outcome


def read_stream(response, call: Call, outcome: Outcome, started: float) -> None:
    chunks = 0
    while True:
        line = response.readline()
        if not line:
            if not outcome.error_events:
                outcome.broken = "the stream ended without [DONE]"
            return
        line = line.strip()
        if not line.startswith(b"data: "):
            continue                         # blank separators and keep-alive comments
        data = line[len(b"data: "):]
        if data == b"[DONE]":
            outcome.latency = time.monotonic() - started
            return
        payload = json.loads(data)
        if "error" in payload:
            outcome.error_events.append(payload["error"].get("type") or "unknown")
            continue
        if outcome.ttft is None and has_output(payload):
            outcome.ttft = time.monotonic() - started
        chunks += 1
        if call.cancel and chunks >= CANCEL_AFTER_CHUNKS:
            outcome.cancelled = True
            return


# ---- the server's memory ----

def loopback_only(host: str) -> None:
    """Refuse anything that is not this machine: a soak is a load test, never aimed at someone else."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as error:
        raise SystemExit(f"soak: cannot resolve {host}: {error}")
    if not addresses or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise SystemExit(f"soak: refusing {host} ({', '.join(sorted(addresses))}): loopback servers only")


def tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo += children(current)
    return pids


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class MemorySample:
    elapsed: float
    per_pid: dict                            # pid → VmRSS KiB

    @property
    def total_mib(self) -> float:
        return sum(self.per_pid.values()) / 1024

    def line(self) -> str:
        parts = ", ".join(f"{pid} {kib / 1024:.1f}" for pid, kib in self.per_pid.items())
        minutes, seconds = divmod(self.elapsed, 60)
        return f"{int(minutes):3d}:{seconds:04.1f}: {self.total_mib:8.1f} MiB (pid MiB: {parts})"


def sample_memory(root: int | None, started: float) -> MemorySample | None:
    if root is None:
        return None
    per_pid = {pid: kib for pid in tree(root) if (kib := rss_kib(pid)) is not None}
    return MemorySample(time.monotonic() - started, per_pid) if per_pid else None


# ---- the run ----

@dataclass
class Run:
    outcomes: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: int = 0

    def take_slot(self, limit: int) -> bool:
        with self.lock:
            if self.sent >= limit:
                return False
            self.sent += 1
            return True

    def add(self, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes.append(outcome)


def client(index: int, args, base, headers: dict, run: Run, deadline: float, stop: threading.Event) -> None:
    rng = random.Random(args.seed * 1000 + index)
    while not stop.is_set():
        for call in calls(rng, args.max_tokens):
            if stop.is_set() or time.monotonic() >= deadline or not run.take_slot(args.max_requests):
                return
            run.add(send(base, call, headers, args.timeout))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.1f} ms"


def summary(run: Run, elapsed: float, samples: list, args, pids_note: str) -> tuple[str, bool]:
    outcomes = run.outcomes
    statuses = collections.Counter(o.status for o in outcomes if o.status is not None)
    events = collections.Counter(t for o in outcomes for t in o.error_events)
    broken = [o for o in outcomes if o.broken is not None]
    server_errors = sum(n for status, n in statuses.items() if status >= 500) + events["server_error"]
    ttfts = [o.ttft for o in outcomes if o.ttft is not None]
    latencies = [o.latency for o in outcomes if o.latency is not None and not o.cancelled]
    scenarios = collections.Counter(o.scenario for o in outcomes)
    lines = [
        f"soak: {args.streams} streams for {elapsed:.1f} s against {args.url} ({pids_note})",
        f"requests: {len(outcomes)} in {elapsed:.1f} s = {len(outcomes) / max(elapsed, 1e-9):.2f} req/s; "
        f"cancelled by the client as planned: {sum(o.cancelled for o in outcomes)}",
        "by scenario: " + ", ".join(f"{name} {n}" for name, n in sorted(scenarios.items())),
        f"time to first token: p50 {ms(percentile(ttfts, 50))}, p99 {ms(percentile(ttfts, 99))} "
        f"({len(ttfts)} streams)",
        f"latency: p50 {ms(percentile(latencies, 50))}, p99 {ms(percentile(latencies, 99))} "
        f"({len(latencies)} complete answers)",
        "HTTP statuses: " + (", ".join(f"{s}: {n}" for s, n in sorted(statuses.items())) or "none"),
        "in-band SSE error events: " + (", ".join(f"{t}: {n}" for t, n in sorted(events.items())) or "0"),
        f"broken streams or failed connections: {len(broken)}"
        + "".join(f"\n  {o.scenario}: {o.broken}" for o in broken[:10]),
        f"5xx: {server_errors}",
    ]
    if samples:
        first, last = samples[0], samples[-1]
        lines.append(f"server RSS: start {first.total_mib:.1f} MiB, end {last.total_mib:.1f} MiB "
                     f"({last.total_mib - first.total_mib:+.1f} MiB)")
        lines += ["  " + sample.line() for sample in samples]
    else:
        lines.append("server RSS: unknown (no --pid, and no process found listening on the port)")
    failed = server_errors > 0 or bool(broken)
    return "\n".join(lines), failed


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:8000 (a trailing /v1 is fine)")
    parser.add_argument("--streams", type=int, default=4, help="concurrent client threads")
    parser.add_argument("--minutes", type=float, default=1.0, help="how long to send new requests")
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="stop after this many requests")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of each request (cancels: 8x)")
    parser.add_argument("--pid", type=int, help="the server's PID (default: the process listening on the port)")
    parser.add_argument("--api-key")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample-seconds", type=float, default=60.0, help="RSS sample interval")
    parser.add_argument("--timeout", type=float, default=300.0, help="per-request socket timeout (hang guard)")
    args = parser.parse_args(argv)
    if not 1 <= args.streams <= MAX_STREAMS:
        parser.error(f"--streams must be 1..{MAX_STREAMS}")
    if not 0 < args.minutes <= MAX_MINUTES:
        parser.error(f"--minutes must be in (0, {MAX_MINUTES}]")
    if args.max_requests < 1 or args.max_tokens < 1 or args.sample_seconds <= 0:
        parser.error("--max-requests, --max-tokens and --sample-seconds must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    base = urllib.parse.urlsplit(args.url)
    if base.scheme != "http" or not base.hostname:
        raise SystemExit("soak: the URL must be http://HOST:PORT")
    loopback_only(base.hostname)
    port = base.port or 80
    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    root = args.pid if args.pid is not None else server_root(port)
    pids_note = "server pid unknown" if root is None else f"server pid {root}"
    started = time.monotonic()
    deadline = started + args.minutes * 60
    samples = [s for s in [sample_memory(root, started)] if s]
    if samples:
        print("RSS " + samples[0].line(), flush=True)
    run, stop = Run(), threading.Event()
    threads = [threading.Thread(target=client, args=(i, args, base, headers, run, deadline, stop), daemon=True)
               for i in range(args.streams)]
    for thread in threads:
        thread.start()
    next_sample = started + args.sample_seconds
    try:
        while any(thread.is_alive() for thread in threads):
            for thread in threads:
                thread.join(timeout=max(0.05, min(1.0, next_sample - time.monotonic())))
            if time.monotonic() >= next_sample:
                next_sample += args.sample_seconds
                sample = sample_memory(root, started)
                if sample:
                    samples.append(sample)
                    print(f"RSS {sample.line()}; {len(run.outcomes)} requests so far", flush=True)
    except KeyboardInterrupt:
        stop.set()
        print("soak: interrupted; waiting for requests in flight", flush=True)
        for thread in threads:
            thread.join(timeout=args.timeout)
    elapsed = time.monotonic() - started
    time.sleep(0.2)                          # let cancelled requests be noticed before the last sample
    final = sample_memory(root, started)
    if final:
        samples.append(final)
    text, failed = summary(run, elapsed, samples, args, pids_note)
    print(text, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
