"""Finished training runs kept in the browser, to compare and to reuse (engine worker only).

In the private file system, `loralab/runs/`: `index.json` (one summary per run, newest first),
and per run `<id>.json` (the summary, the plan, every metric record and the sample generations)
and `<id>.zip` (its adapter as a PEFT folder). A run is kept when it ends with at least one step
(done or stopped); the oldest beyond KEEP are deleted. The saved *checkpoint* (runstore.py) is
another thing: one run's whole training state, to continue it.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict

from ..errors import UsageError
from ..formats.peft import zip_bytes
from . import opfs

FOLDER = "loralab/runs"
INDEX = f"{FOLDER}/index.json"
KEEP = 20
RUN_ID = re.compile(r"[0-9]{1,20}")


async def index() -> list[dict]:
    """The kept runs' summaries, newest first (an unreadable index reads as none)."""
    raw = await opfs.read(INDEX)
    if raw is None:
        return []
    try:
        found = json.loads(raw)
    except ValueError:
        return []
    return [r for r in found if isinstance(r, dict) and isinstance(r.get("id"), str) and RUN_ID.fullmatch(r["id"])] \
        if isinstance(found, list) else []


def _check_id(run_id: str) -> str:
    if not RUN_ID.fullmatch(run_id):
        raise UsageError(f"no kept run has the id {run_id!r}")
    return run_id


def summarize(run, model_name: str, dataset_name: str, run_id: str) -> dict:
    lora, train = run.lora.config, run.trainer.config
    losses = [r["loss"] for r in run.history if r.get("kind") == "train"]
    evals = [r["loss"] for r in run.history if r.get("kind") == "eval"]
    return {"id": run_id, "name": f"{dataset_name} · r {lora.r} · lr {train.lr:g}", "model": model_name,
            "dataset": dataset_name, "state": run.state, "step": run.step, "total_steps": run.trainer.total_steps,
            "loss": losses[-1] if losses else None, "val_loss": evals[-1] if evals else None,
            "created_at": time.time()}


async def keep(session, run, samples: list[dict]) -> dict:
    """Keep a run that ended: its adapter (PEFT files), plan, metrics and samples."""
    model, dataset = session.need_model(), session.dataset
    run_id = str(int(time.time() * 1000))
    summary = summarize(run, model.name, dataset.source["name"] if dataset else "?", run_id)
    detail = {**summary, "train": asdict(run.trainer.config), "lora": asdict(run.lora.config),
              "records": [r for r in run.history if r.get("kind") in ("train", "eval")], "samples": samples}
    await opfs.write(f"{FOLDER}/{run_id}.zip", zip_bytes(await session.peft_files()))
    await opfs.write(f"{FOLDER}/{run_id}.json", json.dumps(detail).encode())
    runs = [summary, *(r for r in await index() if r["id"] != run_id)]
    for old in runs[KEEP:]:
        await _remove_files(old["id"])
    await opfs.write(INDEX, json.dumps(runs[:KEEP]).encode())
    return summary


async def detail(run_id: str) -> dict:
    raw = await opfs.read(f"{FOLDER}/{_check_id(run_id)}.json")
    if raw is None:
        raise UsageError(f"the kept run {run_id} is gone from this browser's storage")
    try:
        return json.loads(raw)
    except ValueError:
        raise UsageError(f"the kept run {run_id} is unreadable; delete it") from None


async def adapter_zip(run_id: str) -> bytes:
    data = await opfs.read(f"{FOLDER}/{_check_id(run_id)}.zip")
    if data is None:
        raise UsageError(f"the adapter of the kept run {run_id} is gone from this browser's storage")
    return data


async def _remove_files(run_id: str) -> None:
    for ext in ("json", "zip"):
        await opfs.remove(f"{FOLDER}/{run_id}.{ext}")


async def delete(run_id: str) -> list[dict]:
    await _remove_files(_check_id(run_id))
    runs = [r for r in await index() if r["id"] != run_id]
    await opfs.write(INDEX, json.dumps(runs).encode())
    return runs
