"""OpenAI's `message.annotations` for an answer that used web search: every `[n]` that names a source.

    url_citations("Widgets listen on 4040 [2].", {2: Source(2, "https://…/config.html", "Configuring widgets")})
    → [{"type": "url_citation", "url_citation": {"start_index": 23, "end_index": 26,
                                                   "title": "Configuring widgets", "url": "https://…/config.html"}}]

The model was shown numbered sources and asked to cite them as `[n]` (refengine/agent/search_tool.py); a
mark whose number no source of this request has (`[7]` after five sources, a "[1]" of the user's own text
quoted back) is left alone. Each annotation spans its mark, `[` to `]`, in the message content as the client
receives it (every round's text, as agentic.py sends it), indices in characters (Python string positions,
end exclusive), as OpenAI's are.
"""
from __future__ import annotations

import re
from typing import Mapping

from refengine.agent.search_tool import Source

MARK = re.compile(r"\[(\d{1,4})\]")


def url_citations(content: str | None, sources: Mapping[int, Source]) -> list[dict]:
    annotations = []
    for mark in MARK.finditer(content or ""):
        source = sources.get(int(mark.group(1)))
        if source is not None:
            annotations.append({"type": "url_citation", "url_citation": {
                "start_index": mark.start(), "end_index": mark.end(), "title": source.title, "url": source.url}})
    return annotations
