"""The development server sends the headers cross-origin isolation and wasm need."""

from __future__ import annotations

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
