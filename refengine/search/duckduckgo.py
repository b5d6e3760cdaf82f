"""The `duckduckgo` backend: DuckDuckGo's HTML endpoint (no key, no JavaScript), as mistral.rs searches.

    GET https://html.duckduckgo.com/html/?q=QUERY[&kl=REGION]

Each organic result is a `div.result` holding `a.result__a` (the title; its href a redirect
`//duckduckgo.com/l/?uddg=<the target, percent-encoded>&rut=...`) and `.result__snippet`; ads are
`div.result--ad` and link through `y.js`, and are skipped. The page is parsed with lxml (trafilatura's
own parser), never with regular expressions. A 202 is DuckDuckGo's bot check: the error says so, since
no retry here would pass it. The user's country picks DuckDuckGo's region (`kl`) when it has one.
"""
from __future__ import annotations

from urllib.parse import parse_qs, urljoin, urlsplit

import lxml.html

from .backend import Location, Page, SearchError, SearchHit
from .fetch import PageFetcher, call_endpoint, endpoint_client

ENDPOINT = "https://html.duckduckgo.com/html/"
BOT_CHECK = 202
# ISO country → DuckDuckGo's region code (its own list; "uk" is its code for GB)
REGIONS = {"AR": "ar-es", "AT": "at-de", "AU": "au-en", "BE": "be-fr", "BR": "br-pt", "CA": "ca-en", "CH": "ch-de",
           "CN": "cn-zh", "DE": "de-de", "DK": "dk-da", "ES": "es-es", "FI": "fi-fi", "FR": "fr-fr", "GB": "uk-en",
           "IE": "ie-en", "IN": "in-en", "IT": "it-it", "JP": "jp-jp", "KR": "kr-kr", "MX": "mx-es", "NL": "nl-nl",
           "NO": "no-no", "NZ": "nz-en", "PL": "pl-pl", "PT": "pt-pt", "RU": "ru-ru", "SE": "se-sv", "US": "us-en",
           "ZA": "za-en"}
RESULT = "//div[contains(concat(' ', normalize-space(@class), ' '), ' result ')]"


def region(location: Location | None) -> str | None:
    return REGIONS.get((location.country or "").upper()) if location is not None else None


def target_url(href: str) -> str | None:
    """The page a result links to: the `uddg` parameter of DuckDuckGo's redirect, or the link itself;
    None for what is no web page (an ad's y.js, a javascript: link)."""
    absolute = urljoin("https://duckduckgo.com/", href)
    parts = urlsplit(absolute)
    if parts.netloc.endswith("duckduckgo.com"):
        wrapped = parse_qs(parts.query).get("uddg")
        if not wrapped:
            return None
        absolute = wrapped[0]
    return absolute if urlsplit(absolute).scheme in ("http", "https") else None


def parse_results(html: str, limit: int) -> list[SearchHit]:
    """The organic results of a DuckDuckGo HTML page, in page order."""
    if not html.strip():
        return []
    hits = []
    for result in lxml.html.fromstring(html).xpath(RESULT):
        if "result--ad" in result.get("class", "").split():
            continue
        links = result.xpath(".//a[contains(@class, 'result__a')]")
        url = target_url(links[0].get("href", "")) if links else None
        if url is None:
            continue
        snippets = result.xpath(".//*[contains(@class, 'result__snippet')]")
        hits.append(SearchHit(title=" ".join(links[0].text_content().split()) or url, url=url,
                              snippet=" ".join(snippets[0].text_content().split()) if snippets else ""))
        if len(hits) == limit:
            break
    return hits


class DuckDuckGo:
    name = "duckduckgo"

    def __init__(self, fetcher: PageFetcher, *, endpoint: str | None = None, timeout_s: float):
        self.endpoint = endpoint or ENDPOINT
        self.fetcher = fetcher
        self._client = endpoint_client(timeout_s)

    def search(self, query: str, location: Location | None, limit: int) -> list[SearchHit]:
        params = {"q": query}
        if region(location):
            params["kl"] = region(location)
        response = call_endpoint(self._client, self.endpoint, params, "DuckDuckGo")
        if response.status_code == BOT_CHECK:
            raise SearchError("DuckDuckGo answered with its bot check (HTTP 202) instead of results; try again "
                              "later, or configure a self-hosted SearxNG (--search-backend searxng)")
        return parse_results(response.text, limit)

    def fetch(self, url: str) -> Page:
        return self.fetcher.page(url)
