"""The searxng and duckduckgo backends against a real HTTP server on 127.0.0.1 that answers with recorded
responses in their real formats (SearxNG's JSON API, DuckDuckGo's HTML endpoint): no external network."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from pages import PageServer, page, status
from refengine.search.backend import Location, SearchError, SearchSettings, open_backend
from refengine.search.duckduckgo import DuckDuckGo, parse_results, target_url
from refengine.search.fetch import PageFetcher
from refengine.search.searxng import Searxng

RECORDED = Path(__file__).parent / "fixtures" / "search"
SEARXNG_JSON = (RECORDED / "searxng.json").read_text()
DUCKDUCKGO_HTML = (RECORDED / "duckduckgo.html").read_text()
PARIS = Location(city="Paris", region="Île-de-France", country="FR", timezone="Europe/Paris")


@pytest.fixture(scope="module")
def server():
    routes = {
        "/search": page(SEARXNG_JSON, "application/json"),
        "/html/": page(DUCKDUCKGO_HTML),
        "/json-off/search": status(403),
        "/broken/search": page("<html>maintenance</html>"),
        "/bot-check/html/": page("<html><div class='anomaly-modal'>Unfortunately, bots use DuckDuckGo too.</div>"
                                 "</html>", code=202),
        "/down/search": status(502),
        "/page.html": page("<html><head><title>A page</title></head><body><main><p>Registry notes: port 4040."
                           "</p></main></body></html>"),
    }
    with PageServer(routes) as running:
        running.routes["/slow/search"] = running.hang()
        yield running


def fetcher() -> PageFetcher:
    return PageFetcher(allow_private=True, timeout_s=60)


def query_of(server) -> dict:
    return parse_qs(urlsplit(server.requests[-1][0]).query)


def test_searxng_results_come_back_ranked_with_their_snippets(server):
    hits = Searxng(server.url(""), fetcher(), timeout_s=60).search("widget registry port", PARIS, 8)
    assert [h.url for h in hits] == ["https://widgets.example.org/docs/registry",
                                     "https://forum.example.net/t/change-registry-port/381",
                                     "https://en.example.org/wiki/Port_(computer_networking)"]
    assert hits[0].title == "Widget registry — Widgets 2.4 documentation"
    assert hits[0].snippet == "The widget registry listens on port 4040 unless port is set in widget.toml."
    assert hits[2].snippet == ""
    assert query_of(server) == {"q": ["widget registry port"], "format": ["json"]}
    assert len(Searxng(server.url("/"), fetcher(), timeout_s=60).search("x", None, 2)) == 2      # the limit


@pytest.mark.parametrize("base,reason", [
    ("/json-off", "enable the JSON format"),                  # SearxNG's default settings answer JSON with 403
    ("/broken", "not its JSON results"),
    ("/down", "HTTP 502"),
    ("/slow", "did not answer in time"),
])
def test_searxng_failures_are_search_errors_that_say_what_to_do(server, base, reason):
    with pytest.raises(SearchError, match=reason):
        Searxng(server.url(base), fetcher(), timeout_s=0.5 if base == "/slow" else 60).search("q", None, 8)


def test_a_searxng_that_is_not_running_is_a_search_error(server):
    with pytest.raises(SearchError, match="could not be reached"):
        Searxng("http://127.0.0.1:9", fetcher(), timeout_s=60).search("q", None, 8)       # port 9: discard, closed


def test_duckduckgo_organic_results_without_ads_and_with_their_real_urls(server):
    engine = DuckDuckGo(fetcher(), endpoint=server.url("/html/"), timeout_s=60)
    hits = engine.search("widget registry port", PARIS, 8)
    assert [h.url for h in hits] == ["https://widgets.example.org/docs/registry?v=2.4",
                                     "https://forum.example.net/t/change-registry-port/381",
                                     "https://en.example.org/wiki/Port_(computer_networking)"]
    assert hits[0].title == "Widget registry — Widgets 2.4 documentation"
    assert hits[1].snippet == 'Set port = 5050 in widget.toml and restart the registry. "It worked" & more.'
    assert query_of(server) == {"q": ["widget registry port"], "kl": ["fr-fr"]}      # the user's country
    engine.search("widget registry port", None, 1)
    assert query_of(server) == {"q": ["widget registry port"]}


def test_duckduckgos_bot_check_is_a_search_error_that_says_so(server):
    with pytest.raises(SearchError, match="bot check"):
        DuckDuckGo(fetcher(), endpoint=server.url("/bot-check/html/"), timeout_s=60).search("q", None, 8)


def test_duckduckgo_links_unwrap_to_their_targets():
    wrapped = "//duckduckgo.com/l/?uddg=https%3A%2F%2Fa.example%2Fx%3Fy%3D1&rut=abc"
    assert target_url(wrapped) == "https://a.example/x?y=1"
    assert target_url("https://b.example/direct") == "https://b.example/direct"
    assert target_url("https://duckduckgo.com/y.js?ad_domain=x.example") is None
    assert target_url("javascript:void(0)") is None
    assert parse_results("", 8) == [] and parse_results("<html><body>no results</body></html>", 8) == []


def test_web_backends_read_pages_through_the_fetcher(server):
    backend = open_backend(SearchSettings(backend="searxng", url=server.url(""), allow_private=True, timeout_s=60))
    fetched = backend.fetch(server.url("/page.html"))
    assert fetched.title == "A page" and "port 4040" in fetched.text
    guarded = open_backend(SearchSettings(backend="duckduckgo", url=server.url("/html/"), timeout_s=60))
    with pytest.raises(SearchError, match="own network"):              # without --search-allow-private
        guarded.fetch(server.url("/page.html"))


@pytest.mark.parametrize("settings,reason", [
    (dict(backend="searxng"), "needs --search-url"),
    (dict(backend="bing"), "must be one of"),
    (dict(backend="duckduckgo", index=Path("x.db")), "--search-index is for"),
    (dict(backend="local", url="http://x"), "--search-url is for"),
])
def test_settings_that_cannot_work_are_refused_at_start(settings, reason):
    with pytest.raises(ValueError, match=reason):
        SearchSettings(**settings)


def test_no_local_index_means_no_backend():
    assert open_backend(SearchSettings()) is None
