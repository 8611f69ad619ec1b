"""The engine worker's side of the page <-> engine protocol.

The page (loralab.app) calls the functions in EXPORTS on the PyScript worker named "engine".
Arguments and results are JSON strings, so nothing depends on how PyScript converts objects
between the two interpreters. Every result is {"ok": true, ...} or {"ok": false, "error": msg}
with a message a person can act on. Runs in Pyodide only (it imports `js`).
"""

from __future__ import annotations

import json
import traceback

import js  # type: ignore[import-not-found]

from ..checks import loads
from ..config import LoraConfig, ModelConfigError, TrainConfig
from ..data.formats import DatasetError, load_dataset
from ..data.tokenizer import TokenizerError
from ..engine import fit_seq_len, load_ops, prepare_training
from ..errors import UsageError, UserError, one_line
from ..formats.peft import check_fits, files_from_zip, parse_adapter
from ..gpu.browser import BrowserDevice
from ..gpu.device import GpuError
from ..kernels import KernelLibrary, SourceReader
from ..model.remote import RemoteFolder
from ..selftest import matmul_check
from . import runstore
from .datacache import CACHE_INSTANCE as CACHE
from .fetch import make_fetch
from .opfs import StorageError

_engine: dict = {}
fetch = make_fetch(CACHE)  # model files through the engine's cache while an item loads


def fetch_reader(base_url: str) -> SourceReader:
    """Kernel sources fetched from the site's `wgsl/` folder (the worker runs from a blob: URL,
    so the page passes its own absolute URL)."""

    async def read(name: str) -> str:
        return (await fetch(js.URL.new(f"wgsl/{name}.wgsl", base_url).href)).text()

    return read


def _result(fn):
    async def wrapped(*args):
        try:
            return json.dumps({"ok": True, **await fn(*args)})
        except UserError as exc:
            return json.dumps({"ok": False, "error": one_line(exc)})
        except Exception as exc:  # an engine bug: say so, keep the page alive
            return json.dumps({"ok": False, "error": f"internal error: {one_line(exc)}", "detail": traceback.format_exc()})

    wrapped.__name__ = fn.__name__
    return wrapped


@_result
async def probe(base_url: str) -> dict:
    """Start the engine: WebGPU adapter and device, then a checked kernel run."""
    _engine["base_url"] = CACHE.base = base_url
    if "device" not in _engine:
        device = await BrowserDevice.create()
        _engine["device"] = device
        _engine["kernels"] = KernelLibrary(device, fetch_reader(base_url))
    device = _engine["device"]
    check = await matmul_check(device, _engine["kernels"])
    return {"adapter": device.info.summary(), "check": check}


async def _ops():
    if "ops" not in _engine:
        if "device" not in _engine:
            raise GpuError("the engine has no GPU device yet")
        _engine["ops"] = await load_ops(_engine["device"], _engine["kernels"].read_source)
    return _engine["ops"]


@_result
async def train_run(request: str) -> dict:
    """Train on a model folder and a dataset given by URL; returns the per-step history.

    request: {"model_url", "data_url", "format"?, "adapter_url"?, "lora": {r, alpha, targets?},
    "train": {TrainConfig fields}}. (The app's own training console builds on the same path.)
    """
    req = json.loads(request)
    ops = await _ops()
    source = await RemoteFolder.open(req["model_url"], fetch=fetch)
    data = await fetch(req["data_url"])
    train_fields = dict(req.get("train", {}))
    records, summary = load_dataset(req["data_url"].rsplit("/", 1)[-1], data.text(), req.get("format", "auto"), None,
                                    train_fields.get("seq_len", 256), source.config.vocab_size)
    state = None
    if req.get("adapter_url"):
        base = req["adapter_url"].rstrip("/") + "/"
        files = {name: (await fetch(base + name)).bytes() for name in ("adapter_model.safetensors", "adapter_config.json")}
        lora_config, state, _ = parse_adapter(files, base)
        check_fits(lora_config, state, source.config, base)
    else:
        lora_config = LoraConfig(**req.get("lora", {}))
    train_fields["seq_len"] = fit_seq_len(records, train_fields.get("seq_len", 256))
    config = TrainConfig(**train_fields)
    trainer = await prepare_training(ops, source, source.config, records, [], lora_config, state, config)
    history = await trainer.train()
    return {"history": history, "dataset": summary.as_dict(), "adapter": {
        key: list(shape) for key, (shape, _) in (await trainer.lora.read_state()).items()}}


@_result
async def tokenize(request: str) -> dict:
    """Tokenize with the browser's tokenizer: {"base_url", "tokenizer_json", "config",
    "chat_template"?, "texts": [...], "chats": [[{role, content}, ...], ...]} -> ids of each text,
    and ids, labels and rendered text of each chat (loss on assistant turns, as in training)."""
    from ..data.formats import encode_record
    from .tokenizer import BrowserTokenizer

    req = json.loads(request)
    tok = await BrowserTokenizer.create(req["base_url"], req["tokenizer_json"], req.get("config") or {},
                                        req.get("chat_template"))
    chats = []
    for i, messages in enumerate(req.get("chats", [])):
        seq = encode_record({"messages": messages}, "chat", tok, f"chat {i + 1}")
        chats.append({"ids": seq.input_ids, "labels": seq.labels, "text": tok.apply_chat_template(messages)})
    return {"ids": [tok.encode(t) for t in req.get("texts", [])], "chats": chats}


# -- the app: one model, one dataset, one training run at a time ---------------------------------

DEFAULT_MODEL = "models/SmolLM2-135M-Instruct.Q4_1.gguf"


def _report(record: dict) -> None:
    """Hand a progress record to the page (window.loralabOnReport, set by loralab.app)."""
    from pyscript import window  # type: ignore[import-not-found]

    callback = getattr(window, "loralabOnReport", None)
    if callback is not None:
        callback(json.dumps(record))


def _free_run() -> None:
    """Free the last run's GPU memory: activations, trainer buffers and its adapter."""
    run = _engine.pop("run", None)
    if run:
        run["network"].release()
        run["trainer"].release()
        run["lora"].release()


def _free_model() -> None:
    _free_run()
    _engine.pop("adapter", None)
    model = _engine.pop("model", None)
    if model:
        for buffer in model["weights"].values():
            _engine["device"].destroy_buffer(buffer)


def _cache_item(req: dict) -> tuple[str, str, dict]:
    """(id, name, source) of the cache item a load_model request reads: the same model asked
    for again (the same repo, the same files by name, size and date) is the same item."""
    import hashlib

    from ..formats.hub import DEFAULT_HUB_ENDPOINT

    kind = req.get("kind", "default")
    if kind == "default":
        return "model:default", DEFAULT_MODEL.rsplit("/", 1)[-1].removesuffix(".gguf"), {"kind": "default"}
    if kind == "repo":
        endpoint = (req.get("endpoint") or DEFAULT_HUB_ENDPOINT).rstrip("/")
        return f"model:hub:{endpoint}/{req['repo']}", req["repo"], {"kind": "repo", "repo": req["repo"], "endpoint": endpoint}
    stamp = json.dumps(sorted((name, req.get("stamps", {}).get(name)) for name in req.get("files", {})))
    digest = hashlib.sha256(stamp.encode()).hexdigest()[:16]
    return f"model:files:{digest}", req.get("name") or "your model", {"kind": "files", "files": sorted(req.get("files", {}))}


async def _cached_request(item_id: str) -> dict:
    """The load_model request that reads a cached item back (from the cache only, for files)."""
    from urllib.parse import unquote

    from .datacache import ABSENT

    item = await CACHE.get(item_id)
    if item is None or item["kind"] != "model":
        raise UsageError(f"{item_id}: this model is no longer in the browser cache; load it from its source")
    if item["source"]["kind"] != "files":
        return dict(item["source"])
    files = {unquote(key.rsplit("/", 1)[-1]): key for key, entry in item["files"].items() if entry != ABSENT}
    return {"kind": "files", "files": files, "name": item["name"], "item": item_id}


@_result
async def load_model(request: str) -> dict:
    """{"kind": "default"} | {"kind": "files", "files": {name: url}, "stamps"?: {name: [size,
    modified]}, "name"?} | {"kind": "repo", "repo", "endpoint"?} | {"kind": "cached", "id"}
    -> the model card. Weights go from the fetched bytes to the GPU; the files are kept in the
    browser cache, and a model already there is read from it."""
    req = json.loads(request)
    if req.get("kind") == "cached":
        req = await _cached_request(req["id"])
    item_id, name, item_source = _cache_item(req)
    if req.get("item"):
        item_id = req["item"]
    async with CACHE.loading(item_id, "model", name, item_source):
        result = await _load_model(req)
    _engine["model"]["cache_id"] = item_id
    return result


async def _load_model(req: dict) -> dict:
    from ..formats.hub import DEFAULT_HUB_ENDPOINT
    from ..model.gguf_model import GGUFModel, tokenizer_files
    from ..model.identity import base_model_reference
    from ..model.weights import upload_weights
    from .tokenizer import BrowserTokenizer

    base = _engine["base_url"]
    ops = await _ops()
    kind = req.get("kind", "default")
    files = req.get("files") or {}
    gguf_name = next((n for n in files if n.lower().endswith(".gguf")), None)
    if kind == "default" or gguf_name:
        url = js.URL.new(DEFAULT_MODEL, base).href if kind == "default" else files[gguf_name]
        source = await GGUFModel.from_url(url, gguf_name or DEFAULT_MODEL.rsplit("/", 1)[-1], fetch)
        tokenizer_json, tok_config, template = tokenizer_files(source.gguf)
    else:
        if kind == "repo":
            endpoint = (req.get("endpoint") or DEFAULT_HUB_ENDPOINT).rstrip("/")
            source = await RemoteFolder.open(f"{endpoint}/{req['repo']}/resolve/main/", name=req["repo"], fetch=fetch)
        else:
            if "config.json" not in files:
                raise ModelConfigError("config.json is missing from the chosen files; choose a Hugging Face model "
                                       "folder's files (config.json, model.safetensors, tokenizer.json) or a .gguf")
            source = await RemoteFolder.open("", files, name=req.get("name") or "model", fetch=fetch)
        tok_body = await source.fetch_file("tokenizer.json", missing_ok=True)
        if tok_body is None:
            raise TokenizerError(f"{source.name}: tokenizer.json is missing; LoRA Lab needs the model's tokenizer")
        cfg_body = await source.fetch_file("tokenizer_config.json", missing_ok=True)
        tpl_body = await source.fetch_file("chat_template.jinja", missing_ok=True)
        tokenizer_json = tok_body.text()
        tok_config = loads(cfg_body.bytes(), f"{source.name}/tokenizer_config.json", TokenizerError) if cfg_body else {}
        if not isinstance(tok_config, dict):
            raise TokenizerError(f"{source.name}/tokenizer_config.json: expected a JSON object")
        template = tpl_body.text() if tpl_body else None
    _free_model()
    await ops.specialize_head_dim(source.config.head_dim)
    weights = await upload_weights(ops.device, source.config, source, ops)
    tokenizer = await BrowserTokenizer.create(base, tokenizer_json, tok_config, template)
    config = source.config
    parameters = sum(b.size // 4 for b in weights.values())
    gguf = getattr(source, "gguf", None)
    ref_kind = "default" if kind == "default" else "repo" if kind == "repo" else "gguf" if gguf else "folder"
    reference = base_model_reference(ref_kind, req.get("repo") or source.name, gguf.metadata if gguf else None)
    _engine["model"] = {"config": config, "weights": weights, "tokenizer": tokenizer, "name": source.name,
                        "reference": reference,
                        "config_dict": dict(getattr(source, "config_dict", {})), "request": req,
                        "tokenizer_files": (tokenizer_json, tok_config, template)}
    return {"model": {"name": source.name, "architecture": config.architecture, "parameters": parameters,
                      "layers": config.num_layers, "hidden_size": config.hidden_size, "vocab_size": config.vocab_size,
                      "heads": config.num_heads, "kv_heads": config.num_kv_heads, "weights_bytes": parameters * 4,
                      "chat_template": tokenizer.chat_template}}


def _model() -> dict:
    if "model" not in _engine:
        raise UsageError("load a model first")
    return _engine["model"]


def _use_dataset(source: dict):
    """Tokenize {"name", "text", "format", "seq_len", "valid_fraction"} for the loaded model and
    keep it as the training (and validation) set; returns (records, summary, held-out count)."""
    model = _model()
    records, summary = load_dataset(source["name"], source["text"], source["format"], model["tokenizer"],
                                    source["seq_len"], model["config"].vocab_size)
    held = int(len(records) * source["valid_fraction"])
    if held and held >= len(records):
        raise DatasetError(f"{source['name']}: too few records ({len(records)}) to hold some out for validation")
    _engine["dataset"], _engine["valid"] = (records[:-held], records[-held:]) if held else (records, [])
    _engine["dataset_source"] = source
    _engine["dataset_summary"] = {"name": source["name"], "records": summary.records, "tokens": summary.tokens,
                                  "format": summary.format, "validation_records": held}
    return records, summary, held


async def _keep_dataset(source: dict) -> None:
    import hashlib

    # Pasted text is one item, replaced as the person edits it; a file is kept by its content.
    pasted = source["name"].startswith("pasted.")
    item_id = "dataset:pasted" if pasted else "dataset:" + hashlib.sha256(source["text"].encode()).hexdigest()[:16]
    try:
        await CACHE.keep_text(item_id, source["name"], source["text"])
    except Exception as exc:  # storage is a convenience here: the dataset is in use either way
        js.console.warn(f"LoRA Lab: the dataset was not kept in the browser cache: {exc}")


@_result
async def set_dataset(request: str) -> dict:
    """{"name", "text", "format"?, "seq_len"?, "valid_fraction"?} -> the dataset summary and a
    preview of the first example."""
    req = json.loads(request)
    model = _model()
    records, summary, held = _use_dataset({
        "name": req.get("name") or "pasted.jsonl", "text": req["text"], "format": req.get("format") or "auto",
        "seq_len": int(req.get("seq_len") or 256), "valid_fraction": float(req.get("valid_fraction") or 0)})
    await _keep_dataset(_engine["dataset_source"])
    first = records[0]
    preview = [{"token": model["tokenizer"].decode([i]), "trained": label != -100}
               for i, label in zip(first.input_ids[:64], first.labels[:64])]
    return {"summary": {**summary.as_dict(), "validation_records": held}, "preview": preview}


@_result
async def train_start(request: str) -> dict:
    """{"train": {TrainConfig fields}, "lora": {LoraConfig fields}, "save_every"?, "stop_after"?,
    "sample_prompt"?}: starts training in the background; progress arrives through _report
    ({"kind": "train" | "eval" | "state" | "sample" | "checkpoint", ...}). The full training state
    is saved to the browser's private file system every `save_every` steps, at pause and at stop."""
    from ..engine import make_lora

    if _engine.get("run") and _engine["run"]["state"] in ("running", "paused"):
        raise UsageError("a training run is already going; stop it first")
    _free_run()
    req = json.loads(request)
    model = _model()
    records = _engine.get("dataset")
    if not records:
        raise DatasetError("add a dataset first")
    ops = await _ops()
    train_fields = dict(req.get("train", {}))
    train_fields["seq_len"] = fit_seq_len(records, int(train_fields.get("seq_len", 256)))
    config = TrainConfig(**train_fields)
    imported = _engine.get("adapter")
    if imported is not None:  # continue training the imported adapter (its r/alpha/targets win)
        lora = make_lora(ops, model["config"], imported.config, await imported.read_state(), config.seed)
    else:
        lora = make_lora(ops, model["config"], LoraConfig(**req.get("lora", {})), None, config.seed)
    await runstore.begin(_engine["dataset_source"])
    return await _start_run(config, lora, int(req.get("save_every") or 0), req.get("stop_after"),
                            req.get("sample_prompt"))


async def _start_run(config: TrainConfig, lora, save_every: int, stop_after: int | None, sample_prompt: str | None,
                     restore: tuple[dict, dict] | None = None) -> dict:
    import asyncio

    from ..model.transformer import Transformer
    from ..train import TrainControl, Trainer

    model, ops = _model(), await _ops()
    network = Transformer(ops.device, ops, model["config"], model["weights"], lora, config.batch_size, config.seq_len,
                          config.gradient_checkpointing)
    trainer = Trainer(ops.device, ops, network, lora, config, _engine["dataset"], _engine.get("valid", []),
                      model["tokenizer"].pad_id)
    if restore is not None:
        trainer.restore(*restore)
    control = TrainControl()
    run = {"trainer": trainer, "lora": lora, "control": control, "state": "running", "network": network}
    _engine["run"] = run

    async def sample(step: int) -> None:
        text = await _generate_text(sample_prompt, lora, 32, 0.0, 1.0)
        _report({"kind": "sample", "step": step, "prompt": sample_prompt, "text": text})

    def report(record: dict) -> None:
        _report(record)
        if record["kind"] == "eval" and sample_prompt:  # a sample generation at each evaluation point
            asyncio.ensure_future(sample(record["step"]))

    async def on_checkpoint(t) -> None:
        state = "paused" if control.paused and not control.stopped else (
            "stopped" if control.stopped or t.step < t.total_steps else "done")
        try:
            saved = await runstore.save(t, model, _engine["dataset_source"], save_every, state)
            _report({"kind": "checkpoint", **saved})
        except Exception as exc:  # training goes on; the person is told that saving failed
            _report({"kind": "checkpoint", "error": f"the checkpoint could not be saved: {one_line(exc)}", "step": t.step})

    async def go():
        try:
            await trainer.train(report, control, stop_after=stop_after, save_every=save_every,
                                on_checkpoint=on_checkpoint)
            run["state"] = "stopped" if control.stopped or trainer.step < trainer.total_steps else "done"
            _report({"kind": "state", "state": run["state"], "step": trainer.step})
        except Exception as exc:
            run["state"] = "error"
            lost = ops.device.lost_reason is not None
            message = one_line(exc) if isinstance(exc, UserError) else f"internal error: {one_line(exc)}"
            _report({"kind": "state", "state": "error", "error": message, "step": trainer.step, "device_lost": lost})

    run["task"] = asyncio.ensure_future(go())
    _report({"kind": "state", "state": "running", "step": trainer.step, "total_steps": trainer.total_steps})
    return {"total_steps": trainer.total_steps, "trainable_parameters": lora.trainable_parameters,
            "seq_len": config.seq_len, "step": trainer.step, "history": trainer.history}


def _control(action: str) -> dict:
    run = _engine.get("run")
    if not run or run["state"] not in ("running", "paused"):
        raise UsageError("no training run is going")
    getattr(run["control"], action)()
    run["state"] = {"pause": "paused", "resume": "running", "stop": run["state"]}[action]
    _report({"kind": "state", "state": run["state"], "step": run["trainer"].step})
    return {"state": run["state"], "step": run["trainer"].step}


@_result
async def train_pause(request: str = "{}") -> dict:
    return _control("pause")


@_result
async def train_resume(request: str = "{}") -> dict:
    return _control("resume")


@_result
async def train_stop(request: str = "{}") -> dict:
    return _control("stop")


@_result
async def gpu_status(request: str = "{}") -> dict:
    """GPU memory held by the engine now and at most, and the measured matmul rate (if measured)."""
    device = _engine["device"]
    return {"allocated_bytes": device.allocated_bytes, "peak_bytes": device.peak_bytes, "gflops": _engine.get("gflops")}


@_result
async def plan(request: str) -> dict:
    """{"train", "lora"} -> GPU memory and time estimates against this GPU (its matmul rate is
    measured once), and whether the plan fits, with a concrete fix when it does not."""
    from ..bench import bench_matmul
    from ..engine import estimate_memory, estimate_step_seconds

    req = json.loads(request)
    model = _model()
    train, lora = TrainConfig(**req.get("train", {})), LoraConfig(**req.get("lora", {}))
    if "gflops" not in _engine:
        _engine["gflops"] = (await bench_matmul(await _ops(), 256, 256, 256, repeats=4))["gflops"]
    weight_bytes = sum(b.size for b in model["weights"].values())
    memory = estimate_memory(model["config"], train, lora, weight_bytes)
    limits = _engine["device"].info.limits
    budget = max(limits.get("maxBufferSize", 0), 2 << 30)  # browsers give a tab a few GiB at least
    fits = memory["total"] <= budget
    advice = None
    if not fits:
        advice = ("turn on gradient checkpointing" if not train.gradient_checkpointing else
                  f"lower the batch size to {max(1, train.batch_size // 2)} or the sequence length to "
                  f"{max(32, train.seq_len // 2)}")
    records = _engine.get("dataset") or []
    steps = train.total_steps(len(records)) if records else train.steps
    step_s = estimate_step_seconds(model["config"], train, lora, _engine["gflops"])
    return {"memory": memory, "budget": budget, "fits": fits, "advice": advice, "gflops": _engine["gflops"],
            "step_seconds": step_s, "steps": steps, "total_seconds": step_s * steps}


@_result
async def generate(request: str) -> dict:
    """{"prompt", "max_new_tokens"?, "temperature"?, "top_p"?} -> the base model's answer and, once
    an adapter has been trained, base + adapter's. The chat template is applied when there is one."""
    req = json.loads(request)
    _model()
    run = _engine.get("run")
    if run and run["state"] in ("running", "paused"):
        raise UsageError("generation waits until training is stopped or done")
    new, temperature, top_p = int(req.get("max_new_tokens", 48)), float(req.get("temperature", 0.0)), float(req.get("top_p", 1.0))
    answers = {}
    for label, lora in (("base", None), ("adapter", run["lora"] if run else _engine.get("adapter"))):
        answers[label] = None if label == "adapter" and lora is None else await _generate_text(
            req["prompt"], lora, new, temperature, top_p, stream=label)
    return answers


async def _generate_text(prompt: str, lora, new: int, temperature: float, top_p: float, stream: str | None = None) -> str:
    """The model's answer to one user message (chat template applied when there is one); with
    `stream`, the text so far is reported after every token ({"kind": "token", "which": stream})."""
    from ..generate import Generator

    model = _model()
    tok, config = model["tokenizer"], model["config"]
    if tok.chat_template:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        ids = tok.encode(text, add_special_tokens=False)
    else:
        ids = tok.encode(prompt)
    out: list[int] = []

    def on_token(token: int) -> None:
        out.append(token)
        if stream:
            _report({"kind": "token", "which": stream, "text": tok.decode(out)})

    gen = Generator(_engine["device"], await _ops(), config, model["weights"], lora,
                    min(config.max_position_embeddings, len(ids) + new))
    try:
        await gen.generate(ids, new, temperature=temperature, top_p=top_p,
                           stop_ids={tok.eos_id} if tok.eos_id is not None else set(), on_token=on_token)
    finally:
        gen.release()
    return tok.decode(out)


def _current_adapter():
    """The adapter the page works with: the last training run's, else an imported one."""
    run = _engine.get("run")
    if run:
        return run["lora"], run["trainer"].history
    if _engine.get("adapter"):
        return _engine["adapter"], []
    raise UsageError("train or import an adapter first")


@_result
async def export_adapter(request: str) -> dict:
    """{"format": "peft" | "gguf"} -> {"name", "base64"}: a PEFT zip (adapter_model.safetensors,
    adapter_config.json, README.md) or a llama.cpp GGUF-LoRA file."""
    import base64
    from dataclasses import asdict

    from ..formats.peft import adapter_files, model_card, zip_bytes
    from ..model.gguf_model import gguf_lora

    req = json.loads(request)
    model = _model()
    lora, history = _current_adapter()
    state = await lora.read_state()
    if req.get("format") == "gguf":
        data, name = gguf_lora(state, lora.config, model["config"], model["name"]), "adapter.gguf"
    else:
        base_model, revision = model["reference"]
        files = adapter_files(state, lora.config, base_model, {"loralab_history": json.dumps(history[-1000:])},
                              revision)
        run = _engine.get("run")
        training = asdict(run["trainer"].config) if run else None
        files["README.md"] = model_card(model["name"], lora.config, history, _engine.get("dataset_summary"),
                                        training).encode()
        data, name = zip_bytes(files), "adapter.zip"
    return {"name": name, "base64": base64.b64encode(data).decode()}


@_result
async def import_adapter(request: str) -> dict:
    """{"files": {name: url}}: a PEFT adapter (a .zip, or adapter_model.safetensors +
    adapter_config.json), checked against the loaded model; it then answers in the compare panel
    and is where the next training run starts."""
    from ..engine import make_lora

    req = json.loads(request)
    model = _model()
    files = {}
    for name, url in req.get("files", {}).items():
        data = (await fetch(url)).bytes()
        if name.lower().endswith(".zip"):
            files.update(files_from_zip(data, name))
        else:
            files[name] = data
    lora_config, state, _ = parse_adapter(files, "the chosen adapter")
    check_fits(lora_config, state, model["config"], "the chosen adapter")
    _engine["adapter"] = make_lora(await _ops(), model["config"], lora_config, state)
    _free_run()
    return {"r": lora_config.r, "alpha": lora_config.alpha, "targets": list(lora_config.targets), "tensors": len(state)}


@_result
async def export_merged(request: str = "{}") -> dict:
    """The adapter merged into the base model, as a Hugging Face folder in a zip written to the
    browser's private file system (streamed tensor by tensor); the page downloads it from there.
    -> {"path", "name", "bytes"}."""
    import zipfile

    from ..merge import folder_files, merged_bytes, write_merged
    from .opfs import SyncFile

    model = _model()
    lora, _ = _current_adapter()
    size = merged_bytes(model["config"])
    quota = await _storage_free()
    if quota is not None and size > quota:
        raise StorageError(f"the merged model needs {size / 2**20:,.0f} MiB of browser storage and "
                           f"{quota / 2**20:,.0f} MiB are free; download the adapter instead")
    path = "loralab/exports/merged-model.zip"
    out = await SyncFile.create(path)
    try:
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, data in folder_files(model["config_dict"], *model["tokenizer_files"]).items():
                zf.writestr(name, data)
            with zf.open("model.safetensors", "w", force_zip64=True) as entry:
                await write_merged(entry.write, _engine["device"], await _ops(), model["config"], model["weights"], lora)
        written = out.tell()
    finally:
        out.close()
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in model["name"])
    return {"path": path, "name": f"{safe}-merged.zip", "bytes": written}


async def _storage_free() -> int | None:
    storage = getattr(js.navigator, "storage", None)
    if storage is None or not hasattr(storage, "estimate"):
        return None
    estimate = await storage.estimate()
    return int(estimate.quota) - int(estimate.usage)


@_result
async def evaluate_adapter(request: str = "{}") -> dict:
    """Mean loss per target token of the base model and of base + adapter on the validation set
    (the whole dataset when nothing is held out): {"base", "adapter" | null, "tokens", "records", "set"}."""
    from ..model.transformer import Transformer
    from ..train import evaluate

    model = _model()
    run = _engine.get("run")
    if run and run["state"] in ("running", "paused"):
        raise UsageError("evaluation waits until training is stopped or done")
    which = "validation" if _engine.get("valid") else "training"
    records = _engine.get("valid") or _engine.get("dataset")
    if not records:
        raise DatasetError("add a dataset first")
    ops = await _ops()
    device = ops.device
    seq_len = fit_seq_len(records, _engine["dataset_source"]["seq_len"])
    batch = min(8, len(records))
    lora = run["lora"] if run else _engine.get("adapter")
    step_buf, history = device.create_buffer(32, label="eval.step"), device.create_buffer(4, label="eval.loss")
    losses = {}
    try:
        for label, adapter in (("base", None), ("adapter", lora)):
            if label == "adapter" and adapter is None:
                losses[label] = None
                continue
            network = Transformer(device, ops, model["config"], model["weights"], adapter, batch, seq_len)
            try:
                result = await evaluate(device, network, records, history, step_buf, model["tokenizer"].pad_id)
            finally:
                network.release()
            losses[label], tokens = result["loss"], result["tokens"]
    finally:
        device.destroy_buffer(step_buf)
        device.destroy_buffer(history)
    return {**losses, "tokens": tokens, "records": len(records), "set": which}


@_result
async def bench_step(request: str = "{}") -> dict:
    """The `loralab bench` training step in this browser: {"config": "loaded" | a named config,
    "batch_size", "seq_len", "steps", "rank"} -> tokens/s, ms/step, dispatches and submits per
    step, peak GPU bytes. "loaded" times the loaded model's own weights; named configs use
    random weights (freed after)."""
    from ..bench import NAMED_CONFIGS, bench_training
    from ..config import ModelConfig

    req = json.loads(request)
    run = _engine.get("run")
    if run and run["state"] in ("running", "paused"):
        raise UsageError("the benchmark waits until training is stopped or done")
    ops = await _ops()
    name = req.get("config") or "loaded"
    if name == "loaded":
        model = _model()
        config, weights, label = model["config"], model["weights"], model["name"]
    elif name in NAMED_CONFIGS:
        config, weights, label = ModelConfig.from_dict(NAMED_CONFIGS[name], name), None, name
    else:
        raise UsageError(f"unknown benchmark config {name!r}; choose the loaded model or {', '.join(NAMED_CONFIGS)}")
    batch, seq_len = int(req.get("batch_size", 4)), int(req.get("seq_len", 128))
    if batch < 1 or seq_len < 2:
        raise UsageError("the benchmark needs a batch size of at least 1 and a sequence length of at least 2")
    result = await bench_training(ops, config, batch, seq_len, int(req.get("steps", 5)), int(req.get("rank", 8)),
                                  weights, warmup=1)
    return {**result, "config": label}


# -- the browser cache -----------------------------------------------------------------------------
@_result
async def cache_list(request: str = "{}") -> dict:
    """Cached models and datasets, most recently used first, and the size limit."""
    return {"items": await CACHE.items(), "limit": await CACHE.limit()}


@_result
async def cache_delete(request: str) -> dict:
    """{"id"} -> {"freed": bytes}."""
    return {"freed": await CACHE.delete(json.loads(request)["id"])}


@_result
async def cache_set_limit(request: str) -> dict:
    """{"bytes"} -> {"evicted": [ids]}: least recently used items go until the rest fits (the
    loaded model stays)."""
    bytes_ = int(json.loads(request)["bytes"])
    if bytes_ < 0:
        raise UsageError("the cache size limit cannot be negative")
    keep = _engine["model"]["cache_id"] if "model" in _engine else None
    return {"evicted": await CACHE.set_limit(bytes_, keep)}


@_result
async def cache_dataset(request: str) -> dict:
    """{"id"} -> {"name", "text"} of a cached dataset."""
    name, text = await CACHE.read_text(json.loads(request)["id"])
    return {"name": name, "text": text}


# -- the saved run -------------------------------------------------------------------------------
@_result
async def checkpoint_info(request: str = "{}") -> dict:
    """The saved training run, if any: {"checkpoint": {step, total_steps, state, model, dataset,
    saved_at, loss} | null}. An unreadable one is reported as {"checkpoint": null, "problem"}."""
    try:
        found = await runstore.load()
    except (UserError, ValueError, KeyError) as exc:
        return {"checkpoint": None, "problem": one_line(exc)}
    return {"checkpoint": runstore.summary(found[0]) if found else None}


@_result
async def checkpoint_resume(request: str = "{}") -> dict:
    """Continue the saved run exactly where it was (same model, dataset, data order, schedule and
    optimizer state); after a lost GPU device a new device is started and the model reloaded."""
    from ..engine import make_lora

    found = await runstore.load()
    if found is None:
        raise UsageError("there is no saved training run to resume")
    meta, buffers, source = found
    if _engine.get("device") is not None and _engine["device"].lost_reason is not None:
        await _restart_engine()
    model = _model()
    runstore.check_model(meta, model["config"])
    if _engine.get("run") and _engine["run"]["state"] in ("running", "paused"):
        raise UsageError("a training run is already going; stop it first")
    _free_run()
    _use_dataset({k: source[k] for k in ("name", "text", "format", "seq_len", "valid_fraction")})
    config = TrainConfig(**meta["train"])
    lora = make_lora(await _ops(), model["config"], LoraConfig(**{**meta["lora"], "targets": tuple(meta["lora"]["targets"])}),
                     None, config.seed)
    result = await _start_run(config, lora, int(meta["app"]["save_every"]), None, None, restore=(meta, buffers))
    return {**result, "dataset": source["name"], "model": meta["app"]["model"]}


async def _restart_engine() -> None:
    """A new GPU device after the old one was lost: kernels, then the same model again."""
    request = _engine["model"]["request"] if "model" in _engine else None
    for key in ("run", "adapter", "model", "ops", "kernels", "device"):
        _engine.pop(key, None)
    device = await BrowserDevice.create()
    _engine["device"], _engine["kernels"] = device, KernelLibrary(device, fetch_reader(_engine["base_url"]))
    if request is not None:
        result = json.loads(await load_model(json.dumps(request)))
        if not result["ok"]:
            raise GpuError(f"the GPU restarted, but the model did not load again: {result['error']}")


@_result
async def checkpoint_discard(request: str = "{}") -> dict:
    await runstore.discard()
    return {}


@_result
async def debug_lose_device(request: str = "{}") -> dict:
    """Destroy the GPU device, as a driver reset or a GPU process crash would (to check recovery)."""
    _engine["device"].device.destroy()
    return {}


EXPORTS = {"probe": probe, "train_run": train_run, "tokenize": tokenize, "load_model": load_model,
           "set_dataset": set_dataset, "train_start": train_start, "train_pause": train_pause,
           "train_resume": train_resume, "train_stop": train_stop, "generate": generate, "plan": plan, "gpu_status": gpu_status,
           "export_adapter": export_adapter, "import_adapter": import_adapter, "export_merged": export_merged,
           "checkpoint_info": checkpoint_info, "checkpoint_resume": checkpoint_resume,
           "checkpoint_discard": checkpoint_discard, "debug_lose_device": debug_lose_device,
           "evaluate_adapter": evaluate_adapter, "cache_list": cache_list, "cache_delete": cache_delete,
           "cache_set_limit": cache_set_limit, "cache_dataset": cache_dataset, "bench_step": bench_step}
