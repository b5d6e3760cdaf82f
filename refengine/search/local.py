"""The `local` backend: searches an index built by `refengine index` (index.py), offline.

`search` turns the query into its words, any of which may match (FTS5's own query syntax is not exposed:
a model's "what's C++?" must not be a syntax error), ranks by bm25 with the title weighing more than the
body, and returns FTS5's snippet of the best-matching passage. `fetch` answers an indexed URL from the
stored text without any network, and fetches any other URL through the PageFetcher's address rules.
The user's location is not used: the documents are the operator's own, not the world's.

Each call opens its own read-only connection: connections are not shared between request threads, and
the index can be rebuilt (index.py swaps the file) while the server runs.
"""
from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from .backend import Location, Page, SearchError, SearchHit
from .fetch import PageFetcher
from .index import FORMAT_VERSION

TITLE_WEIGHT, BODY_WEIGHT = 5.0, 1.0         # bm25 column weights: a word in the title counts five times
SNIPPET_TOKENS = 48                          # FTS5 tokens (words) around the best match
MAX_QUERY_WORDS = 32
WORD = re.compile(r"[^\W_]+")                # letters and digits: FTS5's unicode61 splits at "_" too


def match_expression(query: str) -> str | None:
    """The query's words as an FTS5 expression: each quoted (so it is never an operator), any may match.
    Words split as the index's tokenizer splits them, so a model's "widget_registry_port" finds "widget
    registry port"."""
    words = list(dict.fromkeys(w.lower() for w in WORD.findall(query)))[:MAX_QUERY_WORDS]
    return " OR ".join(f'"{word}"' for word in words) or None


class LocalIndex:
    name = "local"

    def __init__(self, path: Path, fetcher: PageFetcher):
        self.path, self.fetcher = Path(path), fetcher
        if not self.path.is_file():
            raise FileNotFoundError(f"no search index at {self.path} (build one with `refengine index DIR --out "
                                    f"{self.path}`)")
        try:
            with self._connect() as connection:
                row = connection.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        except sqlite3.DatabaseError:
            row = None
        if row is None or row[0] != FORMAT_VERSION:
            raise ValueError(f"{self.path} is not a search index of this version (rebuild it with "
                             f"`refengine index DIR --out {self.path}`)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)

    def search(self, query: str, location: Location | None, limit: int) -> list[SearchHit]:
        expression = match_expression(query)
        if expression is None:
            return []
        try:
            connection = self._connect()
            try:
                rows = connection.execute(
                    "SELECT documents.title, documents.url, snippet(pages, 1, '', '', '…', ?) FROM pages "
                    "JOIN documents ON documents.id = pages.rowid WHERE pages MATCH ? "
                    "ORDER BY bm25(pages, ?, ?) LIMIT ?",
                    (SNIPPET_TOKENS, expression, TITLE_WEIGHT, BODY_WEIGHT, limit)).fetchall()
            finally:
                connection.close()
        except sqlite3.Error as error:
            raise SearchError(f"the local index could not be searched: {error}") from None
        return [SearchHit(title=title, url=url, snippet=snippet) for title, url, snippet in rows]

    def fetch(self, url: str) -> Page:
        try:
            connection = self._connect()
            try:
                row = connection.execute("SELECT url, title, body FROM documents WHERE url = ?", (url,)).fetchone()
            finally:
                connection.close()
        except sqlite3.Error as error:
            raise SearchError(f"the local index could not be read: {error}") from None
        if row is not None:
            return Page(url=row[0], title=row[1], text=row[2])
        return self.fetcher.page(url)
