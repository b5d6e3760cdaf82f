"""The conformance suite against our own server on the default model: every MUST check passes."""
import json

import pytest

from conformance.cli import main as conformance_main
from serving import free_port, refengine_serve, running_server

CONTEXT = 2048                               # a short window keeps the too-long-prompt checks quick on a CPU


@pytest.fixture(scope="module")
def base_url(smollm2_dir):
    port = free_port()
    command = refengine_serve("--model", str(smollm2_dir), "--port", str(port), "--max-model-len", str(CONTEXT))
    with running_server(command, port):
        yield f"http://127.0.0.1:{port}/v1"


def test_every_must_check_passes_against_refengine(base_url, tmp_path, capsys):
    report = tmp_path / "report.json"
    status = conformance_main(["--base-url", base_url, "--json", str(report), "--quiet", "--timeout", "300"])
    results = json.loads(report.read_text())["results"]
    must_failures = [r for r in results if r["level"] == "MUST" and r["outcome"] in ("failed", "error")]
    assert must_failures == [], json.dumps(must_failures, indent=1)[:4000]
    assert status == 0
    assert sum(r["outcome"] == "passed" for r in results) >= 80
    assert "every MUST check passed" in capsys.readouterr().out
