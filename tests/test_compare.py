"""`refengine compare` between real servers: two serving the same tiny model agree token for token; one
serving another model is found to differ, at the token where it does."""
from __future__ import annotations

import json
from contextlib import ExitStack

import pytest

from refengine.cli import main
from serving import free_port, refengine_serve, running_server
from tiny_model import write_tiny_llama

REQUEST = {"model": "default", "messages": [{"role": "user", "content": "Hello, world!"}], "max_tokens": 8}


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    same = write_tiny_llama(tmp_path_factory.mktemp("same"))
    other = write_tiny_llama(tmp_path_factory.mktemp("other"), seed=7)
    urls = []
    with ExitStack() as stack:
        for folder in (same, same, other):
            port = free_port()
            stack.enter_context(running_server(refengine_serve("--model", str(folder), "--port", str(port)), port))
            urls.append(f"http://127.0.0.1:{port}/v1")
        yield urls


def run_compare(a: str, b: str, request: dict, tmp_path, capsys) -> tuple[int, str]:
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    status = main(["compare", "--base-url", a, "--base-url", b, "--request", str(path),
                   "--html", str(tmp_path / "diff.html")])
    return status, capsys.readouterr().out


def test_same_model_same_tokens(servers, tmp_path, capsys):
    status, out = run_compare(servers[0], servers[1], REQUEST, tmp_path, capsys)
    assert status == 0, out
    assert "same output: all 8 tokens identical" in out
    assert "largest |logprob A - logprob B| over the 8 shared tokens" in out
    assert "same output" in (tmp_path / "diff.html").read_text()


def test_another_model_differs_and_says_where(servers, tmp_path, capsys):
    status, out = run_compare(servers[0], servers[2], REQUEST, tmp_path, capsys)
    assert status == 1, out
    assert "outputs diverge at token 0" in out                       # two random models: the first token
    assert "A ranked there" in out and "B ranked there" in out
    assert "outputs diverge at token 0" in (tmp_path / "diff.html").read_text()


def test_legacy_completions_compare_too(servers, tmp_path, capsys):
    status, out = run_compare(servers[0], servers[1], {"model": "default", "prompt": "def add(a, b):",
                                                       "max_tokens": 6}, tmp_path, capsys)
    assert status == 0, out


def test_a_server_that_cannot_answer_is_exit_status_2(servers, tmp_path, capsys):
    status, _ = run_compare(servers[0], f"http://127.0.0.1:{free_port()}/v1", REQUEST, tmp_path, capsys)
    assert status == 2
