"""The model panel: the built-in default, a dropped folder or GGUF, a hub repo id; the model card."""

from __future__ import annotations

from pyscript import window  # type: ignore[import-not-found]

from ..checks import loads
from ..config import model_name
from ..errors import UsageError, UserError
from . import adapters, cache, chat, checkpoints, client, dataset, hardware, onnx, plan
from .page import el, mib, refresh_status, render_rows, save, show_error, state

# How the model card names the GPU weight types (the GGUF block types by their own names).
WEIGHT_TYPE_NAMES = {"f32": "float32", "f16": "float16", "nf4": "NF4"}


async def load_model(request: dict, label: str) -> None:
    before = state["model"], state.get("adapter", False), state.get("dataset", False)
    state["model"], state["adapter"] = None, False
    result = await client.busy_call(f"Loading {label}…", "load_model", request)
    if result:
        m = result["model"]
        state["model"] = m
        render_model_card(m)
        chat.show_template(m["chat_template"])
        chat.on_clear(None)  # (a new model: a new conversation)
        state["dataset"] = False
        el("dataset-summary").textContent = "No dataset yet."
    else:  # failed or cancelled: a load that stopped before its weights keeps the model there was
        kept = await client.call("model_info", background=True)
        if kept and kept["model"] and before[0] and kept["model"]["name"] == before[0]["name"]:
            state["model"], state["adapter"], state["dataset"] = before
        elif kept and not kept["model"] and before[0]:
            render_rows("model-card", [("Model", "none loaded: the load stopped after the last model was unloaded")])
            state["dataset"] = False
    refresh_status()
    if result:
        await hardware.show_gpu_status()
        await checkpoints.show_checkpoint()
        await cache.keep_storage()
        await plan.update_estimate()
    await cache.render_cache()


def render_model_card(m: dict) -> None:
    render_rows("model-card", [
        ("Model", m["name"]), ("Architecture", m["architecture"]), ("Features", ", ".join(m.get("features", []))),
        ("Parameters", f"{m['parameters'] / 1e6:,.1f} M"), ("Layers", str(m["layers"])),
        ("Hidden size", str(m["hidden_size"])), ("Heads", f"{m['heads']} ({m['kv_heads']} key/value)"),
        ("Vocabulary", f"{m['vocab_size']:,}"), ("Weights in GPU memory", mib(m["weights_bytes"])),
        ("Weight types", ", ".join(f"{WEIGHT_TYPE_NAMES.get(t, t.upper())} {mib(n)}" for t, n in
                                   sorted(m.get("weight_types", {}).items(), key=lambda kv: -kv[1]))),
        ("Chat template", "yes" if m["chat_template"] else "no"),
    ])


async def load_model_files(files: list, folder: str | None = None) -> None:
    """A Hugging Face folder's files or one .gguf: handed to the engine as blob: URLs (with
    their size and date, which identify them in the browser cache). The model is named after the
    .gguf, the folder (dropped, or chosen with its files), or what its config.json says."""
    urls = {f.name: window.URL.createObjectURL(f) for f in files}
    if urls:
        stamps = {f.name: [int(f.size), int(f.lastModified)] for f in files}
        folder = folder or next((str(f.webkitRelativePath).split("/")[0] for f in files if f.webkitRelativePath), None)
        gguf = next((f.name for f in files if f.name.lower().endswith(".gguf")), None)
        name = gguf or folder or await name_from_config(files) or "your model"
        el("model-select").value = "files"
        await load_model({"kind": "files", "files": urls, "stamps": stamps, "name": name}, name)
        save(model="files")


async def name_from_config(files: list) -> str | None:
    """The name config.json gives (config.model_name), or None: a missing, huge or broken file
    only goes without a name here; the engine says what is wrong with it."""
    config = next((f for f in files if f.name == "config.json"), None)
    if config is None or int(config.size) > CONFIG_MOST:
        return None
    try:
        found = loads(str(await config.text()), "config.json", UsageError)
    except UserError:
        return None
    return model_name(found) if isinstance(found, dict) else None


CONFIG_MOST = 1 << 20  # (a model's config.json is a few KiB)


async def on_model_files(event) -> None:
    files = event.target.files
    await load_model_files([files.item(i) for i in range(files.length)])


MODEL_FILES = (".gguf", ".safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", ".jinja",
               "generation_config.json", "special_tokens_map.json", ".index.json")


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


async def on_drop(files, folder=None) -> None:
    """Files (folders already flattened by static/boot.js, which names the first folder) dropped
    anywhere on the page: an adapter (a .zip or its files) is imported, model files load the
    model, anything else is a dataset."""
    files = list(files)
    folder = folder if isinstance(folder, str) and folder else None
    if state.get("mode") == "onnx":  # no WebGPU: a dropped folder is an ONNX model to chat with
        await onnx.load_onnx(files)
        return
    adapter = [f for f in files if f.name in ADAPTER_FILES or f.name.lower().endswith(".zip")]
    model = [f for f in files if f not in adapter and any(f.name.endswith(suffix) for suffix in MODEL_FILES)]
    data = [f for f in files if f not in model and f not in adapter]
    if model:
        await load_model_files(model, folder)
    if adapter:
        await adapters.import_adapter_files(adapter)
    if data:
        await dataset.use_dataset(data[0].name, await data[0].text())


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
