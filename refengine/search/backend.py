"""The one interface every search backend offers, the data it returns, and how the server picks a backend.

A backend is any object with

    search(query: str, location: Location | None, limit: int) -> list[SearchHit]   # best first
    fetch(url: str) -> Page                                                         # a page's readable text

and raises `SearchError` (with a message fit for the model to read) when it cannot answer. The tool layer
(refengine/agent/search_tool.py) numbers the hits as sources, fits them into the request's token budget
and turns a SearchError into the model's `{"status": "error", ...}` result, so a backend that is down never
fails the request.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

BACKENDS = ("local", "searxng", "duckduckgo")
DEFAULT_TIMEOUT_S = 10.0


class SearchError(Exception):
    """A backend could not answer (down, timed out, refused the URL): the message is for the model."""


@dataclass(frozen=True)
class SearchHit:
    title: str
    url: str
    snippet: str


@dataclass(frozen=True)
class Page:
    url: str                                 # where the text came from (after redirects)
    title: str
    text: str


@dataclass(frozen=True)
class Location:
    """OpenAI's approximate user location (`web_search_options.user_location.approximate`)."""
    city: str | None = None
    region: str | None = None
    country: str | None = None               # ISO 3166-1 alpha-2, as OpenAI documents it
    timezone: str | None = None              # IANA, e.g. "Europe/Paris"

    @classmethod
    def from_request(cls, user_location: dict | None) -> Location | None:
        """None for no location, or one whose every field is empty."""
        approximate = (user_location or {}).get("approximate") or {}
        location = cls(**{key: approximate.get(key) or None for key in ("city", "region", "country", "timezone")})
        return None if location == cls() else location

    def describe(self) -> str:
        """"Lyon, Auvergne-Rhône-Alpes, FR (timezone Europe/Paris)"."""
        place = ", ".join(part for part in (self.city, self.region, self.country) if part)
        if self.timezone:
            place = f"{place} (timezone {self.timezone})" if place else f"timezone {self.timezone}"
        return place


class SearchBackend(Protocol):
    name: str

    def search(self, query: str, location: Location | None, limit: int) -> list[SearchHit]: ...

    def fetch(self, url: str) -> Page: ...


@dataclass(frozen=True)
class SearchSettings:
    """`refengine serve --search-*`: which backend, where it is, and how page fetching is bounded."""
    backend: str = "local"
    index: Path | None = None                # local: the index file (`refengine index`)
    url: str | None = None                   # searxng: the instance; duckduckgo: its HTML endpoint's stand-in
    allow_private: bool = False              # fetch pages on loopback / private addresses too
    timeout_s: float = DEFAULT_TIMEOUT_S     # per backend call and per page fetch, start to end

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"--search-backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if self.backend == "searxng" and not self.url:
            raise ValueError("--search-backend searxng needs --search-url (the SearxNG instance, e.g. "
                             "http://127.0.0.1:8888)")
        if self.index is not None and self.backend != "local":
            raise ValueError("--search-index is for --search-backend local")
        if self.url is not None and self.backend == "local":
            raise ValueError("--search-url is for --search-backend searxng or duckduckgo")

    @property
    def configured(self) -> bool:
        """Whether there is anything to search: the local backend needs an index."""
        return self.backend != "local" or self.index is not None


NOT_CONFIGURED = ("Web search is not configured on this server. Start it with `refengine serve --search-index "
                  "INDEX.db` (build the index with `refengine index DOCS_FOLDER --out INDEX.db`), or with "
                  "`--search-backend searxng --search-url URL` or `--search-backend duckduckgo`.")


def open_backend(settings: SearchSettings) -> SearchBackend | None:
    """The backend `settings` describe, ready to serve (None when none is configured). A local index that
    is missing or is no index is a ValueError now, at start-up, not a failure of each request later."""
    if not settings.configured:
        return None
    from .fetch import PageFetcher
    fetcher = PageFetcher(allow_private=settings.allow_private, timeout_s=settings.timeout_s)
    if settings.backend == "local":
        from .local import LocalIndex
        return LocalIndex(settings.index, fetcher)
    if settings.backend == "searxng":
        from .searxng import Searxng
        return Searxng(settings.url, fetcher, timeout_s=settings.timeout_s)
    from .duckduckgo import DuckDuckGo
    return DuckDuckGo(fetcher, endpoint=settings.url, timeout_s=settings.timeout_s)
