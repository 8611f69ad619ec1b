"""An adapter merged into its base model (W' = W + scaling · B · A), as a Hugging Face folder.

The products run on the GPU, one projection at a time, and the merged tensors are streamed to
the writer in the order the safetensors header lists them, so at most one tensor is on the host
at a time: the CLI writes a folder, the browser writes a zip into its private file system.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable

from .config import ARCHITECTURES, MERGED_GGUF_TYPES, ModelConfig
from .errors import UsageError
from .formats.safetensors import header_bytes
from .gpu.device import Buffer, Copy, Device
from .lora import LoraState
from .model.weights import expected_shapes, file_shapes, file_tensors
from .ops import QUANT_DTYPES, Ops, ggml_bytes


def _lora_site(name: str) -> tuple[int, str] | None:
    """(layer, projection) of a projection weight's Hugging Face name, else None."""
    parts = name.split(".")
    if len(parts) == 6 and parts[:2] == ["model", "layers"] and parts[-1] == "weight":
        return int(parts[2]), parts[4]
    return None


def _nbytes(shape: tuple[int, ...], dtype: str = "F32") -> int:
    n = 2 if dtype == "F16" else 4
    for d in shape:
        n *= d
    return n


def merged_dtype(weights: dict[str, Buffer]) -> str:
    """The merged matrices' safetensors dtype: float32 over float32 weights; float16 over
    quantized ones (their values plus the delta, at half float32's size)."""
    return "F16" if any(b.dtype in QUANT_DTYPES for b in weights.values()) else "F32"


def _tensor_dtype(shape: tuple[int, ...], dtype: str) -> str:
    return dtype if len(shape) == 2 else "F32"  # (norms and biases stay float32)


def merged_bytes(config: ModelConfig, dtype: str = "F32") -> int:
    """The size of the merged model's tensors."""
    return sum(_nbytes(shape, _tensor_dtype(shape, dtype)) for shape in file_shapes(config).values())


def _merged_matrix(device: Device, ops: Ops, config: ModelConfig, name: str, buf: Buffer, shape: tuple[int, ...],
                   lora: LoraState | None, temps: list[Buffer]) -> Buffer:
    """Base tensor `name` as float32 on the GPU, with scaling · B · A added where the adapter (if
    any) has its projection (a quantized weight dequantized first); the buffers it makes go in `temps`."""
    if buf.dtype == "f16":
        raise UsageError(f"merging needs float32 or quantized base weights; {name} is float16 (load with --weights "
                         f"f32)")
    if buf.dtype in QUANT_DTYPES:
        plain = device.create_buffer(_nbytes(shape), label=f"{name}.dequantized")
        temps.append(plain)
        device.submit([ops.dequantize(plain, buf, *shape)])
        buf = plain
    site = _lora_site(name)
    if site is not None and lora is not None and lora.has(*site):
        device.submit(lora.apply_dispatches(ops))  # (AdaLoRA: B · diag(E) from the parameters as they are)
        layer, module = site
        out_f, in_f = config.projection_shape(module)
        r, scale = lora.rank(layer, module), lora.scaling(layer, module)
        merged = device.create_buffer(buf.size, label=f"{name}.merged")
        temps.append(merged)
        # merged[out, in] = W + scale · B[out, r] · A[r, in]  (A is stored [r, in]: op(B) = Aᵀ)
        device.submit([Copy(buf, 0, merged, 0, buf.size)] + ops.matmul(
            merged, lora.param(layer, module, "B"), lora.param(layer, module, "A"), out_f, in_f, r,
            trans_b=True, alpha=scale, beta=1.0))
        buf = merged
        if lora.dora(layer, module):  # DoRA, as PEFT merges it: each row times m / ‖its row‖
            norms = device.create_buffer(out_f * 4, label=f"{name}.norms")
            scaled = device.create_buffer(buf.size, label=f"{name}.dora")
            temps += [norms, scaled]
            device.submit([ops.dora_norm(norms, merged, None, None, out_f, in_f),
                           ops.dora_scale(scaled, merged, lora.param(layer, module, "M"), norms, out_f, in_f,
                                          by_row=True)])
            buf = scaled
    return buf


async def merged_tensors(device: Device, ops: Ops, config: ModelConfig, weights: dict[str, Buffer],
                         lora: LoraState, dtype: str = "F32") -> AsyncIterator[tuple[str, bytes]]:
    """Each base tensor by name (sorted, as in the safetensors header) as `dtype` bytes (see
    merged_dtype), with scaling · B · A added where the adapter has a projection; a quantized
    weight is dequantized first."""
    shapes, files = expected_shapes(config), file_tensors(config)
    for name in sorted(files):
        tensor, temps = files[name], []
        try:
            # (several parts: Phi-3's fused matrices, GPT-2's c_attn, their rows in turn)
            parts = [(_merged_matrix(device, ops, config, part, weights[part], shapes[part], lora, temps),
                      math.prod(shapes[part])) for part in tensor.parts]
            if tensor.transposed:  # GPT-2's Conv1D weights: the parts' rows together, stored [in, out]
                rows, cols = tensor.shape[1], tensor.shape[0]
                whole = device.create_buffer(rows * cols * 4, label=f"{name}.rows")
                out = device.create_buffer(rows * cols * 4, label=name)
                temps += [whole, out]
                copies, at = [], 0
                for buf, numel in parts:
                    copies.append(Copy(buf, 0, whole, at, numel * 4))
                    at += numel * 4
                device.submit(copies + [ops.transpose(out, whole, rows, cols)])
                parts = [(out, rows * cols)]
            data = b""
            for buf, numel in parts:
                if _tensor_dtype(tensor.shape, dtype) == "F16":
                    half = device.create_buffer(-(-numel // 2) * 4, label=f"{name}.f16")
                    temps.append(half)
                    device.submit([ops.to_f16(half, buf, numel)])
                    data += (await device.read_buffer(half))[: numel * 2]
                else:
                    data += (await device.read_buffer(buf))[: numel * 4]
        finally:
            for temp in temps:
                device.destroy_buffer(temp)
        yield name, data


def _gguf_plan(source, lora: LoraState, quant: str) -> list[tuple[object, list[str] | None, int, int]]:
    """(GGUF tensor info, the engine tensors it holds where the adapter changes any of them (a
    fused attn_qkv or ffn_up holds several, rows in turn), ggml type id, bytes) for every tensor
    of the source file, in the file's order."""
    from .formats.gguf import GGML_TYPES
    from .model.gguf_model import hf_name
    from .model.weights import engine_tensors

    type_id = {name: kind for kind, (name, _, _) in GGML_TYPES.items()}
    out = []
    for info in sorted(source.gguf.tensors.values(), key=lambda i: i.start):
        hf = hf_name(info.name, source.arch)
        parts = list(engine_tensors(source.config, {hf: info}, source.name)) if hf else []
        if any((site := _lora_site(part)) is not None and lora.has(*site) for part in parts):
            out.append((info, parts, type_id[quant], ggml_bytes(quant, math.prod(info.shape))))
        else:
            out.append((info, None, type_id[info.dtype], info.end - info.start))
    return out


def merged_gguf_size(source, lora: LoraState, quant: str) -> int:
    """Bytes of the re-quantized merged GGUF file (header included)."""
    from .formats.gguf import header

    plan = _gguf_plan(source, lora, quant)
    align = source.gguf.alignment
    start, end = source.gguf.metadata_span
    head = header(bytes(end - start), 0, [(i.name, i.shape, k, n) for i, _, k, n in plan], align)
    return len(head) + sum(-(-n // align) * align for _, _, _, n in plan)


async def write_merged_gguf(write: Callable[[bytes], object], device: Device, ops: Ops, source,
                            weights: dict[str, Buffer], lora: LoraState, quant: str) -> None:
    """The base GGUF file with the adapter merged in, re-quantized, streamed through `write`: its
    metadata (architecture, tokenizer, chat template) and every tensor the adapter leaves alone
    copied byte for byte; each merged matrix written as `quant` (MERGED_GGUF_TYPES, ggml's
    reference quantizer on the GPU) in llama.cpp's row order."""
    from .formats.gguf import header

    if quant not in MERGED_GGUF_TYPES:
        raise UsageError(f"re-quantize to one of {', '.join(MERGED_GGUF_TYPES)}, not {quant!r}")
    gguf = source.gguf
    start, end = gguf.metadata_span
    metadata = bytes(await source.read_span(start, end))
    plan = _gguf_plan(source, lora, quant)
    shapes = expected_shapes(source.config)
    write(header(metadata, len(gguf.metadata), [(i.name, i.shape, k, n) for i, _, k, n in plan], gguf.alignment))
    for info, parts, _, size in plan:
        if parts is None:
            data = await source.read_span(info.start, info.end)
        else:
            temps: list[Buffer] = []
            try:
                merged = [_merged_matrix(device, ops, source.config, part, weights[part], shapes[part], lora, temps)
                          for part in parts]
                rows, cols = sum(shapes[part][0] for part in parts), shapes[parts[0]][1]
                if len(merged) > 1:  # a fused matrix: its parts' rows in turn
                    whole = device.create_buffer(rows * cols * 4, label=f"{info.name}.merged")
                    temps.append(whole)
                    copies, at = [], 0
                    for part, buf in zip(parts, merged):
                        copies.append(Copy(buf, 0, whole, at, math.prod(shapes[part]) * 4))
                        at += math.prod(shapes[part]) * 4
                    device.submit(copies)
                    merged = [whole]
                blocks = device.create_buffer(ggml_bytes(quant, rows * cols, pairs=True), label=f"{info.name}.{quant}")
                temps.append(blocks)
                device.submit([ops.to_ggml(blocks, merged[0], quant, rows, cols, source.row_permutation(parts[0]))])
                data = (await device.read_buffer(blocks))[:size]
            finally:
                for temp in temps:
                    device.destroy_buffer(temp)
        write(data)
        write(bytes(-size % gguf.alignment))


def safetensors_header(config: ModelConfig, dtype: str = "F32") -> bytes:
    entries = {name: (_tensor_dtype(shape, dtype), shape, _nbytes(shape, _tensor_dtype(shape, dtype)))
               for name, shape in file_shapes(config).items()}
    return header_bytes(entries, {"format": "pt"})


async def write_merged(write: Callable[[bytes], object], device: Device, ops: Ops, config: ModelConfig,
                       weights: dict[str, Buffer], lora: LoraState) -> None:
    """model.safetensors of the merged model, streamed through `write`."""
    dtype = merged_dtype(weights)
    write(safetensors_header(config, dtype))
    async for _, data in merged_tensors(device, ops, config, weights, lora, dtype):
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


def merged_config(config_dict: dict, tokenizer_json: str | None, tokenizer_config: dict | None,
                  dtype: str = "F32") -> tuple[dict, dict]:
    """(config.json, generation_config.json) of the merged folder, with what save_pretrained writes
    and AutoModelForCausalLM needs: model_type, one architecture, the dtype (float32, or float16
    over a quantized base; under both names transformers has used), tie_word_embeddings, and the special token ids (taken from the
    tokenizer when the source, e.g. a GGUF file, has no config.json of its own)."""
    arch = next(a for a in config_dict.get("architectures", []) if a in ARCHITECTURES)
    config = {**config_dict, "architectures": [arch], "model_type": config_dict.get("model_type") or ARCHITECTURES[arch],
              "torch_dtype": "float16" if dtype == "F16" else "float32",
              "dtype": "float16" if dtype == "F16" else "float32",
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
                 chat_template: str | None, generation_config: dict | None = None, dtype: str = "F32") -> dict[str, bytes]:
    """The merged folder's small files: config.json (with the merged dtype), generation_config.json
    (the source's own when it has one) and the tokenizer's."""
    config, generation = merged_config(config_dict, tokenizer_json, tokenizer_config, dtype)
    files = {"config.json": json.dumps(config, indent=2).encode(),
             "generation_config.json": json.dumps(generation_config or generation, indent=2).encode()}
    if tokenizer_json is not None:
        files["tokenizer.json"] = tokenizer_json.encode()
        tok = {**(tokenizer_config or {}), **({"chat_template": chat_template} if chat_template else {})}
        files["tokenizer_config.json"] = json.dumps(tok, indent=2).encode()
    return files
