"""The web-search built-in tools, `search_the_web` {query} and `extract_page` {url}, and one request's search.

Like `execute_python` (code_tool.py) the tools are thin: they hand their argument to
`context.services["web_search"]`, a `WebSearch` that the HTTP side makes per request, and return its
result. A `WebSearch` holds what the request's calls share:

- **numbered sources.** Every page the model is shown gets a number, the first time it appears (a search
  hit, or a page read with `extract_page`), kept for the whole request: `[{source: 1, title, url, ...}]`.
  The model is asked to cite them as `[n]`, and `citations` turns those marks into OpenAI's url_citation
  annotations afterwards (web/citations.py).
- **the token budget** of `web_search_options.search_context_size`: what all the calls of a request feed
  back together, measured with the model's own tokenizer on the result exactly as the model reads it (the
  JSON of the tool message). low / medium / high are 1/8, 1/4, 1/2 of the context (1k / 2k / 4k tokens for
  SmolLM2's 8k): a share rather than a number, so a small context is not filled by its first page and a
  large one gets more. Hits are kept best first while they fit; a page's text is cut to what is left
  (`truncated: true`); a call past the budget is told so and the model answers with what it has.
- **the backend's failures**: a SearchError (down, timed out, a refused URL) is the model's
  `{"status": "error", "message"}`, and the request goes on.

`search_description` / `extract_description` replace the tools' descriptions; a user location is added to
the search description (and given to backends that take one).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Protocol

from refengine.search.backend import Location, SearchBackend, SearchError

from .registry import BuiltinTool, ToolContext

logger = logging.getLogger(__name__)

SEARCH_THE_WEB = "search_the_web"
EXTRACT_PAGE = "extract_page"
SEARCH_TOOL_NAMES = (SEARCH_THE_WEB, EXTRACT_PAGE)
SEARCH_SERVICE = "web_search"
SEARCH_LIMIT = 8                             # hits asked of the backend per search; the budget keeps the best
CONTEXT_SIZES = {"low": 8, "medium": 4, "high": 2}      # the budget is the context length divided by this
DEFAULT_CONTEXT_SIZE = "medium"

CITE = "Cite a source in your answer by its number in brackets, like [1]."
SEARCH_DESCRIPTION = ("Search the web. Returns numbered sources, best first: {source, title, url, snippet}. "
                      "Read a source in full with extract_page. " + CITE)
EXTRACT_DESCRIPTION = ("Read the web page at `url` (for example a search result) and return its text, to learn "
                       "more than a snippet says. " + CITE)
SEARCH_PARAMETERS = {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"],
                     "additionalProperties": False}
EXTRACT_PARAMETERS = {"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"],
                      "additionalProperties": False}


def context_budget(context_size: str, context_length: int) -> int:
    """Tokens of tool results a request may be fed for `search_context_size` (KeyError for an unknown size)."""
    return context_length // CONTEXT_SIZES[context_size]


@dataclass(frozen=True)
class WebSearchOptions:
    """`web_search_options` as a request sends it (validated by web/schema.py)."""
    context_size: str = DEFAULT_CONTEXT_SIZE
    location: Location | None = None
    search_description: str | None = None
    extract_description: str | None = None

    @classmethod
    def from_request(cls, options: dict) -> WebSearchOptions:
        return cls(context_size=options.get("search_context_size") or DEFAULT_CONTEXT_SIZE,
                   location=Location.from_request(options.get("user_location")),
                   search_description=options.get("search_description") or None,
                   extract_description=options.get("extract_description") or None)

    def search_description_text(self) -> str:
        description = self.search_description or SEARCH_DESCRIPTION
        if self.location is not None:
            description += f" The user is located approximately in {self.location.describe()}."
        return description


def search_tools(options: WebSearchOptions = WebSearchOptions()) -> list[BuiltinTool]:
    """Both tools, described as the request asks."""
    return [BuiltinTool(SEARCH_THE_WEB, options.search_description_text(), SEARCH_PARAMETERS, run_search),
            BuiltinTool(EXTRACT_PAGE, options.extract_description or EXTRACT_DESCRIPTION, EXTRACT_PARAMETERS,
                        run_extract)]


def run_search(arguments: dict, context: ToolContext) -> dict:
    search = context.services.get(SEARCH_SERVICE)
    if search is None:
        return {"status": "error", "message": "web search is not available here"}
    return search.search(arguments["query"])


def run_extract(arguments: dict, context: ToolContext) -> dict:
    search = context.services.get(SEARCH_SERVICE)
    if search is None:
        return {"status": "error", "message": "web search is not available here"}
    return search.extract(arguments["url"])


class Tokens(Protocol):
    """The model's tokenizer, as far as budgets need it."""

    def count(self, text: str) -> int: ...

    def prefix(self, text: str, tokens: int) -> str: ...


class TokenizerTokens:
    """`Tokens` over refengine's Tokenizer."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def prefix(self, text: str, tokens: int) -> str:
        """The text of the first `tokens` tokens, without a character cut in half at the end."""
        return self.tokenizer.decode(self.tokenizer.encode(text)[:max(tokens, 0)]).rstrip("\ufffd")


@dataclass(frozen=True)
class Source:
    number: int
    url: str
    title: str


class WebSearch:
    """One request's search: its backend, its sources so far, and what is left of its token budget.
    Used by one request's tool loop, one call at a time."""

    def __init__(self, backend: SearchBackend, tokens: Tokens, budget: int, location: Location | None = None,
                 limit: int = SEARCH_LIMIT):
        self.backend, self.tokens, self.location, self.limit = backend, tokens, location, limit
        self.budget = self.left = budget
        self._sources: dict[str, Source] = {}            # url → its source, in the order first shown

    @property
    def sources(self) -> dict[int, Source]:
        """The sources shown to the model so far, by number."""
        return {source.number: source for source in self._sources.values()}

    def _number(self, url: str) -> int:
        """The number `url` has as a source, or gets when it is first shown."""
        known = self._sources.get(url)
        return known.number if known else len(self._sources) + 1

    def _shown(self, url: str, title: str) -> None:
        self._sources.setdefault(url, Source(self._number(url), url, title))

    def search(self, query: str) -> dict:
        try:
            hits = self.backend.search(query, self.location, self.limit)
        except SearchError as error:
            logger.info("web search failed: %s", error)
            return {"status": "error", "message": str(error)}
        # the note comes first: instructions before the data they are about
        result = {"status": "success", "note": CITE, "query": query, "results": []}
        if not hits:
            result["note"] = "Nothing was found. Try other words, or answer without sources."
            return self._spend(result)
        for hit in hits:
            entry = {"source": self._number(hit.url), "title": hit.title, "url": hit.url, "snippet": ""}
            result["results"].append(entry)
            snippet = self._fit(result, entry, "snippet", hit.snippet)
            if snippet is None:                         # not even its title fits: the budget is spent
                result["results"].pop()
                break
            entry["snippet"] = snippet
            self._shown(hit.url, hit.title)
        if not result["results"]:
            return self._spent()
        return self._spend(result)

    def extract(self, url: str) -> dict:
        try:
            page = self.backend.fetch(url)
        except SearchError as error:
            logger.info("page extraction failed: %s", error)
            return {"status": "error", "message": str(error)}
        known = self._sources.get(url)
        title = page.title or (known.title if known else url)
        result = {"status": "success", "note": CITE, "source": self._number(url), "title": title, "url": url,
                  "text": ""}
        text = self._fit(result, result, "text", page.text)
        if text is None or (page.text and not text):   # not a word of the page fits
            return self._spent()
        result["text"] = text
        if len(text) < len(page.text):
            result["truncated"] = True
        self._shown(url, title)
        return self._spend(result)

    def _fit(self, result: dict, holder: dict, key: str, text: str) -> str | None:
        """The longest beginning of `text` that, put at `holder[key]`, keeps `result` within the budget left
        (the whole text when it fits); None when not even an empty one fits."""
        holder[key] = text
        over = self._cost(result) - self.left
        if over <= 0:
            return text
        holder[key] = ""
        if self._cost(result) > self.left:
            return None
        tokens = self.tokens.count(text) - over
        while tokens > 0:                               # JSON escaping shifts counts a little: shrink to fit
            holder[key] = self.tokens.prefix(text, tokens)
            over = self._cost(result) - self.left
            if over <= 0:
                return holder[key]
            tokens -= over
        return ""

    def _cost(self, result: dict) -> int:
        """The result's tokens as the model reads it: the tool message is its JSON (loop.tool_message)."""
        return self.tokens.count(json.dumps(result, ensure_ascii=False))

    def _spend(self, result: dict) -> dict:
        self.left -= self._cost(result)
        return result

    def _spent(self) -> dict:
        return {"status": "error", "message": f"This request's search budget ({self.budget} tokens) is spent: "
                "answer with the sources you have."}


def make_web_search(backend: SearchBackend, tokenizer, options: WebSearchOptions, context_length: int) -> WebSearch:
    """The WebSearch of one request on the server's model."""
    return WebSearch(backend, TokenizerTokens(tokenizer), context_budget(options.context_size, context_length),
                     options.location)
