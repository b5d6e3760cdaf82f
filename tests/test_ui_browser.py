"""The /ui page in a real browser (Debian's Chromium driven by Playwright) against `refengine serve` on the
default model: chat with a streamed answer, its trace in the inspector, hovering a token, loading a saved
trace file. Screenshots go to test-artifacts/ (ignored by git) for a person to look at.

Waits are hang guards (generous: CI is a loaded 2-core machine), never measurements.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from serving import free_port, refengine_serve, running_server

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (.ci/run installs Debian's)")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
WAIT_MS = 600_000


@pytest.fixture(scope="module")
def base_url(smollm2_dir):
    port = free_port()
    with running_server(refengine_serve("--model", str(smollm2_dir), "--port", str(port)), port):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def page(base_url):
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(base_url + "/ui")
        yield page
        browser.close()
        assert errors == [], f"the page raised: {errors}"


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_chat_streams_an_answer_and_its_trace_opens(page):
    playwright_api.expect(page.locator("#model")).not_to_have_text("…", timeout=WAIT_MS)
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "12")
    page.fill("#prompt", "What is the capital of France?")
    page.click("#send")
    answer = page.locator(".message.assistant .text").last
    page.wait_for_selector(".message.assistant .meta button.open-trace", timeout=WAIT_MS)
    assert answer.text_content().strip()
    assert "finish:" in page.locator(".message.assistant .meta").last.text_content()
    # the inspector shows the trace of that answer: prompt tokens, output tokens, the timeline
    assert page.locator("#prompt-tokens .token").count() > 5
    outputs = page.locator("#output-tokens .token")
    assert 1 <= outputs.count() <= 12                                # max_tokens, or an earlier end
    shown = "".join(outputs.nth(i).text_content() for i in range(outputs.count()))
    assert shown.replace("↵", "").replace("·", " ").strip()
    assert page.locator("#timeline .bar-row").count() >= 3           # template, tokenize, forward passes
    # a token's hover text names its id and bytes; clicking it shows the candidates through each stage
    first = outputs.nth(0)
    first.hover()
    assert first.get_attribute("title").startswith("id ")
    assert "bytes [" in first.get_attribute("title")
    outputs.nth(outputs.count() - 1).click()
    rows = page.locator("#token-detail table.stages tr")
    assert rows.count() == 3                                         # header, forward, greedy
    assert page.locator("#token-detail td.chosen").count() >= 1
    screenshot(page, "ui-chat-and-trace.png")


def test_a_saved_trace_file_loads_into_the_inspector(page, tmp_path, smollm2_dir):
    from refengine.cli import main
    saved = tmp_path / "trace.json"
    assert main(["generate", "Name a color.", "--model", str(smollm2_dir), "--max-tokens", "5",
                 "--trace", str(saved)]) == 0
    trace = json.loads(saved.read_text())
    page.set_input_files("#trace-file", str(saved))
    playwright_api.expect(page.locator("#status")).to_contain_text("loaded trace.json", timeout=WAIT_MS)
    assert page.locator("#output-tokens .token").count() == len(trace["choices"][0]["tokens"])
    assert page.locator("#prompt-tokens .token").count() == len(trace["prompt"]["tokens"])
    screenshot(page, "ui-loaded-trace.png")


def test_a_file_that_is_no_trace_is_refused_in_words(page, tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hello": "world"}))
    page.set_input_files("#trace-file", str(other))
    playwright_api.expect(page.locator("#status")).to_contain_text("not a refengine trace", timeout=WAIT_MS)
