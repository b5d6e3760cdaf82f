"""A session's Python interpreter, run under bubblewrap: the sandbox behind `execute_python`.

    sandbox = PythonSandbox(Path("sessions/abc"), SandboxLimits(wall_seconds=10))
    sandbox.run("x = 41")        # {"status": "success", "stdout": "", ..., "result": None}
    sandbox.run("x + 1")         # {..., "result": "42"}: one interpreter per session, variables survive
    sandbox.close()

The interpreter is the server's own python3 (`sys.executable`) running sandbox_driver.py, which answers one JSON
line per request. bubblewrap (Debian package `bubblewrap`) puts it in new network, PID, IPC and UTS namespaces
(no network at all, only its own processes visible), on a read-only view of the system and of Python's install,
with the session folder as /session, its working directory and the only writable place besides a small /tmp,
and an environment of its own (PATH, HOME, LANG, thread counts): no server variable or API key reaches it. The
driver sets rlimits (address space, file size, open files, processes, CPU seconds per run) before any user code
runs; the wall limit is the host's: SIGINT first (the code gets a KeyboardInterrupt and the variables are
kept), SIGKILL after a grace period (the interpreter is gone; the next run starts a fresh one).

Processes are capped with RLIMIT_NPROC, which counts every thread of the real uid and which the kernel does not
enforce for root at all. So the cap must count a uid the sandbox alone uses:
- server not root: bwrap makes a user namespace, and since Linux 5.14 the count is per namespace and uid;
- server root: bwrap runs as root (so it can bind a Python installed where others cannot read, like
  /root/.pyenv), keeps only CAP_SETUID/CAP_SETGID for the driver, and the driver becomes an unprivileged uid
  of its own (one per session folder) before user code runs. The folder is handed to that uid.
Either way the rlimit is set inside the driver, so it binds the sandbox's processes and never the server's.

`mode="none"` runs the same driver without bwrap (rlimits and wall limit only; as root no process cap): for
people who accept the risk, and logged loudly.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DRIVER = Path(__file__).with_name("sandbox_driver.py")
SANDBOX_FOLDER = "/session"                    # the session folder, inside the sandbox
SANDBOX_DRIVER = "/refengine/sandbox_driver.py"
SANDBOX_UIDS = range(1_000_000, 2_000_000)     # as root, each session folder's code runs as one of these
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYSTEM_ETC = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/alternatives")
ENVIRONMENT = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "OMP_NUM_THREADS": "1",          # thread pools and per-thread malloc arenas reserve address space, which
    "OPENBLAS_NUM_THREADS": "1",     # memory_bytes caps: one thread each keeps numpy importable on any machine
    "MALLOC_ARENA_MAX": "2",
}
STARTUP_SECONDS = 60                 # a hang guard for interpreter start, not a speed expectation
LATE = object()                      # no reply within the time given
REPLY_BACKLOG = 8                    # reply lines held for the server; past that the sandbox's writes block
MARKER_ROOM = 200                    # beyond output_chars: the driver's "[output cut ...]" line, or a note
INSTALL_HINT = ("Install it with `apt-get install bubblewrap` (it needs root or unprivileged user namespaces), "
                "or run code without a sandbox, at your own risk, with `--code-exec-sandbox none`.")


@dataclass(frozen=True)
class SandboxLimits:
    """Per interpreter (memory, files, processes) or per run (CPU seconds, wall seconds, output)."""
    cpu_seconds: int = 30
    memory_bytes: int = 1 << 30             # address space (RLIMIT_AS)
    file_bytes: int = 64 << 20              # largest file it may write; also the size of its /tmp
    open_files: int = 256
    processes: int = 64                     # threads count too
    wall_seconds: float = 30
    output_chars: int = 20_000              # stdout, stderr, result and exception, each
    interrupt_grace_seconds: float = 3      # after SIGINT at the wall limit, before SIGKILL

    def __post_init__(self):
        for field in dataclasses.fields(self):
            if not getattr(self, field.name) > 0:
                raise ValueError(f"sandbox limit {field.name} must be positive, not {getattr(self, field.name)}")


class SandboxUnavailable(Exception):
    """bwrap is missing or cannot make namespaces here; the message says what to do."""


@functools.cache
def bwrap_problem() -> str | None:
    """Why bubblewrap cannot sandbox code on this machine, or None. Asked once per process: the answer does not
    change while the server runs."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed."
    try:
        probe = subprocess.run(["bwrap", *namespace_arguments(), "--ro-bind", "/", "/", sys.executable, "-c", ""],
                               capture_output=True, timeout=STARTUP_SECONDS)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"bwrap does not work here ({error})."
    if probe.returncode != 0:
        return f"bwrap does not work here: {probe.stderr.decode(errors='replace').strip()}."
    return None


def require_bwrap() -> None:
    problem = bwrap_problem()
    if problem is not None:
        raise SandboxUnavailable(f"Code execution needs bubblewrap: {problem} {INSTALL_HINT}")


def namespace_arguments() -> list[str]:
    """Everything unshared but the user namespace's choice (see the module docstring for why root differs)."""
    unshare = ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
               "--die-with-parent", "--new-session"]
    if os.geteuid() == 0:         # bwrap as root keeps every capability unless told otherwise
        return [*unshare, "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    return ["--unshare-user", "--disable-userns", *unshare]


class PythonSandbox:
    """One persistent interpreter for one session folder; one run at a time."""

    def __init__(self, folder: Path, limits: SandboxLimits = SandboxLimits(), mode: str = "bwrap"):
        if mode not in ("bwrap", "none"):
            raise ValueError(f"sandbox mode must be 'bwrap' or 'none', not {mode!r}")
        self.folder = Path(folder).resolve()
        self.limits = limits
        self.mode = mode
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._replies: queue.Queue | None = None      # lines from the driver; None at end of file
        self._stderr_tail: collections.deque | None = None
        self._driver: int | None = None               # a pidfd of the driver process, for SIGINT
        self._stderr_reader: threading.Thread | None = None
        if mode == "bwrap":
            require_bwrap()
        else:
            log.warning("CODE EXECUTION WITHOUT A SANDBOX (mode 'none'): code runs as this server's user, with its "
                        "network and its files; only rlimits and the wall limit apply. Folder: %s", self.folder)
        with self._lock:
            self._start()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def run(self, code: str) -> dict:
        """Run `code` in the session's interpreter: {status: success|error|timeout, stdout, stderr, exception,
        result, execution_time_ms}. A dead interpreter (killed at the wall limit, crashed) is replaced first."""
        with self._lock:
            note = ""
            if self._process is None or self._process.poll() is not None:
                if self._process is not None:
                    note = (f"[the previous interpreter had died ({self._ended()}); this run starts a fresh one, "
                            "earlier variables are gone]\n")
                self._stop()
                self._start()
            started = time.monotonic()
            reply = self._ask({"code": code}, self.limits.wall_seconds)
            interrupted = reply is LATE
            if interrupted:
                self._interrupt()
                reply = self._next_reply(self.limits.interrupt_grace_seconds)
            elapsed_ms = int((time.monotonic() - started) * 1000)
            if isinstance(reply, dict):
                result = self._checked(reply)
                if interrupted:
                    result["status"] = "timeout"
                    result["exception"] = (f"TimeoutError: the code ran past the {self.limits.wall_seconds:g} s "
                                           "wall limit and was interrupted (KeyboardInterrupt); the interpreter "
                                           "and its variables are kept")
            elif interrupted:
                self._stop()
                result = self._result("timeout", exception=(
                    f"TimeoutError: the code ran past the {self.limits.wall_seconds:g} s wall limit and ignored "
                    "the interrupt, so the interpreter was killed: its variables are gone and the next run starts "
                    "a fresh one"), elapsed_ms=elapsed_ms)
            else:
                ended = self._ended()
                self._stop()
                result = self._result("error", stderr=self._stderr_text(), elapsed_ms=elapsed_ms, exception=(
                    f"The interpreter died ({ended}): a limit or the code itself ended it; its variables are gone "
                    "and the next run starts a fresh one"))
            result["stderr"] = capped(note + result["stderr"], self.limits.output_chars + MARKER_ROOM)
            return result

    def close(self) -> None:
        """Kill the interpreter and everything it started (after a run in progress ends). A later run starts a
        fresh one."""
        with self._lock:
            self._stop()

    # The interpreter process.

    def _start(self) -> None:
        run_as = None
        if os.geteuid() == 0 and self.mode == "bwrap":
            uid = SANDBOX_UIDS[self.folder.stat().st_ino % len(SANDBOX_UIDS)]
            os.chown(self.folder, uid, uid)      # the sandbox user's own folder (the server, root, still reads it)
            run_as = [uid, uid]
        command = self._bwrap_command() if self.mode == "bwrap" else [sys.executable, "-I", str(DRIVER)]
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, cwd=self.folder,
                                         env={**ENVIRONMENT, "HOME": str(self.folder)},
                                         start_new_session=True)   # the server's Ctrl-C is not the sandbox's
        # bounded: code that writes to the reply pipe by itself blocks there instead of filling the server's memory
        self._replies, self._stderr_tail = queue.Queue(maxsize=REPLY_BACKLOG), collections.deque(maxlen=16)
        max_line = 50 * self.limits.output_chars + 65536    # four capped fields, each character ≤ 12 JSON bytes
        threading.Thread(target=read_lines, args=(self._process.stdout, self._replies, max_line),
                         daemon=True, name="sandbox-replies").start()
        self._stderr_reader = threading.Thread(target=keep_tail, args=(self._process.stderr, self._stderr_tail),
                                               daemon=True, name="sandbox-stderr")
        self._stderr_reader.start()
        setup = {"limits": dataclasses.asdict(self.limits), "run_as": run_as,
                 "folder": SANDBOX_FOLDER if self.mode == "bwrap" else str(self.folder),
                 "count_user_processes": self.mode == "none"}
        if self._ask(setup, STARTUP_SECONDS) != {"ready": True}:
            self._stop()
            problem = f"the sandboxed interpreter did not start: {self._stderr_text().strip() or 'no message'}"
            raise SandboxUnavailable(f"{problem}. {INSTALL_HINT}") if self.mode == "bwrap" else RuntimeError(problem)
        driver_pid = self._process.pid if self.mode == "none" else grandchild(self._process.pid)
        self._driver = os.pidfd_open(driver_pid) if driver_pid is not None else None

    def _bwrap_command(self) -> list[str]:
        """bwrap's arguments: the system and Python read-only, the session folder read-write at /session."""
        command = ["bwrap", *namespace_arguments(), "--hostname", "sandbox"]
        made = {"/"}

        def parents(path: str) -> list[str]:
            """Parent directories, made world-traversable (bwrap would copy a private /root's 0700)."""
            arguments = []
            for parent in reversed(Path(path).parents):
                if str(parent) not in made:
                    made.add(str(parent))
                    arguments += ["--perms", "0755", "--dir", str(parent)]
            return arguments

        for path in SYSTEM_DIRS:
            if os.path.islink(path):
                command += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                command += ["--ro-bind", path, path]
        # /tmp before the Python prefixes: a server installed under /tmp (a CI checkout) stays visible
        command += ["--perms", "1777", "--size", str(self.limits.file_bytes), "--tmpfs", "/tmp"]
        made.add("/tmp")
        for path in SYSTEM_ETC:                # what the dynamic loader and Python read; not all of /etc
            if os.path.exists(path):
                command += [*parents(path), "--ro-bind", path, path]
        for prefix in python_prefixes():
            command += [*parents(prefix), "--ro-bind", prefix, prefix]
        command += [*parents(SANDBOX_DRIVER), "--ro-bind", str(DRIVER), SANDBOX_DRIVER,
                    "--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev",   # a tmpfs: host memory otherwise
                    "--bind", str(self.folder), SANDBOX_FOLDER,   # the driver enters it (as its own user)
                    "--remount-ro", "/",               # bwrap's own root too, where /root, /work... are mount points
                    "--clearenv"]
        for name, value in {**ENVIRONMENT, "HOME": SANDBOX_FOLDER}.items():
            command += ["--setenv", name, value]
        return [*command, sys.executable, "-I", SANDBOX_DRIVER]

    def _ask(self, message: dict, timeout: float):
        """Send one request; its reply (a dict), None when the driver is gone, LATE when it is late. Lines that
        came with no request outstanding (sandboxed code writing to the reply pipe itself) are dropped first,
        so they are never taken for this request's reply."""
        while True:
            try:
                stale = self._replies.get_nowait()
            except queue.Empty:
                break
            if stale is None:                     # the driver is gone already
                return None
        try:
            self._process.stdin.write((json.dumps(message) + "\n").encode())
            self._process.stdin.flush()
        except OSError:
            return None
        return self._next_reply(timeout)

    def _next_reply(self, timeout: float):
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            return LATE
        if line is None or not line.endswith(b"\n"):  # end of file, or a line past the size a reply can have
            return None
        try:
            reply = json.loads(line)
        except ValueError:
            return None
        return reply if isinstance(reply, dict) else None

    def _interrupt(self) -> None:
        if self._driver is not None:
            try:
                signal.pidfd_send_signal(self._driver, signal.SIGINT)
            except ProcessLookupError:
                pass

    def _stop(self) -> None:
        """SIGKILL the interpreter. Under bwrap, killing bwrap kills the sandbox's PID 1 (--die-with-parent), and
        the kernel then kills every process in that namespace; without it, the process group goes."""
        if self._process is None:
            return
        if self._process.poll() is None:
            if self.mode == "none":
                try:
                    os.killpg(self._process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._process.kill()
        self._process.wait()
        try:
            self._process.stdin.close()
        except OSError:
            pass
        if self._driver is not None:
            os.close(self._driver)
        self._process, self._driver = None, None

    def _ended(self) -> str:
        """How the interpreter process ended, in words (it is given the grace period to end)."""
        try:
            code = self._process.wait(timeout=self.limits.interrupt_grace_seconds)
        except subprocess.TimeoutExpired:
            return "it stopped answering"
        if code < 0 or (self.mode == "bwrap" and code > 128):     # bwrap passes on a signal as 128 + its number
            return f"killed by {signal.Signals(-code if code < 0 else code - 128).name}"
        return f"exit status {code}"

    def _stderr_text(self) -> str:
        """What the stopped interpreter wrote to stderr, once its reader has seen the end (1 s: a hang guard)."""
        self._stderr_reader.join(timeout=1)
        return b"".join(self._stderr_tail).decode(errors="replace")[-self.limits.output_chars:]

    def _checked(self, reply: dict) -> dict:
        """The driver's reply, taken field by field: it ran beside the code, which may have rewritten it."""
        def text(name):
            value = reply.get(name)
            return capped(value, self.limits.output_chars + MARKER_ROOM) if isinstance(value, str) else None
        status = reply.get("status") if reply.get("status") in ("success", "error") else "error"
        elapsed = reply.get("execution_time_ms")
        return self._result(status, stdout=text("stdout") or "", stderr=text("stderr") or "",
                            exception=text("exception"), result=text("result"),
                            elapsed_ms=elapsed if isinstance(elapsed, int) else 0)

    @staticmethod
    def _result(status: str, stdout: str = "", stderr: str = "", exception: str | None = None,
                result: str | None = None, elapsed_ms: int = 0) -> dict:
        return {"status": status, "stdout": stdout, "stderr": stderr, "exception": exception, "result": result,
                "execution_time_ms": elapsed_ms}


def python_prefixes() -> list[str]:
    """The folders the server's Python lives in (a venv, and the installation it points to), outside the
    system folders that are bound anyway, outermost only."""
    system = tuple(path + "/" for path in SYSTEM_DIRS)
    found = sorted({variant for path in (sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix)
                    for variant in (os.path.abspath(path), os.path.realpath(path))})
    prefixes = []
    for path in found:
        if not (path + "/").startswith(system) and not any((path + "/").startswith(p + "/") for p in prefixes):
            prefixes.append(path)
    return prefixes


def grandchild(pid: int) -> int | None:
    """bwrap's child is the sandbox's PID 1 and the driver is its child: the process SIGINT must reach (bwrap
    forwards no signals). Asked once the driver is ready, when it is the only one."""
    for _ in range(2):
        children = children_of(pid)
        if not children:
            return None
        pid = children[0]
    return pid


def children_of(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:                                  # a kernel without CONFIG_PROC_CHILDREN: ask every process
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()   # after "(name)": state, ppid, ...
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(stat.parent.name))
        return children


def read_lines(stream, lines: queue.Queue, max_bytes: int) -> None:
    """The driver's replies, a line at a time (cut at `max_bytes`), then None at end of file."""
    for line in iter(lambda: stream.readline(max_bytes), b""):
        lines.put(line)
    lines.put(None)
    stream.close()


def keep_tail(stream, tail: collections.deque) -> None:
    """The last of what bwrap and the driver write to stderr (user code's stderr is captured inside)."""
    for chunk in iter(lambda: stream.read1(4096), b""):
        tail.append(chunk)
    stream.close()


def capped(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n[cut at {limit} characters of {len(text)}]"
