"""Reading request bodies within a size limit, and the settings every resource shares."""
from __future__ import annotations

from dataclasses import dataclass

import falcon

from .errors import APIError
from .schema import parse_json_object

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024    # room for a context-filling prompt of any common model


@dataclass(frozen=True)
class Settings:
    strict_params: bool = False              # unknown request fields: 400 instead of a log line
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    keepalive_s: float = 15.0                # SSE comment after this long without an event
    allow_special_in_content: bool = False   # special-token strings in messages read as control tokens


def too_large(limit: int) -> APIError:
    return APIError(413, f"The request body exceeds the limit of {limit} bytes.", code="request_too_large")


def read_json(req: falcon.Request, limit: int) -> dict:
    """The body as a JSON object; 413 past `limit` bytes, whether or not Content-Length was sent."""
    if req.content_length is not None and req.content_length > limit:
        raise too_large(limit)
    stream = req.bounded_stream if req.content_length is not None else req.stream
    raw = stream.read(limit + 1)
    if len(raw) > limit:
        raise too_large(limit)
    return parse_json_object(raw)
