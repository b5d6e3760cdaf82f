"""Reading request bodies within a size limit, the settings every resource shares, and the header that names
the request fields a response ignored."""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import falcon

from .errors import APIError
from .schema import parse_json_object

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024    # room for a context-filling prompt of any common model
IGNORED_FIELDS_HEADER = "x-refengine-ignored-fields"
MAX_IGNORED_NAMES = 32


@dataclass(frozen=True)
class Settings:
    strict_params: bool = False              # unknown request fields: 400 instead of a log line
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    keepalive_s: float = 15.0                # SSE comment after this long without an event
    allow_special_in_content: bool = False   # special-token strings in messages read as control tokens


def too_large(limit: int) -> APIError:
    return APIError(413, f"The request body exceeds the limit of {limit} bytes.", code="request_too_large")


def tell_ignored(resp: falcon.Response, fields: tuple[str, ...]) -> None:
    """Unknown request fields are ignored (schema.check_fields; a 400 with --strict-params), and the response
    says which: `x-refengine-ignored-fields: a, b`. A name is the client's text, so anything but letters,
    digits and `-_.~` is percent-encoded (no line break or comma reaches the header), and a long list is cut."""
    if fields:
        names = [quote(name, safe="-_.~") for name in fields[:MAX_IGNORED_NAMES]]
        more = [f"... ({len(fields) - MAX_IGNORED_NAMES} more)"] if len(fields) > MAX_IGNORED_NAMES else []
        resp.set_header(IGNORED_FIELDS_HEADER, ", ".join(names + more))


def read_json(req: falcon.Request, limit: int) -> dict:
    """The body as a JSON object; 413 past `limit` bytes, whether or not Content-Length was sent."""
    if req.content_length is not None and req.content_length > limit:
        raise too_large(limit)
    stream = req.bounded_stream if req.content_length is not None else req.stream
    raw = stream.read(limit + 1)
    if len(raw) > limit:
        raise too_large(limit)
    req.context.json_body = parse_json_object(raw)     # for middleware that answers by it (web.affinity)
    return req.context.json_body
