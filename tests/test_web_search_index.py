"""`refengine index` and the `local` backend: a folder of test pages → a SQLite FTS5 index, searched with bm25,
pages answered from the index; other URLs fetched from a real HTTP server on 127.0.0.1 only when allowed."""
from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from pages import PageServer, page
from refengine.search.backend import SearchError, SearchSettings, open_backend
from refengine.search.fetch import PageFetcher
from refengine.search.index import build_index
from refengine.search.local import LocalIndex, match_expression

BASE = "https://docs.example.com/manual/"
PAGES = {
    "registry.html": """<html><head><title>Widget registry</title></head><body><nav>Home | Manual | Blog</nav>
        <main><h1>Widget registry</h1><p>The widget registry listens on port 4040. Set <code>port</code> in
        widget.toml to move it.</p></main><footer>Example Corp</footer></body></html>""",
    "guide/install.md": "# Installing widgets\n\nRun `widget install NAME`. Widgets need Python 3.11 or newer.\n",
    "guide/café notes.txt": "The café by the office opens at 7 am and serves no widgets.\n",
    "empty.txt": "   \n",
    "diagram.png": "not text",
    ".drafts/secret.md": "# Secret\n\nThe widget registry password is hunter2.\n",
}


def refengine(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "refengine.cli", *arguments], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("docs")
    for name, text in PAGES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


@pytest.fixture(scope="module")
def index(docs, tmp_path_factory):
    out = tmp_path_factory.mktemp("index") / "docs.db"
    done = refengine("index", str(docs), "--out", str(out), "--base-url", BASE)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"indexed 3 documents into {out}"       # not the empty, hidden or binary ones
    return out


@pytest.fixture(scope="module")
def local(index):
    return LocalIndex(index, PageFetcher(timeout_s=60))


def test_the_index_holds_each_page_with_its_url_title_and_text(index):
    with sqlite3.connect(index) as connection:
        rows = connection.execute("SELECT path, url, title FROM documents ORDER BY path").fetchall()
    assert rows == [("guide/café notes.txt", BASE + "guide/caf%C3%A9%20notes.txt", "café notes"),
                    ("guide/install.md", BASE + "guide/install.md", "Installing widgets"),
                    ("registry.html", BASE + "registry.html", "Widget registry")]


def test_search_ranks_the_best_matching_page_first(local):
    hits = local.search("Which port does the widget registry listen on?", None, 8)
    assert hits[0].url == BASE + "registry.html" and hits[0].title == "Widget registry"
    assert "port 4040" in hits[0].snippet
    assert [h.url for h in local.search("install widgets python", None, 8)][0] == BASE + "guide/install.md"
    assert [h.url for h in local.search("cafe", None, 8)] == [BASE + "guide/caf%C3%A9%20notes.txt"]  # é folded
    assert len(local.search("widget", None, 1)) == 1
    assert local.search("hunter2", None, 8) == []                      # hidden folders are not indexed


@pytest.mark.parametrize("query", ['C++ "AND" (OR', "NEAR(a b)", "*", "widget_registry_port", "", "???"])
def test_any_query_text_is_words_never_fts_syntax(local, query):
    assert all(hit.url.startswith(BASE) for hit in local.search(query, None, 8))   # no sqlite3.OperationalError


def test_a_query_is_its_words_split_as_the_index_splits_them():
    assert match_expression("widget_registry_port") == '"widget" OR "registry" OR "port"'
    assert match_expression('Widget "AND" widget') == '"widget" OR "and"'
    assert match_expression("???") is None


def test_an_indexed_page_is_read_from_the_index(local):
    fetched = local.fetch(BASE + "registry.html")
    assert fetched.title == "Widget registry" and "listens on port 4040" in fetched.text
    assert "Blog" not in fetched.text and "Example Corp" not in fetched.text     # main content only


def test_other_pages_are_fetched_only_from_public_addresses(index):
    with PageServer({"/notes.html": page("<html><body><main><p>Registry notes: port 4040.</p></main>"
                                         "</body></html>")}) as server:
        allowed = LocalIndex(index, PageFetcher(allow_private=True, timeout_s=60))
        assert "Registry notes: port 4040." in allowed.fetch(server.url("/notes.html")).text
        refusing = LocalIndex(index, PageFetcher(timeout_s=60))
        with pytest.raises(SearchError, match="own network"):
            refusing.fetch(server.url("/notes.html"))
        assert len(server.requests) == 1                                # the refused fetch sent nothing


def test_without_a_base_url_results_carry_file_urls(docs, tmp_path):
    assert build_index(docs, tmp_path / "plain.db") == 3
    hits = LocalIndex(tmp_path / "plain.db", PageFetcher()).search("registry", None, 1)
    assert hits[0].url == (docs / "registry.html").resolve().as_uri()


def test_rebuilding_replaces_the_index(docs, tmp_path):
    out = tmp_path / "again.db"
    build_index(docs, out, BASE)
    (docs / "new.md").write_text("# Gadgets\n\nGadgets are not widgets.\n")
    try:
        assert build_index(docs, out, BASE) == 4
    finally:
        (docs / "new.md").unlink()
    assert LocalIndex(out, PageFetcher()).search("gadgets", None, 8)[0].title == "Gadgets"
    assert not (tmp_path / "again.db.partial").exists()


def test_a_folder_with_nothing_to_index_or_no_folder_fails_with_its_reason(tmp_path):
    done = refengine("index", str(tmp_path), "--out", str(tmp_path / "x.db"))
    assert done.returncode == 1 and "holds no" in done.stderr and not (tmp_path / "x.db").exists()
    done = refengine("index", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.db"))
    assert done.returncode == 1 and "is not a folder" in done.stderr


def test_serve_refuses_a_missing_or_foreign_index_before_starting(tmp_path):
    done = refengine("serve", "--search-index", str(tmp_path / "missing.db"))
    assert done.returncode == 1 and "no search index at" in done.stderr
    (tmp_path / "other.db").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(ValueError, match="not a search index"):
        open_backend(SearchSettings(index=tmp_path / "other.db"))
