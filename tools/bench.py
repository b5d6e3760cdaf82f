"""Engine benchmark: prefill and decode speed and peak memory, refengine beside transformers, and each CPU
backend's decode rates against its weight-reading ceiling.

    python tools/bench.py [--model DIR] [--decode-tokens 128] [--repeats 3] [--only backends|engines]
    python tools/bench.py --server http://127.0.0.1:8000/v1 [--decode-tokens 128]
    python tools/bench.py --http [--rounds 5] [--decode-tokens 128] [--repeats 3] [--llama-cpp-python PYTHON]

Each engine runs in its own subprocess (so peak RSS is its own): prefill tok/s for a short and a 512-token
prompt, single-stream greedy decode tok/s through refengine's generation loop (default backend; and with a
realistic sampler configuration), and the same for transformers (torch CPU, fp32) when it is installed.

Backends (numpy, numba, numba with q8 weights; each installed one in its own subprocess): the gemv ceiling,
a bare loop of the backend's own one-row product over every weight matrix of the model (one pass = one
token's weight reading, nothing else), then single-stream decode and the aggregate decode rate of 1, 4, 8 and
16 streams, driving Model.forward directly with one KV cache per stream (greedy argmax, no sampler or
scheduler; short prompts, so attention is a small share). A second table times one pass of the backend's
product over all weights for 1 to 64 rows: where it stops beating BLAS, and what batching can gain.

With --server: time to first token, single-stream decode, aggregate decode at 1/4/8/16 concurrent streams
(each user message tagged at random, so that a prefix cache holds no more than the template's preamble and
system prompt), the stall a ~1500-token prompt causes a running stream, and the first-token time of a long
conversation's next turn.

With --http, in each of --rounds rounds (every process fresh: a process's memory bandwidth on this VM varies
by up to ~45%, so one round's ratio is partly luck, and the median over the rounds is the figure): a process
holding the numba backend's float32 weights for the gemv ceiling (the backends table's bare one-row loop), and
beside it `refengine serve` on a free loopback port (numba, f32; then again with --weights q8). Their runs
alternate: a ceiling run, a stream, a ceiling run, ... (--repeats streams), each process idle while the other
runs. A stream is single-stream greedy decode through HTTP, a streamed chat completion of --decode-tokens
tokens (ignore_eos), timed from the first content chunk to the last, tokens counted by the usage chunk; a
ceiling run is --decode-tokens passes back to back. Alternating matters: the VM's memory also has fast moments
of a few seconds (one pass 10 ms instead of 16), which runs far apart in time would see unequally. Each
server's median rate is printed against the median ceiling of the runs around its streams (issue 16's targets:
f32 >= 0.9x, q8 >= 2x). `--llama-cpp-python PYTHON` (an interpreter
with `llama-cpp-python[server]`) adds llama.cpp's server on the default model's own GGUF (Q4_1), timed the
same way (it has no ignore_eos: its EOS tokens are biased away with logit_bias).
"""
from __future__ import annotations

import argparse
import functools
import http.client
import json
import os
import resource
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager

import refengine  # noqa: F401  (first: its thread-pool settings must be in the environment before numpy loads)
import numpy as np

SHORT_PROMPT = "Write a short poem about the sea."
LONG_TEXT = " ".join(["the quick brown fox jumps over the lazy dog"] * 150)     # about 1500 tokens
LONG_WORDS = 512


def prompt_ids(tokenizer_encode, length: int | None) -> list[int]:
    if length is None:
        return tokenizer_encode(SHORT_PROMPT)
    ids = tokenizer_encode(" ".join(["the quick brown fox jumps over the lazy dog"] * LONG_WORDS))
    return ids[:length]


def best_rate(count: int, timings: list[float]) -> float:
    return count / min(timings)


def bench_refengine(args) -> dict:
    from refengine.convert import default_model_dir
    from refengine.generate import generate
    from refengine.model import load_model
    from refengine.request import GenerationRequest, SamplingParams, StoppingParams

    model = load_model(args.model or default_model_dir())
    result = {}
    for label, length in (("prefill_short", None), ("prefill_512", 512)):
        ids = prompt_ids(model.tokenizer.encode, length)
        timings = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            model.forward([ids], [model.new_cache(len(ids))])
            timings.append(time.perf_counter() - start)
        result[label] = best_rate(len(ids), timings)
    ids = tuple(prompt_ids(model.tokenizer.encode, None))
    configs = {
        "decode_greedy": SamplingParams(temperature=0.0),
        "decode_sampled": SamplingParams(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05,
                                         repetition_penalty=1.1, presence_penalty=0.5, frequency_penalty=0.3,
                                         logit_bias={42: 2.0, 1000: -5.0}, dry_multiplier=0.8, seed=0),
    }
    for label, sampling in configs.items():
        timings = []
        for _ in range(args.repeats):
            request = GenerationRequest(prompt_ids=ids, sampling=sampling, stopping=StoppingParams(
                max_tokens=args.decode_tokens + 1, ignore_eos=True))
            stamps = [time.perf_counter() for _ in generate(model, request)]
            timings.append(stamps[-1] - stamps[0])           # decode only: first token's prefill excluded
        result[label] = best_rate(args.decode_tokens, timings)
    result["decode_free_for_json"], result["decode_json_schema"] = constrained_rates(model, args)
    return result


def constrained_rates(model, args) -> tuple[float, float]:
    """Greedy decode of one prompt with and without a JSON-schema constraint, runs alternated so that both
    see the same machine (a long free-text string field keeps the constrained one going)."""
    from refengine.constrain import ConstraintCompiler, Vocab
    from refengine.prompt import chat_prompt_ids
    from refengine.request import ConstraintSpec, GenerationRequest, SamplingParams, StoppingParams
    from refengine.generate import generate

    schema = {"type": "object", "additionalProperties": False, "required": ["title", "story"],
              "properties": {"title": {"type": "string", "maxLength": 40}, "story": {"type": "string"}}}
    vocab = Vocab(tuple(model.tokenizer.token_bytes), model.eos_ids, model.tokenizer.special_ids)
    constraint = ConstraintCompiler(vocab).compile("json_schema", schema)
    ids = tuple(chat_prompt_ids(model, [{"role": "user", "content": "Write a long story about a dragon, as JSON."}]))
    rates = {None: [], "json": []}
    for _ in range(args.repeats):
        for kind in rates:
            request = GenerationRequest(prompt_ids=ids, sampling=SamplingParams(temperature=0),
                                        stopping=StoppingParams(max_tokens=args.decode_tokens + 1, ignore_eos=True),
                                        constraint=ConstraintSpec(constraint) if kind else None)
            stamps = [time.perf_counter() for _ in generate(model, request)]
            rates[kind].append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
    return max(rates[None]), max(rates["json"])


def bench_transformers(args) -> dict:
    import torch
    import transformers
    from refengine.convert import default_model_dir

    folder = args.model or default_model_dir()
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
    result = {}
    with torch.no_grad():
        for label, length in (("prefill_short", None), ("prefill_512", 512)):
            ids = torch.tensor([prompt_ids(encode, length)])
            timings = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                model(ids, use_cache=True)
                timings.append(time.perf_counter() - start)
            result[label] = best_rate(ids.shape[1], timings)
        timings = []
        for _ in range(args.repeats):
            output = model(torch.tensor([prompt_ids(encode, None)]), use_cache=True)
            start = time.perf_counter()
            for _ in range(args.decode_tokens):
                token = output.logits[:, -1:].argmax(-1)
                output = model(token, past_key_values=output.past_key_values, use_cache=True)
            timings.append(time.perf_counter() - start)
        result["decode_greedy"] = best_rate(args.decode_tokens, timings)
    result["torch"] = torch.__version__
    return result


CPU_BACKENDS = {"numpy": ("numpy", "f32"), "numba": ("numba", "f32"), "numba-q8": ("numba", "q8")}
STREAMS = (1, 4, 8, 16)
PASS_ROWS = (1, 2, 4, 8, 16, 32, 48, 64)
LLAMA_CPP_EOS = (0, 2)                       # SmolLM2's <|endoftext|> and <|im_end|>
GEMV_PASSES = 40                             # ~0.6 s of passes: enough for the weights to settle in memory


def bench_backend(args, label: str) -> dict:
    """The gemv ceiling, decode rates of 1/4/8/16 streams, and product passes of 1..64 rows, for one backend."""
    from refengine.convert import default_model_dir
    from refengine.model import load_model

    name, weights = CPU_BACKENDS[label]
    model = load_model(args.model or default_model_dir(), backend=name, weights=weights)
    backend, matrices = model.backend, weight_matrices(model)
    inputs = {rows: [np.ones((rows, m.shape[0]), dtype=np.float32) for m in matrices]
              for rows in PASS_ROWS}
    passes = {rows: [] for rows in PASS_ROWS}

    def time_passes():                                   # row counts in turn, so all see the same machine
        for _ in range(max(args.repeats, 5)):
            for rows in PASS_ROWS:
                start = time.perf_counter()
                for matrix, x in zip(matrices, inputs[rows]):
                    backend.matmul(x, matrix)
                passes[rows].append(time.perf_counter() - start)

    time_passes()
    ids = prompt_ids(model.tokenizer.encode, None)
    decodes = {streams: [] for streams in STREAMS}
    sustained = []                                       # the ceiling, timed as the decodes are
    for _ in range(args.repeats):                        # stream counts in turn too
        sustained.append(one_row_passes(backend, matrices, args.stream_steps) / args.stream_steps)
        for streams in STREAMS:
            caches = [model.new_cache(len(ids) + args.stream_steps + 1) for _ in range(streams)]
            tokens = [[int(t)] for t in model.forward([ids] * streams, caches).argmax(axis=1)]
            start = time.perf_counter()
            for _ in range(args.stream_steps):
                tokens = [[int(t)] for t in model.forward(tokens, caches).argmax(axis=1)]
            decodes[streams].append(time.perf_counter() - start)
    rates = {streams: streams * args.stream_steps / min(times) for streams, times in decodes.items()}
    # again after the decodes: memory bandwidth drifts within a run (measured 10.5 to 16 ms for one pass of
    # the numba kernel: the weights read faster once the kernel backs them with huge pages)
    time_passes()
    result = {"weights_mb": sum(m.nbytes for m in matrices) / 1e6,
              "pass_ms": {rows: min(times) * 1000 for rows, times in passes.items()}}
    result["ceiling"] = 1 / min(sustained)                   # tokens/s if reading the weights were all
    result["streams"] = rates
    return result


def one_row_passes(backend, matrices: list, count: int) -> float:
    """Seconds for `count` one-row passes over every weight matrix, back to back: the weight reading of
    `count` single-stream decode steps, and nothing else."""
    inputs = [np.ones((1, m.shape[0]), dtype=np.float32) for m in matrices]
    start = time.perf_counter()
    for _ in range(count):
        for matrix, x in zip(matrices, inputs):
            backend.matmul(x, matrix)
    return time.perf_counter() - start


def weight_matrices(model) -> list:
    """Every matrix one token's forward pass multiplies by (the embedding lookup reads one row: not counted)."""
    w = model.weights
    return [m for layer in w.layers for m in (layer.qkv, layer.out, layer.gate_up, layer.down)] + [w.lm_head]


def print_backends(results: dict) -> None:
    rows = {label: r for label, r in results.items() if r}
    if not rows:
        return
    print(f"\n{'backend':<10}{'weights MB':>11}{'gemv pass':>11}{'ceiling':>9}{'1 stream':>10}"
          f"{'vs ceil':>9}" + "".join(f"{f'{n} streams':>16}" for n in STREAMS[1:]))
    for label, r in rows.items():
        single = r["streams"]["1"]
        rates = [r["streams"][str(n)] for n in STREAMS[1:]]
        print(f"{label:<10}{r['weights_mb']:>11.0f}{r['pass_ms']['1']:>9.1f}ms{r['ceiling']:>9.1f}{single:>10.1f}"
              f"{single / r['ceiling']:>8.2f}x" + "".join(f"{rate:>9.1f} {rate / single:>5.2f}x" for rate in rates))
    print("(tok/s; ceiling: runs of --stream-steps one-row passes back to back, timed as the decodes are (best of "
          "--repeats), in tokens/s; gemv pass: the best single pass; n streams: aggregate tok/s and its ratio to "
          "1 stream)")
    print(f"\none pass of the product over all weights (ms) by rows:\n{'backend':<10}"
          + "".join(f"{n:>8}" for n in PASS_ROWS))
    for label, r in rows.items():
        print(f"{label:<10}" + "".join(f"{r['pass_ms'][str(n)]:>8.1f}" for n in PASS_ROWS))


def fresh(text: str) -> str:
    """`text` after a random tag, so that a prefix cache holds nothing of it."""
    return f"[{secrets.token_hex(4)}] {text}"


def stream_one(base_url: str, headers: dict, model: str, tokens: int, messages: list | None = None,
               on_token=None, extra: dict | None = None) -> dict:
    """One streamed chat completion of exactly `tokens` tokens: time to first token and decode rate.

    A bare HTTP client that only splits SSE lines, so the benchmark's client (on the same cores) costs the
    server as little as it can."""
    url = urllib.parse.urlsplit(base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    body = json.dumps({"model": model, "messages": messages or [{"role": "user", "content": fresh(SHORT_PROMPT)}],
                       "max_tokens": tokens, "stream": True, "temperature": 0, "ignore_eos": True,
                       "stream_options": {"include_usage": True}, **(extra or {})})
    start = time.perf_counter()
    connection.request("POST", url.path.rstrip("/") + "/chat/completions", body,
                       {"Content-Type": "application/json", **headers})
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:500]!r}")
    first = last = None
    usage = None
    gaps = []
    text = []
    for line in response:
        if not line.startswith(b"data: {"):
            continue
        now = time.perf_counter()
        chunk = json.loads(line[6:])
        if "error" in chunk:
            raise RuntimeError(f"error event: {chunk['error']}")
        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            text.append(chunk["choices"][0]["delta"]["content"])
            if last is not None:
                gaps.append(now - last)
            first = first or now
            last = now
            if on_token:
                on_token()
        usage = chunk.get("usage") or usage
    connection.close()
    return {"ttft": first - start, "decode_time": last - first, "total_time": last - start,
            "tokens": usage["completion_tokens"] if usage else len(text),    # a server without usage: chunks
            "max_gap": max(gaps, default=0.0), "text": "".join(text),
            "cached": ((usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens", 0)}


def bench_server(args) -> int:
    """Time to first token, single-stream decode, and aggregate throughput at 1/4/8/16 concurrent streams."""
    from concurrent.futures import ThreadPoolExecutor

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with urllib.request.urlopen(urllib.request.Request(args.server.rstrip("/") + "/models", headers=headers)) as r:
        model = json.load(r)["data"][0]["id"]
    run = functools.partial(stream_one, args.server, headers, model)
    run(4)                                                     # warm up
    single = [run(args.decode_tokens) for _ in range(args.repeats)]
    best = min(single, key=lambda r: r["decode_time"])
    single_rate = (best["tokens"] - 1) / best["decode_time"]
    print(f"server {args.server} model {model}")
    print(f"time to first token: {min(r['ttft'] for r in single) * 1000:.0f} ms")
    print(f"single-stream decode: {single_rate:.1f} tok/s")
    print(f"{'streams':>8}{'aggregate tok/s':>18}{'vs single':>11}")
    for streams in (1, 4, 8, 16):
        with ThreadPoolExecutor(streams) as pool:
            start = time.perf_counter()
            results = list(pool.map(lambda _: run(args.decode_tokens), range(streams)))
            elapsed = time.perf_counter() - start
        total = sum(r["tokens"] for r in results)
        print(f"{streams:>8}{total / elapsed:>18.1f}{total / elapsed / single_rate:>10.2f}x")
    long_prompt_arrival(run, args.decode_tokens)
    follow_up_turn(run)
    return 0


def follow_up_turn(run) -> None:
    """The second turn of a long conversation: its prompt repeats the first turn's, which a prefix cache
    need not prefill again."""
    history = [{"role": "user", "content": fresh(LONG_TEXT + " Summarize this text.")}]
    first = run(8, messages=history)
    history += [{"role": "assistant", "content": first["text"]}, {"role": "user", "content": "Shorter, please."}]
    second = run(8, messages=history)
    print(f"the next turn of a ~1500-token conversation: time to first token {second['ttft'] * 1000:.0f} ms "
          f"({second['cached']} prompt tokens cached), the first turn's {first['ttft'] * 1000:.0f} ms")


def long_prompt_arrival(run, decode_tokens: int) -> None:
    """A long prompt arrives while a stream decodes: how long the stream stalls, and the newcomer's TTFT."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(1) as pool:
        sent = []

        def on_token():                          # after the stream's 8th token
            if len(sent) == 0 and on_token.count == 7:
                sent.append(pool.submit(run, 1, messages=[{"role": "user", "content": fresh(LONG_TEXT)}]))
            on_token.count += 1
        on_token.count = 0
        streaming = run(max(decode_tokens, 64), on_token=on_token)
        newcomer = sent[0].result()              # raises what the newcomer's request raised
    print(f"a ~1500-token prompt arriving mid-stream: the running stream's longest gap "
          f"{streaming['max_gap'] * 1000:.0f} ms, the newcomer's time to first token {newcomer['ttft'] * 1000:.0f} ms")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def refengine_command(args, weights: str, port: int, state: str) -> list[str]:
    """`refengine serve` on the numba backend, sessions in a throwaway folder."""
    return [sys.executable, "-m", "refengine.cli", "serve", "--port", str(port), "--backend", "numba",
            "--weights", weights, "--state-dir", state, *(["--model", args.model] if args.model else [])]


def llama_cpp_command(args, port: int) -> list[str]:
    """llama-cpp-python's server on the default model's own GGUF (Q4_1), on this machine's cores."""
    from refengine.convert import default_gguf_path
    return [args.llama_cpp_python, "-m", "llama_cpp.server", "--model", str(default_gguf_path()),
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
            "--n_threads", str(len(os.sched_getaffinity(0)))]


@contextmanager
def served(command, ready_path: str, timeout: float = 300):
    """`command(port, state folder)`, a server on a free loopback port; yields its base URL once `ready_path`
    answers 200, and stops it afterwards."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="refengine-bench-") as state, \
            tempfile.TemporaryFile(mode="w+") as log:
        process = subprocess.Popen(command(port, state), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while not answers(port, ready_path):
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"the server did not start:\n{log.read()[-3000:]}")
                time.sleep(0.2)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            process.terminate()
            process.wait(timeout=60)


def answers(port: int, path: str) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def http_decode_rates(base_url: str, args, ceiling, extra: dict | None = None) -> tuple[list, list]:
    """Single-stream greedy decode tok/s through HTTP, --repeats streams after a short warm-up, each between
    two runs of the ceiling (ms per pass), so that both see the same moments of the machine."""
    run = functools.partial(stream_one, base_url, {}, "default", extra=extra)
    run(4)
    rates, ceilings = [], [ceiling()]
    for _ in range(args.repeats):
        result = run(args.decode_tokens)
        rates.append((result["tokens"] - 1) / result["decode_time"])   # the first token's wait is prefill's
        ceilings.append(ceiling())
    return rates, ceilings


@contextmanager
def ceiling_process(passthrough: list[str]):
    """The numba f32 gemv ceiling in a process of its own, loaded once: each call of the function it yields
    times --decode-tokens one-row passes back to back there (bench_gemv_runs) and returns ms per pass. Idle
    in between: it takes no core from a server being timed."""
    process = subprocess.Popen([sys.executable, __file__, "--engine", "gemv-runs", *passthrough], text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def sustained_ms() -> float:
        process.stdin.write("run\n")
        process.stdin.flush()
        line = process.stdout.readline()
        if not line:
            raise RuntimeError("the ceiling process ended")
        return json.loads(line)["sustained_ms"]
    try:
        yield sustained_ms
    finally:
        process.stdin.close()
        process.wait(timeout=60)


def bench_gemv_runs(args) -> dict:
    """`ceiling_process`'s side: a run of passes per line read, its ms per pass written back."""
    from refengine.convert import default_model_dir
    from refengine.model import load_model

    model = load_model(args.model or default_model_dir(), backend="numba", weights="f32")
    matrices = weight_matrices(model)
    one_row_passes(model.backend, matrices, GEMV_PASSES)              # the weights settle in memory
    for _ in sys.stdin:
        elapsed = one_row_passes(model.backend, matrices, args.decode_tokens)
        print(json.dumps({"sustained_ms": elapsed * 1000 / args.decode_tokens}), flush=True)
    return {}


def bench_http(args, passthrough: list[str]) -> int:
    """Rounds of: a ceiling process and a real server (numba f32, then q8, then llama-cpp-python's server on
    the GGUF when asked), their runs alternated; each server's median rate against the median ceiling of the
    runs around its streams, and the median of those ratios over the rounds."""
    rounds = []
    for _ in range(args.rounds):
        servers = {f"refengine numba {weights}": (functools.partial(refengine_command, args, weights), "/health",
                                                  None) for weights in ("f32", "q8")}
        if args.llama_cpp_python:
            eos = {str(t): -100 for t in LLAMA_CPP_EOS}      # it has no ignore_eos: EOS biased away instead
            servers["llama-cpp-python Q4_1"] = (lambda port, _: llama_cpp_command(args, port), "/v1/models",
                                                {"logit_bias": eos})
        measured = {}
        with ceiling_process(passthrough) as ceiling:
            for label, (command, ready, extra) in servers.items():
                with served(command, ready) as base_url:
                    rates, ceilings = http_decode_rates(base_url, args, ceiling, extra)
                measured[label] = (statistics.median(rates), statistics.median(ceilings))
        rounds.append(measured)
    labels = list(rounds[0])
    print(f"{'round':<7}" + "".join(f"{label:>36}" for label in labels))
    print(f"{'':<7}" + "".join(f"{'ceiling':>16}{'decode':>12}{'ratio':>8}" for _ in labels))
    for i, measured in enumerate(rounds, 1):
        print(f"{i:<7}" + "".join(f"{1000 / ceiling_ms:>16.1f}{rate:>12.1f}{rate * ceiling_ms / 1000:>7.2f}x"
                                  for rate, ceiling_ms in measured.values()))
    print(f"{'median':<7}" + "".join(
        f"{'':>16}{statistics.median(r[label][0] for r in rounds):>12.1f}"
        f"{statistics.median(r[label][0] * r[label][1] / 1000 for r in rounds):>7.2f}x" for label in labels))
    print(f"(tok/s. Decode: single-stream greedy through HTTP, {args.decode_tokens} tokens streamed over SSE, "
          f"first to last content chunk, the median of {args.repeats} streams. Ceiling: the numba f32 gemv "
          f"passes over the same weights timed the same way, {args.decode_tokens} back to back in a process of "
          f"their own, the median of the {args.repeats + 1} runs before, between and after the streams. Issue "
          f"16's targets: f32 >= 0.90x, q8 >= 2x)")
    return 0


ENGINES = {"refengine": bench_refengine, "gemv-runs": bench_gemv_runs, "transformers": bench_transformers,
           **{f"backend-{label}": functools.partial(bench_backend, label=label) for label in CPU_BACKENDS}}


def run_engine_subprocess(name: str, argv: list[str]) -> dict | None:
    process = subprocess.run([sys.executable, __file__, "--engine", name, *argv], capture_output=True, text=True)
    if process.returncode != 0:
        print(f"[{name} skipped: {process.stderr.strip().splitlines()[-1] if process.stderr.strip() else '?'}]")
        return None
    return json.loads(process.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="HF model folder (default: the converted SmolLM2-135M-Instruct)")
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5,
                        help="with --http: rounds of ceiling and servers, each process fresh (a process's memory "
                             "bandwidth on this VM varies by up to ~45%%, so one round's ratio is luck)")
    parser.add_argument("--stream-steps", type=int, default=32, help="decode steps timed per stream count")
    parser.add_argument("--only", choices=("backends", "engines"), help="run one part of the benchmark")
    parser.add_argument("--server", help="benchmark a running OpenAI-compatible server at this base URL")
    parser.add_argument("--api-key")
    parser.add_argument("--http", action="store_true",
                        help="single-stream decode through `refengine serve` (numba, f32 and q8) vs the gemv ceiling")
    parser.add_argument("--llama-cpp-python", metavar="PYTHON",
                        help="with --http: also time llama-cpp-python's server (this interpreter's llama_cpp.server) "
                             "on the default model's GGUF")
    parser.add_argument("--engine", choices=sorted(ENGINES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.server:
        return bench_server(args)
    if args.engine:                                          # inside the subprocess: one engine, JSON out
        result = ENGINES[args.engine](args)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return 0
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    if args.http:
        return bench_http(args, [a for a in passthrough if a != "--http"])
    if args.only != "backends":
        print_engines({name: run_engine_subprocess(name, passthrough) for name in ("refengine", "transformers")})
    if args.only != "engines":
        from refengine.backends import numba_installed
        labels = [label for label in CPU_BACKENDS if label == "numpy" or numba_installed()]
        print_backends({label: run_engine_subprocess(f"backend-{label}", passthrough) for label in labels})
    return 0


def print_engines(results: dict) -> None:
    ours, theirs = results["refengine"], results["transformers"]
    print(f"{'metric':<28}{'refengine':>12}{'transformers':>14}{'ratio':>8}")
    for key, label in (("prefill_short", "prefill short (tok/s)"), ("prefill_512", "prefill 512 (tok/s)"),
                       ("decode_greedy", "decode greedy (tok/s)"), ("decode_sampled", "decode sampled (tok/s)"),
                       ("decode_json_schema", "decode JSON schema (tok/s)"),
                       ("peak_rss_mb", "peak RSS (MB)")):
        a = ours.get(key) if ours else None
        b = theirs.get(key) if theirs else None
        ratio = f"{a / b:7.2f}x" if a and b else ""
        shown = ["-" if x is None else f"{x:.1f}" for x in (a, b)]
        print(f"{label:<28}{shown[0]:>12}{shown[1]:>14}{ratio:>8}")
    if ours:
        cost = 1 - ours["decode_sampled"] / ours["decode_greedy"]
        print(f"sampler cost: decode with the realistic sampler is {cost * 100:.1f}% slower than greedy")
        cost = 1 - ours["decode_json_schema"] / ours["decode_free_for_json"]
        print(f"constraint cost: greedy decode under a JSON schema {ours['decode_json_schema']:.1f} tok/s, the "
              f"same prompt free {ours['decode_free_for_json']:.1f} tok/s: {cost * 100:.1f}% slower")

if __name__ == "__main__":
    sys.exit(main())
