"""Adapters in and out, evaluation, and the base-versus-adapter comparison."""

from __future__ import annotations

import json

from pyodide.ffi import to_js  # type: ignore[import-not-found]
from pyscript import document, window  # type: ignore[import-not-found]

from . import chat, client, onnx
from .page import download, el, refresh_status, show_error, state


async def export_merged(event) -> None:
    """The merged model is written by the engine into the browser's private file system and
    downloaded from there (it can be larger than what fits in one message): a Hugging Face folder,
    or over a GGUF base, the GGUF file with the merged matrices re-quantized."""
    quantize = el("export-merged-format").value
    result = await client.busy_call("Merging the adapter into the model…", "export_merged",
                                    {"quantize": quantize})
    if result:
        await download_private_file(result)
    refresh_status()


async def export_onnx(event) -> None:
    """The merged model as an ONNX folder for transformers.js / onnxruntime (a zip, written by the
    engine into the browser's private file system like the merged model)."""
    result = await client.busy_call("Writing the ONNX model…", "export_onnx", {"dtype": el("export-onnx-dtype").value})
    if result:
        await download_private_file(result)
    refresh_status()


async def download_private_file(result: dict) -> None:
    """Download result["path"] from the private file system as result["name"]."""
    folder = await window.navigator.storage.getDirectory()
    for part in result["path"].split("/")[:-1]:
        folder = await folder.getDirectoryHandle(part)
    handle = await folder.getFileHandle(result["path"].rsplit("/", 1)[-1])
    file = await handle.getFile()
    link = document.createElement("a")
    link.href = window.URL.createObjectURL(file)
    link.download = result["name"]
    link.click()


async def on_evaluate(event) -> None:
    result = await client.busy_call("Evaluating…", "evaluate_adapter")
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
        result = await client.call("export_adapter", {"format": fmt})
        if result:
            import base64

            download(result["name"], [to_js(memoryview(base64.b64decode(result["base64"])))], "application/octet-stream")
            state["tried"] = True
            refresh_status()

    return handler


async def export_recipe(event) -> None:
    """The plan as a recipe for GPU servers (TRL + PEFT + accelerate) with the dataset, a zip;
    what the server run does differently from this page's is listed under the button."""
    import base64

    from . import plan

    train, lora = plan.read_plan()
    if train is None:
        return
    payload = {**plan.plan_payload(train, lora), "save_every": max(0, int(float(el("checkpoint-every").value or 0)))}
    result = await client.busy_call("Writing the server recipe…", "export_recipe", payload)
    if result:
        download(result["name"], [to_js(memoryview(base64.b64decode(result["base64"])))], "application/zip")
        notes = el("recipe-notes")
        notes.innerHTML = ""
        for text in result["notes"] or ["Every part of this plan has its TRL/PEFT equivalent."]:
            item = document.createElement("li")
            item.textContent = text
            notes.append(item)
        notes.hidden = False
    refresh_status()


async def on_adapter_files(event) -> None:
    files = event.target.files
    await import_adapter_files([files.item(i) for i in range(files.length)])


async def import_adapter_files(files: list) -> None:
    urls = {f.name: window.URL.createObjectURL(f) for f in files}
    el("adapter-info").textContent = ""  # (a failed import leaves no word of an earlier one)
    result = await client.call("import_adapter", {"files": urls})
    state["adapter"] = bool(result) or state.get("adapter")
    if result:
        state["train"] = "idle"
        el("train-state").textContent = "idle"
        el("adapter-info").textContent = (f"Imported: r = {result['r']}, alpha = {result['alpha']}, "
                                          f"{', '.join(result['targets'])}; compare it below or train on")
    refresh_status()


def shown_answer(text: str, stopped: bool = False) -> str:
    """An answer as the compare panel shows it: one of only whitespace says so instead of an empty
    box, and an answer Stop cut off before its first token says that."""
    if stopped and not text:
        return "(stopped before this answer began)"
    return text if text.strip() else f"(an answer of only whitespace: {len(text)} character{'s' * (len(text) != 1)})"


async def on_generate(event) -> None:
    prompt = el("gen-prompt").value.strip()
    if not prompt:
        show_error("Type a prompt first.")
        return
    payload = {"prompt": prompt, "max_new_tokens": int(float(el("gen-max-tokens").value or 64)),
               "temperature": float(el("gen-temperature").value or 0), "top_p": float(el("gen-top-p").value or 1),
               **chat.context()}
    chat.start_turn()
    if state.get("mode") == "onnx":
        answer = await onnx.generate_onnx(payload)
        if answer is not None:
            chat.finish_turn(prompt, {"onnx": answer})
        return
    el("gen-output-base").textContent = el("gen-output-adapter").textContent = "…"
    for which in ("base", "adapter", "onnx"):
        el(f"gen-tokens-{which}").textContent = ""
    el("gen-output-adapter").dataset.done = ""
    state["busy"] = state["answering"] = True  # (until the third answer is in too)
    refresh_status()  # (Stop on, the other actions off)
    try:
        result = await client.busy_call("Generating…", "generate", payload)
        el("gen-output-base").textContent = shown_answer(result["base"], result["stopped"]) if result else ""
        el("gen-output-adapter").textContent = (
            shown_answer(result["adapter"], result["stopped"]) if result["adapter"] is not None
            else "(train or import an adapter first, then compare here)") if result else ""
        el("gen-output-adapter").dataset.done = "1"  # streamed text is final now
        state["tried"] = state.get("tried") or bool(result and result["adapter"] is not None)
        onnx_answer = None
        if result and result["stopped"]:
            el("gen-stop").dataset.stopped = "1"
        elif result and el("gen-onnx").checked:  # the third answer: our ONNX export in ONNX Runtime Web
            onnx_answer = await onnx.compare_onnx(payload)
        if result:
            chat.finish_turn(prompt, {"base": result["base"], "adapter": result["adapter"], "onnx": onnx_answer})
    finally:
        el("gen-output-onnx").dataset.done = "1"
        state["busy"] = state["answering"] = False
    refresh_status()


async def on_generate_stop(event) -> None:
    """Stop: the answers end after the token being generated (what came so far stays)."""
    await client.call("generate_stop")
