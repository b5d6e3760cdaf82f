"""The OpenAI-compatible WSGI app: routes, error envelopes, API key and body size checks.

    app = create_app(engine)                  # an Engine, or an EngineSlot that is filled once loaded

Routes (one resource module each):
    POST /v1/chat/completions   chat.py          POST /v1/completions   completions.py
    GET  /v1/models[/{id}]      models.py        GET  /health           health.py
    GET  /metrics               metrics.py       POST /tokenize, /detokenize   tokenize.py
    GET  /openapi.json          openapi.py       (the document generated from schema.py's validation schemas)
    POST /v1/responses          responses.py     (GET | DELETE /v1/responses/{id} with an agent runtime's store)
    POST /v1/embeddings         embeddings.py
    with an agent runtime: /v1/sessions[/{id}], /v1/files/{id}/content   sessions.py
                           POST /v1/agent/approvals/{approval_id}        agentic.py
"""
from __future__ import annotations

import hmac

import falcon

from refengine.agent.runtime import AgentRuntime

from .agentic import Approvals
from .body import DEFAULT_MAX_BODY_BYTES, Settings, too_large
from .chat import ChatCompletions
from .completions import Completions
from .embeddings import Embeddings
from .engine import Engine, EngineSlot
from .errors import APIError, handle_unexpected, serialize_error
from .health import Health
from .affinity import Affinity
from .http_layer import Cors, RequestIds
from .metrics import Metrics, MetricsMiddleware, MetricsResource
from .models import ModelItem, ModelList
from .openapi import OpenAPIDocument
from .responses import ResponseItem, Responses
from .sessions import add_session_routes
from .tokenize import Detokenize, Tokenize
from .ui import UI_PREFIX, add_ui_routes

OPEN_PATHS = ("/health",)                    # answered without the API key (probes)


def is_ui_path(path: str) -> bool:
    """The page's static files (web/ui.py): open, as the page asks the API with the key its user gives."""
    return path == UI_PREFIX or path.startswith(UI_PREFIX + "/")
METRICS_PATH = "/metrics"                    # also open with metrics_public (a scraper without the key)


class RequestGate:
    """Before routing: the bearer token (when an API key is set) and the declared body size."""

    def __init__(self, api_key: str | None, max_body_bytes: int, open_paths: tuple[str, ...] = OPEN_PATHS):
        self.api_key, self.max_body_bytes, self.open_paths = api_key, max_body_bytes, open_paths

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if self.api_key is not None and req.path not in self.open_paths and not is_ui_path(req.path):
            self._authorize(req.get_header("Authorization") or "")
        if req.content_length is not None and req.content_length > self.max_body_bytes:
            raise too_large(self.max_body_bytes)

    def _authorize(self, header: str) -> None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
                           code="invalid_api_key")
        if not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")


def create_app(engine: Engine | EngineSlot, *, api_key: str | None = None, strict_params: bool = False,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, keepalive_s: float = 15.0,
               metrics_public: bool = False, allow_special_in_content: bool = False,
               agent: AgentRuntime | None = None, allowed_origins: tuple[str, ...] = ()) -> falcon.App:
    """With `api_key`, every path but /health asks for it; /metrics too unless `metrics_public`. With an
    `agent` runtime, chat runs server-side tools and keeps sessions (agentic.py, sessions.py); without one
    those fields are a 400. Browser pages from `allowed_origins` ("*": any) may call it (http_layer.py)."""
    slot = engine if isinstance(engine, EngineSlot) else EngineSlot(engine)
    settings = Settings(strict_params=strict_params, max_body_bytes=max_body_bytes, keepalive_s=keepalive_s,
                        allow_special_in_content=allow_special_in_content)
    open_paths = OPEN_PATHS + ((METRICS_PATH,) if metrics_public else ())
    metrics = Metrics()
    cors = [Cors(tuple(allowed_origins))] if allowed_origins else []       # before the gate: preflights have no key
    app = falcon.App(middleware=[RequestIds(), Affinity(), *cors, MetricsMiddleware(metrics),
                                 RequestGate(api_key, max_body_bytes, open_paths)])
    app.req_options.strip_url_path_trailing_slash = True
    app.set_error_serializer(serialize_error)
    app.add_error_handler(Exception, handle_unexpected)
    app.add_route("/v1/chat/completions", ChatCompletions(slot, metrics, settings, agent))
    app.add_route("/v1/completions", Completions(slot, metrics, settings))
    app.add_route("/v1/embeddings", Embeddings(slot, metrics, settings))
    app.add_route("/v1/models", ModelList(slot))
    app.add_route("/v1/models/{model_id:path}", ModelItem(slot))
    app.add_route("/health", Health(slot))
    app.add_route(METRICS_PATH, MetricsResource(slot, metrics))
    app.add_route("/tokenize", Tokenize(slot, settings))
    app.add_route("/detokenize", Detokenize(slot, settings))
    app.add_route("/openapi.json", OpenAPIDocument(agent=agent is not None))
    add_ui_routes(app)
    app.add_route("/v1/responses", Responses(slot, metrics, settings, agent.responses if agent else None))
    if agent is not None:
        app.add_route("/v1/responses/{response_id}", ResponseItem(agent.responses))
        add_session_routes(app, agent.sessions, agent.files, settings)
        app.add_route("/v1/agent/approvals/{approval_id}", Approvals(agent, settings))
    return app
