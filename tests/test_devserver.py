"""The development server sends the headers cross-origin isolation and wasm need."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request

import pytest


@pytest.mark.parametrize(
    "path, mime",
    [
        ("index.html", "text/html"),
        ("pyodide/pyodide.asm.wasm", "application/wasm"),
        ("pyodide/pyodide.mjs", "text/javascript"),
        ("wgsl/matmul.wgsl", "text/plain"),
        ("loralab.zip", "application/zip"),
    ],
)
def test_headers_and_mime_types(site, path, mime):
    with urllib.request.urlopen(site + path) as response:
        headers = response.headers
    assert headers["Content-Type"].startswith(mime)
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    assert headers["Cross-Origin-Resource-Policy"] == "same-origin"


def _raw_request(site: str, request: bytes) -> bytes:
    import socket

    url = urllib.parse.urlparse(site)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("path", [b"/index.html%00", b"/%00", b"/static/%ff%fe", b"/a\x01b"])
def test_paths_that_are_not_plain_get_a_400(site, path):
    reply = _raw_request(site, b"GET " + path + b" HTTP/1.0\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 400"), reply[:80]


def test_no_directory_listings(site):
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(site + "static/")
    assert err.value.code == 404


def test_a_silent_connection_is_closed(tmp_path, monkeypatch):
    import socket
    import time

    from loralab import devserver

    (tmp_path / "index.html").write_text("hi")
    monkeypatch.setattr(devserver.IsolatedHandler, "timeout", 0.5)
    server, base = devserver.serve_in_background(tmp_path)
    try:
        url = urllib.parse.urlparse(base)
        with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
            started = time.monotonic()
            sock.sendall(b"GET / HTTP/1.1\r\n")  # and then nothing more
            assert sock.recv(100) == b""  # the server hangs up on its own
            assert time.monotonic() - started < 5
    finally:
        server.shutdown()


def test_the_module_runs_as_a_program(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "loralab.devserver", "--root", str(tmp_path), "--port", "0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "index.html is missing" in result.stderr


def test_the_module_serves_a_folder(tmp_path):
    import re
    import subprocess
    import sys

    (tmp_path / "index.html").write_text("<p>served</p>")
    proc = subprocess.Popen([sys.executable, "-m", "loralab.devserver", "--root", str(tmp_path), "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        url = re.search(r"http://\S+/", proc.stdout.readline()).group(0)
        with urllib.request.urlopen(url) as response:
            assert response.read() == b"<p>served</p>"
            assert response.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
