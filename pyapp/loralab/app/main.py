"""The page's Python (PyScript, main thread): the LoRA Lab UI.

It talks to the engine only through the worker protocol (loralab.browser.worker.call: a command name
and JSON in, JSON out); the engine reports training progress through window.loralabOnReport. The plan form is
generated from the TrainConfig and LoraConfig dataclasses, so defaults and validation live there."""

from __future__ import annotations

import json

from pyodide.ffi import create_proxy  # type: ignore[import-not-found]
from pyscript import document, window, workers  # type: ignore[import-not-found]

from . import adapters, cache, chat, checkpoints, client, dataset, hardware, model, onnx, plan, runs, training
from .page import el, on, refresh_status, saved, set_status, show_error, state


def wire() -> None:
    drop = create_proxy(model.on_drop)  # boot.js catches the drop (the files must be taken in the event)
    state["proxies"].append(drop)
    window.loralabOnDrop = drop
    on("model-files", "change", model.on_model_files)
    on("model-load", "click", model.on_model_load)
    on("dataset-files", "change", dataset.on_dataset_file)
    on("dataset-use", "click", dataset.on_dataset_text)
    on("dataset-text", "input", dataset.on_dataset_typed)
    on("chart-log", "change", lambda event: training.draw_chart())
    on("plan-open", "click", plan.toggle_plan)
    on("plan-preset", "change", plan.on_preset)
    form = document.getElementById("plan-form")
    proxy = create_proxy(plan.update_estimate)
    state["proxies"].append(proxy)
    form.addEventListener("change", proxy)
    on("train-start", "click", training.on_train_start)
    for action in ("pause", "resume", "stop"):
        on(f"train-{action}", "click", training.control_handler(action))
    on("metrics-download", "click", training.download_metrics)
    on("export-adapter", "click", adapters.export_handler("peft"))
    on("export-gguf", "click", adapters.export_handler("gguf"))
    on("export-merged", "click", adapters.export_merged)
    on("export-onnx", "click", adapters.export_onnx)
    on("export-recipe", "click", adapters.export_recipe)
    on("adapter-files", "change", adapters.on_adapter_files)
    on("eval-run", "click", adapters.on_evaluate)
    on("checkpoint-resume", "click", checkpoints.on_checkpoint_resume)
    on("checkpoint-discard", "click", checkpoints.on_checkpoint_discard)
    on("checkpoint-load-model", "click", checkpoints.on_checkpoint_load_model)
    on("cache-limit", "change", cache.on_cache_limit)
    on("progress-cancel", "click", client.on_cancel)
    on("hw-bench", "click", hardware.on_bench)
    on("plan-weights", "change", plan.on_weights)
    on("gen-run", "click", adapters.on_generate)
    on("gen-stop", "click", adapters.on_generate_stop)
    on("onnx-files", "change", onnx.on_onnx_files)
    on("onnx-default", "click", onnx.on_onnx_default)
    chat.wire()
    report = create_proxy(training.on_report)
    state["proxies"].append(report)
    window.loralabOnReport = report


async def start() -> None:
    plan.fill_options()
    plan.build_plan_form()
    wire()
    for testid in ("train-start", "train-pause", "train-resume", "train-stop", "gen-run", "eval-run", "checkpoint-resume"):
        el(testid).disabled = True
    set_status("Starting the engine…")
    engine = await workers["engine"]
    state["engine"] = engine
    client.expose_engine(engine)
    set_status("Looking for a WebGPU adapter…")
    debug = window.location.search.find("debug=1") >= 0  # the engine's debugging commands, for tests
    result = json.loads(await engine.call("probe", json.dumps({"base_url": document.baseURI, "debug": debug})))
    if not result["ok"]:
        set_status("Stopped: " + result["error"].split(". ")[0], "error")
        show_error(result["error"])
        return
    if result["adapter"] is None:  # no WebGPU: chat through ONNX Runtime Web only
        onnx.enter_onnx_mode(result["no_webgpu"])
        await cache.render_cache()
        return
    hardware.render_hw_info(result["adapter"], result["check"])
    plan.default_precision(result["adapter"]["f16"])
    if not result["check"]["ok"]:
        set_status("Stopped: the GPU computed a wrong result", "error")
        show_error(f"The kernel self-check failed on this GPU (max error {result['check']['max_abs_error']}).")
        return
    await runs.render_runs()
    last = saved()
    autoload = window.location.search.find("autoload=0") < 0
    if last.get("hub_endpoint"):
        el("hub-endpoint").value = last["hub_endpoint"]
    if last.get("model") == "repo" and last.get("repo"):
        el("model-select").value = "repo"
        el("model-repo").value = last["repo"]
        if autoload:
            await model.load_model({"kind": "repo", "repo": last["repo"], "endpoint": last.get("hub_endpoint")}, last["repo"])
    elif autoload:
        await model.load_model({"kind": "default"}, "SmolLM2-135M-Instruct")
    if state["model"] is None:  # (a loaded model shows these already)
        await checkpoints.show_checkpoint()
        await cache.render_cache()
    refresh_status()
