"""`x-refengine-affinity`: the key a load balancer hashes on, so a conversation keeps reaching the replica whose
prefix cache holds it (deploy/nginx.conf). Only a cache matters here: any replica sharing the store can serve
any request, so a wrong or missing key costs speed, never correctness.

The server answers the key on every request that has one: the client's own header (kept as sent, so a chain of
Responses keeps the key of its first turn), else the body's `session_id`, else its `previous_response_id`.
A client that echoes the header it was answered keeps its conversation on one replica.
"""
from __future__ import annotations

import falcon

HEADER = "x-refengine-affinity"
MAX_LENGTH = 128
BODY_FIELDS = ("session_id", "previous_response_id")


def affinity_key(req: falcon.Request) -> str | None:
    sent = req.get_header(HEADER)
    if sent:
        return sent[:MAX_LENGTH]
    body = req.context.get("json_body")          # web.body.read_json keeps the parsed body there
    if isinstance(body, dict):
        for field in BODY_FIELDS:
            value = body.get(field)
            if isinstance(value, str) and value and value.isprintable():
                return value[:MAX_LENGTH]
    return None


class Affinity:
    """Falcon middleware: answers the affinity key (headers are sent after this, streams included)."""

    def process_response(self, req, resp, resource, req_succeeded) -> None:
        key = affinity_key(req)
        if key is not None:
            resp.set_header(HEADER, key)
