"""The page's Python (PyScript, main thread): starts the engine worker and shows what it found.

It talks to the engine only through the worker protocol (loralab.worker.EXPORTS).
"""

from __future__ import annotations

import json

from pyodide.ffi import create_proxy  # type: ignore[import-not-found]
from pyscript import document, window, workers  # type: ignore[import-not-found]


def _el(testid: str):
    return document.querySelector(f'[data-testid="{testid}"]')


def set_status(text: str, state: str = "busy") -> None:
    el = _el("status")
    el.textContent = text
    el.dataset.state = state


def show_error(message: str) -> None:
    el = _el("error")
    el.textContent = message
    el.hidden = False


def _mib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:,.0f} MiB"


def render_hw_info(adapter: dict, check: dict) -> None:
    limits = adapter["limits"]
    rows = [
        ("Adapter", f"{adapter['vendor'] or '?'} · {adapter['architecture'] or '?'}"),
        ("Device", adapter["device"] or adapter["description"] or "?"),
        ("shader-f16", "yes" if adapter["f16"] else "no"),
        ("subgroups", "yes" if adapter["subgroups"] else "no"),
        ("Max storage binding", _mib(limits.get("maxStorageBufferBindingSize"))),
        ("Max buffer", _mib(limits.get("maxBufferSize"))),
        ("Workgroup storage", f"{(limits.get('maxComputeWorkgroupStorageSize') or 0) // 1024} KiB"),
        ("Invocations / workgroup", str(limits.get("maxComputeInvocationsPerWorkgroup"))),
        (
            "Kernel check",
            "matmul {}×{}·{}ᵀ: {} (max error {:g}, {:.0f} ms)".format(
                check["shape"][0], check["shape"][2], check["shape"][1],
                "verified" if check["ok"] else "WRONG", check["max_abs_error"], check["ms"],
            ),
        ),
    ]
    dl = _el("hw-info")
    dl.replaceChildren()
    for name, value in rows:
        dt = document.createElement("dt")
        dt.textContent = name
        dd = document.createElement("dd")
        dd.textContent = value
        dl.append(dt, dd)
    dl.dataset.vendor = adapter["vendor"]
    dl.dataset.architecture = adapter["architecture"]
    dl.dataset.check = json.dumps({k: check[k] for k in ("ok", "sha256", "max_abs_error", "shape")})


def expose_engine(engine) -> None:
    """window.loralabEngine(name, json) -> Promise<json>: the worker protocol, for scripts and tests."""

    async def call(name: str, payload: str = "{}") -> str:
        return await getattr(engine, name)(payload)

    window.loralabEngine = create_proxy(call)


async def start() -> None:
    set_status("Starting the engine…")
    engine = await workers["engine"]
    expose_engine(engine)
    set_status("Looking for a WebGPU adapter…")
    result = json.loads(await engine.probe(document.baseURI))
    if not result["ok"]:
        set_status("Stopped: " + result["error"].split(". ")[0], "error")
        show_error(result["error"])
        return
    render_hw_info(result["adapter"], result["check"])
    if not result["check"]["ok"]:
        set_status("Stopped: the GPU computed a wrong result", "error")
        show_error(f"The kernel self-check failed on this GPU (max error {result['check']['max_abs_error']}).")
        return
    set_status("ready", "ready")
