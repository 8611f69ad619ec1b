"""The app's saved training run, in the browser's private file system (engine worker only).

One run is kept: `loralab/run/dataset.json` (the dataset as the person gave it, written when the
run starts) and `loralab/run/state.safetensors` (adapter, AdamW moments, step, data order,
config, metrics so far; replaced in one write at each checkpoint). After a reload, a crash or a
lost GPU device the app offers to continue from it, on the same model.
"""

from __future__ import annotations

import hashlib
import json
import time

from ..checks import boolean, field, integer, loads, mapping, number, text
from ..config import ModelConfig
from ..errors import UsageError
from ..formats.checkpoint import CheckpointError, check, pack, unpack
from . import opfs

FOLDER = "loralab/run"
STATE = f"{FOLDER}/state.safetensors"
DATASET = f"{FOLDER}/dataset.json"


def fingerprint(config: ModelConfig) -> dict:
    """What must match for a saved adapter to fit the loaded model."""
    return {"architecture": config.architecture, "layers": config.num_layers, "hidden_size": config.hidden_size,
            "intermediate_size": config.intermediate_size, "heads": config.num_heads, "kv_heads": config.num_kv_heads,
            "vocab_size": config.vocab_size}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def begin(dataset: dict) -> None:
    """A new run replaces the saved one: its dataset first, the state at its first checkpoint."""
    await opfs.remove(STATE)
    await opfs.write(DATASET, json.dumps({**dataset, "sha256": _digest(dataset["text"])}).encode())


async def save(trainer, model_name: str, config: ModelConfig, dataset: dict, save_every: int, state: str,
               model_item: str | None = None, progress=None) -> dict:
    """The run's whole state to the private file system; `progress(fraction)`: reading it from
    the GPU is the first tenth, writing it the rest."""
    progress = progress or (lambda fraction: None)
    progress(0.0)
    meta, buffers = await trainer.state()
    progress(0.1)
    losses = [r["loss"] for r in meta["history"] if r.get("kind") == "train"]
    meta["app"] = {"model": model_name, "model_item": model_item, "fingerprint": fingerprint(config), "state": state,
                   "dataset": dataset["name"], "dataset_sha256": _digest(dataset["text"]), "save_every": save_every,
                   "total_steps": trainer.total_steps, "saved_at": time.time(), "loss": losses[-1] if losses else None}
    await opfs.write(STATE, pack(meta, buffers), lambda f: progress(0.1 + 0.9 * f))
    return summary(meta)


def summary(meta: dict) -> dict:
    app = meta["app"]
    return {"step": meta["step"], "total_steps": app["total_steps"], "state": app["state"], "model": app["model"],
            "dataset": app["dataset"], "saved_at": app["saved_at"], "loss": app["loss"],
            "model_item": app.get("model_item") if isinstance(app.get("model_item"), str) else None}


async def load() -> tuple[dict, dict[str, bytes], dict] | None:
    """(state, tensors, dataset) of the saved run, or None when there is none (or it is unreadable:
    the app then says so rather than offering a broken resume)."""
    data = await opfs.read(STATE)
    if data is None:
        return None
    where, E = "the saved training run", CheckpointError
    meta, buffers = unpack(data, where)
    check(meta, buffers, where)
    app = mapping(meta.get("app"), f"{where}: app", E)
    for key in ("model", "dataset", "dataset_sha256", "state"):
        field(app, key, text, where, E)
    for key in ("save_every", "total_steps"):
        field(app, key, integer, where, E)
    mapping(app.get("fingerprint"), f"{where}: fingerprint", E)
    raw = await opfs.read(DATASET)
    dataset = loads(raw, f"{where}: dataset.json", E) if raw else None
    if not isinstance(dataset, dict) or dataset.get("sha256") != app["dataset_sha256"]:
        raise E("the saved training run's dataset is missing or was replaced; start a new run")
    for key in ("name", "text", "format"):
        field(dataset, key, text, f"{where}: dataset.json", E, limit=1 << 31)
    field(dataset, "seq_len", integer, f"{where}: dataset.json", E, lo=1)
    field(dataset, "valid_fraction", number, f"{where}: dataset.json", E)
    field(dataset, "train_on_prompt", boolean, f"{where}: dataset.json", E, default=False)
    return meta, buffers, dataset


def check_model(meta: dict, config: ModelConfig) -> None:
    app = meta["app"]
    if app["fingerprint"] != fingerprint(config):
        raise UsageError(f"the saved run trains {app['model']} ({app['fingerprint']['architecture']}, "
                         f"{app['fingerprint']['layers']} layers, hidden size {app['fingerprint']['hidden_size']}); "
                         f"load that model, then resume")


async def discard() -> None:
    await opfs.remove(STATE)
    await opfs.remove(DATASET)
