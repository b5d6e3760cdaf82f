"""tools/soak.py, run as a user runs it: against `refengine serve` on the tiny model (a short, count-bounded
soak whose summary must show every request answered, no 5xx and the server's memory), against a loopback
server that answers 500 (exit status 1), and aimed off this machine (refused before sending anything)."""
from __future__ import annotations

import http.server
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from serving import free_port, refengine_serve, running_server
from tiny_model import write_tiny_llama

SOAK = Path(__file__).resolve().parent.parent / "tools" / "soak.py"
REQUESTS = 24                                 # three rounds of the mix; --minutes is only a hang guard
HANG_GUARD_S = 600


def soak(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SOAK), *arguments], capture_output=True, text=True,
                          timeout=HANG_GUARD_S)


@pytest.fixture(scope="module")
def tiny_1k_dir(tmp_path_factory):
    """The tiny llama with a 1024-token context: room for the tool prompt and the long cancelled streams."""
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-soak"), extra_config={"max_position_embeddings": 1024})


def test_a_short_soak_of_the_tiny_model_has_no_5xx(tiny_1k_dir):
    port = free_port()
    with running_server(refengine_serve("--model", str(tiny_1k_dir), "--port", str(port), "--max-batch", "4"), port):
        result = soak(f"http://127.0.0.1:{port}/v1", "--streams", "2", "--minutes", "5", "--max-requests",
                      str(REQUESTS), "--max-tokens", "8", "--sample-seconds", "1")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert re.search(rf"^requests: {REQUESTS} in ", out, re.M), out
    assert re.search(r"^5xx: 0$", out, re.M), out
    assert re.search(r"^broken streams or failed connections: 0$", out, re.M), out
    assert re.search(r"^in-band SSE error events: 0$", out, re.M), out
    assert re.search(r"^HTTP statuses: 200: \d+$", out, re.M), out              # nothing but 200s
    assert re.search(r"^time to first token: p50 [\d.]+ ms, p99 [\d.]+ ms \(\d+ streams\)$", out, re.M), out
    assert re.search(r"cancelled by the client as planned: [1-9]", out), out        # every round has a cancel
    rss = re.search(r"^server RSS: start ([\d.]+) MiB, end ([\d.]+) MiB", out, re.M)
    assert rss and float(rss.group(1)) > 0 and float(rss.group(2)) > 0, out    # found the server via /proc


class FailingHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"error": {"message": "boom", "type": "server_error", "param": null, "code": null}}'
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_any_5xx_is_a_failing_exit_status():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FailingHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = soak(f"http://127.0.0.1:{server.server_port}", "--streams", "2", "--minutes", "5",
                      "--max-requests", "6", "--pid", str(os.getpid()))
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"^5xx: 6$", result.stdout, re.M), result.stdout
    assert re.search(r"^HTTP statuses: 500: 6$", result.stdout, re.M), result.stdout


@pytest.mark.parametrize("url", ["http://192.0.2.1:8000", "http://10.0.0.1:80/v1", "http://[2001:db8::1]:8000"])
def test_other_hosts_are_refused(url):
    result = soak(url, "--streams", "1", "--minutes", "0.01")
    assert result.returncode != 0
    assert "loopback servers only" in result.stderr
    assert "requests:" not in result.stdout                                    # nothing was sent
