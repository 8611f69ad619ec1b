"""The page's Python (PyScript, main thread): the LoRA Lab UI.

It talks to the engine only through the worker protocol (loralab.browser.worker.call: a command name
and JSON in, JSON out); the engine reports training progress through window.loralabOnReport. The plan form is
generated from the TrainConfig and LoraConfig dataclasses, so defaults and validation live there.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, fields

from pyodide.ffi import create_proxy, jsnull, to_js  # type: ignore[import-not-found]
from pyscript import document, window, workers  # type: ignore[import-not-found]

from ..config import (
    CHOICES,
    DATASET_FORMATS,
    NAMED_CONFIG_LABELS,
    PROJECTIONS,
    LoraConfig,
    TrainConfig,
    option_fields,
)
from ..errors import UserError, one_line

STORE = "loralab.ui"
# How the model card names the GPU weight types (ops.QUANT_DTYPES).
WEIGHT_TYPE_NAMES = {"f32": "float32", "f16": "float16", "q8_32": "8-bit (Q8_0, Q5_*)", "q4_32": "4-bit (Q4_*)",
                     "q8_16": "6-bit (Q6_K)", "nf4": "NF4"}
TESTID_NAMES = {"r": "rank"}  # cfg-<name> hooks; LoRA's r is "rank" in the UI
ADVANCED_FIELDS = {"beta1", "beta2", "eps"}  # (set from the CLI; the form keeps the defaults)

state = {"engine": None, "model": None, "dataset": False, "train": "idle", "records": [], "total": 0,
         "busy": False, "proxies": []}


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


def refresh_status() -> None:
    """"ready" exactly when training can start: engine up, a model loaded, nothing running."""
    if state["busy"]:
        return
    if state["model"] is None:
        set_status("No model loaded", "idle")
    elif state["train"] in ("running", "paused"):
        set_status(f"Training ({state['train']})", "busy")
    else:
        set_status("ready", "ready")
    for testid, enabled in (("train-start", state["model"] is not None and state["dataset"]
                             and state["train"] not in ("running", "paused")),
                            ("train-pause", state["train"] == "running"),
                            ("train-resume", state["train"] == "paused"),
                            ("train-stop", state["train"] in ("running", "paused")),
                            ("gen-run", state["model"] is not None and state["train"] not in ("running", "paused")),
                            ("eval-run", state["model"] is not None and state["dataset"]
                             and state["train"] not in ("running", "paused")),
                            ("checkpoint-resume", state["model"] is not None
                             and state["train"] not in ("running", "paused")),
                            ("plan-weights", state["model"] is not None and state["train"] not in ("running", "paused"))):
        el(testid).disabled = not enabled


async def call(name: str, payload: dict | str = "{}", background: bool = False) -> dict | None:
    """One worker call; errors go to the error area and return None. A person's action that
    succeeds clears the last error; a background refresh leaves it for them to read."""
    text = payload if isinstance(payload, str) else json.dumps(payload)
    result = json.loads(await state["engine"].call(name, text))
    if not result["ok"]:
        show_error(result["error"])
        return None
    if not background:
        show_error(None)
    return result


async def busy_call(status: str, name: str, payload: dict | str = "{}") -> dict | None:
    """A worker call that the status line reports while it runs ("ready" waits for it)."""
    state["busy"] = True
    set_status(status)
    try:
        return await call(name, payload)
    finally:
        state["busy"] = False


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


# -- hardware ------------------------------------------------------------------------------------
def _mib(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n / 1024:,.0f} KiB"


def _rate(gflops: float) -> str:
    return f"{gflops:,.0f} GFLOP/s" if gflops >= 100 else f"{gflops:.3g} GFLOP/s"


def render_rows(testid: str, rows: list[tuple[str, str]]) -> None:
    dl = el(testid)
    dl.replaceChildren()
    for name, value in rows:
        dt, dd = document.createElement("dt"), document.createElement("dd")
        dt.textContent, dd.textContent = name, value
        dl.append(dt, dd)


def render_hw_info(adapter: dict, check: dict) -> None:
    limits = adapter["limits"]
    render_rows("hw-info", [
        ("Adapter", f"{adapter['vendor'] or '?'} · {adapter['architecture'] or '?'}"),
        ("Device", adapter["device"] or adapter["description"] or "–"),
        ("shader-f16", "yes" if adapter["f16"] else "no"),
        ("subgroups", "yes" if adapter["subgroups"] else "no"),
        ("Max storage binding", _mib(limits.get("maxStorageBufferBindingSize"))),
        ("Max buffer", _mib(limits.get("maxBufferSize"))),
        ("Workgroup storage", f"{(limits.get('maxComputeWorkgroupStorageSize') or 0) // 1024} KiB"),
        ("Invocations / workgroup", str(limits.get("maxComputeInvocationsPerWorkgroup"))),
        ("Kernel check", "matmul {}×{}·{}ᵀ: {} (max error {:g}, {:.0f} ms)".format(
            check["shape"][0], check["shape"][2], check["shape"][1], "verified" if check["ok"] else "WRONG",
            check["max_abs_error"], check["ms"])),
    ])
    hw = el("hw-info")
    hw.dataset.vendor = adapter["vendor"]
    hw.dataset.architecture = adapter["architecture"]
    hw.dataset.check = json.dumps({k: check[k] for k in ("ok", "sha256", "max_abs_error", "shape")})


# -- model ---------------------------------------------------------------------------------------
async def load_model(request: dict, label: str) -> None:
    state["model"] = None
    result = await busy_call(f"Loading {label}…", "load_model", request)
    if result:
        m = result["model"]
        state["model"] = m
        render_model_card(m)
        state["dataset"] = False
        el("dataset-summary").textContent = "No dataset yet."
    refresh_status()
    if result:
        await show_gpu_status()
        await show_checkpoint()
        await keep_storage()
        await update_estimate()
    await render_cache()


def render_model_card(m: dict) -> None:
    render_rows("model-card", [
        ("Model", m["name"]), ("Architecture", m["architecture"]),
        ("Parameters", f"{m['parameters'] / 1e6:,.1f} M"), ("Layers", str(m["layers"])),
        ("Hidden size", str(m["hidden_size"])), ("Heads", f"{m['heads']} ({m['kv_heads']} key/value)"),
        ("Vocabulary", f"{m['vocab_size']:,}"), ("Weights in GPU memory", _mib(m["weights_bytes"])),
        ("Weight types", ", ".join(f"{WEIGHT_TYPE_NAMES.get(t, t)} {_mib(n)}" for t, n in
                                   sorted(m.get("weight_types", {}).items(), key=lambda kv: -kv[1]))),
        ("Chat template", "yes" if m["chat_template"] else "no"),
    ])


async def load_model_files(files: list) -> None:
    """A Hugging Face folder's files or one .gguf: handed to the engine as blob: URLs (with
    their size and date, which identify them in the browser cache)."""
    urls = {f.name: window.URL.createObjectURL(f) for f in files}
    if urls:
        stamps = {f.name: [int(f.size), int(f.lastModified)] for f in files}
        folder = next((str(f.webkitRelativePath).split("/")[0] for f in files if f.webkitRelativePath), None)
        gguf = next((f.name for f in files if f.name.lower().endswith(".gguf")), None)
        name = gguf or folder or "your model"
        el("model-select").value = "files"
        await load_model({"kind": "files", "files": urls, "stamps": stamps, "name": name}, name)
        save(model="files")


async def on_model_files(event) -> None:
    files = event.target.files
    await load_model_files([files.item(i) for i in range(files.length)])


MODEL_FILES = (".gguf", ".safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", ".jinja",
               "generation_config.json", "special_tokens_map.json", ".index.json")


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


async def on_drop(files) -> None:
    """Files (folders already flattened by static/boot.js) dropped anywhere on the page: an
    adapter (a .zip or its files) is imported, model files load the model, anything else is a dataset."""
    files = list(files)
    adapter = [f for f in files if f.name in ADAPTER_FILES or f.name.lower().endswith(".zip")]
    model = [f for f in files if f not in adapter and any(f.name.endswith(suffix) for suffix in MODEL_FILES)]
    data = [f for f in files if f not in model and f not in adapter]
    if model:
        await load_model_files(model)
    if adapter:
        await import_adapter_files(adapter)
    if data:
        await use_dataset(data[0].name, await data[0].text())


async def on_model_load(event) -> None:
    choice = el("model-select").value
    if choice == "repo":
        repo = el("model-repo").value.strip()
        if not repo:
            show_error("Type a Hugging Face repo id, e.g. HuggingFaceTB/SmolLM2-360M-Instruct")
            return
        endpoint = el("hub-endpoint").value.strip() or None
        save(model="repo", repo=repo, hub_endpoint=endpoint)
        await load_model({"kind": "repo", "repo": repo, "endpoint": endpoint}, repo)
    elif choice == "default":
        save(model="default")
        await load_model({"kind": "default"}, "SmolLM2-135M-Instruct")
    else:
        show_error("Choose the model's files (config.json, model.safetensors, tokenizer.json, …) or a .gguf file")


async def on_bench(event) -> None:
    """The training step benchmark (LoRA r = 8 on every projection, AdamW) on this GPU."""
    el("hw-bench-result").textContent = "measuring…"
    result = await busy_call("Measuring the training speed…", "bench_step", {
        "config": el("hw-bench-config").value, "steps": 5, "rank": 8,
        "batch_size": int(float(el("hw-bench-batch").value or 4)), "seq_len": int(float(el("hw-bench-seq").value or 128))})
    node = el("hw-bench-result")
    if result:
        node.textContent = (f"{result['config']}, {result['batch_size']} × {result['seq_len']} tokens: "
                            f"{result['tokens_per_s']:,.0f} tokens/s, {result['ms_per_step']:,.1f} ms per step, "
                            f"{result['dispatches_per_step']:.0f} dispatches in {result['submits_per_step']:.0f} "
                            f"submit(s) per step, peak GPU memory {_mib(result['peak_gpu_bytes'])}")
        node.dataset.result = json.dumps(result)
    else:
        node.textContent = ""
    refresh_status()


# -- the browser cache ---------------------------------------------------------------------------
async def keep_storage() -> None:
    """Ask once for persistent storage, so the browser does not clear cached models under pressure."""
    storage = window.navigator.storage
    if state.get("persist_asked") or not hasattr(storage, "persist"):
        return
    state["persist_asked"] = True
    if not await storage.persisted():
        await storage.persist()


async def render_cache() -> None:
    result = await call("cache_list", background=True)
    if not result:
        return
    storage = window.navigator.storage
    if hasattr(storage, "estimate"):
        estimate = await storage.estimate()
        usage, quota = int(estimate.usage), int(estimate.quota)
        node = el("storage-usage")
        node.textContent = f"This site uses {_mib(usage)} of the {_mib(quota)} the browser allows it."
        node.dataset.usage, node.dataset.quota = str(usage), str(quota)
    if hasattr(storage, "persisted"):
        persisted = bool(await storage.persisted())
        el("storage-persist").textContent = ("Storage is persistent." if persisted else
                                             "Storage is not persistent: the browser may clear it when space runs low.")
    limit = el("cache-limit")
    if document.activeElement != limit:
        limit.value = f"{result['limit'] / 2**20:.2f}".rstrip("0").rstrip(".")
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
        for text in (item["name"], item["kind"], _mib(item["bytes"]), when):
            cell = document.createElement("td")
            cell.textContent = text
            row.append(cell)
        actions = document.createElement("td")
        for label, testid, handler in (("Load" if item["kind"] == "model" else "Use", "cache-use", use_cached),
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
        if item["kind"] == "model":
            await load_model({"kind": "cached", "id": item["id"]}, item["name"])
        else:
            result = await call("cache_dataset", {"id": item["id"]})
            if result:
                await use_dataset(result["name"], result["text"])

    return handler


def delete_cached(item: dict):
    async def handler(event) -> None:
        if await call("cache_delete", {"id": item["id"]}):
            await render_cache()

    return handler


async def on_cache_limit(event) -> None:
    mib = float(el("cache-limit").value or 0)
    await call("cache_set_limit", {"bytes": int(mib * 2**20)})
    await render_cache()


# -- dataset -------------------------------------------------------------------------------------
async def use_dataset(name: str, text: str) -> None:
    train, _ = read_plan()
    result = await call("set_dataset", {"name": name, "text": text, "format": el("dataset-format").value,
                                        "seq_len": train.seq_len if train else 256,
                                        "valid_fraction": float(el("dataset-valid").value)})
    state["dataset"] = bool(result)
    if result:
        s = result["summary"]
        el("dataset-summary").textContent = (
            f"{name}: {s['records']:,} records, format {s['format']}"
            f"{' (detected)' if s['detected'] else ''}, {s['tokens']:,} tokens, "
            f"{s['trained_fraction']:.0%} of them trained, {s['truncated']} truncated"
            + (f"; {s['validation_records']} held out for validation" if s["validation_records"] else "")
            + "".join(f"; {note}" for note in s["notes"]))
        state["cuts_most"] = s["cuts_most"]
        preview = el("dataset-preview")
        preview.replaceChildren()
        for item in result["preview"]:
            span = document.createElement("span")
            span.textContent = item["token"]
            if item["trained"]:
                span.className = "trained"
            preview.append(span)
    refresh_status()
    if result:
        await render_cache()


async def on_dataset_file(event) -> None:
    files = event.target.files
    if files.length:
        f = files.item(0)
        await use_dataset(f.name, await f.text())


async def on_dataset_text(event) -> None:
    text = el("dataset-text").value
    if not text.strip():
        show_error("Paste some data first (JSONL, or plain text).")
        return
    await use_dataset("pasted.jsonl" if text.lstrip().startswith("{") else "pasted.txt", text)


async def on_dataset_typed(event) -> None:
    """Pasted or typed data is used as soon as the typing pauses (the button does it at once)."""
    import asyncio

    state["typed"] = state.get("typed", 0) + 1
    mine = state["typed"]
    await asyncio.sleep(0.6)
    if mine == state["typed"] and el("dataset-text").value.strip() and state["model"] is not None:
        await on_dataset_text(event)


# -- plan ----------------------------------------------------------------------------------------
def plan_fields():
    for cls, group in ((TrainConfig, "train"), (LoraConfig, "lora")):
        for f in option_fields(cls):
            if f.name not in ADVANCED_FIELDS:
                yield group, f


def fill_options() -> None:
    """The dataset format and benchmark choices, from the engine's own lists (config.py)."""
    for testid, options in (("dataset-format", [("auto", "detect"), *((f, f) for f in DATASET_FORMATS)]),
                            ("hw-bench-config", [("loaded", "the loaded model"),
                                                 *((name, label if name == "tiny" else f"{label} (random weights)")
                                                   for name, label in NAMED_CONFIG_LABELS.items())])):
        select = el(testid)
        for value, text in options:
            option = document.createElement("option")
            option.value, option.textContent = value, text
            select.append(option)


def build_plan_form() -> None:
    form = el("plan-open").closest("section").querySelector("form")
    values = saved().get("plan", {})
    for group, f in plan_fields():
        default = f.default if f.default is not MISSING else None
        value = values.get(f.name, default)
        label = document.createElement("label")
        label.title = f.metadata.get("help", "")
        name = f.name.replace("_", " ")
        if f.type in ("bool", bool):
            control = document.createElement("input")
            control.type = "checkbox"
            control.checked = bool(value)
            label.className = "check"
            label.append(control, document.createTextNode(name))
        else:
            if f.name in CHOICES:
                control = document.createElement("select")
                for choice in CHOICES[f.name]:
                    option = document.createElement("option")
                    option.value = option.textContent = choice
                    control.append(option)
            else:
                control = document.createElement("input")
                if f.type in ("int", "float", int, float):
                    control.type = "number"
                    control.step = "1" if f.type in ("int", int) else "any"
            control.value = ",".join(value) if isinstance(value, (tuple, list)) else str(value)
            label.append(document.createTextNode(name), control)
        control.name = f"{group}.{f.name}"
        control.dataset.testid = "cfg-" + TESTID_NAMES.get(f.name, f.name).replace("_", "-")
        control.setAttribute("data-testid", control.dataset.testid)
        form.append(label)


def read_plan() -> tuple[TrainConfig | None, LoraConfig | None]:
    """The plan as the two dataclasses (their own validation), or (None, None) with the error shown."""
    values = {"train": {}, "lora": {}}
    for group, f in plan_fields():
        control = document.querySelector(f'[name="{group}.{f.name}"]')
        if control is None or control is jsnull:
            continue
        if f.type in ("bool", bool):
            value = bool(control.checked)
        elif f.type in ("int", int):
            value = int(float(control.value or 0))
        elif f.type in ("float", float):
            value = float(control.value or 0)
        elif f.name == "targets":
            value = tuple(t.strip() for t in control.value.split(",") if t.strip()) or PROJECTIONS
        else:
            value = control.value
        values[group][f.name] = value
    try:
        return TrainConfig(**values["train"]), LoraConfig(**values["lora"])
    except (TypeError, ValueError, UserError) as exc:
        show_error(f"Plan: {one_line(exc)}")
        return None, None


def plan_payload(train: TrainConfig, lora: LoraConfig) -> dict:
    return {"train": {f.name: getattr(train, f.name) for f in fields(TrainConfig)},
            "lora": {f.name: list(v) if isinstance(v := getattr(lora, f.name), tuple) else v for f in fields(LoraConfig)}}


async def update_estimate(event=None) -> None:
    train, lora = read_plan()
    if train is None:
        return
    payload = plan_payload(train, lora)
    save(plan={**payload["train"], **payload["lora"]})
    if state["model"] is None:
        return
    result = await call("plan", payload)
    if result:
        m = result["memory"]
        text = (f"GPU memory: {_mib(m['total'])} (weights {_mib(m['weights'])}, activations {_mib(m['activations'])}, "
                f"logits {_mib(m['logits'])}, adapter + optimizer {_mib(m['adapter_and_optimizer'])}). "
                f"About {result['step_seconds']:.2f} s per step")
        if result["steps"]:
            text += f", {result['total_seconds'] / 60:.1f} min for {result['steps']} steps"
        text += f" at this GPU's measured {_rate(result['gflops'])}."
        await show_gpu_status()
        if not result["fits"]:
            text += f" This will not fit: {result['advice']}."
        if state.get("cuts_most"):
            text += (f" The sequence length ({train.seq_len}) cuts most examples of the dataset: their ends "
                     f"are not trained on; raise it if memory allows.")
        el("plan-estimate").textContent = text
        render_precisions(result["weights"])


# What each weights choice means, for the plan's precision list.
PRECISIONS = {"auto": "as the model has them", "f32": "float32", "f16": "float16", "q8": "8-bit (Q8_0)",
              "q4": "4-bit (NF4, as QLoRA)"}


def render_precisions(weights: dict) -> None:
    """The precision list: each choice with the GPU memory its weights take; the current one selected."""
    select = el("plan-weights")
    select.innerHTML = ""
    for dtype, size in weights["choices"].items():
        option = document.createElement("option")
        option.value = dtype
        option.textContent = f"{PRECISIONS.get(dtype, dtype)}: {_mib(size)}"
        option.selected = dtype == weights["current"]
        select.append(option)
    select.disabled = state["busy"] or state["train"] in ("running", "paused")


async def on_weights(event) -> None:
    """Upload the model's weights again in the chosen precision (the run and its adapter go)."""
    result = await busy_call("Converting the weights…", "set_weights", {"weights": el("plan-weights").value})
    if result:
        state["model"] = result["model"]
        render_model_card(result["model"])
    refresh_status()
    await update_estimate()


def toggle_plan(event) -> None:
    form = document.getElementById("plan-form")
    form.hidden = not form.hidden
    el("plan-open").setAttribute("aria-expanded", "false" if form.hidden else "true")


# -- training ------------------------------------------------------------------------------------
def draw_chart() -> None:
    points = [(r["step"], r["loss"]) for r in state["records"] if r.get("kind") == "train"]
    svg = el("loss-chart")
    if len(points) < 1:
        svg.innerHTML = ""
        return
    import math

    log = el("chart-log").checked
    xs = [p[0] for p in points]
    ys = [math.log10(max(p[1], 1e-9)) if log else p[1] for p in points]
    x0, x1 = 1, max(max(xs), state["total"] or 1, 2)
    y0, y1 = min(ys), max(ys)
    span = (y1 - y0) or 1.0
    coords = " ".join(f"{40 + 550 * (x - x0) / (x1 - x0):.1f},{10 + 130 * (y1 - y) / span:.1f}" for x, y in points)
    evals = [(r["step"], math.log10(max(r["loss"], 1e-9)) if log else r["loss"])
             for r in state["records"] if r.get("kind") == "eval"]
    dots = "".join(f'<circle r="3" cx="{40 + 550 * (x - x0) / (x1 - x0):.1f}" '
                   f'cy="{10 + 130 * (y1 - min(max(y, y0), y1)) / span:.1f}"/>' for x, y in evals)
    top, bottom = (10 ** y1, 10 ** y0) if log else (y1, y0)
    svg.innerHTML = (f'<polyline points="{coords}"/>{dots}<text x="2" y="14">{top:.3f}</text>'
                     f'<text x="2" y="144">{bottom:.3f}</text><text x="520" y="156">step {x1}'
                     f'{" (log)" if log else ""}</text>')


def on_report(text: str) -> None:
    """Progress from the engine (called from the worker, so it must return quickly)."""
    import asyncio

    record = json.loads(text)
    if record["kind"] == "token":
        el(f"gen-output-{record['which']}").textContent = record["text"]
        return
    if record["kind"] == "sample":
        el("train-sample").textContent = f"Step {record['step']}, {record['prompt']!r} → {record['text']}"
        return
    if record["kind"] == "checkpoint":
        el("checkpoint-status").textContent = (f"Not saved: {record['error']}" if record.get("error") else
                                               f"Saved at step {record['step']}")
        el("checkpoint-status").dataset.step = str(record["step"])
        return
    if record["kind"] == "state":
        state["train"] = record["state"]
        el("train-state").textContent = record["state"]
        if record.get("error"):
            show_error(f"Training stopped: {record['error']}")
        if record.get("device_lost"):
            asyncio.ensure_future(show_checkpoint("The GPU device was lost. "))
        refresh_status()
        if record["state"] in ("done", "stopped", "error"):
            asyncio.ensure_future(show_gpu_status())
        return
    state["records"].append(record)
    if record["kind"] == "eval":
        el("train-sample").textContent = f"Validation loss at step {record['step']}: {record['loss']:.4f}"
        draw_chart()
    if record["kind"] == "train":
        el("train-step").textContent = f"{record['step']} / {record['total_steps']}"
        el("train-loss").textContent = f"{record['loss']:.4f}"
        el("train-speed").textContent = f"{record['tokens_per_s']:,.0f} tokens/s"
        per_step = record["tokens"] / max(1, record["step"])
        remaining = (record["total_steps"] - record["step"]) * per_step / max(record["tokens_per_s"], 1e-9)
        el("train-eta").textContent = f"{remaining:,.0f} s"
        el("train-lr").textContent = f"{record['lr']:.3g}"
        el("train-grad-norm").textContent = f"{record['grad_norm']:.3g}"
        elapsed = window.performance.now() / 1000 - state.get("started_at", 0)
        el("train-elapsed").textContent = f"{elapsed:,.0f} s"
        draw_chart()


async def on_train_start(event) -> None:
    train, lora = read_plan()
    if train is None:
        return
    state["records"] = []
    state["started_at"] = window.performance.now() / 1000
    el("train-step").textContent = "0"
    payload = plan_payload(train, lora)
    prompt = el("gen-prompt").value.strip()
    if prompt:  # sample generations at evaluation points use the compare box's prompt
        payload["sample_prompt"] = prompt
    payload["save_every"] = max(0, int(float(el("checkpoint-every").value or 0)))
    result = await call("train_start", payload)
    if result:
        state["total"] = result["total_steps"]
        el("train-step").textContent = f"0 / {result['total_steps']}"
        el("checkpoint-offer").hidden = True  # this run replaces the saved one
        el("checkpoint-status").textContent = ""
        el("checkpoint-status").removeAttribute("data-step")
    refresh_status()


# -- the saved run -------------------------------------------------------------------------------
async def show_checkpoint(prefix: str = "") -> None:
    """Offer the run saved in this browser (after a reload, a crash or a lost GPU device)."""
    result = await call("checkpoint_info", background=True)
    offer = el("checkpoint-offer")
    saved_run = result["checkpoint"] if result else None
    if result and result.get("problem"):
        show_error(f"A saved training run could not be read: {result['problem']}")
    if not saved_run or (state["train"] in ("running", "paused") and not prefix):
        offer.hidden = True
        return
    import time

    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(saved_run["saved_at"]))
    loss = f", loss {saved_run['loss']:.4f}" if saved_run["loss"] is not None else ""
    el("checkpoint-info").textContent = (
        f"{prefix}A training run is saved in this browser: {saved_run['model']} on {saved_run['dataset']}, "
        f"step {saved_run['step']} of {saved_run['total_steps']} ({saved_run['state']}{loss}), saved {when}.")
    offer.dataset.step = str(saved_run["step"])
    offer.hidden = False


async def on_checkpoint_resume(event) -> None:
    result = await busy_call("Resuming the saved run…", "checkpoint_resume")
    if result:
        state["records"] = list(result["history"])
        state["total"] = result["total_steps"]
        state["started_at"] = window.performance.now() / 1000
        state["dataset"] = True
        el("dataset-summary").textContent = f"{result['dataset']} (from the saved run)"
        el("train-step").textContent = f"{result['step']} / {result['total_steps']}"
        el("checkpoint-offer").hidden = True
        draw_chart()
    refresh_status()


async def on_checkpoint_discard(event) -> None:
    if await call("checkpoint_discard"):
        el("checkpoint-offer").hidden = True


async def show_gpu_status() -> None:
    result = await call("gpu_status", background=True)
    if result:
        rows = [("GPU memory in use", _mib(result["allocated_bytes"])), ("Peak GPU memory", _mib(result["peak_bytes"]))]
        if result["gflops"]:
            rows.append(("Measured matmul", _rate(result["gflops"])))
        dl = el("hw-info")
        for name, value in rows:
            existing = dl.querySelector(f'dd[data-row="{name}"]')
            if existing is None or existing is jsnull:
                dt, existing = document.createElement("dt"), document.createElement("dd")
                dt.textContent = name
                existing.dataset.row = name
                dl.append(dt, existing)
            existing.textContent = value


async def on_control(action: str) -> None:
    await call(f"train_{action}")
    refresh_status()


def control_handler(action: str):
    async def handler(event) -> None:
        await on_control(action)

    return handler


def download(name: str, parts, kind: str) -> None:
    blob = window.Blob.new(to_js(parts), to_js({"type": kind}, dict_converter=window.Object.fromEntries))
    link = document.createElement("a")
    link.href = window.URL.createObjectURL(blob)
    link.download = name
    link.click()


def download_metrics(event) -> None:
    lines = "".join(json.dumps(r) + "\n" for r in state["records"] if r.get("kind") in ("train", "eval"))
    download("loralab-metrics.jsonl", [lines], "application/x-ndjson")


async def export_merged(event) -> None:
    """The merged model is written by the engine into the browser's private file system and
    downloaded from there (it can be larger than what fits in one message)."""
    result = await busy_call("Merging the adapter into the model…", "export_merged")
    if result:
        folder = await window.navigator.storage.getDirectory()
        for part in result["path"].split("/")[:-1]:
            folder = await folder.getDirectoryHandle(part)
        handle = await folder.getFileHandle(result["path"].rsplit("/", 1)[-1])
        file = await handle.getFile()
        link = document.createElement("a")
        link.href = window.URL.createObjectURL(file)
        link.download = result["name"]
        link.click()
    refresh_status()


async def on_evaluate(event) -> None:
    result = await busy_call("Evaluating…", "evaluate_adapter")
    if result:
        text = f"Loss per token on the {result['set']} set ({result['records']} records, {result['tokens']:,} tokens): "
        text += f"base {result['base']:.4f}"
        if result["adapter"] is not None:
            text += f", base + adapter {result['adapter']:.4f}"
        node = el("eval-loss")
        node.textContent = text
        node.dataset.result = json.dumps(result)
    refresh_status()


def export_handler(fmt: str):
    async def handler(event) -> None:
        result = await call("export_adapter", {"format": fmt})
        if result:
            import base64

            download(result["name"], [to_js(memoryview(base64.b64decode(result["base64"])))], "application/octet-stream")

    return handler


async def on_adapter_files(event) -> None:
    files = event.target.files
    await import_adapter_files([files.item(i) for i in range(files.length)])


async def import_adapter_files(files: list) -> None:
    urls = {f.name: window.URL.createObjectURL(f) for f in files}
    result = await call("import_adapter", {"files": urls})
    if result:
        state["train"] = "idle"
        el("train-state").textContent = "idle"
        el("adapter-info").textContent = (f"Imported: r = {result['r']}, alpha = {result['alpha']}, "
                                          f"{', '.join(result['targets'])}; compare it below or train on")
    refresh_status()


# -- compare -------------------------------------------------------------------------------------
async def on_generate(event) -> None:
    prompt = el("gen-prompt").value.strip()
    if not prompt:
        show_error("Type a prompt first.")
        return
    el("gen-output-base").textContent = el("gen-output-adapter").textContent = "…"
    el("gen-output-adapter").dataset.done = ""
    result = await busy_call("Generating…", "generate", {
        "prompt": prompt, "max_new_tokens": int(float(el("gen-max-tokens").value or 64)),
        "temperature": float(el("gen-temperature").value or 0), "top_p": float(el("gen-top-p").value or 1)})
    el("gen-output-base").textContent = result["base"] if result else ""
    el("gen-output-adapter").textContent = (result["adapter"] or "(train an adapter first)") if result else ""
    el("gen-output-adapter").dataset.done = "1"  # streamed text is final now
    refresh_status()


# -- start ---------------------------------------------------------------------------------------
def wire() -> None:
    drop = create_proxy(on_drop)  # boot.js catches the drop (the files must be taken in the event)
    state["proxies"].append(drop)
    window.loralabOnDrop = drop
    on("model-files", "change", on_model_files)
    on("model-load", "click", on_model_load)
    on("dataset-files", "change", on_dataset_file)
    on("dataset-use", "click", on_dataset_text)
    on("dataset-text", "input", on_dataset_typed)
    on("chart-log", "change", lambda event: draw_chart())
    on("plan-open", "click", toggle_plan)
    form = document.getElementById("plan-form")
    proxy = create_proxy(update_estimate)
    state["proxies"].append(proxy)
    form.addEventListener("change", proxy)
    on("train-start", "click", on_train_start)
    for action in ("pause", "resume", "stop"):
        on(f"train-{action}", "click", control_handler(action))
    on("metrics-download", "click", download_metrics)
    on("export-adapter", "click", export_handler("peft"))
    on("export-gguf", "click", export_handler("gguf"))
    on("export-merged", "click", export_merged)
    on("adapter-files", "change", on_adapter_files)
    on("eval-run", "click", on_evaluate)
    on("checkpoint-resume", "click", on_checkpoint_resume)
    on("checkpoint-discard", "click", on_checkpoint_discard)
    on("cache-limit", "change", on_cache_limit)
    on("hw-bench", "click", on_bench)
    on("plan-weights", "change", on_weights)
    on("gen-run", "click", on_generate)
    report = create_proxy(on_report)
    state["proxies"].append(report)
    window.loralabOnReport = report


def expose_engine(engine) -> None:
    """window.loralabEngine(name, json) -> Promise<json>: the worker protocol, for scripts and tests."""

    async def call_engine(name: str, payload: str = "{}") -> str:
        return await engine.call(name, payload)

    proxy = create_proxy(call_engine)
    state["proxies"].append(proxy)
    window.loralabEngine = proxy


async def start() -> None:
    fill_options()
    build_plan_form()
    wire()
    for testid in ("train-start", "train-pause", "train-resume", "train-stop", "gen-run", "eval-run", "checkpoint-resume"):
        el(testid).disabled = True
    set_status("Starting the engine…")
    engine = await workers["engine"]
    state["engine"] = engine
    expose_engine(engine)
    set_status("Looking for a WebGPU adapter…")
    debug = window.location.search.find("debug=1") >= 0  # the engine's debugging commands, for tests
    result = json.loads(await engine.call("probe", json.dumps({"base_url": document.baseURI, "debug": debug})))
    if not result["ok"]:
        set_status("Stopped: " + result["error"].split(". ")[0], "error")
        show_error(result["error"])
        return
    render_hw_info(result["adapter"], result["check"])
    if not result["check"]["ok"]:
        set_status("Stopped: the GPU computed a wrong result", "error")
        show_error(f"The kernel self-check failed on this GPU (max error {result['check']['max_abs_error']}).")
        return
    last = saved()
    autoload = window.location.search.find("autoload=0") < 0
    if last.get("hub_endpoint"):
        el("hub-endpoint").value = last["hub_endpoint"]
    if last.get("model") == "repo" and last.get("repo"):
        el("model-select").value = "repo"
        el("model-repo").value = last["repo"]
        if autoload:
            await load_model({"kind": "repo", "repo": last["repo"], "endpoint": last.get("hub_endpoint")}, last["repo"])
    elif autoload:
        await load_model({"kind": "default"}, "SmolLM2-135M-Instruct")
    if state["model"] is None:  # (a loaded model shows these already)
        await show_checkpoint()
        await render_cache()
    refresh_status()
