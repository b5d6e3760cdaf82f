"""GET /ui: the chat page and trace inspector (static files in web/static/, no build step, nothing fetched
from outside this server). The page asks the API with the key its user types in, so the files themselves
are served without one."""
from __future__ import annotations

from pathlib import Path

import falcon

UI_PREFIX = "/ui"
STATIC = Path(__file__).with_name("static")


def add_ui_routes(app: falcon.App) -> None:
    app.add_static_route(UI_PREFIX, str(STATIC), fallback_filename="index.html")
