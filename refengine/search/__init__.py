"""Web search for the agent's `search_the_web` / `extract_page` tools: backends behind one small interface.

    backend = open_backend(SearchSettings(backend="local", index=Path("docs.db")))
    backend.search("install widgets", location=None, limit=8)    # [SearchHit(title, url, snippet)], best first
    backend.fetch("https://docs.example.com/install.html")         # Page(url, title, text)

| backend | what `search` asks | module |
|---|---|---|
| `local` | a SQLite FTS5 index built by `refengine index DIR --out INDEX.db` (bm25) | `index.py`, `local.py` |
| `searxng` | a self-hosted SearxNG instance's JSON API (`--search-url`) | `searxng.py` |
| `duckduckgo` | DuckDuckGo's HTML endpoint, as mistral.rs does | `duckduckgo.py` |

Every backend fetches pages the model names through `fetch.PageFetcher`, which refuses the server's own
network (loopback, private, link-local addresses) unless the operator allows it, and turns HTML into text
with `extract.py` (trafilatura). What fails is a `SearchError` whose message the model may read.
"""
