"""The browser cache panel: models and datasets kept between visits, their size limit."""

from __future__ import annotations

from pyodide.ffi import create_proxy  # type: ignore[import-not-found]
from pyscript import document, window  # type: ignore[import-not-found]

from . import client, dataset, model, onnx
from .page import el, mib, show_error, state


async def keep_storage() -> None:
    """Ask once for persistent storage, so the browser does not clear cached models under pressure."""
    storage = window.navigator.storage
    if state.get("persist_asked") or not hasattr(storage, "persist"):
        return
    state["persist_asked"] = True
    if not await storage.persisted():
        await storage.persist()


async def render_cache() -> None:
    """The cache panel from the engine's list. Renders can overlap (a load's tail, a limit change):
    only the one started last writes, so an older list never paints over a newer one."""
    state["cache_render"] = mine = state.get("cache_render", 0) + 1
    result = await client.call("cache_list", background=True)
    if not result or state["cache_render"] != mine:
        return
    storage = window.navigator.storage
    if hasattr(storage, "estimate"):
        estimate = await storage.estimate()
        usage, quota = int(estimate.usage), int(estimate.quota)
        node = el("storage-usage")
        node.textContent = f"This site uses {mib(usage)} of the {mib(quota)} the browser allows it."
        node.dataset.usage, node.dataset.quota = str(usage), str(quota)
    if hasattr(storage, "persisted"):
        persisted = bool(await storage.persisted())
        el("storage-persist").textContent = ("Storage is persistent." if persisted else
                                             "Storage is not persistent: the browser may clear it when space runs low.")
    if state["cache_render"] != mine:
        return
    limit = el("cache-limit")
    if document.activeElement != limit:
        limit.value = shown = f"{result['limit'] / 2**20:.2f}".rstrip("0").rstrip(".")
        limit.setAttribute("data-shown", shown)
    body = el("cache-list").querySelector("tbody")
    body.replaceChildren()
    for proxy in state.pop("cache_proxies", []):  # the old rows' handlers go with the rows
        proxy.destroy()
    state["cache_proxies"] = []
    import time

    for item in result["items"]:
        row = document.createElement("tr")
        row.dataset.testid = "cache-item"
        row.setAttribute("data-testid", "cache-item")
        row.dataset.id, row.dataset.kind, row.dataset.bytes = item["id"], item["kind"], str(item["bytes"])
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(item.get("last_used", 0)))
        for text in (item["name"], item["kind"], mib(item["bytes"]), when):
            cell = document.createElement("td")
            cell.textContent = text
            row.append(cell)
        actions = document.createElement("td")
        for label, testid, handler in (("Load" if item["kind"] in ("model", "onnx") else "Use", "cache-use", use_cached),
                                       ("Delete", "cache-delete", delete_cached)):
            button = document.createElement("button")
            button.type = "button"
            button.textContent = label
            button.setAttribute("data-testid", testid)
            proxy = create_proxy(handler(item))
            state["cache_proxies"].append(proxy)
            button.addEventListener("click", proxy)
            actions.append(button)
        row.append(actions)
        body.append(row)


def use_cached(item: dict):
    async def handler(event) -> None:
        if state.get("mode") == "onnx":  # no WebGPU: models chat through ONNX Runtime Web
            if item["kind"] in ("model", "onnx"):
                await onnx.load_cached(item)
            return
        if item["kind"] == "onnx":
            show_error(f"{item['name']} is an ONNX model: it runs where WebGPU is missing; load a model to train")
        elif item["kind"] == "model":
            await model.load_model({"kind": "cached", "id": item["id"]}, item["name"])
        else:
            result = await client.call("cache_dataset", {"id": item["id"]})
            if result:
                await dataset.use_dataset(result["name"], result["text"])

    return handler


def delete_cached(item: dict):
    async def handler(event) -> None:
        if await client.call("cache_delete", {"id": item["id"]}):
            await render_cache()

    return handler


async def on_cache_limit(event) -> None:
    """A limit typed in MiB. The field shows the limit rounded, so a change event on an unedited
    field (a blur after a refresh rewrote it) must not set the rounded value in its place."""
    limit = el("cache-limit")
    if limit.value == limit.getAttribute("data-shown"):
        return
    await client.call("cache_set_limit", {"bytes": int(float(limit.value or 0) * 2**20)})
    await render_cache()
