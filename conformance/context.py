"""The state of one suite run: the client, the model under test, and every exchange so far.

Identical deterministic requests are answered from a per-run cache, because several checks look at the
same response from different angles and the server under test may need seconds per request. A check that
needs a fresh answer (ids, seeds, determinism) asks for one with `fresh=True`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .client import Client, Exchange, TransportError

DEFAULT_PROMPT = "Count from 1 to 50, separated by commas."
DEFAULT_MAX_TOKENS = 12
# Keys under which servers advertise the context length in their model objects.
CONTEXT_LENGTH_KEYS = ("context_length", "max_model_len", "context_window", "max_context_length", "n_ctx")


@dataclass
class Context:
    client: Client
    model: str
    context_length: int | None = None          # tokens; None when the server does not say
    exchanges: list[Exchange] = field(default_factory=list)
    cache: dict[str, Exchange] = field(default_factory=dict)
    memo: dict[tuple, Any] = field(default_factory=dict)   # derived facts, e.g. schema verdicts per body

    # -- raw access -------------------------------------------------------------------------------
    def send(self, method: str, path: str, body: Any = None, *, fresh: bool = False, **kwargs) -> Exchange:
        """One request, recorded; repeated identical requests are served from the cache unless `fresh`."""
        key = json.dumps([method, path, body, sorted(kwargs.items(), key=str)], sort_keys=True, default=str)
        if not fresh and key in self.cache:
            return self.cache[key]
        exchange = self.client.request(method, path, body, **kwargs)
        self.exchanges.append(exchange)
        self.cache[key] = exchange
        return exchange

    # -- the usual requests -----------------------------------------------------------------------
    def chat_body(self, prompt: str = DEFAULT_PROMPT, **fields) -> dict:
        """A chat request for the model under test: greedy, short, with `fields` overriding."""
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                "temperature": 0, "max_tokens": DEFAULT_MAX_TOKENS}
        body.update(fields)
        return {key: value for key, value in body.items() if value is not None}

    def chat(self, prompt: str = DEFAULT_PROMPT, *, fresh: bool = False, **fields) -> Exchange:
        return self.send("POST", "chat/completions", self.chat_body(prompt, **fields), fresh=fresh)

    def chat_raw(self, body: Any, *, fresh: bool = False) -> Exchange:
        return self.send("POST", "chat/completions", body, fresh=fresh)

    def models(self) -> Exchange:
        return self.send("GET", "models")


def discover_model(client: Client) -> tuple[str | None, int | None]:
    """The first model id `/models` lists and its advertised context length, when there is one."""
    try:
        listing = client.get("models")
    except TransportError:
        return None, None
    data = listing.json.get("data") if listing.is_json and isinstance(listing.json, dict) else None
    if not data or not isinstance(data[0], dict):
        return None, None
    return data[0].get("id"), context_length_of(data[0])


def context_length_of(model_object: dict) -> int | None:
    candidates = [model_object.get(key) for key in CONTEXT_LENGTH_KEYS]
    meta = model_object.get("meta")
    if isinstance(meta, dict):
        candidates += [meta.get("n_ctx_train"), meta.get("n_ctx")]
    return next((int(value) for value in candidates if isinstance(value, int) and value > 0), None)
