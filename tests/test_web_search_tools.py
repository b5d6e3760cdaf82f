"""The web-search tools of one request (refengine/agent/search_tool.py) and the citations of its answer
(web/citations.py): numbered sources, the search_context_size token budget measured with SmolLM2's own
tokenizer, backend failures as the model's error results, and the tool loop running them (the model
scripted with test_agent_loop's ScriptedModel, the index, tokenizer and loop real)."""
from __future__ import annotations

import json

import pytest

from refengine.agent.loop import AgentDone, RoundResult, ToolProgress, run_rounds
from refengine.agent.registry import ToolContext, ToolRegistry
from refengine.agent.search_tool import (CITE, EXTRACT_PAGE, SEARCH_SERVICE, SEARCH_THE_WEB, TokenizerTokens,
                                         WebSearch, WebSearchOptions, context_budget, search_tools)
from refengine.search.backend import Location
from refengine.search.fetch import PageFetcher
from refengine.search.index import build_index
from refengine.search.local import LocalIndex
from refengine.search.searxng import Searxng
from refengine.tokenizer import Tokenizer
from refengine.tools import ToolCall
from test_agent_loop import ScriptedModel
from web.citations import url_citations

BASE = "https://docs.example.com/"
LONG = "# Widget handbook\n\n" + "".join(f"Chapter {i}: a widget is assembled from small parts and tested twice. "
                                         for i in range(400))


@pytest.fixture(scope="module")
def tokens(smollm2_dir):
    return TokenizerTokens(Tokenizer.from_dir(smollm2_dir))


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    folder = tmp_path_factory.mktemp("docs")
    (folder / "registry.md").write_text("# Widget registry\n\nThe widget registry listens on port 4040.\n")
    (folder / "install.md").write_text("# Installing widgets\n\nRun `widget install NAME` to add a widget.\n")
    (folder / "handbook.md").write_text(LONG)
    out = tmp_path_factory.mktemp("index") / "docs.db"
    build_index(folder, out, BASE)
    return LocalIndex(out, PageFetcher())


def cost(tokens, result: dict) -> int:
    return tokens.count(json.dumps(result, ensure_ascii=False))


def test_budgets_are_shares_of_the_context():
    assert [context_budget(size, 8192) for size in ("low", "medium", "high")] == [1024, 2048, 4096]
    assert [context_budget(size, 2048) for size in ("low", "medium", "high")] == [256, 512, 1024]


def test_sources_are_numbered_once_for_the_whole_request(backend, tokens):
    search = WebSearch(backend, tokens, budget=4096)
    first = search.search("widget registry port")
    assert first["status"] == "success" and first["note"] == CITE
    numbers = {entry["url"]: entry["source"] for entry in first["results"]}
    assert numbers[BASE + "registry.md"] == 1 and sorted(numbers.values()) == list(range(1, len(numbers) + 1))
    again = search.search("install widget")
    assert {e["url"]: e["source"] for e in again["results"]}.items() >= {
        url: n for url, n in numbers.items() if url in {e["url"] for e in again["results"]}}.items()
    page = search.extract(BASE + "install.md")
    assert page["source"] == numbers[BASE + "install.md"] and "widget install NAME" in page["text"]
    assert {n: s.url for n, s in search.sources.items()} == {n: url for url, n in numbers.items()}


def test_everything_fed_back_stays_within_the_budget(backend, tokens):
    search = WebSearch(backend, tokens, budget=300)
    results = [search.search("widget"), search.extract(BASE + "handbook.md"), search.search("registry")]
    spent = [r for r in results if r["status"] == "success"]
    assert sum(cost(tokens, r) for r in spent) <= 300 == search.budget
    assert search.left == 300 - sum(cost(tokens, r) for r in spent)
    page = results[1]
    if page["status"] == "success":                     # what the first search left was enough for some text
        assert page["truncated"] is True and LONG.startswith(page["text"]) and len(page["text"]) < len(LONG)
    assert results[-1] == {"status": "error", "message": "This request's search budget (300 tokens) is spent: "
                                                         "answer with the sources you have."}


def test_a_larger_context_size_feeds_back_more(backend, tokens):
    sizes = []
    for size in ("low", "medium", "high"):
        search = WebSearch(backend, tokens, budget=context_budget(size, 2048))
        sizes.append(len(search.extract(BASE + "handbook.md")["text"]))
    assert sizes[0] < sizes[1] < sizes[2] < len(LONG)


def test_a_failing_backend_is_the_models_error_and_not_the_requests(tokens):
    down = Searxng("http://127.0.0.1:9", PageFetcher(), timeout_s=60)      # port 9: nothing listens
    search = WebSearch(down, tokens, budget=1000)
    result = search.search("anything")
    assert result["status"] == "error" and "SearxNG could not be reached" in result["message"]
    refused = search.extract("http://169.254.169.254/latest/meta-data/")
    assert refused["status"] == "error" and "own network" in refused["message"]
    assert search.sources == {} and search.left == 1000


def test_nothing_found_says_so(backend, tokens):
    result = WebSearch(backend, tokens, budget=1000).search("zeppelin")
    assert result["results"] == [] and "Nothing was found" in result["note"]


def test_descriptions_follow_the_request_and_the_tools_compile():
    paris = Location(city="Paris", country="FR", timezone="Europe/Paris")
    search, extract = search_tools(WebSearchOptions(location=paris, search_description="Look it up.",
                                                    extract_description="Open a page."))
    assert search.description == "Look it up. The user is located approximately in Paris, FR (timezone " \
                                 "Europe/Paris)."
    assert extract.description == "Open a page."
    assert ToolRegistry(search_tools()).names() == (SEARCH_THE_WEB, EXTRACT_PAGE)       # strict, compiled
    assert WebSearchOptions.from_request({}) == WebSearchOptions()
    assert WebSearchOptions.from_request({"user_location": {"type": "approximate", "approximate": {}}}).location \
        is None


def test_the_tool_loop_runs_a_search_and_the_answer_cites_it(backend, tokens):
    search = WebSearch(backend, tokens, budget=2000)
    answer = "The registry listens on port 4040 [1]; see also [9] and [2]."
    model = ScriptedModel(
        RoundResult(None, (ToolCall("call_1", SEARCH_THE_WEB, '{"query": "widget registry port"}'),), "tool_calls"),
        RoundResult(answer))
    events = list(run_rounds([{"role": "user", "content": "Which port?"}], builtin=search_tools(), client_tools=[],
                             generate_round=model, permission="auto", broker=None, max_rounds=4,
                             context=ToolContext(services={SEARCH_SERVICE: search})))
    done = events[-1]
    assert isinstance(done, AgentDone) and done.content == answer
    complete = [e for e in events if isinstance(e, ToolProgress) and e.phase == "complete"]
    assert complete[0].result["results"][0]["url"] == BASE + "registry.md"          # the sources, as progress
    assert json.loads(model.asked[1]["messages"][-1]["content"]) == complete[0].result  # what the model read
    annotations = url_citations(done.content, search.sources)
    cited = {a["url_citation"]["url"]: answer[a["url_citation"]["start_index"]:a["url_citation"]["end_index"]]
             for a in annotations}
    assert cited == {BASE + "registry.md": "[1]", search.sources[2].url: "[2]"}       # [9] names no source
    assert annotations[0] == {"type": "url_citation", "url_citation": {
        "start_index": 34, "end_index": 37, "title": "Widget registry", "url": BASE + "registry.md"}}


@pytest.mark.parametrize("content,spans", [
    ("[1][2]", [(0, 3), (3, 6)]),
    ("No marks, [x] or [ 1 ] or [1.5].", []),
    ("Unicode first: é [1]", [(17, 20)]),
    ("", []), (None, []),
])
def test_every_mark_that_names_a_source_is_annotated_where_it_is(content, spans):
    sources = {1: _source(1), 2: _source(2)}
    assert [(a["url_citation"]["start_index"], a["url_citation"]["end_index"])
            for a in url_citations(content, sources)] == spans


def _source(number: int):
    from refengine.agent.search_tool import Source
    return Source(number, f"https://example.com/{number}", f"Page {number}")
