"""The runs panel: finished runs kept in this browser (plan, metrics, samples, adapter), their
curves overlaid on the chart, and any run's adapter loaded into the compare panel."""

from __future__ import annotations

import time

from pyodide.ffi import create_proxy  # type: ignore[import-not-found]
from pyscript import document  # type: ignore[import-not-found]

from . import client, training
from .page import el, refresh_status, state


def _number(value) -> str:
    return "–" if value is None else f"{value:.4f}"


async def render_runs() -> None:
    """The table from the engine's list (renders can overlap: only the last one started writes)."""
    state["runs_render"] = mine = state.get("runs_render", 0) + 1
    result = await client.call("runs_list", background=True)
    if not result or state["runs_render"] != mine:
        return
    overlays = state.setdefault("overlays", {})
    for gone in set(overlays) - {r["id"] for r in result["runs"]}:
        overlays.pop(gone)
    body = el("runs-list").querySelector("tbody")
    body.replaceChildren()
    for proxy in state.pop("runs_proxies", []):
        proxy.destroy()
    state["runs_proxies"] = []
    el("runs-empty").hidden = bool(result["runs"])
    for run in result["runs"]:
        row = document.createElement("tr")
        row.setAttribute("data-testid", "run-item")
        row.dataset.id = run["id"]
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.get("created_at", 0)))
        for text in (run["name"], run["model"], f"{run['step']} / {run['total_steps']} ({run['state']})",
                     _number(run.get("loss")), _number(run.get("val_loss")), when):
            cell = document.createElement("td")
            cell.textContent = text
            row.append(cell)
        pick = document.createElement("td")
        box = document.createElement("input")
        box.type = "checkbox"
        box.checked = run["id"] in overlays
        box.setAttribute("data-testid", "run-overlay")
        box.setAttribute("aria-label", f"Overlay {run['name']} on the chart")
        _listen(box, "change", toggle_overlay(run))
        pick.append(box)
        actions = document.createElement("td")
        for label, testid, handler in (("Use adapter", "run-use", use_run), ("Delete", "run-delete", delete_run)):
            button = document.createElement("button")
            button.type = "button"
            button.textContent = label
            button.setAttribute("data-testid", testid)
            button.setAttribute("aria-label", f"{label}: {run['name']}")
            _listen(button, "click", handler(run))
            actions.append(button)
        row.append(pick, actions)
        body.append(row)


def _listen(node, event: str, handler) -> None:
    proxy = create_proxy(handler)
    state["runs_proxies"].append(proxy)
    node.addEventListener(event, proxy)


def toggle_overlay(run: dict):
    async def handler(event) -> None:
        overlays = state.setdefault("overlays", {})
        if not event.target.checked:
            overlays.pop(run["id"], None)
        else:
            detail = await client.call("run_detail", {"id": run["id"]})
            if not detail:
                event.target.checked = False
                return
            when = time.strftime("%H:%M", time.localtime(detail.get("created_at", 0)))
            overlays[run["id"]] = {"name": f"{detail['name']} ({when})", "records": detail["records"]}
        training.draw_chart()

    return handler


def use_run(run: dict):
    async def handler(event) -> None:
        result = await client.busy_call(f"Loading the adapter of {run['name']}…", "run_use", {"id": run["id"]})
        if result:
            state["adapter"] = True
            el("adapter-info").textContent = (f"Using the adapter of run {result['name']}: r = {result['r']}, "
                                              f"alpha = {result['alpha']:g}, on {', '.join(result['targets'])}")
        refresh_status()

    return handler


def delete_run(run: dict):
    async def handler(event) -> None:
        if await client.call("run_delete", {"id": run["id"]}):
            state.setdefault("overlays", {}).pop(run["id"], None)
            training.draw_chart()
            await render_runs()

    return handler
