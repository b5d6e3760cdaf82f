"""A minimal HTTP client that records every exchange as evidence.

Standard library only, so the suite sees the raw bytes of an event stream (framing, comments, what follows
`[DONE]`) that an SDK would smooth over. One connection per request: servers under test are often
single-threaded and we never want a half-read stream to poison the next check.
"""
from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .check import Evidence
from .sse import SseStream, parse_sse

MAX_BODY_BYTES = 16 * 1024 * 1024
EVIDENCE_STRING_LIMIT = 600           # long prompts are shortened in reports
NOT_JSON = object()                   # marker: the body did not parse as JSON


class TransportError(Exception):
    """No HTTP response: connection refused, reset, or timed out."""


@dataclass(frozen=True)
class Exchange:
    """One HTTP request and what came back."""
    method: str
    url: str
    body: Any                          # the JSON body sent, or the raw text when it was not JSON
    status: int
    headers: dict[str, str]            # lower-case names
    text: str                          # the response body as text
    stream: SseStream | None = None    # parsed event stream when the response was `text/event-stream`
    json: Any = field(default=NOT_JSON, compare=False)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    @property
    def is_json(self) -> bool:
        return self.json is not NOT_JSON

    @property
    def data_events(self) -> list[str]:
        """The `data` of every event, `[DONE]` included."""
        return [event.data for event in self.stream.events] if self.stream else []

    @property
    def chunks(self) -> list[Any]:
        """Parsed JSON of every stream event except `[DONE]`; unparseable data is skipped here."""
        parsed = []
        for data in self.data_events:
            if data.strip() == "[DONE]":
                continue
            try:
                parsed.append(json.loads(data))
            except ValueError:
                continue
        return parsed

    def evidence(self, excerpt: Any = NOT_JSON, note: str = "") -> Evidence:
        """Evidence naming this request; the excerpt defaults to the whole response body."""
        if excerpt is NOT_JSON:
            excerpt = (self.json if self.is_json else
                       self.data_events if self.stream else self.text)
        request = {"method": self.method, "url": self.url, "body": shorten(self.body)}
        return Evidence(request, self.status, shorten(excerpt), note)


def shorten(value: Any, limit: int = EVIDENCE_STRING_LIMIT) -> Any:
    """Copy of `value` with long strings and lists cut, so evidence stays readable."""
    if isinstance(value, str):
        return value if len(value) <= limit else f"{value[:limit]}… [{len(value) - limit} more chars]"
    if isinstance(value, list):
        kept = [shorten(item, limit) for item in value[:50]]
        return kept + [f"… [{len(value) - 50} more items]"] if len(value) > 50 else kept
    if isinstance(value, dict):
        return {key: shorten(item, limit) for key, item in value.items()}
    return value


@dataclass(frozen=True)
class Client:
    base_url: str                      # e.g. "http://127.0.0.1:8000/v1"
    api_key: str | None = None
    timeout: float = 120.0             # seconds per socket operation

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + "/" + path.lstrip("/")

    def get(self, path: str, **kwargs) -> Exchange:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any, **kwargs) -> Exchange:
        return self.request("POST", path, body, **kwargs)

    def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                headers: dict[str, str] | None = None, api_key: str | None = None) -> Exchange:
        """Send one request. `raw` sends bytes verbatim (for malformed JSON); else `body` as JSON."""
        url = self.url(path)
        parts = urlsplit(url)
        payload = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        sent_headers = {"Accept": "application/json, text/event-stream", "Connection": "close"}
        if payload is not None:
            sent_headers["Content-Type"] = "application/json"
        key = api_key if api_key is not None else self.api_key
        if key:
            sent_headers["Authorization"] = f"Bearer {key}"
        sent_headers.update(headers or {})
        connection_class = (http.client.HTTPSConnection if parts.scheme == "https"
                            else http.client.HTTPConnection)
        connection = connection_class(parts.hostname, parts.port, timeout=self.timeout)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            connection.request(method, target, body=payload, headers=sent_headers)
            response = connection.getresponse()
            data = response.read(MAX_BODY_BYTES)
            status = response.status
            response_headers = {name.lower(): value for name, value in response.getheaders()}
        except (OSError, http.client.HTTPException, socket.timeout) as exc:
            raise TransportError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        finally:
            connection.close()
        sent_body = body if raw is None else raw.decode("utf-8", errors="replace")
        text = data.decode("utf-8", errors="replace")
        content_type = response_headers.get("content-type", "").split(";")[0].strip().lower()
        # A stream mislabelled with another content type is still read as one (a separate check
        # reports the label), so one defect does not hide the others.
        asked_stream = isinstance(body, dict) and body.get("stream") is True and status < 400
        stream = parse_sse(data) if content_type == "text/event-stream" or asked_stream else None
        try:
            parsed = json.loads(text) if stream is None else NOT_JSON
        except ValueError:
            parsed = NOT_JSON
        return Exchange(method, url, sent_body, status, response_headers, text, stream, parsed)
