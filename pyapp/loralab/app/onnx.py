"""ONNX Runtime Web on the page: the compare panel's third answer (our export of the model and its
adapter, run by ONNX Runtime Web, with the largest logit difference from our engine), and chat
without WebGPU (an ONNX folder, or the built-in model, in ONNX Runtime Web's wasm provider)."""

from __future__ import annotations

import json

from pyscript import document, window  # type: ignore[import-not-found]

from . import client
from .page import el, refresh_status, show_error, state

NO_TRAINING = ("Training needs WebGPU, which this browser does not offer. You can still chat: with the "
               "built-in model or an ONNX folder (transformers.js' layout), through ONNX Runtime Web on the CPU.")


def enter_onnx_mode(reason: str) -> None:
    """No WebGPU: say why training is unavailable, and offer chat through ONNX Runtime Web."""
    state["mode"] = "onnx"
    show_error(reason + " " + NO_TRAINING)
    el("hw-info").dataset.check = "no-webgpu"
    el("onnx-chat").hidden = False
    el("steps").hidden = True  # (the guided steps are training's)
    el("gen-output-base").textContent = el("gen-output-adapter").textContent = "(needs WebGPU)"
    refresh_status()


async def load_onnx(files: list) -> None:
    """An ONNX folder's files (chosen or dropped), or a .gguf, into ONNX Runtime Web."""
    urls = {(f.webkitRelativePath or f.name): window.URL.createObjectURL(f) for f in files}
    stamps = {(f.webkitRelativePath or f.name): [f.size, f.lastModified] for f in files}
    await _load({"base_url": document.baseURI, "files": urls, "stamps": stamps}, "the ONNX folder")


async def load_cached(item: dict) -> None:
    """A model kept from an earlier visit (an ONNX folder, a GGUF or the built-in model)."""
    if item["id"] == "model:default":
        await on_onnx_default(None)
    elif item["kind"] == "onnx":
        await _load({"base_url": document.baseURI, "id": item["id"]}, item["name"])
    else:
        show_error(f"{item['name']} runs with WebGPU; without it the built-in model, ONNX folders and GGUF files chat")


async def on_onnx_files(event) -> None:
    files = event.target.files
    await load_onnx([files.item(i) for i in range(files.length)])


async def on_onnx_default(event) -> None:
    await _load({"base_url": document.baseURI, "default": True}, "the built-in model")


async def _load(request: dict, label: str) -> None:
    state["onnx"] = None
    result = await client.busy_call(f"Loading {label} into ONNX Runtime Web…", "onnx_load", request)
    if result:
        state["onnx"] = result["name"]
        el("onnx-info").textContent = f"{result['name']} ({result['family']}, {result['model']}) on ONNX Runtime Web's " \
                                      f"{result['provider']} provider"
        show_error(None)
    refresh_status()
    from . import cache

    await cache.render_cache()


async def generate_onnx(payload: dict) -> str | None:
    """Chat without WebGPU: the ONNX model's answer in the third column."""
    el("gen-output-onnx").dataset.done = ""
    el("gen-output-onnx").textContent = "…"
    el("gen-tokens-onnx").textContent = ""
    state["answering"] = True
    refresh_status()
    try:
        result = await client.busy_call("Generating with ONNX Runtime Web…", "onnx_generate", payload)
    finally:
        state["answering"] = False
    el("gen-output-onnx").textContent = result["text"] if result else ""
    if result:
        el("onnx-check").textContent = f"ONNX Runtime Web ({result['provider']}): {result['tokens_per_s']:,.1f} tokens/s"
    el("gen-output-onnx").dataset.done = "1"
    refresh_status()
    return result["text"] if result else None


async def compare_onnx(payload: dict) -> str | None:
    """The third answer next to our engine's two, and how far ONNX Runtime Web's logits are from ours."""
    node, check = el("gen-output-onnx"), el("onnx-check")
    node.dataset.done = ""
    node.textContent = "…"
    check.textContent = "Exporting the model to ONNX and running it in ONNX Runtime Web…"
    answer = json.loads(await state["engine"].call("onnx_compare", json.dumps(payload)))
    if answer["ok"]:
        node.textContent = answer["text"]
        check.textContent = (f"ONNX Runtime Web ({answer['provider']}) on the exported model: largest logit "
                             f"difference from our engine after the prompt {answer['max_abs_diff']:.2e} "
                             f"(logits up to {answer['max_abs_logit']:.3g})")
        check.dataset.result = json.dumps({k: answer[k] for k in ("provider", "max_abs_diff", "max_abs_logit")})
    else:
        node.textContent = ""
        check.textContent = "ONNX Runtime Web did not answer: " + answer["error"]
    node.dataset.done = "1"
    return answer["text"] if answer["ok"] else None
