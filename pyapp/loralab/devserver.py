"""A static file server for `dist/` with the headers LoRA Lab needs.

PyScript workers that reach `window` need SharedArrayBuffer, which browsers only give to
cross-origin isolated pages: every response carries COOP/COEP (and CORP, so our own
sub-resources pass COEP). Standard library only: `build.py serve` imports it before any
virtual environment exists, and the test rig serves the built site with it.

Hardened for a machine where other local users or pages may send it anything: no directory
listings, a 400 for request paths that are not plain (NUL and other control characters,
undecodable escapes), and connections that go quiet for IDLE_TIMEOUT seconds are closed.

    python -m loralab.devserver [--root dist] [--host 127.0.0.1] [--port 8000]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import sys
import threading
import urllib.parse
from pathlib import Path

IDLE_TIMEOUT = 30  # seconds a connection may stay silent

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
    timeout = IDLE_TIMEOUT  # socket timeout: a silent client is dropped, not waited on forever

    def send_head(self):
        try:
            path = urllib.parse.unquote(self.path.split("?", 1)[0].split("#", 1)[0], errors="strict")
        except UnicodeDecodeError:
            path = "\x00"
        if any(ord(ch) < 32 or ch == "\x7f" for ch in path):
            self.send_error(400, "Bad request path")
            return None
        return super().send_head()

    def list_directory(self, path):
        self.send_error(404, "Not found")  # no listings: only the site's files are served
        return None

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
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):  # the client went away or went quiet
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loralab.devserver", description="Serve a built LoRA Lab site "
                                     "with the cross-origin isolation headers it needs.")
    parser.add_argument("--root", default="dist", help="the folder to serve (default: dist)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    root = Path(args.root)
    if not (root / "index.html").is_file():
        print(f"loralab.devserver: {root}/index.html is missing; run `python3 build.py build` first", file=sys.stderr)
        return 2
    server = make_server(root, args.host, args.port)
    print(f"serving {root} at http://{args.host}:{server.server_port}/ (Ctrl+C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
