"""The conformance suite against our own server on the default model: every MUST check passes."""
import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conformance.cli import main as conformance_main

CONTEXT = 2048                               # a short window keeps the too-long-prompt checks quick on a CPU


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def base_url(smollm2_dir):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "refengine.cli", "serve", "--model", str(smollm2_dir),
                                "--port", str(port), "--max-model-len", str(CONTEXT)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        assert process.poll() is None, "the server exited"
        assert time.monotonic() < deadline, "the server did not become healthy in 120 s"
        time.sleep(0.5)
    yield f"http://127.0.0.1:{port}/v1"
    process.terminate()
    process.wait(timeout=30)


def test_every_must_check_passes_against_refengine(base_url, tmp_path, capsys):
    report = tmp_path / "report.json"
    status = conformance_main(["--base-url", base_url, "--json", str(report), "--quiet", "--timeout", "300"])
    results = json.loads(report.read_text())["results"]
    must_failures = [r for r in results if r["level"] == "MUST" and r["outcome"] in ("failed", "error")]
    assert must_failures == [], json.dumps(must_failures, indent=1)[:4000]
    assert status == 0
    assert sum(r["outcome"] == "passed" for r in results) >= 80
    assert "every MUST check passed" in capsys.readouterr().out
