"""Web search through HTTP: `refengine serve --search-index` on the default model, driven by the openai SDK
(`extra_body`) and raw SSE; a page server on 127.0.0.1 for extract_page (--search-allow-private); the
error paths in-process on the same real model.

SmolLM2-135M is too small to search well, so the search tool is forced (tool_choice) and the tests check
structure, never the answer's quality: the sources in agentic_tool_calls, an answer, and annotations that
point exactly at the `[n]` marks of the content naming a source it was shown (none when it cites nothing).
"""
from __future__ import annotations

import json
import re

import openai
import pytest
from falcon import testing

from conformance.checks.agent import web_search_options
from conformance.client import Client
from conformance.context import Context
from conformance.runner import run_checks
from pages import PageServer, page
from refengine.agent.runtime import AgentRuntime, AgentSettings
from refengine.search.backend import SearchSettings
from refengine.search.index import build_index
from serving import free_port, refengine_serve, running_server
from test_agentic import HANG_GUARD_S, Raw, sse_events
from web.app import create_app
from web.engine import start_engine

BASE = "https://docs.example.com/"
DOCS = {
    "registry.md": "# Widget registry\n\nThe widget registry listens on port 4040. Set `port` in widget.toml to "
                   "change it.\n",
    "install.md": "# Installing widgets\n\nRun `widget install NAME` to install a widget. Widgets need Python "
                  "3.11 or newer.\n",
    "cafe.txt": "The office café opens at 7 am. It sells coffee, not widgets.\n",
}
NOTES = "<html><head><title>Release notes</title></head><body><main><h1>Release notes</h1><p>Widgets 2.5 moves " \
        "the registry to port 4141.</p></main></body></html>"
QUESTION = [{"role": "user", "content": "Search the web for: widget registry port"}]
SEARCH = {"type": "function", "function": {"name": "search_the_web"}}
EXTRACT = {"type": "function", "function": {"name": "extract_page"}}
LOW = {"search_context_size": "low"}
MARK = re.compile(r"\[(\d+)\]")


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    folder = tmp_path_factory.mktemp("docs")
    for name, text in DOCS.items():
        (folder / name).write_text(text)
    out = tmp_path_factory.mktemp("index") / "docs.db"
    build_index(folder, out, BASE)
    return out


@pytest.fixture(scope="module")
def pages():
    with PageServer({"/notes.html": page(NOTES)}) as server:
        yield server


@pytest.fixture(scope="module")
def server(smollm2_dir, index, tmp_path_factory):
    port = free_port()
    command = refengine_serve("--model", str(smollm2_dir), "--port", str(port), "--search-index", str(index),
                              "--search-allow-private", "--state-dir", str(tmp_path_factory.mktemp("state")))
    with running_server(command, port):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=HANG_GUARD_S)


def searched(client, messages=QUESTION, tool_choice=SEARCH, options=LOW, max_tokens=60, **extra):
    return client.chat.completions.create(model="default", messages=messages, temperature=0, max_tokens=max_tokens,
                                          tool_choice=tool_choice, extra_body={"web_search_options": options, **extra})


def shown_sources(calls: list[dict]) -> dict[int, str]:
    """Source number → url, from the results the model was given."""
    shown = {}
    for call in calls:
        result = call["result"]
        for entry in result.get("results", []) + ([result] if "source" in result else []):
            shown[entry["source"]] = entry["url"]
    return shown


def check_annotations(content: str, annotations: list[dict], shown: dict[int, str]) -> None:
    """Exactly one annotation per `[n]` mark naming a shown source, spanning the mark, with its url."""
    marks = [(m.start(), m.end(), shown[int(m.group(1))]) for m in MARK.finditer(content) if int(m.group(1)) in shown]
    spans = [(a["url_citation"]["start_index"], a["url_citation"]["end_index"], a["url_citation"]["url"])
             for a in annotations]
    assert spans == marks
    assert all(a["type"] == "url_citation" and isinstance(a["url_citation"]["title"], str) for a in annotations)


def test_a_forced_search_answers_with_its_sources_and_citations(client):
    reply = searched(client)
    calls = reply.model_extra["agentic_tool_calls"]
    if not calls:                                  # the model's text, not the server: here it always closes it
        pytest.skip("SmolLM2 did not close its search call within max_tokens on this machine")
    assert calls[0]["name"] == "search_the_web" and calls[0]["round"] == 1
    result = calls[0]["result"]
    assert result["status"] == "success" and result["results"], result       # the query shares words with docs
    assert all(entry["url"].startswith(BASE) and entry["title"] for entry in result["results"])
    assert [entry["source"] for entry in result["results"]] == list(range(1, len(result["results"]) + 1))
    message = reply.choices[0].message
    assert isinstance(message.content, str) and reply.choices[0].finish_reason in ("stop", "length")
    annotations = [a.model_dump() for a in message.annotations]
    check_annotations(message.content, annotations, shown_sources(calls))


def test_a_streamed_search_shows_its_progress_and_annotates_the_last_chunk(server):
    body = {"model": "default", "messages": QUESTION, "max_tokens": 60, "temperature": 0, "stream": True,
            "tool_choice": SEARCH, "web_search_options": LOW, "max_tool_rounds": 1}
    events = sse_events(Raw(server).send("POST", "/v1/chat/completions", body)[1])
    progress = [json.loads(data) for name, data in events if name == "agentic_tool_call_progress"]
    if not progress:
        pytest.skip("SmolLM2 did not close its search call within max_tokens on this machine")
    assert [(p["tool_name"], p["phase"]) for p in progress] == [("search_the_web", "calling"),
                                                                ("search_the_web", "complete")]
    chunks = [json.loads(data) for name, data in events if name is None and data != "[DONE]"]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    last = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(last) == 1 and isinstance(last[0]["choices"][0]["delta"]["annotations"], list)
    check_annotations(content, last[0]["choices"][0]["delta"]["annotations"],
                      shown_sources(last[0]["agentic_tool_calls"]))
    assert events[-1] == (None, "[DONE]")


def test_extract_page_reads_a_page_on_the_allowed_loopback_server(client, pages):
    url = pages.url("/notes.html")
    question = [{"role": "user", "content": f"Read the page {url} and tell me the port."}]
    reply = searched(client, question, tool_choice=EXTRACT, max_tokens=100, max_tool_rounds=1)  # a URL: many tokens
    calls = reply.model_extra["agentic_tool_calls"]
    if not calls:
        pytest.skip("SmolLM2 did not close its extract_page call within max_tokens on this machine")
    assert calls[0]["name"] == "extract_page" and isinstance(reply.choices[0].message.content, str)
    result = calls[0]["result"]
    assert result["status"] in ("success", "error")              # it ran; which URL it read is the model's text
    if json.loads(calls[0]["arguments"])["url"] == url:          # SmolLM2 often writes https:// instead
        assert result["status"] == "success" and result["source"] == 1 and result["title"] == "Release notes"
        assert "port 4141" in result["text"] and pages.requests[-1][0] == "/notes.html"


def test_the_conformance_check_passes_on_a_server_with_search(server):
    """The EXT check asks without forcing a tool, so SmolLM2 may not search at all: the answer still carries
    its (possibly empty) annotations, and every one must be well-formed."""
    context = Context(Client(server + "/v1", None, timeout=HANG_GUARD_S), "default")
    [result] = run_checks(context, [web_search_options])
    assert result.outcome == "passed", result.message


@pytest.mark.parametrize("fields,param", [
    ({"web_search_options": {"search_context_size": "huge"}}, "web_search_options.search_context_size"),
    ({"web_search_options": {"user_location": {"type": "exact", "approximate": {}}}},
     "web_search_options.user_location.type"),
    ({"web_search_options": {}, "tools": [{"type": "function", "function": {"name": "search_the_web"}}]}, "tools"),
    ({"tool_choice": EXTRACT}, "tool_choice"),                 # the tool exists only with web_search_options
    ({"web_search_options": {}, "n": 2}, "n"),
])
def test_bad_web_search_requests_are_400s_naming_the_field(client, fields, param):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="default", messages=QUESTION, max_tokens=5,
                                       **{k: v for k, v in fields.items() if k in ("n", "tool_choice")},
                                       extra_body={k: v for k, v in fields.items() if k not in ("n", "tool_choice")})
    assert refused.value.body["param"] == param, refused.value.body


# ---- in-process, on the same real model: no backend, a backend that is down ----

@pytest.fixture(scope="module")
def engine(smollm2):
    engine = start_engine(smollm2)
    yield engine
    engine.stop()


def app_with(engine, search: SearchSettings, state) -> testing.TestClient:
    return testing.TestClient(create_app(engine, agent=AgentRuntime(AgentSettings(state_dir=state, search=search))))


def test_without_a_backend_web_search_is_a_400_that_says_how_to_configure_one(engine, tmp_path):
    reply = app_with(engine, SearchSettings(), tmp_path).simulate_post("/v1/chat/completions", json={
        "model": "default", "messages": QUESTION, "max_tokens": 5, "web_search_options": {}})
    assert reply.status_code == 400 and reply.json["error"]["param"] == "web_search_options"
    assert "refengine index" in reply.json["error"]["message"] and "--search-index" in reply.json["error"]["message"]


def test_without_allow_private_extract_page_never_reaches_the_servers_network(engine, index, pages, tmp_path):
    before = len(pages.requests)
    reply = app_with(engine, SearchSettings(index=index), tmp_path).simulate_post("/v1/chat/completions", json={
        "model": "default", "messages": [{"role": "user", "content": f"Read the page {pages.url('/notes.html')}."}],
        "max_tokens": 100, "temperature": 0, "tool_choice": EXTRACT, "web_search_options": LOW,
        "max_tool_rounds": 1})
    assert reply.status_code == 200, reply.text
    calls = reply.json["agentic_tool_calls"]
    if not calls:
        pytest.skip("SmolLM2 did not close its extract_page call within max_tokens on this machine")
    result = calls[0]["result"]
    assert result["status"] == "error", result                 # loopback refused (or a name that resolves nowhere)
    if "127.0.0.1" in calls[0]["arguments"]:
        assert "own network" in result["message"]
    assert len(pages.requests) == before


def test_a_backend_that_is_down_gives_the_model_an_error_and_the_request_still_answers(engine, tmp_path):
    down = SearchSettings(backend="searxng", url="http://127.0.0.1:9")      # port 9: nothing listens
    reply = app_with(engine, down, tmp_path).simulate_post("/v1/chat/completions", json={
        "model": "default", "messages": QUESTION, "max_tokens": 60, "temperature": 0, "tool_choice": SEARCH,
        "web_search_options": LOW, "max_tool_rounds": 1})
    assert reply.status_code == 200, reply.text
    calls = reply.json["agentic_tool_calls"]
    if not calls:
        pytest.skip("SmolLM2 did not close its search call within max_tokens on this machine")
    assert calls[0]["result"]["status"] == "error" and "SearxNG" in calls[0]["result"]["message"]
    message = reply.json["choices"][0]["message"]
    assert isinstance(message["content"], str) and message["annotations"] == []      # nothing was shown to cite
