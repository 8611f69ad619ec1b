"""The engine worker: the page's requests, translated to `Session` calls.

The page (loralab.app) calls `call(name, request)` on the PyScript worker named "engine". The
request is a JSON object read into the command's request dataclass (unknown fields, wrong types
and missing fields are refused with a message naming the field); the answer is JSON,
{"ok": true, ...} or {"ok": false, "error": one line} (with "detail", the traceback, when it is a
bug). Progress of a training run and streamed generations arrive on the page through
window.loralabOnReport. Debugging commands (losing the device on purpose, the raw tokenizer)
exist only after the page asked for them in `probe`.

This module holds what only the browser has: the WebGPU device, the cache of models and datasets
(the fetch that reads through it is handed to the model readers), the saved run in the private
file system, the storage quota. Runs in Pyodide only (it imports `js`).
"""

from __future__ import annotations

import hashlib
import json
import traceback
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import js  # type: ignore[import-not-found]
from pyodide.ffi import to_js  # type: ignore[import-not-found]

from ..checks import build, loads
from ..config import LoraConfig, ModelConfigError, TrainConfig
from ..errors import Cancelled, UsageError, UserError, one_line
from ..formats.peft import files_from_zip
from ..gpu.browser import NO_ADAPTER, NO_WEBGPU, BrowserDevice
from ..gpu.device import GpuError
from ..kernels import KernelLibrary, SourceReader
from ..model.remote import RemoteFolder
from ..selftest import matmul_check
from ..session import Session, checkpoint_configs, conversation, run_in_background
from . import runs, runstore
from .datacache import ABSENT, DataCache
from .fetch import make_fetch
from .modeluse import ModelUse
from .opfs import StorageError
from .progress import DOWNLOADING, Progress

DEFAULT_MODEL = "models/SmolLM2-135M-Instruct.Q4_1.gguf"


class Worker:
    """The engine's state in the worker: one Session, and the browser services it is given."""

    def __init__(self):
        self.cache = DataCache()
        # The page's progress bar (and Cancel) for the long operations; model files come through
        # the cache while an item loads, their downloads report their bytes and stop on Cancel.
        self.progress = Progress(report)
        self.fetch = make_fetch(self.cache, self.progress.download, self.progress.signal)
        self.session = Session()
        self.session.on_progress = self.progress
        self.device: BrowserDevice | None = None
        self.kernels: KernelLibrary | None = None
        self.base_url = ""
        self.model_item: str | None = None  # the cache item of the loaded model
        self.commands: dict = dict(COMMANDS)
        self.onnx = None  # OnnxChat: ONNX Runtime Web's session (the compare panel, or chat without WebGPU)
        self.answer_stop = False  # the compare panel's Stop: the answers being generated end at the next token
        self.model_use = ModelUse()  # calls run at once: none sees the model replaced under it

    def cancellable(self, *reports: str, stages: dict[str, tuple[float, float, str]] | None = None):
        """A long operation the page may cancel (the `cancel` command): see browser.progress."""
        return self.progress.cancellable(js.AbortController.new(), *reports, stages=stages)

    def reader(self) -> SourceReader:
        """Kernel sources fetched from the site's `wgsl/` folder (the worker runs from a blob:
        URL, so the page passes its own absolute URL)."""
        base_url, fetch = self.base_url, self.fetch

        async def read(name: str) -> str:
            return (await fetch(js.URL.new(f"wgsl/{name}.wgsl", base_url).href)).text()

        return read

    async def ready(self) -> Session:
        """The session with its kernels compiled (once, on first use)."""
        if self.device is None:
            raise GpuError("the engine has no GPU device yet")
        if self.session.ops is None or self.session.ops.device is not self.device:
            await self.session.start(self.device, self.reader())
        return self.session

    async def restart(self) -> None:
        """A new GPU device after the old one was lost; the model goes up again from the bytes the
        session still holds, without fetching anything."""
        self.device = await BrowserDevice.create()
        self.kernels = KernelLibrary(self.device, self.reader())
        session = await self.ready()
        if session.model is not None:
            await session.upload()


WORKER: Worker | None = None
COMMANDS: dict = {}  # name -> (request class, handler)
DEBUG_COMMANDS: dict = {}


def command(name: str, request: type, debug: bool = False, model: str | None = None):
    """Register a command. `model`: "use" for one that reads the loaded model across awaits,
    "change" for one that replaces it (see browser.modeluse)."""

    def register(fn):
        handler = fn
        if model is not None:
            async def handler(w: Worker, req):
                async with w.model_use.using() if model == "use" else w.model_use.changing():
                    return await fn(w, req)
        (DEBUG_COMMANDS if debug else COMMANDS)[name] = (request, handler)
        return fn

    return register


async def call(name: str, request: str = "{}") -> str:
    """The page's one entry point: run command `name` on the JSON `request`."""
    global WORKER
    if WORKER is None:
        WORKER = Worker()
    try:
        if name not in WORKER.commands:
            raise UsageError(f"the engine has no command {name!r}")
        kind, handler = WORKER.commands[name]
        req = build(kind, loads(request or "{}", f"the {name} request", UsageError), f"the {name} request", UsageError)
        return json.dumps({"ok": True, **await handler(WORKER, req)})
    except Cancelled as exc:
        return json.dumps({"ok": False, "cancelled": True, "error": one_line(exc)})
    except UserError as exc:
        return json.dumps({"ok": False, "error": one_line(exc)})
    except Exception as exc:  # an engine bug: say so, keep the page alive
        return json.dumps({"ok": False, "error": f"internal error: {one_line(exc)}", "detail": traceback.format_exc()})


def report(record: dict) -> None:
    """Hand a progress record to the page (window.loralabOnReport, set by loralab.app)."""
    from pyscript import window  # type: ignore[import-not-found]

    callback = getattr(window, "loralabOnReport", None)
    if callback is not None:
        callback(json.dumps(record))


@dataclass(frozen=True)
class Empty:
    pass


# -- the GPU -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    base_url: str
    debug: bool = False


@command("probe", Probe)
async def probe(w: Worker, req: Probe) -> dict:
    """Start the engine: WebGPU adapter and device, then a checked kernel run. With `debug`, the
    debugging commands are enabled."""
    w.base_url = w.cache.base = req.base_url
    if req.debug:
        w.commands.update(DEBUG_COMMANDS)
    if w.device is None:
        try:
            w.device = await BrowserDevice.create()
        except GpuError as exc:
            if str(exc) not in (NO_WEBGPU, NO_ADAPTER):
                raise
            # No WebGPU: training is unavailable; chat still runs through ONNX Runtime Web (wasm).
            return {"adapter": None, "no_webgpu": str(exc)}
        w.kernels = KernelLibrary(w.device, w.reader())
    check = await matmul_check(w.device, w.kernels)
    return {"adapter": w.device.info.summary(), "check": check}


@command("gpu_status", Empty)
async def gpu_status(w: Worker, req: Empty) -> dict:
    """GPU memory held by the engine now and at most, and the measured matmul rate (if measured)."""
    if w.device is None:
        raise GpuError("the engine has no GPU device yet")
    return {"allocated_bytes": w.device.allocated_bytes, "peak_bytes": w.device.peak_bytes,
            "gflops": w.session.gflops}


@command("debug_lose_device", Empty, debug=True)
async def debug_lose_device(w: Worker, req: Empty) -> dict:
    """Destroy the GPU device, as a driver reset or a GPU process crash would (to check recovery)."""
    w.device.device.destroy()
    return {}


# -- the model ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadModel:
    kind: str = "default"  # "default" | "files" | "repo" | "cached"
    files: dict[str, str] = field(default_factory=dict)  # file name -> URL (blob: for dropped files)
    stamps: dict = field(default_factory=dict)  # file name -> [size, modified], to recognise them again
    name: str | None = None
    repo: str | None = None
    endpoint: str | None = None
    id: str | None = None  # a cache item ("cached")
    item: str | None = None


@command("model_info", Empty)
async def model_info(w: Worker, req: Empty) -> dict:
    """{"model": the loaded model's card, or None}: what the engine holds after a load that failed
    or was cancelled (a load cancelled while its files arrive keeps the model loaded before)."""
    model = w.session.model
    return {"model": None if model is None or not model.weights else model.card()}


@command("cancel", Empty)
async def cancel(w: Worker, req: Empty) -> dict:
    """Cancel the long operation that runs (a model load, a merged or ONNX export): its download
    stops at once, its work at the next progress report. -> {"cancelled": whether one ran}."""
    return {"cancelled": w.progress.cancel()}


def cache_item(req: LoadModel) -> tuple[str, str, dict]:
    """(id, name, source) of the cache item a load_model request reads: the same model asked
    for again (the same repo, the same files by name, size and date) is the same item."""
    from ..formats.hub import DEFAULT_HUB_ENDPOINT

    if req.kind == "default":
        return "model:default", DEFAULT_MODEL.rsplit("/", 1)[-1].removesuffix(".gguf"), {"kind": "default"}
    if req.kind == "repo":
        endpoint = (req.endpoint or DEFAULT_HUB_ENDPOINT).rstrip("/")
        return f"model:hub:{endpoint}/{req.repo}", req.repo, {"kind": "repo", "repo": req.repo, "endpoint": endpoint}
    stamp = json.dumps(sorted((name, req.stamps.get(name)) for name in req.files))
    digest = hashlib.sha256(stamp.encode()).hexdigest()[:16]
    return f"model:files:{digest}", req.name or "your model", {"kind": "files", "files": sorted(req.files)}


async def cached_request(w: Worker, item_id: str) -> LoadModel:
    """The load_model request that reads a cached item back (from the cache only, for files)."""
    from urllib.parse import unquote

    item = await w.cache.get(item_id)
    if item is None or item["kind"] != "model":
        raise UsageError(f"{item_id}: this model is no longer in the browser cache; load it from its source")
    if item["source"]["kind"] != "files":
        return build(LoadModel, item["source"], f"cache item {item_id}", UsageError)
    files = {unquote(key.rsplit("/", 1)[-1]): key for key, entry in item["files"].items() if entry != ABSENT}
    return LoadModel(kind="files", files=files, name=item["name"], item=item_id)


@command("load_model", LoadModel, model="change")
async def load_model(w: Worker, req: LoadModel) -> dict:
    """A model -> its card. {"kind": "default"} | {"kind": "files", "files": {name: url}} |
    {"kind": "repo", "repo", "endpoint"?} | {"kind": "cached", "id"}. Weights go from the fetched
    bytes to the GPU; the files are kept in the browser cache, and a model already there is read
    from it."""
    if req.kind not in ("default", "files", "repo", "cached"):
        raise UsageError(f"unknown model kind {req.kind!r}")
    if req.kind == "repo" and not req.repo:
        raise UsageError("give a repo id")
    if req.kind == "cached":
        req = await cached_request(w, req.id or "")
    item_id, name, item_source = cache_item(req)
    compiled = w.session.ops is not None and w.session.ops.device is w.device
    kernels = 0.0 if compiled else KERNELS_SHARE
    files = kernels + (1 - kernels) * DOWNLOAD_SHARE  # (a model in the browser cache skips this part)
    stages = {"Compiling the GPU kernels": (0.0, kernels, f"Loading {name}: compiling the GPU kernels"),
              DOWNLOADING: (kernels, files, f"Loading {name}: reading its files"),
              "Reading the weights onto the GPU": (files, 1.0, f"Loading {name}: reading the weights")}
    with w.cancellable(stages=stages):
        return await _load_model(w, req, item_id, name, item_source)


# A model load's bar: compiling the kernels (a first load only), then its files (downloaded, or
# read from the person's disk), then the weights onto the GPU.
KERNELS_SHARE = 0.15
DOWNLOAD_SHARE = 0.5


async def _load_model(w: Worker, req: LoadModel, item_id: str, name: str, item_source: dict) -> dict:
    session = await w.ready()
    async with w.cache.loading(req.item or item_id, "model", name, item_source):
        source, reference = await open_source(w, req)
        base_url = w.base_url

        async def make_tokenizer(tokenizer_json: str, config: dict, template: str | None):
            from .tokenizer import BrowserTokenizer

            return await BrowserTokenizer.create(base_url, tokenizer_json, config, template)

        model = await session.open_model(source, reference, make_tokenizer, need_tokenizer=True)
        w.model_item = None  # (the model that was loaded is gone)
        try:
            await session.upload()
        except BaseException:
            session.close_model()
            raise
    w.model_item = req.item or item_id
    return {"model": model.card()}


async def open_source(w: Worker, req: LoadModel):
    """(weight source, base model reference) of a load_model request."""
    from ..formats.hub import DEFAULT_HUB_ENDPOINT
    from ..model.gguf_model import GGUFModel
    from ..model.identity import base_model_reference

    gguf_name = next((n for n in req.files if n.lower().endswith(".gguf")), None)
    if req.kind == "default" or gguf_name:
        url = js.URL.new(DEFAULT_MODEL, w.base_url).href if req.kind == "default" else req.files[gguf_name]
        source = await GGUFModel.from_url(url, gguf_name or DEFAULT_MODEL.rsplit("/", 1)[-1], w.fetch)
        kind = "default" if req.kind == "default" else "gguf"
        return source, base_model_reference(kind, source.name, source.gguf.metadata)
    if req.kind == "repo":
        endpoint = (req.endpoint or DEFAULT_HUB_ENDPOINT).rstrip("/")
        source = await RemoteFolder.open(f"{endpoint}/{req.repo}/resolve/main/", name=req.repo, fetch=w.fetch)
        return source, base_model_reference("repo", req.repo)
    if "config.json" not in req.files:
        raise ModelConfigError("config.json is missing from the chosen files; choose a Hugging Face model "
                               "folder's files (config.json, model.safetensors, tokenizer.json) or a .gguf")
    source = await RemoteFolder.open("", req.files, name=req.name or "model", fetch=w.fetch)
    return source, base_model_reference("folder", source.name)


@dataclass(frozen=True)
class SetWeights:
    weights: str  # model.weights.WEIGHT_DTYPES


@command("set_weights", SetWeights, model="change")
async def set_weights(w: Worker, req: SetWeights) -> dict:
    """The loaded model's weights again in another precision (auto, f32, f16, q8, q4) -> its card."""
    session = await w.ready()
    return {"model": (await session.set_weights(req.weights)).card()}


# -- datasets ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SetDataset:
    text: str
    name: str = "pasted.jsonl"
    format: str = "auto"
    seq_len: int = 256
    valid_fraction: float = 0.0
    train_on_prompt: bool = False


@command("set_dataset", SetDataset, model="use")
async def set_dataset(w: Worker, req: SetDataset) -> dict:
    """A dataset for the loaded model -> its summary and a preview of the first example. It is
    kept in the browser cache (pasted text as one item, replaced as the person edits it)."""
    session = w.session
    dataset = session.use_dataset(req.name or "pasted.jsonl", req.text, req.format or "auto", req.seq_len,
                                  req.valid_fraction, req.train_on_prompt)
    pasted = dataset.source["name"].startswith("pasted.")
    item_id = "dataset:pasted" if pasted else "dataset:" + hashlib.sha256(req.text.encode()).hexdigest()[:16]
    try:
        await w.cache.keep_text(item_id, dataset.source["name"], req.text)
    except Exception as exc:  # storage is a convenience here: the dataset is in use either way
        js.console.warn(f"LoRA Lab: the dataset was not kept in the browser cache: {exc}")
    tok = session.model.tokenizer

    def preview(seq, n: int) -> list[dict]:
        return [{"token": tok.decode([i]), "trained": label != -100} for i, label in zip(seq.input_ids[:n], seq.labels[:n])]

    every = dataset.train + dataset.valid
    examples = [{"tokens": len(s.input_ids), "trained": sum(1 for label in s.labels[1:] if label != -100),
                 "preview": preview(s, PREVIEW_TOKENS)} for s in dataset.train[:PREVIEW_EXAMPLES]]
    return {"summary": dataset.info(), "preview": preview(every[0], 64), "examples": examples,
            "train_records": len(dataset.train), "longest": max(len(s.input_ids) for s in every),
            "lengths": [len(s.input_ids) for s in every]}


PREVIEW_EXAMPLES = 8  # the dataset panel's table of examples
PREVIEW_TOKENS = 160


# -- the plan and training ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)


@command("plan", Plan, model="use")
async def plan(w: Worker, req: Plan) -> dict:
    """GPU memory and time estimates against this GPU, and whether the plan fits, with a concrete
    fix when it does not."""
    session = await w.ready()
    session.need_model()
    return await session.plan(req.train, req.lora)


@dataclass(frozen=True)
class TrainStart:
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    save_every: int = 0
    stop_after: int | None = None
    sample_prompt: str | None = None


@command("train_start", TrainStart, model="use")
async def train_start(w: Worker, req: TrainStart) -> dict:
    """Start training in the background; progress arrives through report ({"kind": "train" |
    "eval" | "state" | "sample" | "checkpoint", ...}). The full training state is saved to the
    browser's private file system every `save_every` steps, at pause and at stop."""
    session = await w.ready()
    if session.run is not None and session.run.going:
        raise UsageError("a training run is already going; stop it first")
    await runstore.begin(session.need_dataset().source)
    run = await session.start_run(req.train, req.lora)
    return start_background(w, run, req.save_every, req.stop_after, req.sample_prompt)


def start_background(w: Worker, run, save_every: int, stop_after: int | None, sample_prompt: str | None) -> dict:
    import asyncio

    session = w.session
    model, dataset = session.model, session.dataset
    samples: list[dict] = []

    async def sample(step: int) -> None:
        out = await session.generate(sample_prompt, run.lora, 32)
        samples.append({"step": step, "prompt": sample_prompt, "text": out.text})
        report({"kind": "sample", **samples[-1]})

    async def keep() -> None:
        try:
            report({"kind": "run_kept", **await runs.keep(session, run, samples)})
        except Exception as exc:  # the run itself is fine; the person is told it was not kept
            report({"kind": "run_kept", "error": f"the run could not be kept in this browser: {one_line(exc)}"})

    def on_report(record: dict) -> None:
        report(record)
        if record["kind"] == "eval" and sample_prompt:  # a sample generation at each evaluation point
            asyncio.ensure_future(sample(record["step"]))
        if record["kind"] == "state" and record["state"] in ("done", "stopped") and run.step > 0:
            asyncio.ensure_future(keep())  # the finished run joins the runs list

    def saving(fraction: float) -> None:  # (its own bar: a cancellable export may run beside it)
        report({"kind": "progress", "what": "Saving the checkpoint", "fraction": fraction})

    async def on_checkpoint(trainer) -> None:
        try:
            saved = await runstore.save(trainer, model.name, model.config, dataset.source, save_every,
                                        run.checkpoint_state(), w.model_item, saving)
            report({"kind": "checkpoint", **saved})
        except Exception as exc:  # training goes on; the person is told that saving failed
            saving(1.0)
            report({"kind": "checkpoint", "error": f"the checkpoint could not be saved: {one_line(exc)}",
                    "step": trainer.step})

    run.task = run_in_background(run, on_report, stop_after=stop_after,
                                 save_every=save_every, on_checkpoint=on_checkpoint)
    report({"kind": "state", "state": "running", "step": run.step, "total_steps": run.trainer.total_steps})
    return {"total_steps": run.trainer.total_steps, "trainable_parameters": run.lora.trainable_parameters,
            "seq_len": run.trainer.config.seq_len, "step": run.step, "history": run.history}


def control(w: Worker, action: str) -> dict:
    run = w.session.run
    if run is None:
        raise UsageError("no training run is going")
    getattr(run, action)()
    report({"kind": "state", "state": run.state, "step": run.step})
    return {"state": run.state, "step": run.step}


@command("train_pause", Empty)
async def train_pause(w: Worker, req: Empty) -> dict:
    return control(w, "pause")


@command("train_resume", Empty)
async def train_resume(w: Worker, req: Empty) -> dict:
    return control(w, "resume")


@command("train_stop", Empty)
async def train_stop(w: Worker, req: Empty) -> dict:
    return control(w, "stop")


@command("train_status", Empty)
async def train_status(w: Worker, req: Empty) -> dict:
    """The last run: {"state", "step", "total_steps", "history"}, or {"state": "idle"}."""
    run = w.session.run
    if run is None:
        return {"state": "idle"}
    return {"state": run.state, "step": run.step, "total_steps": run.trainer.total_steps, "history": run.history}


# -- evaluation and generation ------------------------------------------------------------------------------
@command("evaluate_adapter", Empty, model="use")
async def evaluate_adapter(w: Worker, req: Empty) -> dict:
    """Mean loss per target token of the base model and of base + adapter on the validation set
    (the whole dataset when nothing is held out): {"base", "adapter" | null, "tokens", "records", "set"}."""
    session = await w.ready()
    session.need_idle("evaluation")
    base = await session.evaluate(None)
    lora = session.adapter()
    adapter = await session.evaluate(lora) if lora is not None else None
    return {"base": base["loss"], "adapter": adapter["loss"] if adapter else None, "tokens": base["tokens"],
            "records": base["records"], "set": base["set"]}


@dataclass(frozen=True)
class Turn:
    """An earlier turn of the compare panel's chat: the question and each column's answer."""
    user: str
    base: str | None = None
    adapter: str | None = None


@dataclass(frozen=True)
class Generate:
    prompt: str
    max_new_tokens: int = 48
    temperature: float = 0.0
    top_p: float = 1.0
    system: str = ""  # a system prompt (through the chat template)
    history: list[Turn] = field(default_factory=list)  # earlier turns: each column continues its own chat

    def messages(self, which: str) -> str | list[dict]:
        """The prompt for column `which` ("base" or "adapter"): the question, or the conversation."""
        return conversation(self.prompt, self.system, [(t.user, getattr(t, which)) for t in self.history])


@command("generate", Generate, model="use")
async def generate(w: Worker, req: Generate) -> dict:
    """The base model's answer and, once there is an adapter, base + adapter's; each streams
    ({"kind": "token", "which", "text"}). The chat template is applied when there is one."""
    session = await w.ready()
    session.need_model()
    session.need_idle("generation")
    w.answer_stop = False
    answers = {}
    for label, lora in (("base", None), ("adapter", session.adapter())):
        if label == "adapter" and lora is None:
            answers[label] = None
            continue
        if w.answer_stop:
            answers[label] = ""
            continue
        out = await session.generate(req.messages(label), lora, req.max_new_tokens, None, req.temperature, req.top_p,
                                     on_text=token_reporter(label), stop=lambda: w.answer_stop)
        answers[label] = out.text
    return {**answers, "stopped": w.answer_stop}


def token_reporter(which: str):
    """on_text for a streamed answer: {"kind": "token", "which", "text", "tokens"} to the page."""
    count = [0]

    def on_text(text: str) -> None:
        count[0] += 1
        report({"kind": "token", "which": which, "text": text, "tokens": count[0]})

    return on_text


@command("generate_stop", Empty)
async def generate_stop(w: Worker, req: Empty) -> dict:
    """End the answers being generated (the compare panel's Stop) after their current token."""
    w.answer_stop = True
    return {}


# -- ONNX Runtime Web ------------------------------------------------------------------------------------------
ONNX_COMPARE = "loralab/onnx/compare.onnx"


@dataclass
class OnnxChat:
    """A decoder session in ONNX Runtime Web and what it answers with."""

    decoder: object  # browser.ort.WebOrtDecoder
    tokenizer: object | None
    name: str
    key: tuple = ()


@dataclass(frozen=True)
class OnnxCompare(Generate):
    provider: str = "auto"  # onnx_compare: ONNX Runtime Web's "webgpu" or "wasm" provider ("auto": webgpu, else wasm)


@command("onnx_compare", OnnxCompare, model="use")
async def onnx_compare(w: Worker, req: OnnxCompare) -> dict:
    """The third answer of the compare panel: the loaded model with its adapter (if any) exported
    to ONNX (float32, into the private file system) and run by ONNX Runtime Web (its WebGPU
    provider, else wasm); it streams ({"kind": "token", "which": "onnx"}). With it, the largest
    difference between ONNX Runtime Web's logits after the prompt and our engine's.
    -> {"text", "provider", "max_abs_diff", "max_abs_logit", "tokens_per_s"}."""
    import time

    from ..onnx_decode import DecoderShape, prompt_logits
    from . import opfs
    from .ort import OnnxRuntimeError, WebOrtDecoder, load_ort

    session = await w.ready()
    model = session.need_model()
    session.need_idle("the ONNX comparison")
    lora = session.adapter()
    if req.provider not in ("auto", "webgpu", "wasm"):
        raise UsageError(f"provider is auto, webgpu or wasm, not {req.provider!r}")
    providers = ["webgpu", "wasm"] if req.provider == "auto" else [req.provider]
    key = (id(model), model.dtype, id(lora), session.run.step if session.run else -1, req.provider)
    chat = w.onnx
    if chat is None or chat.key != key:
        if chat is not None:
            chat.decoder.release()
            w.onnx = None
        if any(p[2] for p in session.onnx_files("fp32")):
            raise OnnxRuntimeError(f"{model.name} is over 2 GB as a float32 ONNX model; the comparison runs "
                                   f"smaller models (download the ONNX export to run it elsewhere)")
        out = await opfs.SyncFile.create(ONNX_COMPARE)
        try:
            await session.write_onnx(out.write, False)
        finally:
            out.close()
        ort = await load_ort(w.base_url)
        decoder = await WebOrtDecoder.create(ort, await opfs.read_js(ONNX_COMPARE), DecoderShape.of(model.config),
                                             providers)
        await opfs.remove(ONNX_COMPARE)  # (the session holds its own copy)
        chat = w.onnx = OnnxChat(decoder, session.need_tokenizer("generation"), model.name, key)
    prompt = req.messages("adapter" if lora is not None else "base")  # (the exported model's own chat)
    ids = session.prompt_ids(prompt)
    theirs = await prompt_logits(chat.decoder, ids)
    ours = await session.next_logits(prompt, lora)
    diff = max(abs(a - b) for a, b in zip(theirs, ours))
    started = time.perf_counter()
    text, tokens = await _onnx_answer(w, chat, ids, req)
    return {"text": text, "provider": chat.decoder.provider, "max_abs_diff": diff,
            "max_abs_logit": max(abs(x) for x in ours), "tokens_per_s": tokens / max(time.perf_counter() - started, 1e-9)}


async def _onnx_answer(w: Worker, chat: OnnxChat, ids: list[int], req) -> tuple[str, int]:
    """ONNX Runtime Web's answer to the prompt ids, streamed as "onnx" tokens."""
    from ..onnx_decode import onnx_generate

    tok, out = chat.tokenizer, []

    def on_token(token: int) -> bool:
        out.append(token)
        report({"kind": "token", "which": "onnx", "text": tok.decode(out), "tokens": len(out)})
        return w.answer_stop

    stop = {tok.eos_id} if tok.eos_id is not None else set()
    max_len = min(chat.decoder.shape.max_positions, len(ids) + req.max_new_tokens)
    await onnx_generate(chat.decoder, ids, req.max_new_tokens, max_len, req.temperature, req.top_p, 0, stop, on_token)
    return tok.decode(out), len(out)


@dataclass(frozen=True)
class OnnxLoad:
    base_url: str
    files: dict[str, str] = field(default_factory=dict)  # an ONNX folder's files (or a .gguf): name -> URL
    stamps: dict = field(default_factory=dict)  # file name -> [size, modified], to recognise them again
    default: bool = False  # the built-in model (its GGUF, read in place)
    id: str | None = None  # a cache item ("onnx:…") to load again from the model cache


@command("onnx_load", OnnxLoad)
async def onnx_load(w: Worker, req: OnnxLoad) -> dict:
    """Chat without WebGPU, in ONNX Runtime Web's wasm provider: an ONNX decoder folder
    (transformers.js' layout: config.json, tokenizer.json, tokenizer_config.json,
    onnx/model_q4.onnx or onnx/model.onnx, and its .onnx_data when it has one), a .gguf read in
    place, the built-in model (`default`), or one of these kept in the model cache (`id`). The
    files are kept in the model cache, so the model also loads offline on a later visit.
    -> {"name", "model", "provider", "family", "item"}."""
    w.base_url = w.cache.base = req.base_url
    if req.id is not None:  # kept from an earlier visit: every file from the model cache
        item = await w.cache.get(req.id)
        if item is None or item["kind"] != "onnx":
            raise UsageError(f"{req.id}: this ONNX model is no longer in the browser cache; choose its files again")
        by_name, item_id = {name: name for name in item["source"]["files"]}, req.id
    else:
        by_name = {name.rsplit("/", 1)[-1]: url for name, url in req.files.items()}
        stamp = json.dumps(sorted((name.rsplit("/", 1)[-1], value) for name, value in req.stamps.items()))
        item_id = "onnx:files:" + hashlib.sha256(stamp.encode()).hexdigest()[:16]
    gguf_name = next((n for n in by_name if n.lower().endswith(".gguf")), None)
    if not req.default and not gguf_name:
        models = [n for n in ("model_q4.onnx", "model.onnx") if n in by_name] or sorted(
            n for n in by_name if n.endswith(".onnx"))
        if not models:
            raise UsageError("the ONNX folder has no .onnx model (onnx/model.onnx or onnx/model_q4.onnx)")
        for needed in ("config.json", "tokenizer.json"):
            if needed not in by_name:
                raise UsageError(f"the ONNX folder has no {needed}; drop the whole folder (config, tokenizer and onnx/)")
        data_name = models[0] + "_data"
        keep = [n for n in by_name if n in ("config.json", "tokenizer.json", "tokenizer_config.json",
                                            "chat_template.jinja", models[0], data_name)]
        by_name = {n: by_name[n] for n in keep}
    if req.default:
        item = ("model:default", "model", DEFAULT_MODEL.rsplit("/", 1)[-1].removesuffix(".gguf"), {"kind": "default"})
    else:
        item = (item_id, "onnx", gguf_name or "ONNX model", {"kind": "onnx", "files": sorted(by_name)})
    # Its bar: the files as they arrive, then starting ONNX Runtime on them; Cancel stops the download.
    stages = {DOWNLOADING: (0.0, 0.9, f"Loading {item[2]}: reading its files"),
              ORT_START: (0.9, 1.0, f"Loading {item[2]}: starting ONNX Runtime")}
    with w.cancellable(stages=stages):
        async with w.cache.loading(*item) as kept:  # (the files are kept for later visits, offline too)
            if req.default or gguf_name:
                result = await _onnx_load_gguf(w, req, gguf_name and by_name[gguf_name], gguf_name)
            else:
                result = await _onnx_load_folder(w, req, by_name, models[0])
            kept["name"] = result["name"]
        w.progress(ORT_START, 1.0)
    return {**result, "item": item[0]}


ORT_START = "Starting ONNX Runtime"


async def _onnx_load_folder(w: Worker, req: OnnxLoad, by_name: dict[str, str], model: str) -> dict:
    """An ONNX folder's decoder in ONNX Runtime Web's wasm provider, its tokenizer in the worker."""
    from ..onnx_decode import DecoderShape
    from .ort import OnnxRuntimeError, WebOrtDecoder, load_ort
    from .tokenizer import BrowserTokenizer

    async def fetch_text(name: str) -> str | None:
        return None if name not in by_name else (await w.fetch(by_name[name], file=name)).text()

    async def fetch_bytes(name: str):
        body = await w.fetch(by_name[name], file=name)
        return body.view(0, body.size)

    config_dict = loads(await fetch_text("config.json"), "config.json", ModelConfigError)
    if not isinstance(config_dict, dict):
        raise ModelConfigError("config.json: expected a JSON object")
    shape = DecoderShape.from_config(config_dict)
    tok_config = loads(await fetch_text("tokenizer_config.json") or "{}", "tokenizer_config.json", UsageError)
    if not isinstance(tok_config, dict):
        raise UsageError("tokenizer_config.json: expected a JSON object")
    tokenizer = await BrowserTokenizer.create(req.base_url, await fetch_text("tokenizer.json"), tok_config,
                                              await fetch_text("chat_template.jinja"))
    external = None
    data_name = model + "_data"
    if data_name in by_name:
        external = js.Array.new()
        external.push(js.Object.fromEntries(to_js([["path", data_name], ["data", await fetch_bytes(data_name)]])))
    if w.onnx is not None:
        w.onnx.decoder.release()
        w.onnx = None
    ort = await load_ort(req.base_url)
    try:
        decoder = await WebOrtDecoder.create(ort, await fetch_bytes(model), shape, ["wasm"], external)
    except OnnxRuntimeError as exc:
        raise OnnxRuntimeError(f"{model}: {exc}") from None
    family = str(config_dict.get("model_type") or "decoder")
    name = str(config_dict.get("_name_or_path") or "").rsplit("/", 1)[-1] or f"ONNX {family}"
    w.onnx = OnnxChat(decoder, tokenizer, name)
    return {"name": name, "model": model, "provider": decoder.provider, "family": family}


async def _onnx_load_gguf(w: Worker, req: OnnxLoad, url: str | None, name: str | None) -> dict:
    """A GGUF file (the built-in model when url is None) in ONNX Runtime Web's wasm provider,
    converted in the page: a small ONNX graph that reads the file's own bytes as its external data
    (onnx_export.GGUFView), so nothing is downloaded but the GGUF, which the model cache keeps."""
    from ..model.gguf_model import GGUFModel
    from ..onnx_decode import DecoderShape
    from ..session import gguf_as_onnx, read_tokenizer_files
    from .ort import WebOrtDecoder, load_ort
    from .tokenizer import BrowserTokenizer

    bodies = {}

    async def fetch(url: str, missing_ok: bool = False, file: str | None = None):
        body = bodies[url] = await w.fetch(url, missing_ok, file)
        return body

    if url is None:
        source = await GGUFModel.from_url(js.URL.new(DEFAULT_MODEL, w.base_url).href, DEFAULT_MODEL.rsplit("/", 1)[-1],
                                          fetch)
    else:
        source = await GGUFModel.from_url(url, name, fetch)
    body = next(iter(bodies.values()))
    tokenizer_json, tok_config, template, _ = await read_tokenizer_files(source)
    if tokenizer_json is None:
        raise UsageError(f"{source.name}: the file has no tokenizer to chat with")
    tokenizer = await BrowserTokenizer.create(req.base_url, tokenizer_json, tok_config, template)
    graph, location = await gguf_as_onnx(source)
    external = js.Array.new()
    external.push(js.Object.fromEntries(to_js([["path", location], ["data", body.view(0, body.size)]])))
    if w.onnx is not None:
        w.onnx.decoder.release()
        w.onnx = None
    ort = await load_ort(req.base_url)
    decoder = await WebOrtDecoder.create(ort, to_js(memoryview(graph)), DecoderShape.of(source.config),
                                         ["wasm"], external)
    label = source.name.removesuffix(".gguf")
    w.onnx = OnnxChat(decoder, tokenizer, label)
    return {"name": label, "model": f"{source.name}, read in place", "provider": decoder.provider,
            "family": source.config.family}


@command("onnx_generate", OnnxCompare)
async def onnx_generate_command(w: Worker, req: OnnxCompare) -> dict:
    """The loaded ONNX decoder's answer (onnx_load), streamed as "onnx" tokens. -> {"text", "tokens_per_s"}."""
    import time

    from ..session import prompt_tokens

    if w.onnx is None:
        raise UsageError("load an ONNX model first")
    ids = prompt_tokens(w.onnx.tokenizer, req.messages("base"), None, w.onnx.name)  # (its answers ride in "base")
    w.answer_stop = False
    started = time.perf_counter()
    text, tokens = await _onnx_answer(w, w.onnx, ids, req)
    return {"text": text, "provider": w.onnx.decoder.provider,
            "tokens_per_s": tokens / max(time.perf_counter() - started, 1e-9)}


# -- adapters and exports -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImportAdapter:
    files: dict[str, str]  # file name -> URL


@command("import_adapter", ImportAdapter, model="use")
async def import_adapter(w: Worker, req: ImportAdapter) -> dict:
    """A PEFT adapter (a .zip, or adapter_model.safetensors + adapter_config.json), checked against
    the loaded model; it then answers in the compare panel and is where the next run starts."""
    session = await w.ready()
    session.need_model()
    files = {}
    for name, url in req.files.items():
        data = (await w.fetch(url)).bytes()
        if name.lower().endswith(".zip"):
            files.update(files_from_zip(data, name))
        else:
            files[name] = data
    lora = session.import_adapter(files, "the chosen adapter")
    return {"r": lora.r, "alpha": lora.alpha, "targets": list(lora.targets), "tensors": len(session.imported[1])}


@dataclass(frozen=True)
class Export:
    format: str = "peft"  # "peft" | "gguf"


@command("export_adapter", Export, model="use")
async def export_adapter(w: Worker, req: Export) -> dict:
    """{"name", "base64"}: a PEFT zip (adapter_model.safetensors, adapter_config.json, README.md)
    or a llama.cpp GGUF-LoRA file."""
    import base64

    from ..formats.peft import zip_bytes

    if req.format not in ("peft", "gguf"):
        raise UsageError(f"unknown export format {req.format!r}; choose peft or gguf")
    session = await w.ready()
    session.need_model()
    if req.format == "gguf":
        data, name = await session.gguf_adapter(), f"{file_stem(session)}-lora.gguf"
    else:
        data, name = zip_bytes(await session.peft_files()), f"{file_stem(session)}-lora-adapter.zip"
    return {"name": name, "base64": base64.b64encode(data).decode()}


def file_stem(session: Session) -> str:
    """The loaded model's name as a file name's start (download names say what they hold)."""
    name = session.need_model().name.rsplit("/", 1)[-1].removesuffix(".gguf")
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:60].strip("-.") or "model"


@dataclass(frozen=True)
class ExportRecipe:
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    save_every: int = 0


@command("export_recipe", ExportRecipe, model="use")
async def export_recipe(w: Worker, req: ExportRecipe) -> dict:
    """{"name", "base64", "notes"}: the plan as a recipe for GPU servers (TRL + PEFT + accelerate,
    recipe.py) in a zip, and what the server run does differently (also in its README)."""
    import base64
    import json

    from ..formats.peft import zip_bytes

    session = await w.ready()
    session.need_model()
    files = await session.recipe_files(req.train, req.lora, save_every=req.save_every)
    return {"name": f"loralab-recipe-{file_stem(session)}.zip", "base64": base64.b64encode(zip_bytes(files)).decode(),
            "notes": json.loads(files["loralab.json"])["notes"]}


@dataclass(frozen=True)
class ExportMerged:
    quantize: str = ""  # "": a Hugging Face folder in a zip; a GGUF type: the GGUF base re-quantized


@command("export_merged", ExportMerged, model="use")
async def export_merged(w: Worker, req: ExportMerged) -> dict:
    """The adapter merged into the base model, written to the browser's private file system
    (streamed tensor by tensor) for the page to download from there: a Hugging Face folder in a
    zip, or with `quantize`, the GGUF base file with its merged matrices re-quantized.
    -> {"path", "name", "bytes"}."""
    import zipfile

    session = await w.ready()
    session.need_model()
    await session.adapter_state()  # (an adapter is needed before anything is written)
    size = session.merged_gguf_size(req.quantize) if req.quantize else session.merged_size()
    quota = await storage_free()
    if quota is not None and size > quota:
        raise StorageError(f"the merged model needs {size / 2**20:,.0f} MiB of browser storage and "
                           f"{quota / 2**20:,.0f} MiB are free; download the adapter instead")
    safe = file_stem(session)
    path = "loralab/exports/merged-model." + ("gguf" if req.quantize else "zip")
    with w.cancellable("Merging the adapter"):
        async with export_file(path) as out:
            if req.quantize:
                await session.write_merged_gguf(out.write, req.quantize)
            else:
                with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                    for name, data in session.merged_folder_files().items():
                        zf.writestr(name, data)
                    with zf.open("model.safetensors", "w", force_zip64=True) as entry:
                        await session.write_merged(entry.write)
            written = out.tell()
    name = f"{safe}-merged-{req.quantize}.gguf" if req.quantize else f"{safe}-merged.zip"
    return {"path": path, "name": name, "bytes": written}


@asynccontextmanager
async def export_file(path: str):
    """A file in the browser's private file system that an export streams into; one that did
    not end (an error, a cancel) is removed, not left to take up the person's storage."""
    from .opfs import SyncFile, remove

    out = await SyncFile.create(path)
    try:
        yield out
    except BaseException:
        out.close()
        await remove(path)
        raise
    out.close()


@dataclass(frozen=True)
class ExportOnnx:
    dtype: str = "both"  # fp32 (onnx/model.onnx), q4 (onnx/model_q4.onnx, MatMulNBits) or both


@command("export_onnx", ExportOnnx, model="use")
async def export_onnx(w: Worker, req: ExportOnnx) -> dict:
    """The base model with the adapter merged in as an ONNX folder (transformers.js' layout: config,
    tokenizer, onnx/model.onnx and/or onnx/model_q4.onnx) in a zip written to the browser's
    private file system, streamed tensor by tensor, for the page to download from there. A model
    over 2 GB keeps its weights in onnx/model.onnx_data. -> {"path", "name", "bytes"}."""
    import io
    import zipfile

    session = await w.ready()
    session.need_model()
    await session.adapter_state()  # (an adapter is needed before anything is written)
    files = session.onnx_files(req.dtype)
    size = session.onnx_bytes(req.dtype)
    quota = await storage_free()
    if quota is not None and size > quota:
        raise StorageError(f"the ONNX export needs {size / 2**20:,.0f} MiB of browser storage and "
                           f"{quota / 2**20:,.0f} MiB are free; choose the 4-bit variant or download the adapter")
    safe = file_stem(session)
    path = "loralab/exports/onnx-model.zip"
    with w.cancellable("Writing the ONNX model"):
        async with export_file(path) as out:
            with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                for name, data in session.onnx_folder_files({p: bool(d) for p, _, d in files}).items():
                    zf.writestr(name, data)
                for onnx_path, q4, data_path in files:
                    if data_path:  # the weights stream into their own entry; the small graph follows
                        graph = io.BytesIO()
                        with zf.open(data_path, "w", force_zip64=True) as entry:
                            await session.write_onnx(graph.write, q4, entry.write)
                        zf.writestr(onnx_path, graph.getvalue())
                    else:
                        with zf.open(onnx_path, "w", force_zip64=True) as entry:
                            await session.write_onnx(entry.write, q4)
            written = out.tell()
    return {"path": path, "name": f"{safe}-onnx-{req.dtype}.zip", "bytes": written}


async def storage_free() -> int | None:
    storage = getattr(js.navigator, "storage", None)
    if storage is None or not hasattr(storage, "estimate"):
        return None
    estimate = await storage.estimate()
    return int(estimate.quota) - int(estimate.usage)


# -- the benchmark -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bench:
    config: str = "loaded"  # "loaded" or a named config (config.NAMED_CONFIGS)
    batch_size: int = 4
    seq_len: int = 128
    steps: int = 5
    rank: int = 8


@command("bench", Bench, model="use")
@command("bench_step", Bench, model="use")
async def bench_step(w: Worker, req: Bench) -> dict:
    """The `loralab bench` training step in this browser -> tokens/s, ms/step, host_ms_per_step
    (writing the batch, encoding and submitting: the browser's own cost), dispatches and submits
    per step, peak GPU bytes. "loaded" times the loaded model's own weights; named configs use
    random weights (freed after)."""
    from ..bench import bench_training, check_bench_sizes
    from ..config import NAMED_CONFIGS, ModelConfig

    check_bench_sizes(req.batch_size, req.seq_len, req.steps, req.rank)
    session = await w.ready()
    session.need_idle("the benchmark")
    if req.config == "loaded":
        model = await session.upload()
        config, weights, label = model.config, model.weights, model.name
    elif req.config in NAMED_CONFIGS:
        config, weights, label = ModelConfig.from_dict(NAMED_CONFIGS[req.config], req.config), None, req.config
    else:
        raise UsageError(f"unknown benchmark config {req.config!r}; choose the loaded model or {', '.join(NAMED_CONFIGS)}")
    result = await bench_training(session.ops, config, req.batch_size, req.seq_len, req.steps, req.rank, weights,
                                  warmup=1)
    return {**result, "config": label}


# -- the browser cache ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    id: str


@dataclass(frozen=True)
class Limit:
    bytes: int


@command("cache_list", Empty)
async def cache_list(w: Worker, req: Empty) -> dict:
    """Cached models and datasets, most recently used first, and the size limit."""
    return {"items": await w.cache.items(), "limit": await w.cache.limit()}


@command("cache_delete", Item)
async def cache_delete(w: Worker, req: Item) -> dict:
    """-> {"freed": bytes}."""
    return {"freed": await w.cache.delete(req.id)}


@command("cache_set_limit", Limit)
async def cache_set_limit(w: Worker, req: Limit) -> dict:
    """-> {"evicted": [ids]}: least recently used items go until the rest fits (the loaded model stays)."""
    if req.bytes < 0:
        raise UsageError("the cache size limit cannot be negative")
    keep = w.model_item if w.session.model is not None else None
    return {"evicted": await w.cache.set_limit(req.bytes, keep)}


@command("cache_dataset", Item, model="use")
async def cache_dataset(w: Worker, req: Item) -> dict:
    """-> {"name", "text"} of a cached dataset."""
    name, text = await w.cache.read_text(req.id)
    return {"name": name, "text": text}


# -- kept runs -------------------------------------------------------------------------------------------------
@command("runs_list", Empty)
async def runs_list(w: Worker, req: Empty) -> dict:
    """The runs kept in this browser, newest first: {"runs": [{id, name, model, dataset, state,
    step, total_steps, loss, val_loss, created_at}]}."""
    return {"runs": await runs.index()}


@command("run_detail", Item)
async def run_detail(w: Worker, req: Item) -> dict:
    """One kept run: its summary, plan (train, lora), metric records and sample generations."""
    return await runs.detail(req.id)


@command("run_use", Item, model="use")
async def run_use(w: Worker, req: Item) -> dict:
    """A kept run's adapter, loaded as an imported one (checked against the loaded model): it
    answers in the compare panel and the next run starts from it."""
    session = await w.ready()
    session.need_model()
    session.need_idle("loading a kept run's adapter")
    summary = await runs.detail(req.id)
    lora = session.import_adapter(files_from_zip(await runs.adapter_zip(req.id), f"run {summary['name']}"),
                                  f"the adapter of run {summary['name']!r}")
    return {"name": summary["name"], "r": lora.r, "alpha": lora.alpha, "targets": list(lora.targets)}


@command("run_delete", Item)
async def run_delete(w: Worker, req: Item) -> dict:
    return {"runs": await runs.delete(req.id)}


# -- the saved run ---------------------------------------------------------------------------------------------
@command("checkpoint_info", Empty)
async def checkpoint_info(w: Worker, req: Empty) -> dict:
    """The saved training run, if any: {"checkpoint": {step, total_steps, state, model, dataset,
    saved_at, loss} | null}. An unreadable one is reported as {"checkpoint": null, "problem"}."""
    try:
        found = await runstore.load()
    except UserError as exc:
        return {"checkpoint": None, "problem": one_line(exc)}
    return {"checkpoint": runstore.summary(found[0]) if found else None}


@command("checkpoint_resume", Empty, model="use")
async def checkpoint_resume(w: Worker, req: Empty) -> dict:
    """Continue the saved run exactly where it was (same model, dataset, data order, schedule and
    optimizer state); after a lost GPU device a new device is started and the model uploaded again."""
    found = await runstore.load()
    if found is None:
        raise UsageError("there is no saved training run to resume")
    meta, buffers, source = found
    if w.device is not None and w.device.lost_reason is not None:
        await w.restart()
    session = await w.ready()
    model = session.need_model()
    runstore.check_model(meta, model.config)
    session.need_idle("resuming")
    session.use_dataset(source["name"], source["text"], source["format"], source["seq_len"],
                        source["valid_fraction"], source.get("train_on_prompt", False))
    train, lora = checkpoint_configs(meta, "the saved training run")
    run = await session.start_run(train, lora, restore=(meta, buffers))
    result = start_background(w, run, meta["app"]["save_every"], None, None)
    return {**result, "dataset": source["name"], "model": meta["app"]["model"]}


@command("checkpoint_discard", Empty)
async def checkpoint_discard(w: Worker, req: Empty) -> dict:
    await runstore.discard()
    return {}


# -- the raw tokenizer, for the parity tests ---------------------------------------------------------------------
@dataclass(frozen=True)
class Tokenize:
    base_url: str
    tokenizer_json: str
    config: dict = field(default_factory=dict)
    chat_template: str | None = None
    texts: list[str] = field(default_factory=list)
    chats: list[list[dict]] = field(default_factory=list)


@command("tokenize", Tokenize, debug=True, model="use")
async def tokenize(w: Worker, req: Tokenize) -> dict:
    """The browser's tokenizer on its own: ids of each text, and ids, labels and rendered text of
    each chat (loss on assistant turns, as in training)."""
    from ..data.formats import encode_record
    from .tokenizer import BrowserTokenizer

    tok = await BrowserTokenizer.create(req.base_url, req.tokenizer_json, req.config, req.chat_template)
    chats = []
    for i, messages in enumerate(req.chats):
        seq = encode_record({"messages": messages}, "chat", tok, f"chat {i + 1}")
        chats.append({"ids": seq.input_ids, "labels": seq.labels, "text": tok.apply_chat_template(messages)})
    return {"ids": [tok.encode(t) for t in req.texts], "chats": chats}
