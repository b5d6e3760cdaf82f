"""HTML → the page's readable text (Markdown-ish) and its title, with trafilatura.

Why trafilatura rather than html2text: a model reads this within a token budget, so what matters is the
page's main content without its navigation, cookie banners, footers and scripts. trafilatura finds the
main content (with readability / jusText fallbacks) and writes headings, lists, tables and code as
Markdown; html2text converts the whole page, menus included, and is GPL-3.0, which an Apache-2.0 server
should not pull in. trafilatura is Apache-2.0, maintained, and the usual choice of RAG pipelines. Its own
downloader is not used: pages are fetched by fetch.py, under our address rules.
"""
from __future__ import annotations

from trafilatura import extract, extract_metadata
from trafilatura.settings import use_config


def _config():
    """trafilatura's defaults, except that a short main text (under 250 characters by default) is kept:
    otherwise a short documentation page is swapped for the whole page's text, menus included."""
    config = use_config()
    config.set("DEFAULT", "MIN_EXTRACTED_SIZE", "1")
    return config


CONFIG = _config()


def page_text(html: bytes | str, url: str | None = None) -> tuple[str, str]:
    """(title, text) of an HTML page; empty strings for what it does not have."""
    text = extract(html, url=url, output_format="markdown", include_comments=False, include_tables=True,
                   config=CONFIG) or ""
    metadata = extract_metadata(html, default_url=url, extensive=False)     # (extensive: date guessing)
    title = (metadata.title if metadata is not None else None) or ""
    return title.strip(), text.strip()
