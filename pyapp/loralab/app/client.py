"""The page's client of the engine worker: one call per command (loralab.browser.worker.call,
JSON in and out); errors go to the error area."""

from __future__ import annotations

import json

from pyodide.ffi import create_proxy  # type: ignore[import-not-found]
from pyscript import window  # type: ignore[import-not-found]

from .page import el, hide_progress, set_status, show_error, show_notice, state


async def call(name: str, payload: dict | str = "{}", background: bool = False) -> dict | None:
    """One worker call; errors go to the error area and return None. A person's action that
    succeeds clears the last error; a background refresh leaves it for them to read."""
    text = payload if isinstance(payload, str) else json.dumps(payload)
    result = json.loads(await state["engine"].call(name, text))
    if not result["ok"]:
        if result.get("cancelled"):  # the person's own Cancel: a notice, not an error
            hide_progress()
            show_error(None)
            show_notice(f"Cancelled ({result['error'].removesuffix(': cancelled')}).")
            return None
        show_error(result["error"])
        return None
    if not background:
        show_error(None)
        show_notice(None)
    return result


async def busy_call(status: str, name: str, payload: dict | str = "{}") -> dict | None:
    """A worker call that the status line reports while it runs ("ready" waits for it)."""
    state["busy"] = True
    set_status(status)
    try:
        return await call(name, payload)
    finally:
        state["busy"] = False
        hide_progress()  # (a task that failed part way leaves no bar standing)


def expose_engine(engine) -> None:
    """window.loralabEngine(name, json) -> Promise<json>: the worker protocol, for scripts and tests."""

    async def call_engine(name: str, payload: str = "{}") -> str:
        return await engine.call(name, payload)

    proxy = create_proxy(call_engine)
    state["proxies"].append(proxy)
    window.loralabEngine = proxy


async def on_cancel(event) -> None:
    """The progress bar's Cancel: the engine stops the operation (a load keeps the model it had
    when its files were still arriving)."""
    el("progress-cancel").disabled = True
    try:
        await call("cancel", background=True)
    finally:
        el("progress-cancel").disabled = False

