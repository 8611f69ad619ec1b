"""Training checkpoints on disk (CPython): `state.json` + `state.safetensors` in a folder,
written atomically (a crash mid-write leaves the previous checkpoint intact)."""

from __future__ import annotations

import json
import os

from ..errors import UserError
from .safetensors import SafetensorsError, parse_header, serialize

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
        with open(os.path.join(directory, STATE_JSON), encoding="utf-8") as f:
            meta = json.load(f)
        with open(os.path.join(directory, STATE_TENSORS), "rb") as f:
            data = f.read()
    except FileNotFoundError as exc:
        raise CheckpointError(f"{directory}: not a LoRA Lab checkpoint ({os.path.basename(exc.filename)} is missing)") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{directory}/{STATE_JSON}: invalid JSON ({exc})") from None
    header = parse_header(data, len(data), f"{directory}/{STATE_TENSORS}")
    return meta, {name: data[t.start : t.end] for name, t in header.tensors.items()}


def pack(meta: dict, buffers: dict[str, bytes]) -> bytes:
    """The whole state as one safetensors file (the JSON state in its metadata): one write
    replaces a checkpoint in the browser's private file system, so it is never half written."""
    return serialize({k: ("F32", (len(v) // 4,), v) for k, v in buffers.items()}, {"loralab_state": json.dumps(meta)})


def unpack(data: bytes, source: str) -> tuple[dict, dict[str, bytes]]:
    header = parse_header(data, len(data), source)
    try:
        meta = json.loads(header.metadata["loralab_state"])
    except (KeyError, json.JSONDecodeError):
        raise SafetensorsError(f"{source}: not a LoRA Lab checkpoint (no training state in its metadata)") from None
    return meta, {name: data[t.start : t.end] for name, t in header.tensors.items()}
