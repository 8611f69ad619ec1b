"""The page itself: the DOM hooks (data-testid), the status line and error area, the shared UI
state, what the page remembers between visits, and small renderers the panels share."""

from __future__ import annotations

import json

from pyodide.ffi import create_proxy, to_js  # type: ignore[import-not-found]
from pyscript import document, window  # type: ignore[import-not-found]

STORE = "loralab.ui"


state = {"engine": None, "model": None, "dataset": False, "train": "idle", "records": [], "total": 0,
         "busy": False, "proxies": [], "mode": "webgpu", "onnx": None}


def el(testid: str):
    return document.querySelector(f'[data-testid="{testid}"]')


def set_status(text: str, kind: str = "busy") -> None:
    node = el("status")
    node.textContent = text
    node.dataset.state = kind


def show_error(message: str | None) -> None:
    node = el("error")
    node.textContent = message or ""
    node.hidden = not message


def show_notice(message: str | None) -> None:
    """A line about what the person did (a cancelled load), beside the error area."""
    node = el("notice")
    node.textContent = message or ""
    node.hidden = not message


def start_blocker() -> str:
    """Why Start cannot be pressed now ("" when it can), for its tooltip and the hint beside it."""
    if state["model"] is None:
        return "Load a model first (the picker at the top, or drop its files on the page)."
    if not state["dataset"]:
        return "Add a dataset first: choose a file or paste JSONL in the Dataset panel."
    if state["train"] in ("running", "paused"):
        return "A run is going: pause or stop it first."
    if state["busy"]:
        return "Wait for the current task to finish."
    return ""


def refresh_status() -> None:
    """"ready" exactly when training can start: engine up, a model loaded, nothing running. While
    a task runs (busy) the status line is its own and the actions that would collide wait."""
    busy, going = state["busy"], state["train"] in ("running", "paused")
    if state.get("mode") == "onnx":  # no WebGPU: only chat through ONNX Runtime Web
        loaded = state.get("onnx")
        if not busy:
            set_status(f"Chat only (no WebGPU): {loaded}" if loaded else "Chat only (no WebGPU): choose a model", "idle")
        el("gen-run").disabled = busy or not loaded
        el("gen-stop").disabled = not state.get("answering")
        return
    if not busy:
        if state["model"] is None:
            set_status("No model loaded", "idle")
        elif going:
            set_status(f"Training ({state['train']})", "busy")
        else:
            set_status("ready", "ready")
    model, adapter = state["model"] is not None, bool(state.get("adapter"))
    blocker = start_blocker()
    for testid, enabled in (("train-start", not blocker),
                            ("train-pause", state["train"] == "running"),
                            ("train-resume", state["train"] == "paused"),
                            ("train-stop", going),
                            ("gen-run", model and not going and not busy),
                            ("gen-stop", bool(state.get("answering"))),
                            ("eval-run", model and state["dataset"] and not going and not busy),
                            ("checkpoint-resume", model and not going and not busy),
                            ("plan-weights", model and not going and not busy),
                            ("export-adapter", adapter and not busy),
                            ("export-gguf", adapter and not busy),
                            ("export-merged", adapter and not going and not busy),
                            ("export-onnx", model and not going and not busy),
                            ("export-recipe", model and state["dataset"] and not busy),
                            ("metrics-download", bool(state["records"]) or state["train"] != "idle")):
        el(testid).disabled = not enabled
    el("train-start").title = blocker or "Start training with this plan"
    hint = el("train-hint")
    if hint is not None:
        hint.textContent = "" if not blocker or going else blocker
    refresh_steps()


STEPS = (  # the guided flow: (step, done when, what to do while it is the current one)
    ("model", lambda: state["model"] is not None,
     "Load a model: the built-in one, your files (a Hugging Face folder or a .gguf) or a Hugging Face repo id."),
    ("data", lambda: bool(state["dataset"]),
     "Add a dataset: choose a file, paste JSONL, or drop it on the page."),
    ("plan", lambda: bool(state.get("plan_seen")) or state["train"] != "idle" or bool(state.get("adapter")),
     "Check the plan: pick a preset or edit the fields; it says how long and how much GPU memory."),
    ("train", lambda: bool(state.get("adapter")),
     "Press Start and watch the loss fall."),
    ("try", lambda: bool(state.get("tried")),
     "Ask the base model and base + adapter the same question, then download the adapter."),
)


def refresh_steps() -> None:
    """The step bar: each step done, current (the first not done) or to do, and what to do next."""
    current = None
    for name, done, _ in STEPS:
        item = document.querySelector(f'.steps li[data-step="{name}"]')
        if item is None:
            return
        finished = done()
        item.dataset.state = "done" if finished else ("current" if current is None else "todo")
        link = item.querySelector("a")
        link.querySelector(".step-state").textContent = {"done": " (done)", "current": " (current step)"}.get(
            item.dataset.state, "")
        if not finished and current is None:
            current = name
            link.setAttribute("aria-current", "step")
        else:
            link.removeAttribute("aria-current")
    todo = {name: text for name, _, text in STEPS}
    el("step-next").textContent = (f"Next: {todo[current]}" if current else
                                   "All steps done: train again with another plan, or compare runs below.")
    el("steps").dataset.current = current or "done"


def on(testid: str, event: str, handler) -> None:
    proxy = create_proxy(handler)
    state["proxies"].append(proxy)
    el(testid).addEventListener(event, proxy)


def saved() -> dict:
    try:
        return json.loads(window.localStorage.getItem(STORE) or "{}")
    except Exception:
        return {}


def save(**values) -> None:
    window.localStorage.setItem(STORE, json.dumps({**saved(), **values}))


def mib(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n / 1024:,.0f} KiB"


def rate(gflops: float | None) -> str:
    if not gflops:  # (never "0 GFLOP/s": nothing was measured)
        return "not measured"
    return f"{gflops:,.0f} GFLOP/s" if gflops >= 100 else f"{gflops:.3g} GFLOP/s"


def render_rows(testid: str, rows: list[tuple[str, str]]) -> None:
    dl = el(testid)
    dl.replaceChildren()
    for name, value in rows:
        dt, dd = document.createElement("dt"), document.createElement("dd")
        dt.textContent, dd.textContent = name, value
        dl.append(dt, dd)


def download(name: str, parts, kind: str) -> None:
    blob = window.Blob.new(to_js(parts), to_js({"type": kind}, dict_converter=window.Object.fromEntries))
    link = document.createElement("a")
    link.href = window.URL.createObjectURL(blob)
    link.download = name
    link.click()


def show_progress(what: str, fraction: float, detail: str | None = None, cancellable: bool = False) -> None:
    """The header's progress bar (testid progress, data-progress 0…1) for a long operation the
    engine reports: what it is, how far (with `detail`: the bytes of a download), and the time
    left at the pace so far; hidden at the end. Cancel (progress-cancel) shows while the
    operation can be cancelled."""
    node = el("progress")
    now = window.performance.now() / 1000
    if node.hidden or state.get("progress_what") != what or fraction < float(node.dataset.progress or 0):
        state["progress_what"], state["progress_start"] = what, (now, fraction)
    start, at = state["progress_start"]
    left = ""
    if 0.02 < fraction < 1 and fraction > at and now > start:
        left = f", about {max(1, round((now - start) / (fraction - at) * (1 - fraction))):,} s left"
    node.dataset.progress = f"{fraction:.4f}"
    node.setAttribute("aria-valuenow", str(round(100 * fraction)))
    node.querySelector(".progress-bar span").style.width = f"{100 * fraction:.1f}%"
    node.querySelector(".progress-text").textContent = (f"{what}: {100 * fraction:.0f}%"
                                                        + (f" ({detail})" if detail else "") + left)
    node.hidden = fraction >= 1
    el("progress-cancel").hidden = node.hidden or not cancellable


def hide_progress() -> None:
    el("progress").hidden = el("progress-cancel").hidden = True
