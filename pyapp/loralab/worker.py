"""The engine worker's side of the page <-> engine protocol.

The page (loralab.app) calls the functions in EXPORTS on the PyScript worker named "engine".
Arguments and results are JSON strings, so nothing depends on how PyScript converts objects
between the two interpreters. Every result is {"ok": true, ...} or {"ok": false, "error": msg}
with a message a person can act on. Runs in Pyodide only (it imports `js`).
"""

from __future__ import annotations

import json
import traceback

import js  # type: ignore[import-not-found]

from .gpu.browser import BrowserDevice
from .gpu.device import GpuError
from .kernels import KernelLibrary, SourceReader
from .selftest import matmul_check

_engine: dict = {}


def fetch_reader(base_url: str) -> SourceReader:
    """Kernel sources fetched from the site's `wgsl/` folder (the worker runs from a blob: URL,
    so the page passes its own absolute URL)."""

    async def read(name: str) -> str:
        url = js.URL.new(f"wgsl/{name}.wgsl", base_url).href
        response = await js.fetch(url)
        if not response.ok:
            raise FileNotFoundError(f"kernel source {url} could not be loaded (HTTP {response.status})")
        return await response.text()

    return read


def _result(fn):
    async def wrapped(*args):
        try:
            return json.dumps({"ok": True, **await fn(*args)})
        except (GpuError, FileNotFoundError) as exc:
            return json.dumps({"ok": False, "error": str(exc)})
        except Exception as exc:  # an engine bug: say so, keep the page alive
            return json.dumps({"ok": False, "error": f"internal error: {exc}", "detail": traceback.format_exc()})

    wrapped.__name__ = fn.__name__
    return wrapped


@_result
async def probe(base_url: str) -> dict:
    """Start the engine: WebGPU adapter and device, then a checked kernel run."""
    if "device" not in _engine:
        device = await BrowserDevice.create()
        _engine["device"] = device
        _engine["kernels"] = KernelLibrary(device, fetch_reader(base_url))
    device = _engine["device"]
    check = await matmul_check(device, _engine["kernels"])
    return {"adapter": device.info.summary(), "check": check}


EXPORTS = {"probe": probe}
