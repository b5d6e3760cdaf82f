"""OpenAI's error envelope, and the Falcon handlers that turn every failure into one.

Every error a client sees is `{"error": {"message", "type", "param", "code"}}` with a status < 500 for
anything the client caused; a bug is a 500 with the same envelope and no traceback (that goes to the log).
"""
from __future__ import annotations

import logging
import uuid

import falcon

from refengine.constrain import ConstraintError
from refengine.request import ContextLengthError, RequestError
from refengine.template import ChatTemplateError
from refengine.tools import ToolRequestError
from refengine.scheduler import QueueFullError, SchedulerStopped

logger = logging.getLogger(__name__)

INVALID_REQUEST = "invalid_request_error"


class APIError(falcon.HTTPError):
    """An error answered with OpenAI's envelope; raise it from anywhere in a request."""

    def __init__(self, status: int, message: str, *, type: str = INVALID_REQUEST, param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(falcon.code_to_http_status(status), headers=headers)
        self.message, self.type, self.param, self.code = message, type, param, code

    def envelope(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def not_supported(param: str) -> APIError:
    return invalid_request(f"'{param}' is not supported by this server.", param, "unsupported_parameter")


def model_not_found(model: str) -> APIError:
    return APIError(404, f"The model `{model}` does not exist or you do not have access to it.",
                    param="model", code="model_not_found")


def context_length_exceeded(message: str, param: str) -> APIError:
    return invalid_request(message, param, "context_length_exceeded")


def queue_full(message: str) -> APIError:
    return APIError(429, f"The server is busy: {message}", type="rate_limit_error", code="rate_limit_exceeded",
                    headers={"Retry-After": "1"})


def engine_loading() -> APIError:
    return APIError(503, "The model is still loading; retry shortly.", type="server_error",
                    code="model_loading", headers={"Retry-After": "5"})


def server_error(message: str = "The server had an error while processing your request.") -> APIError:
    return APIError(500, message, type="server_error")


def engine_unavailable() -> APIError:
    return APIError(503, "The engine is not running; retry shortly.", type="server_error",
                    code="engine_unavailable", headers={"Retry-After": "5"})


def logged_server_error(error: BaseException, what: str) -> APIError:
    """An engine fault: its traceback goes to the log under a fresh id, the client gets only that id."""
    log_id = uuid.uuid4().hex[:16]
    logger.error("%s [log id %s]", what, log_id, exc_info=error)
    return server_error(f"The server had an error while processing your request (log id {log_id}).")


def as_api_error(error: BaseException, params: dict[str, str]) -> APIError:
    """What a client is told about an engine failure: its own mistake (4xx naming the field) or ours
    (500, logged). `params` maps the engine's field names ("prompt", "max_tokens", "n", "logit_bias") to
    this endpoint's parameters ("constraint": the field that asked for the output's constraint); "prompt" is
    required."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, QueueFullError):
        return queue_full(str(error))
    if isinstance(error, SchedulerStopped):
        logger.error("request failed: %s", error)
        return engine_unavailable()
    if isinstance(error, ChatTemplateError):         # a later round's prompt (the agent loop) cannot render
        return invalid_request(f"The messages cannot be rendered for this model: {error}", params.get("prompt"))
    if isinstance(error, ToolRequestError):
        return invalid_request(str(error), error.param)
    if isinstance(error, ConstraintError):           # raised as the automaton grows (e.g. too many states)
        return invalid_request(f"The output constraint cannot be followed: {error.message}",
                               params.get("constraint"))
    if isinstance(error, RequestError):
        param = params.get(error.field, error.field)
        if isinstance(error, ContextLengthError):
            return context_length_exceeded(str(error), param)
        return invalid_request(str(error), param)
    return logged_server_error(error, "generation failed")


# ---- Falcon hooks ----

# Falcon's own errors (unknown route, wrong method, ...) keep their status; these say what they mean.
_FALCON_MESSAGES = {
    404: ("Invalid URL ({method} {path})", "not_found"),
    405: ("Method not allowed ({method} {path})", "method_not_allowed"),
    413: ("Request body too large ({method} {path})", "request_too_large"),
}


def envelope_for(req: falcon.Request, error: falcon.HTTPError) -> dict:
    if isinstance(error, APIError):
        return error.envelope()
    status = error.status_code
    template, code = _FALCON_MESSAGES.get(status, (None, None))
    message = template.format(method=req.method, path=req.path) if template else (
        error.description or error.title or "error")
    kind = INVALID_REQUEST if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def serialize_error(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError) -> None:
    """Every HTTPError, ours or Falcon's, as JSON whatever the client asked for in Accept."""
    resp.content_type = falcon.MEDIA_JSON
    resp.media = envelope_for(req, error)


def handle_unexpected(req: falcon.Request, resp: falcon.Response, error: Exception, params: dict) -> None:
    """A bug: log the traceback, answer a 500 envelope that does not leak it."""
    if isinstance(error, falcon.HTTPError):           # keep Falcon's handling of its own errors
        raise error
    raise logged_server_error(error, f"unhandled error on {req.method} {req.path}")
