"""The interpreter inside the sandbox: one JSON request per line on stdin, one JSON reply per line on stdout.

sandbox.py starts this file by path (`python3 -I .../sandbox_driver.py`), inside bubblewrap, so it imports the
standard library only: nothing of refengine is visible in there. The conversation:

    in:   {"limits": {...SandboxLimits...}, "run_as": [uid, gid] | null, "folder": path,
           "count_user_processes": bool}
    out:  {"ready": true}
    in:   {"code": "x = 41"}                       (then as many as the session sends)
    out:  {"status": "success" | "error", "stdout", "stderr", "exception", "result", "execution_time_ms"}

Like a notebook, every request runs in the same globals (variables survive between requests) and the value of
a trailing expression comes back as `result` (its repr). Output is captured at the file descriptors, so the
output of subprocesses and C extensions is caught too, and user code never writes into the reply stream.
Whether a run timed out is the host's call (it sends SIGINT at the wall limit); here a KeyboardInterrupt is an
error like any other.

The reply is only as trustworthy as the code it ran beside, which can rewrite this module: the host checks
and caps every field again.
"""
import ast
import glob
import json
import linecache
import os
import resource
import signal
import sys
import tempfile
import time
import traceback


class CPULimitExceeded(Exception):
    """Raised in user code by SIGXCPU, which the kernel sends when a run passes its CPU-seconds limit."""


def main() -> None:
    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    stdin = os.open(os.devnull, os.O_RDONLY)     # user code that reads stdin sees an empty one, not the requests
    os.dup2(stdin, 0)
    os.close(stdin)
    setup = json.loads(requests.readline())
    limits = setup["limits"]
    if setup["run_as"]:
        drop_privileges(*setup["run_as"])
    os.chdir(setup["folder"])                           # after the drop: the folder may be its user's alone
    os.environ["PWD"] = setup["folder"]
    apply_limits(limits, setup["count_user_processes"])
    signal.signal(signal.SIGINT, signal.SIG_IGN)        # armed only while user code runs
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # a write past file_bytes fails (EFBIG), not the process

    def cpu_exhausted(signum, frame):
        raise CPULimitExceeded(f"used more than {limits['cpu_seconds']} s of CPU time in one run")
    signal.signal(signal.SIGXCPU, cpu_exhausted)

    sys.stdout.reconfigure(line_buffering=True)         # prints keep their place among a subprocess's lines
    sys.path.insert(0, os.getcwd())                     # modules the code wrote into the session folder import
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    driver_pid = os.getpid()
    reply(replies, {"ready": True})
    for number, line in enumerate(requests, start=1):
        outcome = run(json.loads(line)["code"], namespace, f"<cell-{number}>", limits)
        if os.getpid() != driver_pid:                   # a process the code forked left the cell: it must not
            os._exit(0)                                 # become a second driver reading the requests
        reply(replies, outcome)


def drop_privileges(uid: int, gid: int) -> None:
    """As root the kernel does not enforce RLIMIT_NPROC, so a server running as root starts the driver with
    only CAP_SETUID/CAP_SETGID, and the driver becomes an unprivileged user before any user code runs."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)                         # from root to non-root: the remaining capabilities go


def apply_limits(limits: dict, count_user_processes: bool) -> None:
    """The rlimits, set here (not in the server) so they bind this process and what it starts, nothing else.
    CPU seconds are re-armed before each run (allow_cpu_seconds)."""
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits["open_files"],) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))    # no core files in the session folder
    processes = limits["processes"]
    if count_user_processes:                            # no namespace of our own: the kernel counts every
        processes += tasks_of_user(os.getuid())         # thread of this uid, the server's included
    resource.setrlimit(resource.RLIMIT_NPROC, (processes,) * 2)


def tasks_of_user(uid: int) -> int:
    """Threads running under `uid` now, as RLIMIT_NPROC counts them."""
    count = 0
    for path in glob.glob("/proc/[0-9]*/task/[0-9]*/status"):
        try:
            with open(path) as status:
                count += any(line.split()[1:2] == [str(uid)] for line in status if line.startswith("Uid:"))
        except OSError:
            pass                                        # it ended while we looked
    return count


def allow_cpu_seconds(seconds: int) -> None:
    """RLIMIT_CPU counts the whole life of the process: move the soft limit to `seconds` past what this
    interpreter has used so far. It stays armed between runs, so threads the code left burning CPU end the
    interpreter once past it. The hard limit stays open, since it could never be raised again for the next
    run; code that raises its own soft limit still meets the wall limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = int(usage.ru_utime + usage.ru_stime) + seconds
    resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def run(code: str, namespace: dict, name: str, limits: dict) -> dict:
    """Run one cell with its output captured; the reply's fields, as plain values."""
    status, exception, result = "success", None, None
    captured = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    saved = os.dup(1), os.dup(2)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(captured[0].fileno(), 1)
    os.dup2(captured[1].fileno(), 2)
    allow_cpu_seconds(limits["cpu_seconds"])
    started = time.monotonic()
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        value = execute(code, namespace, name)
        if value is not None:
            result = capped(repr(value), limits["output_chars"])
    except BaseException as error:                      # SystemExit too: exit() ends the cell, not the session
        status = "error"
        exception = capped("".join(traceback.format_exception_only(type(error), error)).strip(),
                           limits["output_chars"])
        traceback.print_exception(type(error), error, user_frames(error.__traceback__))
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        elapsed_ms = int((time.monotonic() - started) * 1000)
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__   # whatever the code set them to
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, original in zip((1, 2), saved):
            os.dup2(original, fd)
            os.close(original)
    stdout, stderr = (read_capped(file, limits["output_chars"]) for file in captured)
    for file in captured:
        file.close()
    return {"status": status, "stdout": stdout, "stderr": stderr, "exception": exception, "result": result,
            "execution_time_ms": elapsed_ms}


def execute(code: str, namespace: dict, name: str):
    """exec the cell; the value of its last statement when that is an expression (None otherwise)."""
    linecache.cache[name] = (len(code), None, code.splitlines(keepends=True), name)   # tracebacks show lines
    tree = ast.parse(code, name)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, name, "exec"), namespace)
    if last is not None:
        return eval(compile(ast.Expression(last.value), name, "eval"), namespace)
    return None


def user_frames(frames):
    """The traceback from the first frame of the cell on: the driver's own frames say nothing to the code's
    author."""
    while frames is not None and frames.tb_frame.f_code.co_filename == __file__:
        frames = frames.tb_next
    return frames


def read_capped(file, limit: int) -> str:
    size = file.seek(0, os.SEEK_END)
    file.seek(0)
    text = file.read(4 * limit).decode("utf-8", "replace")     # a character is at most 4 bytes of UTF-8
    if len(text) > limit or size > 4 * limit:
        return text[:limit] + f"\n[output cut at {limit} characters; {size} bytes in all]"
    return text


def capped(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n[cut at {limit} characters of {len(text)}]"


def reply(replies, message: dict) -> None:
    replies.write(json.dumps(message) + "\n")           # ASCII (json escapes the rest): one line, one reply
    replies.flush()


if __name__ == "__main__":
    main()
