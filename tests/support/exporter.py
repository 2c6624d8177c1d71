"""A stand-in Prometheus target for tests: a loopback HTTP server answering GETs with text."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


class TextExporter:
    """Answers `GET path` (any path when `path` is None) with `render(n)`, n being the number of
    earlier scrapes, as Prometheus text. `target` is "127.0.0.1:PORT"; `scrapes` counts GETs."""

    def __init__(self, render: Callable[[int], str], path: str | None = None):
        self.scrapes, self.lock = 0, threading.Lock()
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if path is not None and self.path.split("?")[0] != path:
                    self.send_error(404)
                    return
                with exporter.lock:
                    body = render(exporter.scrapes).encode()
                    exporter.scrapes += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.target = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
