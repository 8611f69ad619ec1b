"""An adapter merged into its base model (W' = W + scaling · B · A), as a Hugging Face folder.

The products run on the GPU, one projection at a time, and the merged tensors are streamed to
the writer in the order the safetensors header lists them, so at most one tensor is on the host
at a time: the CLI writes a folder, the browser writes a zip into its private file system.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

from .config import ARCHITECTURES, ModelConfig
from .errors import UsageError
from .formats.safetensors import header_bytes
from .gpu.device import Buffer, Copy, Device
from .lora import LoraState
from .model.weights import expected_shapes
from .ops import Ops


def _lora_site(name: str) -> tuple[int, str] | None:
    """(layer, projection) of a projection weight's Hugging Face name, else None."""
    parts = name.split(".")
    if len(parts) == 6 and parts[:2] == ["model", "layers"] and parts[-1] == "weight":
        return int(parts[2]), parts[4]
    return None


def _nbytes(shape: tuple[int, ...]) -> int:
    n = 4
    for d in shape:
        n *= d
    return n


def merged_bytes(config: ModelConfig) -> int:
    """The size of the merged model's float32 tensors."""
    return sum(_nbytes(shape) for shape in expected_shapes(config).values())


async def merged_tensors(device: Device, ops: Ops, config: ModelConfig, weights: dict[str, Buffer],
                         lora: LoraState) -> AsyncIterator[tuple[str, bytes]]:
    """Each base tensor by name (sorted, as in the safetensors header) as float32 bytes, with
    scaling · B · A added where the adapter has a projection."""
    for name in sorted(expected_shapes(config)):
        buf = weights[name]
        if buf.dtype != "f32":
            raise UsageError(f"merging needs float32 base weights; {name} is {buf.dtype} (load with --weights f32)")
        site = _lora_site(name)
        if site is None or not lora.has(*site):
            yield name, await device.read_buffer(buf)
            continue
        layer, module = site
        out_f, in_f = config.projection_shape(module)
        r, scale = lora.config.rank(layer, module), lora.config.scaling_for(layer, module)
        merged = device.create_buffer(buf.size, label=f"{name}.merged")
        try:
            # merged[out, in] = W + scale · B[out, r] · A[r, in]  (A is stored [r, in]: op(B) = Aᵀ)
            device.submit([Copy(buf, 0, merged, 0, buf.size)] + ops.matmul(
                merged, lora.param(layer, module, "B"), lora.param(layer, module, "A"), out_f, in_f, r,
                trans_b=True, alpha=scale, beta=1.0))
            yield name, await device.read_buffer(merged)
        finally:
            device.destroy_buffer(merged)


def safetensors_header(config: ModelConfig) -> bytes:
    entries = {name: ("F32", shape, _nbytes(shape)) for name, shape in expected_shapes(config).items()}
    return header_bytes(entries, {"format": "pt"})


async def write_merged(write: Callable[[bytes], object], device: Device, ops: Ops, config: ModelConfig,
                       weights: dict[str, Buffer], lora: LoraState) -> None:
    """model.safetensors of the merged model, streamed through `write`."""
    write(safetensors_header(config))
    async for _, data in merged_tensors(device, ops, config, weights, lora):
        write(data)


def _token_id(tokenizer_json: dict, token) -> int | None:
    """The id of a special token (a string, or {"content": ...}) in a parsed tokenizer.json."""
    token = token.get("content") if isinstance(token, dict) else token
    if not isinstance(token, str):
        return None
    for added in tokenizer_json.get("added_tokens") or []:
        if isinstance(added, dict) and added.get("content") == token and isinstance(added.get("id"), int):
            return added["id"]
    vocab = (tokenizer_json.get("model") or {}).get("vocab")
    return vocab.get(token) if isinstance(vocab, dict) else None


def merged_config(config_dict: dict, tokenizer_json: str | None, tokenizer_config: dict | None) -> tuple[dict, dict]:
    """(config.json, generation_config.json) of the merged folder, with what save_pretrained writes
    and AutoModelForCausalLM needs: model_type, one architecture, the float32 dtype (under both
    names transformers has used), tie_word_embeddings, and the special token ids (taken from the
    tokenizer when the source, e.g. a GGUF file, has no config.json of its own)."""
    arch = next(a for a in config_dict.get("architectures", []) if a in ARCHITECTURES)
    config = {**config_dict, "architectures": [arch], "model_type": config_dict.get("model_type") or ARCHITECTURES[arch],
              "torch_dtype": "float32", "dtype": "float32",
              "tie_word_embeddings": bool(config_dict.get("tie_word_embeddings", False))}
    generation = {}
    if tokenizer_json is not None:
        spec = json.loads(tokenizer_json)
        for name in ("bos", "eos", "pad"):
            found = _token_id(spec, (tokenizer_config or {}).get(f"{name}_token"))
            if found is not None and config.get(f"{name}_token_id") is None:
                config[f"{name}_token_id"] = found
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if config.get(name) is not None:
            generation[name] = config[name]
    return config, generation


def folder_files(config_dict: dict, tokenizer_json: str | None, tokenizer_config: dict | None,
                 chat_template: str | None, generation_config: dict | None = None) -> dict[str, bytes]:
    """The merged folder's small files: config.json (float32 now), generation_config.json (the
    source's own when it has one) and the tokenizer's."""
    config, generation = merged_config(config_dict, tokenizer_json, tokenizer_config)
    files = {"config.json": json.dumps(config, indent=2).encode(),
             "generation_config.json": json.dumps(generation_config or generation, indent=2).encode()}
    if tokenizer_json is not None:
        files["tokenizer.json"] = tokenizer_json.encode()
        tok = {**(tokenizer_config or {}), **({"chat_template": chat_template} if chat_template else {})}
        files["tokenizer_config.json"] = json.dumps(tok, indent=2).encode()
    return files
