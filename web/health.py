"""GET /health: 200 once the model is loaded and the scheduler runs; 503 while it is loading, and 503 again
if the scheduler has stopped (its thread died: no request can be served, so a load balancer should look
elsewhere and a supervisor restart the worker)."""
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
        engine = self.slot.get()
        if not engine.scheduler.alive:
            resp.status = falcon.HTTP_503
            resp.media = {"status": "stopped", "model": engine.model_id}
            return
        resp.media = {"status": "ok", "model": engine.model_id}
