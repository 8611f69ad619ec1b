"""The training panel: start, pause, resume and stop; live loss chart, step, tokens/s, ETA; the metrics download."""

from __future__ import annotations

import json

from pyscript import document, window  # type: ignore[import-not-found]

from . import checkpoints, client, hardware, plan
from .chart import chart_spec, describe
from .page import download, el, refresh_status, show_error, show_progress, state


def draw_chart() -> None:
    """The chart (uPlot through static/chart.js) from this run's records and the overlaid runs."""
    overlays = list(state.get("overlays", {}).values())
    node = el("loss-chart")
    samples = state.get("samples", [])
    spec = chart_spec(state["records"], overlays, bool(el("chart-log").checked),
                      180 if window.innerWidth < 600 else 240, samples)
    node.setAttribute("aria-label", describe(state["records"], overlays, samples))
    node.dataset.series = json.dumps({s["label"]: sum(v is not None for v in s["data"]) for s in spec["series"]})
    window.loralabChart.draw(node, json.dumps(spec))


def add_sample(record: dict) -> None:
    """A sample generation at an evaluation point: the latest beside the chart, all listed under it
    and marked on it (hovering the mark reads the answer)."""
    state.setdefault("samples", []).append({"step": record["step"], "text": record["text"]})
    el("train-sample").textContent = f"Step {record['step']}, {record['prompt']!r} → {record['text']}"
    item = document.createElement("li")
    item.dataset.step = str(record["step"])
    step = document.createElement("strong")
    step.textContent = f"step {record['step']}: "
    item.append(step, document.createTextNode(record["text"]))
    el("train-samples").append(item)
    el("train-samples").hidden = False
    draw_chart()


def on_report(text: str) -> None:
    """Progress from the engine (called from the worker, so it must return quickly)."""
    import asyncio

    record = json.loads(text)
    if record["kind"] == "progress":
        show_progress(record["what"], record["fraction"], record.get("detail"), bool(record.get("cancellable")))
        return
    if record["kind"] == "token":
        el(f"gen-output-{record['which']}").textContent = record["text"]
        n = record.get("tokens", 0)
        el(f"gen-tokens-{record['which']}").textContent = f"{n} token{'s' if n != 1 else ''}"
        return
    if record["kind"] == "sample":
        add_sample(record)
        return
    if record["kind"] == "run_kept":
        from . import runs

        if record.get("error"):
            el("checkpoint-status").textContent = record["error"]
        asyncio.ensure_future(runs.render_runs())
        return
    if record["kind"] == "checkpoint":
        el("checkpoint-status").textContent = (f"Not saved: {record['error']}" if record.get("error") else
                                               f"Saved at step {record['step']}")
        el("checkpoint-status").dataset.step = str(record["step"])
        return
    if record["kind"] in ("train", "state") and (record.get("step") or 0) > 0:
        state["adapter"] = True  # (a run that took a step has an adapter to export)
    if record["kind"] == "state":
        state["train"] = record["state"]
        el("train-state").textContent = record["state"]
        if record.get("error"):
            show_error(f"Training stopped: {record['error']}")
        if record.get("device_lost"):
            asyncio.ensure_future(checkpoints.show_checkpoint("The GPU device was lost. "))
        refresh_status()
        if record["state"] in ("done", "stopped", "error"):
            asyncio.ensure_future(hardware.show_gpu_status())
        if record.get("rank_map"):
            show_rank_map(record["rank_map"])
        return
    state["records"].append(record)
    if record["kind"] == "eval":
        el("train-sample").textContent = f"Validation loss at step {record['step']}: {record['loss']:.4f}"
        draw_chart()
    if record["kind"] == "train":
        el("train-step").textContent = f"{record['step']} / {record['total_steps']}"
        el("train-loss").textContent = f"{record['loss']:.4f}"
        el("train-speed").textContent = f"{record['tokens_per_s']:,.0f} tokens/s"
        if record.get("rank") is not None:
            el("train-rank").textContent = str(record["rank"])
        per_step = record["tokens"] / max(1, record["step"])
        remaining = (record["total_steps"] - record["step"]) * per_step / max(record["tokens_per_s"], 1e-9)
        el("train-eta").textContent = f"{remaining:,.0f} s"
        el("train-lr").textContent = f"{record['lr']:.3g}"
        el("train-grad-norm").textContent = f"{record['grad_norm']:.3g}"
        elapsed = window.performance.now() / 1000 - state.get("started_at", 0)
        el("train-elapsed").textContent = f"{elapsed:,.0f} s"
        draw_chart()


def show_rank_map(ranks: dict[str, int]) -> None:
    """An adaptive run's ranks per layer and module as a heatmap table (darker: more rank kept)."""
    import re

    cells: dict[int, dict[str, int]] = {}
    for name, k in ranks.items():
        m = re.search(r"\.(\d+)\.(?:self_attn\.|mlp\.)?(.+)$", name)
        if m:
            cells.setdefault(int(m.group(1)), {})[m.group(2)] = int(k)
    modules = list(dict.fromkeys(module for row in cells.values() for module in row))
    top = max([1, *ranks.values()])
    figure = el("rank-map")
    figure.innerHTML = ""
    caption = document.createElement("figcaption")
    caption.textContent = (f"Ranks AdaLoRA kept per layer and module: {sum(ranks.values())} singular values "
                           f"in all, {sum(ranks.values()) / max(1, len(ranks)):.2f} per module on average")
    table = document.createElement("table")
    head = table.createTHead().insertRow()
    for text in ["layer", *modules]:
        th = document.createElement("th")
        th.scope, th.textContent = "col", text
        head.append(th)
    body = table.createTBody()
    for layer in sorted(cells):
        row = body.insertRow()
        th = document.createElement("th")
        th.scope, th.textContent = "row", str(layer)
        row.append(th)
        for module in modules:
            k = cells[layer].get(module)
            cell = row.insertCell()
            cell.textContent = "" if k is None else str(k)
            if k is not None:
                light = 96 - int(56 * k / top)
                cell.style.background = f"hsl(210 70% {light}%)"
                cell.style.color = "#fff" if light < 62 else "#111"
                cell.title = f"layer {layer} {module}: rank {k}"
    figure.append(caption, table)
    figure.hidden = False


async def on_train_start(event) -> None:
    train, lora = plan.read_plan()
    if train is None:
        return
    state["records"], state["samples"] = [], []
    el("rank-map").hidden = True
    el("train-samples").replaceChildren()
    el("train-samples").hidden = True
    state["started_at"] = window.performance.now() / 1000
    el("train-step").textContent = "0"
    payload = plan.plan_payload(train, lora)
    prompt = el("gen-prompt").value.strip()
    if prompt:  # sample generations at evaluation points use the compare box's prompt
        payload["sample_prompt"] = prompt
    payload["save_every"] = max(0, int(float(el("checkpoint-every").value or 0)))
    result = await client.call("train_start", payload)
    if result:
        state["total"] = result["total_steps"]
        el("train-step").textContent = f"0 / {result['total_steps']}"
        el("checkpoint-offer").hidden = True  # this run replaces the saved one
        el("checkpoint-status").textContent = ""
        el("checkpoint-status").removeAttribute("data-step")
    refresh_status()


async def on_control(action: str) -> None:
    await client.call(f"train_{action}")
    refresh_status()


def control_handler(action: str):
    async def handler(event) -> None:
        await on_control(action)

    return handler


def download_metrics(event) -> None:
    lines = "".join(json.dumps(r) + "\n" for r in state["records"] if r.get("kind") in ("train", "eval"))
    download("loralab-metrics.jsonl", [lines], "application/x-ndjson")
