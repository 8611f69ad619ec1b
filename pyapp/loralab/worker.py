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

from .data.formats import DatasetError, load_dataset
from .engine import fit_seq_len, load_ops, prepare_training
from .formats.peft import AdapterError, check_fits, parse_adapter
from .formats.remote import FetchError, RemoteFolder, fetch
from .formats.safetensors import SafetensorsError
from .gpu.browser import BrowserDevice
from .gpu.device import GpuError
from .kernels import KernelLibrary, SourceReader
from .lora import LoraConfig
from .model.config import ModelConfigError
from .model.weights import WeightsError
from .selftest import matmul_check
from .train import NonFiniteLoss, TrainConfig

USER_ERRORS = (GpuError, FileNotFoundError, FetchError, DatasetError, AdapterError, SafetensorsError,
               ModelConfigError, WeightsError, NonFiniteLoss, ValueError)

_engine: dict = {}


def fetch_reader(base_url: str) -> SourceReader:
    """Kernel sources fetched from the site's `wgsl/` folder (the worker runs from a blob: URL,
    so the page passes its own absolute URL)."""

    async def read(name: str) -> str:
        url = js.URL.new(f"wgsl/{name}.wgsl", base_url).href
        response = await js.fetch(url)
        if not response.ok:
            raise FileNotFoundError(f"kernel source {url} could not be loaded (HTTP {response.status})")
        return await response.text()

    return read


def _result(fn):
    async def wrapped(*args):
        try:
            return json.dumps({"ok": True, **await fn(*args)})
        except USER_ERRORS as exc:
            return json.dumps({"ok": False, "error": str(exc)})
        except Exception as exc:  # an engine bug: say so, keep the page alive
            return json.dumps({"ok": False, "error": f"internal error: {exc}", "detail": traceback.format_exc()})

    wrapped.__name__ = fn.__name__
    return wrapped


@_result
async def probe(base_url: str) -> dict:
    """Start the engine: WebGPU adapter and device, then a checked kernel run."""
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
    source = await RemoteFolder.open(req["model_url"])
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
    from .data.formats import encode_record
    from .data.tokenizer_browser import BrowserTokenizer

    req = json.loads(request)
    tok = await BrowserTokenizer.create(req["base_url"], req["tokenizer_json"], req.get("config") or {},
                                        req.get("chat_template"))
    chats = []
    for i, messages in enumerate(req.get("chats", [])):
        seq = encode_record({"messages": messages}, "chat", tok, f"chat {i + 1}")
        chats.append({"ids": seq.input_ids, "labels": seq.labels, "text": tok.apply_chat_template(messages)})
    return {"ids": [tok.encode(t) for t in req.get("texts", [])], "chats": chats}


EXPORTS = {"probe": probe, "train_run": train_run, "tokenize": tokenize}
