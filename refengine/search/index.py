"""`refengine index DIR --out INDEX.db`: a folder of .html, .md and .txt files → a SQLite FTS5 index that
the `local` search backend serves (local.py). Offline search over a self-hoster's own documents, with
nothing to install beyond Python's own sqlite3.

    count = build_index(Path("docs"), Path("docs.db"), base_url="https://docs.example.com/")

Each file becomes one document: its URL (`base_url` + its path under DIR, so results carry the URLs the
documents are published at; without a base URL its file:// URI), a title (an HTML page's, a Markdown file's
first heading, else the file name) and its text (HTML through the same extraction as fetched pages). The
documents table keeps the text, which `extract_page` answers from without any network; an FTS5 table over
title and body (Porter stemming, diacritics folded) ranks matches with bm25. Hidden files and folders are
skipped. The file is written beside `out` and moved into place at the end, so a server reading the old
index never sees a half-built one.
"""
from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, urljoin

from .extract import page_text

FORMAT_VERSION = "1"
KINDS = {".html": "html", ".htm": "html", ".md": "markdown", ".markdown": "markdown", ".txt": "text"}

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE documents (
    id INTEGER PRIMARY KEY,
    url TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL,                -- relative to the indexed folder
    title TEXT NOT NULL,
    body TEXT NOT NULL                 -- the readable text, as extract_page returns it
);
CREATE VIRTUAL TABLE pages USING fts5(title, body, content='documents', content_rowid='id',
                                      tokenize='porter unicode61 remove_diacritics 2');
"""


@dataclass(frozen=True)
class Document:
    url: str
    path: str
    title: str
    body: str


def build_index(folder: Path, out: Path, base_url: str | None = None) -> int:
    """Index every .html / .md / .txt file under `folder` into `out` (replaced); the number indexed.
    ValueError when `folder` is not a folder or holds no such file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    partial.unlink(missing_ok=True)
    count = 0
    with sqlite3.connect(partial) as connection:
        connection.executescript(SCHEMA)
        connection.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                               [("format", FORMAT_VERSION), ("base_url", base_url or "")])
        for document in documents(folder, base_url):
            connection.execute("INSERT INTO documents (url, path, title, body) VALUES (?, ?, ?, ?)",
                               (document.url, document.path, document.title, document.body))
            count += 1
        connection.execute("INSERT INTO pages (pages) VALUES ('rebuild')")     # FTS over the documents table
    connection.close()
    if count == 0:
        partial.unlink()
        raise ValueError(f"{folder} holds no {', '.join(sorted(KINDS))} file to index")
    os.replace(partial, out)
    return count


def documents(folder: Path, base_url: str | None) -> Iterator[Document]:
    """The folder's indexable files, in path order (hidden ones skipped), those with no text left out."""
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        kind = KINDS.get(path.suffix.lower())
        if kind is None:
            continue
        document = read_document(path, relative.as_posix(), kind, base_url)
        if document.body:
            yield document


def read_document(path: Path, relative: str, kind: str, base_url: str | None) -> Document:
    raw = path.read_bytes()
    url = urljoin(base_url.rstrip("/") + "/", quote(relative)) if base_url else path.resolve().as_uri()
    if kind == "html":
        title, body = page_text(raw, url)
    else:
        body = raw.decode("utf-8", errors="replace").strip()
        title = first_heading(body) if kind == "markdown" else ""
    return Document(url=url, path=relative, title=title or path.stem, body=body)


def first_heading(markdown: str) -> str:
    """The text of the first ATX heading ("# Title"), or ""."""
    for line in markdown.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            return stripped.lstrip("#").strip()
    return ""
