"""GET /v1/models and /v1/models/{id}: the one loaded model (also reachable as "default")."""
from __future__ import annotations

import falcon

from .engine import Engine, EngineSlot
from .errors import model_not_found

OWNER = "refengine"


def model_object(engine: Engine) -> dict:
    """OpenAI's Model, plus the context length under vLLM's name so clients can size their prompts."""
    return {"id": engine.model_id, "object": "model", "created": engine.created, "owned_by": OWNER,
            "max_model_len": engine.context_length}


class ModelList:
    def __init__(self, slot: EngineSlot):
        self.slot = slot

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"object": "list", "data": [model_object(self.slot.get())]}


class ModelItem:
    def __init__(self, slot: EngineSlot):
        self.slot = slot

    def on_get(self, req: falcon.Request, resp: falcon.Response, model_id: str) -> None:
        engine = self.slot.get()
        if not engine.serves(model_id):
            raise model_not_found(model_id)
        resp.media = model_object(engine)
