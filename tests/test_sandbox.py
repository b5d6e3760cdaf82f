"""The code sandbox on the real bubblewrap (issue 12, item 3): what code inside can and cannot reach.

Every test runs real code in a real bwrap; CI installs bubblewrap (.ci/run) and these skip, saying so, only
where it is missing. Wall limits here are small only where the test is about the wall limit; elsewhere they
are the default 30 s, a hang guard.
"""
from __future__ import annotations

import ast
import json
import logging
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from refengine.agent.sandbox import ENVIRONMENT, PythonSandbox, SandboxLimits, SandboxUnavailable, bwrap_problem

REPO = Path(__file__).resolve().parents[1]
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None,
                                 reason="bubblewrap is not installed (apt-get install bubblewrap; .ci/run does)")


@pytest.fixture
def folder(tmp_path):
    session = tmp_path / "session"
    session.mkdir()
    return session


@pytest.fixture
def sandbox(folder):
    with PythonSandbox(folder) as box:
        yield box


def value(result: dict):
    """The trailing expression's value, from its repr."""
    assert result["status"] == "success", result
    return ast.literal_eval(result["result"])


@needs_bwrap
@pytest.mark.parametrize("address", ["127.0.0.1", "1.1.1.1"])
def test_no_network(sandbox, address):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        result = sandbox.run(f"import socket\nsocket.create_connection(({address!r}, {port}), timeout=10)")
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):       # nobody connected to the host's listener
            listener.accept()
    assert result["status"] == "error"
    expected = "ConnectionRefusedError" if address == "127.0.0.1" else "Network is unreachable"
    assert expected in result["exception"], result


@needs_bwrap
@pytest.mark.parametrize("path", ["/usr/x", "/etc/x", "/root/x", "/x", str(REPO / "x"), str(REPO / ".venv" / "x")])
def test_writing_outside_the_session_folder_fails(sandbox, path):
    result = sandbox.run(f"open({path!r}, 'w').write('escaped')")
    assert result["status"] == "error"
    assert result["exception"].startswith(("OSError", "PermissionError", "FileNotFoundError")), result
    assert not Path(path).exists()


@needs_bwrap
def test_host_folders_beside_the_session_are_out_of_reach(sandbox, folder):
    result = sandbox.run(f"open({str(folder.parent / 'x')!r}, 'w').write('escaped')")
    assert result["status"] == "error"
    assert not (folder.parent / "x").exists()


@needs_bwrap
def test_the_working_folder_is_the_session_folder(sandbox, folder):
    assert sandbox.run("open('made-inside.txt', 'w').write('hello')")["status"] == "success"
    assert (folder / "made-inside.txt").read_text() == "hello"
    assert value(sandbox.run("import os\nos.getcwd(), sorted(os.listdir())")) == ("/session", ["made-inside.txt"])


@needs_bwrap
def test_the_servers_environment_is_not_visible(folder, monkeypatch):
    secret = f"REFENGINE_TEST_SECRET_{uuid.uuid4().hex}"
    monkeypatch.setenv(secret, "api-key-value")
    with PythonSandbox(folder) as sandbox:
        inside = value(sandbox.run("import os\ndict(os.environ)"))
        seen_by_a_child = value(sandbox.run("import subprocess\n"
                                            "subprocess.run(['env'], capture_output=True, text=True).stdout"))
    assert secret not in inside and secret not in seen_by_a_child and "api-key-value" not in seen_by_a_child
    assert set(inside) <= {*ENVIRONMENT, "HOME", "PWD"}, inside


@needs_bwrap
def test_an_infinite_loop_times_out_and_the_variables_stay(folder):
    with PythonSandbox(folder, SandboxLimits(wall_seconds=2)) as sandbox:
        sandbox.run("x = 41")
        result = sandbox.run("while True:\n    pass")
        assert result["status"] == "timeout"
        assert "KeyboardInterrupt" in result["stderr"] and "kept" in result["exception"]
        assert value(sandbox.run("x + 1")) == 42


@needs_bwrap
def test_code_that_ignores_the_interrupt_is_killed_and_replaced(folder):
    with PythonSandbox(folder, SandboxLimits(wall_seconds=2, interrupt_grace_seconds=1)) as sandbox:
        sandbox.run("x = 41")
        result = sandbox.run("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass")
        assert result["status"] == "timeout"
        assert "killed" in result["exception"] and "fresh" in result["exception"]
        after = sandbox.run("x")
        assert after["status"] == "error" and after["exception"].startswith("NameError")
        assert value(sandbox.run("1 + 1")) == 2


@needs_bwrap
@pytest.mark.parametrize("code", [
    "hog = bytearray(2 * (256 << 20))",                              # one allocation past the address space
    "hog = []\nwhile True:\n    hog.append(bytearray(16 << 20))",   # growing until it is refused
], ids=["one-allocation", "growing"])
def test_a_memory_hog_is_an_error_and_the_sandbox_goes_on(folder, code):
    with PythonSandbox(folder, SandboxLimits(memory_bytes=256 << 20)) as sandbox:
        result = sandbox.run(code)
        assert result["status"] == "error" and "MemoryError" in result["exception"], result
        assert value(sandbox.run("hog = None\n1 + 1")) == 2


@needs_bwrap
def test_a_crash_is_an_error_and_the_next_run_starts_fresh(sandbox):
    sandbox.run("import os\nx = 1")
    result = sandbox.run("os.kill(os.getpid(), 9)")
    assert result["status"] == "error" and "SIGKILL" in result["exception"], result
    assert sandbox.run("x")["exception"].startswith("NameError")
    assert value(sandbox.run("2 + 2")) == 4


@needs_bwrap
def test_a_fork_bomb_hits_the_process_limit_and_the_host_is_unharmed(folder):
    limits = SandboxLimits(processes=16)
    with PythonSandbox(folder, limits) as sandbox:
        result = sandbox.run("import os, time\nforked = 0\nwhile forked < 1000:\n    if os.fork() == 0:\n"
                             "        time.sleep(30)\n        os._exit(0)\n    forked += 1")
        assert result["status"] == "error" and "BlockingIOError" in result["exception"], result
        assert value(sandbox.run("forked")) < limits.processes
    spawned = subprocess.run([sys.executable, "-c", "print('still here')"], capture_output=True, text=True,
                             timeout=60)
    assert spawned.stdout == "still here\n"


@needs_bwrap
def test_an_unbounded_fork_bomb_ends_and_the_sandbox_goes_on(sandbox):
    result = sandbox.run("import os\nwhile True:\n    os.fork()")
    assert result["status"] == "error" and "BlockingIOError" in result["exception"], result
    assert value(sandbox.run("'alive'")) == "alive"


@needs_bwrap
def test_state_persists_in_a_sandbox_and_not_across_sandboxes(sandbox, tmp_path):
    sandbox.run("x = 41")
    assert sandbox.run("x + 1")["result"] == "42"
    other_folder = tmp_path / "other"
    other_folder.mkdir()
    with PythonSandbox(other_folder) as other:
        result = other.run("x")
    assert result["status"] == "error" and result["exception"].startswith("NameError")


@needs_bwrap
def test_only_its_own_processes_are_visible(sandbox):
    pid, visible = value(sandbox.run("import os\n"
                                     "os.getpid(), sorted(int(p) for p in os.listdir('/proc') if p.isdigit())"))
    assert pid < 10 and len(visible) <= 3 and max(visible) < 10, visible


@needs_bwrap
def test_output_is_captured_at_the_file_descriptors_and_capped(folder):
    with PythonSandbox(folder, SandboxLimits(output_chars=1000)) as sandbox:
        result = sandbox.run("import subprocess, sys\nprint('before')\nsubprocess.run(['echo', 'from a child'])\n"
                             "print('x' * 50_000)\nprint('to stderr', file=sys.stderr)\n'y' * 50_000")
    assert result["stdout"].startswith("before\nfrom a child\nxxx") and "output cut at 1000" in result["stdout"]
    assert result["stderr"] == "to stderr\n"
    assert len(result["result"]) < 1100 and "cut at 1000" in result["result"]


@needs_bwrap
def test_one_run_at_a_time(sandbox):
    sandbox.run("seen = []")
    results = []
    threads = [threading.Thread(target=lambda i=i: results.append(sandbox.run(f"seen.append({i})")))
               for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [result["status"] for result in results] == ["success"] * 8
    assert sorted(value(sandbox.run("seen"))) == list(range(8))


def test_without_bwrap_the_error_says_how_to_install_it(folder, monkeypatch):
    monkeypatch.setenv("PATH", str(folder))                          # a PATH with no bwrap on it
    bwrap_problem.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable) as raised:
            PythonSandbox(folder)
    finally:
        bwrap_problem.cache_clear()
    assert "apt-get install bubblewrap" in str(raised.value) and "--code-exec-sandbox none" in str(raised.value)


def test_mode_none_runs_the_same_driver_and_warns(folder, caplog, monkeypatch):
    monkeypatch.setenv("REFENGINE_TEST_SECRET", "x")
    with caplog.at_level(logging.WARNING), PythonSandbox(folder, mode="none") as sandbox:
        sandbox.run("x = 41")
        assert value(sandbox.run("x + 1")) == 42
        assert "REFENGINE_TEST_SECRET" not in value(sandbox.run("import os\ndict(os.environ)"))
    assert any("WITHOUT A SANDBOX" in record.getMessage() for record in caplog.records)


def refengine_sandbox_run(*arguments, stdin=None):
    done = subprocess.run([sys.executable, "-m", "refengine.cli", "sandbox", "run", *arguments], input=stdin,
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    return done.returncode, json.loads(done.stdout)


@needs_bwrap
def test_refengine_sandbox_run_prints_the_result_json():
    code, result = refengine_sandbox_run("print(1+1)")
    assert code == 0 and result["status"] == "success" and result["stdout"] == "2\n"


@needs_bwrap
def test_refengine_sandbox_run_reads_stdin():
    code, result = refengine_sandbox_run("-", stdin="x = 6\nx * 7\n")
    assert code == 0 and result["result"] == "42"


@needs_bwrap
def test_refengine_sandbox_run_reports_a_timeout():
    code, result = refengine_sandbox_run("while True: pass", "--timeout", "1")
    assert code == 1 and result["status"] == "timeout"


@needs_bwrap
def test_dev_is_not_a_writable_tmpfs(tmp_path):
    """bwrap's /dev is a tmpfs (host memory): read-only in the sandbox; /dev/null still takes writes."""
    with PythonSandbox(tmp_path, SandboxLimits(wall_seconds=20)) as sandbox:
        refused = sandbox.run("open('/dev/probe', 'w')")
        assert refused["status"] == "error" and "Read-only file system" in refused["exception"]
        assert sandbox.run("open('/dev/null', 'w').write('x')")["status"] == "success"
