"""`refengine` command line: the composition root that wires engine, web and conformance together.

    refengine serve     [--model DIR] [--port 8000] [...]  the OpenAI-compatible server (gunicorn, gthread)
    refengine chat      [--model DIR] [--system TEXT]      interactive chat, tokens streamed as they come
    refengine generate  PROMPT [--model DIR] [--raw]       one completion to stdout
    refengine convert   GGUF OUT_DIR                       GGUF (llama / qwen2) → Hugging Face folder
    refengine conformance --base-url URL [...]             check any OpenAI-compatible server
    refengine compare --base-url A --base-url B --request R  two servers' greedy outputs, token by token
    refengine sandbox run CODE|- [--timeout S]             run Python in the server's code sandbox, print the JSON
    refengine index DIR --out INDEX.db [--base-url URL]    .html/.md/.txt files → the local web-search index
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import ModelLoadError
from .generate import generate
from .prefixcache import PrefixCache
from .prompt import chat_prompt_ids
from .request import ContextLengthError, GenerationRequest, SamplingParams, StoppingParams
from .search.backend import BACKENDS as SEARCH_BACKENDS


def load_cli_model(args):
    """The model at `--model`, or the default model (converted into the cache on first use)."""
    from .convert import default_model_dir
    from .model import load_model
    folder = args.model if args.model is not None else default_model_dir()
    return load_model(folder, device=args.device, backend=args.backend, weights=args.weights)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    from .backends import BACKENDS, WEIGHT_FORMATS
    parser.add_argument("--model", type=Path, help="Hugging Face model folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--backend", choices=BACKENDS,
                        help="who computes the forward pass (default: cupy on gpu; numba on cpu when installed, "
                             "else numpy, the plain reference)")
    parser.add_argument("--weights", choices=WEIGHT_FORMATS, default="f32",
                        help="q8: int8 weights in blocks of 32 with a scale each (numba backend), 4x fewer bytes "
                             "read per token; f32 is the parity reference")


def add_sampling_arguments(parser: argparse.ArgumentParser, temperature: float) -> None:
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--temperature", type=float, default=temperature)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--min-p", type=float, default=0.0)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int)


def request_from_args(prompt_ids: list[int], args, trace=None) -> GenerationRequest:
    sampling = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                              min_p=args.min_p, repetition_penalty=args.repetition_penalty, seed=args.seed)
    return GenerationRequest(prompt_ids=tuple(prompt_ids), sampling=sampling,
                             stopping=StoppingParams(max_tokens=args.max_tokens), trace=trace)


def stream_to(out, model, request: GenerationRequest, prefix_cache: PrefixCache | None = None) -> str:
    """Print the completion as it comes; return its text."""
    pieces = []
    for event in generate(model, request, prefix_cache):
        out.write(event.text)
        out.flush()
        pieces.append(event.text)
    return "".join(pieces)


def run_generate(args) -> int:
    import json
    from .trace import MAX_TOP_K, RequestTrace, stage, tracing
    if args.trace_top_k > MAX_TOP_K:
        raise ValueError(f"--trace-top-k is at most {MAX_TOP_K}")
    model = load_cli_model(args)
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    trace = RequestTrace(args.trace_top_k) if args.trace else None
    with tracing(trace):
        if args.raw or model.template is None:
            if trace is not None:
                trace.input = {"prompt": prompt}
            with stage("tokenize"):
                ids = model.tokenizer.encode(prompt, add_bos=model.tokenizer.special.add_bos)
        else:
            messages = [{"role": "user", "content": prompt}]
            if trace is not None:
                trace.input = {"messages": messages}
            ids = chat_prompt_ids(model, messages)              # as the server renders it
    stream_to(sys.stdout, model, request_from_args(ids, args, trace))
    sys.stdout.write("\n")
    if trace is not None:
        args.trace.write_text(json.dumps(trace.document(), ensure_ascii=False, indent=1))
        print(f"trace written to {args.trace} (load it into http://127.0.0.1:8000/ui to read it)", file=sys.stderr)
    return 0


def run_chat(args) -> int:
    model = load_cli_model(args)
    if model.template is None:
        print(f"{model.name} has no chat template; use `refengine generate --raw`", file=sys.stderr)
        return 2
    system = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(system)
    earlier_turns = PrefixCache(max_bytes=2**30)       # each turn's prompt repeats the conversation so far
    print(f"Chatting with {model.name}. /reset starts over, /exit (or Ctrl-D) leaves.", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        if line.strip() == "/exit":
            return 0
        if line.strip() == "/reset":
            messages = list(system)
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        try:
            ids = chat_prompt_ids(model, messages)              # as the server renders it
            reply = stream_to(sys.stdout, model, request_from_args(ids, args), earlier_turns)
        except ContextLengthError as error:
            print(f"\n[{error}; /reset to start over]", file=sys.stderr)
            messages.pop()
            continue
        except KeyboardInterrupt:
            reply = ""
            print("\n[interrupted]", file=sys.stderr)
        print()
        messages.append({"role": "assistant", "content": reply})


def run_serve(args) -> int:
    from web.serve import serve
    serve(args.model, host=args.host, port=args.port, api_key=args.api_key, max_batch=args.max_batch,
          max_queue=args.max_queue, prefill_chunk=args.prefill_chunk, prefix_cache_mb=args.prefix_cache_mb,
          max_context=args.max_model_len, strict_params=args.strict_params, workers=args.workers,
          threads=args.threads, device=args.device, backend=args.backend,
          weights=args.weights, max_kv_mb=args.max_kv_mb, metrics_public=args.metrics_public,
          access_log=args.access_log, grace_s=args.grace_period,
          allow_special_in_content=args.allow_special_in_content, agent=agent_settings(args),
          allowed_origins=tuple(o.strip() for o in args.allowed_origins.split(",") if o.strip()),
          json_schema_mode=args.json_schema_mode)
    return 0


def agent_settings(args):
    from web.serve import default_state_dir
    from .agent.runtime import AgentSettings
    return AgentSettings(state_dir=args.state_dir or default_state_dir(), max_tool_rounds=args.max_tool_rounds,
                         permission_floor=args.agent_permission, approval_timeout_s=args.approval_timeout,
                         code_exec_timeout_s=args.code_exec_timeout, sandbox_mode=args.code_exec_sandbox,
                         session_ttl_s=args.session_ttl, max_sessions=args.max_sessions, store=args.store,
                         files_dir=args.files_dir,
                         search=search_settings(args))


def search_settings(args):
    """The web-search backend of `serve`, opened once here so that a missing or broken index (or a backend
    without its URL) stops the command now, with its reason, rather than each worker later."""
    from .search.backend import SearchSettings, open_backend
    settings = SearchSettings(backend=args.search_backend, index=args.search_index, url=args.search_url,
                              allow_private=args.search_allow_private, timeout_s=args.search_timeout)
    open_backend(settings)
    return settings


def run_index(args) -> int:
    from .search.index import build_index
    count = build_index(args.folder, args.out, base_url=args.base_url)
    print(f"indexed {count} document{'s' if count != 1 else ''} into {args.out}")
    return 0


def run_convert(args) -> int:
    from .convert import convert_gguf
    out = convert_gguf(args.gguf, args.out_dir)
    print(f"wrote {out}")
    return 0


def run_sandbox(args) -> int:
    """Run code in a fresh session folder, in exactly the sandbox the server's `execute_python` uses (same
    limits), and print its result JSON: the way to see for oneself what sandboxed code can and cannot do."""
    import json
    import tempfile
    from .agent.sandbox import PythonSandbox, SandboxLimits, SandboxUnavailable
    code = sys.stdin.read() if args.code == "-" else args.code
    limits = SandboxLimits() if args.timeout is None else SandboxLimits(wall_seconds=args.timeout)
    with tempfile.TemporaryDirectory(prefix="refengine-sandbox-") as folder:
        try:
            with PythonSandbox(Path(folder), limits, mode=args.sandbox) as sandbox:
                result = sandbox.run(code)
        except SandboxUnavailable as error:
            print(f"refengine: {error}", file=sys.stderr)
            return 2
    print(json.dumps(result, indent=2))
    return 0 if result["status"] == "success" else 1


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, not {value}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def store_url(text: str) -> str:
    """A --store URL of a kind the server has (checked now, so a typo fails before any worker starts)."""
    from .agent.stores.base import store_kind
    try:
        store_kind(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refengine", description="A reference LLM inference engine.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the OpenAI-compatible API")
    add_model_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", help="require `Authorization: Bearer KEY` on every request but /health "
                                         "(and /metrics with --metrics-public)")
    serve.add_argument("--access-log", action="store_true",
                       help="log every request on stdout, with the pid of the worker that answered it")
    serve.add_argument("--metrics-public", action="store_true",
                       help="answer /metrics without the API key (for a scraper that has none)")
    serve.add_argument("--allowed-origins", default="", metavar="ORIGINS",
                       help="browser pages from these origins may call the API (CORS): comma-separated, e.g. "
                            "'https://app.example.com,http://localhost:3000', or '*' for any; default none")
    serve.add_argument("--max-batch", type=positive_int, default=16, help="sequences decoded together per step")
    serve.add_argument("--max-queue", type=positive_int, default=64, help="waiting requests before 429")
    serve.add_argument("--prefill-chunk", type=positive_int, default=256,
                       help="prompt tokens read per step beside the running requests' decode tokens "
                            "(at most 512 of one prompt)")
    serve.add_argument("--prefix-cache-mb", type=non_negative_int, default=1024,
                       help="KV kept from earlier requests for prompts that begin the same way (0: off)")
    serve.add_argument("--max-model-len", type=positive_int, help="cap the context window (tokens)")
    serve.add_argument("--max-kv-mb", type=positive_int, default=4096,
                       help="KV cache memory for the requests running at once; more waits in the queue, and "
                            "one request that alone needs more is a 400")
    serve.add_argument("--allow-special-in-content", action="store_true",
                       help="read special-token strings in messages (e.g. <|im_start|>) as control tokens, as "
                            "transformers does; by default they are plain text, so a message cannot forge a turn")
    serve.add_argument("--strict-params", action="store_true", help="reject unknown request fields (400)")
    serve.add_argument("--json-schema-mode", choices=("generate", "plain"), default="generate",
                       help="how JSON schemas are read unless a request's json_schema_mode says: generate (objects "
                            "that declare properties are closed, whitespace bounded) or plain (the letter of JSON "
                            "Schema)")
    agent = serve.add_argument_group("agent runtime (sessions, server-side tools)")
    agent.add_argument("--state-dir", type=Path, help="sessions and their folders (default: $REFENGINE_STATE, "
                       "$XDG_STATE_HOME/refengine or ~/.local/state/refengine)")
    agent.add_argument("--store", type=store_url, metavar="URL",
                       help="where sessions, stored responses, files and approvals live: postgresql://... or "
                            "redis://... shared by several replicas (default: SQLite in the state folder)")
    agent.add_argument("--files-dir", type=Path, metavar="DIR",
                       help="keep produced files' bytes in this folder (shared storage for replicas on several "
                            "machines) instead of in the store")
    agent.add_argument("--max-tool-rounds", type=non_negative_int, default=8,
                       help="built-in tool rounds per request (a request may ask for fewer)")
    agent.add_argument("--agent-permission", choices=("auto", "ask", "deny"), default="auto",
                       help="the floor for running built-in tools: a request may only tighten it")
    agent.add_argument("--approval-timeout", type=positive_float, default=300.0,
                       help="seconds an `ask` approval waits before it denies")
    agent.add_argument("--code-exec-timeout", type=positive_float, default=30.0,
                       help="wall-clock seconds one execute_python call may run")
    agent.add_argument("--code-exec-sandbox", choices=("bwrap", "none"), default="bwrap",
                       help="bubblewrap isolation; `none` runs model-written code unisolated (logged loudly)")
    agent.add_argument("--session-ttl", type=positive_float, default=1800.0, help="idle seconds before a session goes")
    agent.add_argument("--max-sessions", type=positive_int, default=1000, help="sessions kept (least recently used out)")
    search = serve.add_argument_group("web search (requests with web_search_options)")
    search.add_argument("--search-backend", choices=SEARCH_BACKENDS, default="local",
                        help="local: an index built by `refengine index` (--search-index); searxng: a SearxNG "
                             "instance (--search-url); duckduckgo: its HTML endpoint")
    search.add_argument("--search-index", type=Path, metavar="INDEX.db", help="the local backend's index")
    search.add_argument("--search-url", help="searxng: the instance's base URL; duckduckgo: another endpoint")
    search.add_argument("--search-allow-private", action="store_true",
                        help="let extract_page fetch loopback / private addresses (intranet docs); by default "
                             "the server never fetches from its own network")
    search.add_argument("--search-timeout", type=positive_float, default=10.0,
                        help="seconds one search or one page fetch may take")
    serve.add_argument("--workers", type=positive_int, default=1, help="processes, each with its own model copy")
    serve.add_argument("--threads", type=positive_int, help="request threads per worker")
    serve.add_argument("--grace-period", type=positive_float, default=30.0, metavar="SECONDS",
                       help="on SIGTERM: /health says 503 and new requests are refused while running ones "
                            "finish, for at most this long; then the server exits")
    serve.set_defaults(run=run_serve)

    chat = commands.add_parser("chat", help="interactive chat in the terminal")
    add_model_arguments(chat)
    add_sampling_arguments(chat, temperature=0.7)
    chat.add_argument("--system", help="a system message")
    chat.set_defaults(run=run_chat)

    gen = commands.add_parser("generate", help="complete one prompt")
    gen.add_argument("prompt", nargs="?", help="the prompt (default: read stdin)")
    add_model_arguments(gen)
    add_sampling_arguments(gen, temperature=0.0)
    gen.add_argument("--raw", action="store_true", help="use the prompt as-is, without the chat template")
    gen.add_argument("--trace", type=Path, metavar="OUT.json",
                     help="write the request's trace (every stage, every token's candidates) to this file")
    gen.add_argument("--trace-top-k", type=positive_int, default=10, help="candidates a trace shows per stage")
    gen.set_defaults(run=run_generate)

    convert = commands.add_parser("convert", help="convert a GGUF file into a Hugging Face folder")
    convert.add_argument("gguf", type=Path)
    convert.add_argument("out_dir", type=Path)
    convert.set_defaults(run=run_convert)

    index = commands.add_parser("index", help="index a folder of .html, .md and .txt files for the local "
                                              "web-search backend (serve --search-index)")
    index.add_argument("folder", type=Path)
    index.add_argument("--out", type=Path, required=True, metavar="INDEX.db", help="the index file (replaced)")
    index.add_argument("--base-url", help="where the folder is published, so results carry real URLs (default: "
                                          "file:// URLs)")
    index.set_defaults(run=run_index)

    sandbox = commands.add_parser("sandbox", help="the code-execution sandbox (bubblewrap)")
    sandbox_run = sandbox.add_subparsers(dest="sandbox_command", required=True).add_parser(
        "run", help="run Python code in a fresh session folder and print the result JSON (exit status 0 on "
                    "success, 1 on error or timeout)")
    sandbox_run.add_argument("code", help="Python source, or - to read it from stdin")
    sandbox_run.add_argument("--timeout", type=float, help="wall-clock limit in seconds (default: the server's, 30)")
    sandbox_run.add_argument("--sandbox", choices=("bwrap", "none"), default="bwrap",
                             help="none runs the code unsandboxed (rlimits and timeout only)")
    sandbox_run.set_defaults(run=run_sandbox)

    commands.add_parser("conformance", help="check an OpenAI-compatible server (see --help there)",
                        add_help=False)
    commands.add_parser("compare", help="the same greedy request to two servers, the outputs token by token "
                                        "(see --help there)", add_help=False)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["conformance"]:          # the suite has its own parser (and imports no engine code)
        from conformance.cli import main as conformance_main
        return conformance_main(argv[1:])
    if argv[:1] == ["compare"]:              # HTTP only too: any two servers
        from conformance.compare import main as compare_main
        return compare_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ModelLoadError, FileNotFoundError, ValueError) as error:
        print(f"refengine: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
