"""A static file server for `dist/` with the headers LoRA Lab needs.

PyScript workers that reach `window` need SharedArrayBuffer, which browsers only give to
cross-origin isolated pages: every response carries COOP/COEP (and CORP, so our own
sub-resources pass COEP). Standard library only: `build.py serve` imports it before any
virtual environment exists, and the test rig serves the built site with it.
"""

from __future__ import annotations

import functools
import http.server
import sys
import threading
from pathlib import Path

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}

MIME_TYPES = {
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".wgsl": "text/plain; charset=utf-8",
    ".zip": "application/zip",
    ".gguf": "application/octet-stream",
    ".safetensors": "application/octet-stream",
    ".svg": "image/svg+xml",
    ".css": "text/css",
    ".html": "text/html; charset=utf-8",
    ".py": "text/x-python; charset=utf-8",
}


class IsolatedHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **MIME_TYPES}
    quiet = False
    cross_origin = False  # serve files to other origins too, as a model hub does

    def end_headers(self) -> None:
        for name, value in ISOLATION_HEADERS.items():
            if self.cross_origin and name == "Cross-Origin-Resource-Policy":
                value = "cross-origin"
            self.send_header(name, value)
        if self.cross_origin:
            self.send_header("Access-Control-Allow-Origin", "*")
        # A development server: always revalidate so a rebuild is seen on reload.
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:
        if not self.quiet:
            super().log_message(format, *args)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):  # the browser went away mid-response
            return
        super().handle_error(request, client_address)


def make_server(root: Path, host: str = "127.0.0.1", port: int = 8000, quiet: bool = False, cross_origin: bool = False):
    """A threading HTTP server for `root`; port 0 picks a free port (see `server.server_port`)."""
    attrs = {"quiet": quiet, "cross_origin": cross_origin}
    handler = functools.partial(type("Handler", (IsolatedHandler,), attrs), directory=str(root))
    return Server((host, port), handler)


def serve_in_background(root: Path, host: str = "127.0.0.1", port: int = 0, cross_origin: bool = False):
    """Start a quiet server on a thread; returns (server, base_url). Call server.shutdown() to stop."""
    server = make_server(root, host, port, quiet=True, cross_origin=cross_origin)
    threading.Thread(target=server.serve_forever, name="loralab-devserver", daemon=True).start()
    return server, f"http://{host}:{server.server_port}/"
