"""The `searxng` backend: a self-hosted SearxNG instance's JSON API, the usual search of self-hosted LLM
stacks (Open WebUI's among them).

    GET {--search-url}/search?q=QUERY&format=json
    → {"query": ..., "results": [{"url", "title", "content", "engine", "score", ...}, ...], "answers": [...], ...}

`results` come ranked (SearxNG merges its engines' positions into `score`, best first); `content` is the
snippet. The JSON format is off in SearxNG's default settings and then answers 403: the error says how to
turn it on. SearxNG has no location parameter (only a language), so the user's location is not sent.
"""
from __future__ import annotations

from .backend import Location, Page, SearchError, SearchHit
from .fetch import PageFetcher, call_endpoint, endpoint_client

JSON_OFF = "enable the JSON format in SearxNG's settings.yml (search: formats: [html, json])"


class Searxng:
    name = "searxng"

    def __init__(self, url: str, fetcher: PageFetcher, *, timeout_s: float):
        self.endpoint = url.rstrip("/") + "/search"
        self.fetcher = fetcher
        self._client = endpoint_client(timeout_s)

    def search(self, query: str, location: Location | None, limit: int) -> list[SearchHit]:
        response = call_endpoint(self._client, self.endpoint, {"q": query, "format": "json"}, "SearxNG",
                                 hints={403: JSON_OFF})
        try:
            results = response.json()["results"]
        except (ValueError, KeyError, TypeError):
            raise SearchError("SearxNG answered something that is not its JSON results") from None
        hits = [SearchHit(title=str(r.get("title") or r["url"]), url=str(r["url"]), snippet=str(r.get("content") or ""))
                for r in results if isinstance(r, dict) and r.get("url")]
        return hits[:limit]

    def fetch(self, url: str) -> Page:
        return self.fetcher.page(url)
