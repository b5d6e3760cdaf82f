"""A real HTTP server on 127.0.0.1 for the web-search tests: fixed answers per path, every request recorded.

    with PageServer({"/a.html": page("<html>...</html>"), "/old": redirect("/a.html")}) as server:
        fetcher.page(server.url("/a.html"))
        server.requests                    # [(path, headers)] in arrival order

A route is a function of the request handler that answers it (`page`, `redirect`, `status`, `hang` make the
usual ones). `hang` never answers, until the server stops: what a timeout test needs, with no sleep in it.
"""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

Route = Callable[[BaseHTTPRequestHandler], None]


def page(body: bytes | str, content_type: str = "text/html; charset=utf-8", code: int = 200) -> Route:
    data = body.encode() if isinstance(body, str) else body

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(code)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
    return answer


def redirect(location: str, code: int = 302) -> Route:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(code)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    return answer


def status(code: int) -> Route:
    return page(f"status {code}", "text/plain", code)


class PageServer:
    def __init__(self, routes: dict[str, Route]):
        self.routes = routes
        self.requests: list[tuple[str, dict]] = []
        self.stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append((self.path, dict(self.headers)))
                route = server.routes.get(self.path.split("?", 1)[0])
                (route or status(404))(self)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def hang(self) -> Route:
        """A route that sends nothing until the server stops."""
        def answer(handler: BaseHTTPRequestHandler) -> None:
            self.stopping.wait()
        return answer

    def __enter__(self) -> PageServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
