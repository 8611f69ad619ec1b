"""Training checkpoints on disk (CPython): `state.json` + `state.safetensors` in a folder,
written atomically (a crash mid-write leaves the previous checkpoint intact)."""

from __future__ import annotations

import json
import os

from ..checks import integer, loads, mapping
from ..errors import UserError
from .safetensors import parse_header, serialize

STATE_JSON = "state.json"
STATE_TENSORS = "state.safetensors"


def save(directory: str, meta: dict, buffers: dict[str, bytes]) -> None:
    os.makedirs(directory, exist_ok=True)
    blobs = {STATE_TENSORS: serialize({k: ("F32", (len(v) // 4,), v) for k, v in buffers.items()}),
             STATE_JSON: json.dumps(meta).encode()}
    for name, data in blobs.items():
        tmp = os.path.join(directory, name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, os.path.join(directory, name))


class CheckpointError(UserError):
    """A checkpoint folder that is missing files or holds something else."""


def load(directory: str) -> tuple[dict, dict[str, bytes]]:
    try:
        with open(os.path.join(directory, STATE_JSON), "rb") as f:
            meta = loads(f.read(), f"{directory}/{STATE_JSON}", CheckpointError)
        with open(os.path.join(directory, STATE_TENSORS), "rb") as f:
            data = f.read()
    except FileNotFoundError as exc:
        raise CheckpointError(f"{directory}: not a LoRA Lab checkpoint ({os.path.basename(exc.filename)} is missing)") from None
    header = parse_header(data, len(data), f"{directory}/{STATE_TENSORS}")
    buffers = {name: data[t.start : t.end] for name, t in header.tensors.items()}
    check(meta, buffers, directory)
    return meta, buffers


def check(meta, buffers: dict[str, bytes], directory: str) -> None:
    """The fields a resume reads, checked for type before anything is built from them."""
    where = f"{directory}/{STATE_JSON}"
    E = CheckpointError
    mapping(meta, where, E)
    for key in ("lora", "train", "order"):
        mapping(meta.get(key), f"{where}: {key}", E)
    integer(meta.get("step"), f"{where}: step", E)
    for key in ("epoch", "index"):
        integer(meta["order"].get(key), f"{where}: order.{key}", E)
    targets = meta["lora"].get("targets")
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise E(f"{where}: lora.targets must be a list of projection names")
    missing = [name for name in ("params", "m", "v") if name not in buffers]
    if missing:
        raise E(f"{directory}/{STATE_TENSORS}: {', '.join(missing)} missing")


def pack(meta: dict, buffers: dict[str, bytes]) -> bytes:
    """The whole state as one safetensors file (the JSON state in its metadata): one write
    replaces a checkpoint in the browser's private file system, so it is never half written."""
    return serialize({k: ("F32", (len(v) // 4,), v) for k, v in buffers.items()}, {"loralab_state": json.dumps(meta)})


def unpack(data: bytes, source: str) -> tuple[dict, dict[str, bytes]]:
    header = parse_header(data, len(data), source)
    if "loralab_state" not in header.metadata:
        raise CheckpointError(f"{source}: not a LoRA Lab checkpoint (no training state in its metadata)")
    meta = loads(header.metadata["loralab_state"], f"{source}: its training state", CheckpointError)
    return meta, {name: data[t.start : t.end] for name, t in header.tensors.items()}
