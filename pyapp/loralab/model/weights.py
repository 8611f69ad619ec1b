"""A model's weights: which tensors a config needs, checking them, uploading them to the GPU
as float32, float16 or quantized (upload_weights).

Sources hand over tensors by Hugging Face name; `HFFolder` reads a local model folder
(CPython). Bytes go from the file straight to a GPU buffer.
"""

from __future__ import annotations

import os
from typing import Protocol

from ..checks import loads, path_inside, weight_map_shards
from ..config import ATTENTION, FUSED, PROJECTIONS, ModelConfig, ModelConfigError, module_name
from ..errors import UsageError, UserError
from ..formats.safetensors import (
    SafetensorsError,
    TensorInfo,
    read_header,
    to_f32_bytes,
)
from ..gpu.device import VIEW_ALIGNMENT, Buffer, Copy, Device


class WeightsError(UserError):
    """Weights missing or with shapes that do not match config.json."""


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    C, V = config.hidden_size, config.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (V, C), "model.norm.weight": (C,)}
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, C)
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (C,)
        shapes[p + "post_attention_layernorm.weight"] = (C,)
        for module in ATTENTION:
            shapes[f"{module_name(i, module)}.weight"] = config.projection_shape(module)
        if config.attention_bias:
            for module in ATTENTION[:3]:  # q, k and v
                shapes[f"{module_name(i, module)}.bias"] = (config.projection_shape(module)[0],)
        if config.qk_norm:
            shapes[p + "self_attn.q_norm.weight"] = (config.head_dim,)
            shapes[p + "self_attn.k_norm.weight"] = (config.head_dim,)
        if config.sandwich_norms:  # Gemma: post_attention_layernorm norms attention's output instead
            shapes[p + "pre_feedforward_layernorm.weight"] = (C,)
            shapes[p + "post_feedforward_layernorm.weight"] = (C,)
        for module in PROJECTIONS[len(ATTENTION):]:
            shapes[f"{module_name(i, module)}.weight"] = config.projection_shape(module)
    return shapes


def file_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The tensors as the model's files name them: expected_shapes, with Phi-3's parts joined
    back into qkv_proj and gate_up_proj (merged exports write these)."""
    shapes = expected_shapes(config)
    if not config.fused:
        return shapes
    fused_of = {part: fused for fused, parts in FUSED.items() for part in parts}
    out: dict[str, tuple[int, ...]] = {}
    for name, shape in shapes.items():
        module = name.rsplit(".", 2)[-2]
        if module not in fused_of or not name.endswith(".weight"):
            out[name] = shape
            continue
        joined = name.replace(f".{module}.", f".{fused_of[module]}.")
        out[joined] = (out.get(joined, (0,))[0] + shape[0], shape[1])
    return out


def fused_parts(config: ModelConfig, name: str) -> list[str] | None:
    """The expected_shapes names a file tensor `name` is made of (Phi-3's fused ones), or None."""
    if not config.fused:
        return None
    for fused, parts in FUSED.items():
        if name.endswith(f".{fused}.weight"):
            return [name.replace(f".{fused}.", f".{part}.") for part in parts]
    return None


def split_fused(config: ModelConfig, infos: dict[str, TensorInfo], source: str) -> dict[str, TensorInfo]:
    """Phi-3's fused matrices as their parts: q/k/v of qkv_proj and gate/up of gate_up_proj, each
    a range of the fused tensor's rows (its bytes in the file; each info keeps the file's tensor
    name, so the source reads that range). A fused tensor of another shape is refused by name."""
    if not config.fused:
        return infos
    from ..formats.gguf import GGML_TYPES

    block = {name: (per, size) for name, per, size in GGML_TYPES.values()}
    item = {"F32": 4, "F16": 2, "BF16": 2}
    out = dict(infos)
    for name, info in infos.items():
        parts = fused_parts(config, name)
        if parts is None or len(info.shape) != 2:
            continue
        rows, cols = info.shape
        want = (sum(config.projection_shape(p.rsplit(".", 2)[-2])[0] for p in parts), config.hidden_size)
        if (rows, cols) != want:
            raise WeightsError(f"{source}: tensor {name} has shape {[rows, cols]}, but config.json implies {list(want)}")
        if info.dtype in item:
            row_bytes = cols * item[info.dtype]
        elif info.dtype in block and cols % block[info.dtype][0] == 0:
            row_bytes = cols // block[info.dtype][0] * block[info.dtype][1]
        else:
            continue  # (the shape check names it)
        del out[name]
        start = info.start
        for part in parts:
            n = config.projection_shape(part.rsplit(".", 2)[-2])[0]
            out[part] = TensorInfo(name, info.dtype, (n, cols), start, start + n * row_bytes)
            start += n * row_bytes
    return out


class WeightSource(Protocol):
    name: str

    def tensors(self) -> dict[str, TensorInfo]: ...

    async def read(self, info: TensorInfo): ...  # bytes-like, or a JS typed array in the browser


class HFFolder:
    """A Hugging Face model folder on disk: config.json + model.safetensors (or sharded)."""

    def __init__(self, path: str):
        self.path = str(path)
        self.name = os.path.basename(os.path.normpath(self.path))
        config_path = os.path.join(self.path, "config.json")
        if not os.path.isfile(config_path):
            raise ModelConfigError(f"{self.path}: config.json is missing; is this a Hugging Face model folder?")
        with open(config_path, "rb") as f:
            self.config_dict = loads(f.read(), config_path, ModelConfigError)
        self.config = ModelConfig.from_dict(self.config_dict, config_path)
        self._files: dict[str, str] = {}  # tensor name -> file path
        self._infos: dict[str, TensorInfo] = {}
        index = os.path.join(self.path, "model.safetensors.index.json")
        single = os.path.join(self.path, "model.safetensors")
        if os.path.isfile(index):
            with open(index, "rb") as f:
                shards = weight_map_shards(loads(f.read(), index, WeightsError), index, WeightsError)
        elif os.path.isfile(single):
            shards = ["model.safetensors"]
        else:
            bins = [f for f in os.listdir(self.path) if f.endswith(".bin")]
            hint = " (only pickle .bin weights were found; LoRA Lab reads safetensors only)" if bins else ""
            raise WeightsError(f"{self.path}: model.safetensors is missing{hint}")
        for shard in shards:
            file = path_inside(self.path, shard, f"{self.path}: model.safetensors.index.json", WeightsError)
            if not os.path.isfile(file):
                raise WeightsError(f"{self.path}: shard {shard} named by the index is missing")
            for name, info in read_header(file).tensors.items():
                if name in self._infos:
                    raise WeightsError(f"{self.path}: tensor {name} is in two shards")
                self._files[name] = file
                self._infos[name] = info
        self.config.check_layers(self._infos, config_path)

    def tensors(self) -> dict[str, TensorInfo]:
        return self._infos

    async def read_file(self, name: str) -> bytes | None:
        """One of the folder's small files (tokenizer.json, …) by its plain name, or None."""
        path = os.path.join(self.path, name)
        if not os.path.isfile(path):
            return None
        with open(path, "rb") as f:
            return f.read()

    async def read(self, info: TensorInfo) -> bytes:
        with open(self._files[info.name], "rb") as f:
            f.seek(info.start)
            return f.read(info.end - info.start)


def _rope_row_order(rows: int, head_dim: int) -> list[int]:
    """For each Hugging Face q/k row, the llama.cpp row that holds it (see wgsl/quantize.wgsl)."""
    half = head_dim // 2
    return [(r // head_dim) * head_dim + 2 * (r % head_dim % half) + (r % head_dim) // half for r in range(rows)]


def unpermute_rows(data: bytes, rows: int, row_bytes: int, head_dim: int) -> bytes:
    """Hugging Face's q/k row order from llama.cpp's."""
    return b"".join(data[i * row_bytes : (i + 1) * row_bytes] for i in _rope_row_order(rows, head_dim))


def permute_rows(data: bytes, rows: int, row_bytes: int, head_dim: int) -> bytes:
    """llama.cpp's q/k row order from Hugging Face's (the inverse of unpermute_rows)."""
    out = [b""] * rows
    for hf_row, cpp_row in enumerate(_rope_row_order(rows, head_dim)):
        out[cpp_row] = data[hf_row * row_bytes : (hf_row + 1) * row_bytes]
    return b"".join(out)


def host_bytes(raw) -> bytes:
    """Bytes a source read, as Python bytes (a JS typed array is copied over from the browser)."""
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return bytes(raw)
    return raw.to_bytes()  # a JS typed array (browser)


WEIGHT_DTYPES = ("auto", "f32", "f16", "q8", "q4")


async def upload_weights(device: Device, config: ModelConfig, source: WeightSource, ops=None,
                         dtype: str = "auto") -> dict[str, Buffer]:
    """Check every tensor the config needs against the source, then upload it. The frozen
    matrices are kept as:
      "auto": as the source has them: GGUF block types stay quantized on the GPU (repacked,
              every value exact), float tensors become float32;
      "f32":  float32 (GGUF blocks dequantized on the GPU);
      "f16":  float16 pairs at half the memory (converted on the GPU);
      "q4"/"q8": the linear projections quantized on the GPU to bitsandbytes' NF4 or ggml's
              Q8_0, as QLoRA does (the embeddings and the head keep "auto"'s choice).
    Norms and biases stay float32. Every choice but plain float32 needs `ops`."""
    from ..ops import GGUF_TYPES, QUANT_DTYPES, QUANTIZE_TO

    if dtype not in WEIGHT_DTYPES:
        raise UsageError(f"weights dtype {dtype!r}: choose one of {', '.join(WEIGHT_DTYPES)}")
    available = split_fused(config, source.tensors(), source.name)
    shapes = expected_shapes(config)
    missing = [n for n in shapes if n not in available]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise WeightsError(f"{source.name}: tensors missing from the weights: {', '.join(missing[:3])}{more}")
    for name, shape in shapes.items():
        info = available[name]
        if tuple(info.shape) != shape:
            raise WeightsError(
                f"{source.name}: tensor {name} has shape {list(info.shape)}, but config.json implies {list(shape)}"
            )
        if info.dtype not in ("F32", "F16", "BF16", *GGUF_TYPES):
            raise WeightsError(f"{source.name}: tensor {name} has dtype {info.dtype}; LoRA Lab reads F32, F16, BF16 "
                               f"and {', '.join(GGUF_TYPES)}")
        if info.dtype in GGUF_TYPES and len(shape) != 2:
            raise WeightsError(f"{source.name}: tensor {name} is {info.dtype}; only matrices may be block-quantized")
    kept = {GGUF_TYPES[info.dtype][1] for n, info in ((n, available[n]) for n in shapes)
            if info.dtype in GGUF_TYPES and dtype == "auto"}
    quantized = kept | ({QUANTIZE_TO[dtype]} if dtype in QUANTIZE_TO else set())
    if ops is None and (dtype in ("f16", *QUANTIZE_TO) or any(available[n].dtype in GGUF_TYPES for n in shapes)):
        raise WeightsError(f"{source.name}: {dtype} weights are converted on the GPU; pass ops")
    if ops is not None:
        await ops.prepare(f16_weights=dtype == "f16", quant=tuple(sorted(quantized | {
            GGUF_TYPES[available[n].dtype][1] for n in shapes if available[n].dtype in GGUF_TYPES})))
    weights = {}
    permutation = getattr(source, "row_permutation", lambda name: 0)
    projection = {f"{module_name(i, m)}.weight" for i in range(config.num_layers) for m in PROJECTIONS}
    for name, shape in shapes.items():
        info = available[name]
        raw = await source.read(info)
        head_dim = permutation(name)
        if info.dtype in GGUF_TYPES:  # raw blocks to the GPU, repacked (and un-permuted) there
            blocks = device.create_buffer(len(raw), label=f"{name}.raw")
            device.write_buffer(blocks, raw if len(raw) % 4 == 0 else host_bytes(raw) + bytes(-len(raw) % 4))
            buffer = ops.quantized_buffer(GGUF_TYPES[info.dtype][1], *shape, label=name)
            device.submit([ops.repack(buffer, blocks, info.dtype, *shape, head_dim)])
            device.destroy_buffer(blocks)
            if dtype != "auto" and not (dtype in QUANTIZE_TO and name not in projection):
                buffer = _dequantized(device, ops, buffer, shape, name)
        else:
            try:  # float32 goes to the GPU as it is (in the browser: a JS view, never copied into Python)
                data = raw if info.dtype == "F32" and not head_dim else to_f32_bytes(info.dtype, host_bytes(raw))
            except SafetensorsError as exc:
                raise WeightsError(f"{source.name}: {exc}") from None
            if head_dim:
                data = unpermute_rows(data, info.shape[0], info.shape[1] * 4, head_dim)
            buffer = device.create_buffer_with_data(data, label=name)
        if buffer.dtype == "f32" and len(shape) == 2:
            if dtype == "f16":
                numel = shape[0] * shape[1]
                packed = device.create_buffer(-(-numel // 2) * 4, label=name)
                packed.dtype = "f16"
                device.submit([ops.to_f16(packed, buffer, numel)])
                device.destroy_buffer(buffer)
                buffer = packed
            elif dtype in QUANTIZE_TO and name in projection and (dtype == "q4" or shape[1] % 32 == 0):
                packed = ops.quantized_buffer(QUANTIZE_TO[dtype], *shape, label=name)
                device.submit([ops.quantize(packed, buffer, *shape)])
                device.destroy_buffer(buffer)
                buffer = packed
        assert buffer.dtype in ("f32", "f16", *QUANT_DTYPES)
        weights[name] = buffer
    return fuse_attention_inputs(device, config, weights)


def weight_bytes(config: ModelConfig, source: WeightSource, dtype: str) -> int:
    """GPU bytes upload_weights(…, dtype) gives this model's weights, without uploading them (the
    plan's precision choices)."""
    from ..ops import GGUF_TYPES, QUANTIZE_TO, quant_layout

    available = split_fused(config, source.tensors(), source.name)
    projection = {f"{module_name(i, m)}.weight" for i in range(config.num_layers) for m in PROJECTIONS}
    total = 0
    for name, shape in expected_shapes(config).items():
        numel = shape[0] * (shape[1] if len(shape) == 2 else 1)
        kind = available[name].dtype if name in available else "F32"
        if len(shape) == 1:
            total += 4 * numel
        elif kind in GGUF_TYPES and (dtype == "auto" or (dtype in QUANTIZE_TO and name not in projection)):
            total += 4 * quant_layout(GGUF_TYPES[kind][1], numel)[2]
        elif dtype == "f16":
            total += 4 * -(-numel // 2)
        elif dtype in QUANTIZE_TO and name in projection and (dtype == "q4" or shape[1] % 32 == 0):
            total += 4 * quant_layout(QUANTIZE_TO[dtype], numel)[2]
        else:
            total += 4 * numel
    return total


def _dequantized(device: Device, ops, buffer: Buffer, shape: tuple[int, int], name: str) -> Buffer:
    """A quantized weight as float32 (the buffer given is freed)."""
    out = device.create_buffer(shape[0] * shape[1] * 4, label=name)
    device.submit([ops.dequantize(out, buffer, *shape)])
    device.destroy_buffer(buffer)
    return out


def weight_types(weights: dict[str, Buffer]) -> dict[str, int]:
    """{dtype: bytes} of the weights on the GPU (the model card's "types present")."""
    out: dict[str, int] = {}
    for buffer in weights.values():  # (fused q/k/v views partition their buffer)
        out[buffer.dtype] = out.get(buffer.dtype, 0) + buffer.size
    return out


def fuse_attention_inputs(device: Device, config: ModelConfig, weights: dict[str, Buffer]) -> dict[str, Buffer]:
    """Put each layer's q, k and v projection matrices one after the other in one buffer (the
    dict keeps a view per matrix), so the three products can run as one (Transformer). Skipped
    where a matrix's size is not a multiple of the view alignment."""
    for layer in range(config.num_layers):
        names = [f"model.layers.{layer}.self_attn.{m}_proj.weight" for m in "qkv"]
        parts = [weights[n] for n in names]
        if (any(p.size % VIEW_ALIGNMENT or p.offset for p in parts) or len({p.dtype for p in parts}) > 1
                or parts[0].dtype not in ("f32", "f16")):  # (quantized weights are read whole)
            continue
        fused = device.create_buffer(sum(p.size for p in parts), label=f"model.layers.{layer}.self_attn.qkv")
        fused.dtype = parts[0].dtype
        at, copies = 0, []
        for part in parts:
            copies.append(Copy(part, 0, fused, at, part.size))
            at += part.size
        device.submit(copies)
        at = 0
        for name, part in zip(names, parts):
            device.destroy_buffer(part)
            weights[name] = fused.view(at, part.size, label=name)
            at += part.size
    return weights


def adjacent(parts: list[Buffer]) -> Buffer | None:
    """The buffer spanning `parts` if they are views lying one after the other in it, else None."""
    for a, b in zip(parts, parts[1:]):
        if b.handle is not a.handle or b.offset != a.offset + a.size or b.dtype != a.dtype:
            return None
    first = parts[0]
    return Buffer(first.handle, sum(p.size for p in parts), first.usage, f"{first.label}+", first.offset, first.dtype)
