"""What clients expect of any HTTP API, before and after the resources: a request id, and CORS for browsers.

    RequestIds   every answer carries `x-request-id` (the OpenAI SDK shows it as `_request_id`): the client's
                 own `X-Request-Id` when it sent a usable one, else a fresh `req_<hex>`; each answer is logged
                 with it, so a client's report finds the server's log line
    Cors         with `--allowed-origins` ("*" or a list), a browser page from one of those origins may call
                 the API: a preflight (OPTIONS with Access-Control-Request-Method) is answered 204 before the
                 API key is asked for (browsers send none there), and every answer, errors and streams too,
                 names the origin and exposes the headers a client reads. Other origins get no CORS headers,
                 so the browser keeps the page out.
"""
from __future__ import annotations

import logging
import uuid

import falcon

from .body import IGNORED_FIELDS_HEADER

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID = 128
EXPOSED = ", ".join((REQUEST_ID_HEADER, IGNORED_FIELDS_HEADER, "retry-after",
                     "x-refengine-affinity"))          # web/affinity.py: a browser client echoes it too
METHODS = "GET, POST, PUT, DELETE, OPTIONS"
PREFLIGHT_MAX_AGE_S = 600


def usable_request_id(value: str | None) -> bool:
    """A client's id is kept when it is short, printable ASCII (it goes into a header and the log as is)."""
    return bool(value) and len(value) <= MAX_REQUEST_ID and value.isascii() and value.isprintable()


class RequestIds:
    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        given = req.get_header("X-Request-Id")
        req.context.request_id = given if usable_request_id(given) else f"req_{uuid.uuid4().hex}"
        resp.set_header(REQUEST_ID_HEADER, req.context.request_id)

    def process_response(self, req, resp, resource, req_succeeded) -> None:
        logger.info("%s %s %s request id %s", req.method, req.path, resp.status_code,
                    req.context.get("request_id"))


class Cors:
    def __init__(self, allowed_origins: tuple[str, ...]):
        self.any = "*" in allowed_origins
        self.allowed = frozenset(allowed_origins)

    def allows(self, origin: str | None) -> bool:
        return origin is not None and (self.any or origin in self.allowed)

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        """A preflight from an allowed origin is answered here: no route, no API key."""
        if req.method == "OPTIONS" and req.get_header("Access-Control-Request-Method") \
                and self.allows(req.get_header("Origin")):
            resp.status = falcon.HTTP_204
            resp.set_header("Access-Control-Allow-Methods", METHODS)
            asked = req.get_header("Access-Control-Request-Headers")
            resp.set_header("Access-Control-Allow-Headers", asked or "Authorization, Content-Type")
            resp.set_header("Access-Control-Max-Age", str(PREFLIGHT_MAX_AGE_S))
            resp.complete = True

    def process_response(self, req, resp, resource, req_succeeded) -> None:
        origin = req.get_header("Origin")
        if not self.allows(origin):
            return
        resp.set_header("Access-Control-Allow-Origin", "*" if self.any else origin)
        if not self.any:
            resp.append_header("Vary", "Origin")     # the answer depends on who asks
        resp.set_header("Access-Control-Expose-Headers", EXPOSED)
