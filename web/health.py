"""GET /health: 200 once the model is loaded and the scheduler runs, 503 while it is loading."""
from __future__ import annotations

import falcon

from .engine import EngineSlot


class Health:
    def __init__(self, slot: EngineSlot):
        self.slot = slot

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if not self.slot.ready:
            resp.status = falcon.HTTP_503
            resp.set_header("Retry-After", "5")
            resp.media = {"status": "loading"}
            return
        resp.media = {"status": "ok", "model": self.slot.get().model_id}
