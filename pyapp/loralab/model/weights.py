"""A model's weights: which tensors a config needs, checking them, uploading them to the GPU
as float32, float16 or quantized (upload_weights).

Sources hand over tensors by Hugging Face name; `HFFolder` reads a local model folder
(CPython). Bytes go from the file straight to a GPU buffer.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Protocol

from ..checks import loads, path_inside, weight_map_shards
from ..config import ATTENTION, FUSED, ModelConfig, ModelConfigError, module_name
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
    """The tensors the engine reads, by its names (Hugging Face's Llama names; GPT-2's are
    mapped onto them, see file_tensors), with their shapes. q, k and v come one after the other."""
    C, V = config.hidden_size, config.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (V, C), "model.norm.weight": (C,)}
    if config.learned_positions:
        shapes["model.embed_positions.weight"] = (config.max_positions, C)
    if config.layer_norm:
        shapes["model.norm.bias"] = (C,)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, C)
    norms = ["input_layernorm", "post_attention_layernorm"]
    if config.sandwich_norms:  # Gemma: post_attention_layernorm norms attention's output instead
        norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        for norm in norms:
            shapes[p + norm + ".weight"] = (C,)
            if config.layer_norm:
                shapes[p + norm + ".bias"] = (C,)
        if config.qk_norm:
            shapes[p + "self_attn.q_norm.weight"] = (config.head_dim,)
            shapes[p + "self_attn.k_norm.weight"] = (config.head_dim,)
        for module in config.projections:
            shapes[f"{module_name(i, module)}.weight"] = config.projection_shape(module)
        for module in config.projections:
            if config.linear_bias or config.attention_bias and module in ATTENTION[:3]:
                shapes[f"{module_name(i, module)}.bias"] = (config.projection_shape(module)[0],)
    return shapes


@dataclass(frozen=True)
class FileTensor:
    """A tensor as the model's Hugging Face files hold it: its shape there, the engine tensors
    it holds (rows one after the other: Phi-3's fused matrices, GPT-2's c_attn), and whether it
    is stored transposed (GPT-2's Conv1D weights, [in, out]: then its parts are column ranges)."""

    shape: tuple[int, ...]
    parts: tuple[str, ...]
    transposed: bool = False


def file_tensors(config: ModelConfig) -> dict[str, FileTensor]:
    """The model's tensors by their names in its Hugging Face files (merged exports write these;
    engine_tensors reads them)."""
    shapes = expected_shapes(config)
    if config.family == "gpt2":
        return _gpt2_file_tensors(config, shapes)
    out: dict[str, FileTensor] = {}
    for name, shape in shapes.items():
        module = name.rsplit(".", 2)[-2]
        fused = next((f for f, parts in FUSED.items() if module in parts), None) if config.fused else None
        if fused is None or not name.endswith(".weight"):
            out[name] = FileTensor(shape, (name,))
            continue
        joined = name.replace(f".{module}.", f".{fused}.")
        before = out.get(joined, FileTensor((0, shape[1]), ()))
        out[joined] = FileTensor((before.shape[0] + shape[0], shape[1]), before.parts + (name,))
    return out


def _gpt2_file_tensors(config: ModelConfig, shapes: dict) -> dict[str, FileTensor]:
    """GPT2LMHeadModel's names (transformer.h.N.attn.c_attn, …): c_attn holds q, k and v, and
    every Conv1D weight is [in, out]."""
    out = {"transformer.wte.weight": FileTensor(shapes["model.embed_tokens.weight"], ("model.embed_tokens.weight",)),
           "transformer.wpe.weight": FileTensor(shapes["model.embed_positions.weight"], ("model.embed_positions.weight",)),
           "transformer.ln_f.weight": FileTensor(shapes["model.norm.weight"], ("model.norm.weight",)),
           "transformer.ln_f.bias": FileTensor(shapes["model.norm.bias"], ("model.norm.bias",))}
    if "lm_head.weight" in shapes:
        out["lm_head.weight"] = FileTensor(shapes["lm_head.weight"], ("lm_head.weight",))
    for i in range(config.num_layers):
        for norm, ours in (("ln_1", "input_layernorm"), ("ln_2", "post_attention_layernorm")):
            for kind in ("weight", "bias"):
                name = f"model.layers.{i}.{ours}.{kind}"
                out[f"transformer.h.{i}.{norm}.{kind}"] = FileTensor(shapes[name], (name,))
        for site, projections in config.sites().items():
            weights = tuple(f"{module_name(i, m)}.weight" for m in projections)
            biases = tuple(f"{module_name(i, m)}.bias" for m in projections)
            out_f, in_f = sum(shapes[w][0] for w in weights), shapes[weights[0]][1]
            out[f"{module_name(i, site)}.weight"] = FileTensor((in_f, out_f), weights, transposed=True)
            out[f"{module_name(i, site)}.bias"] = FileTensor((out_f,), biases)
    return out


def file_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The tensors' shapes as the model's files name and hold them (file_tensors)."""
    return {name: tensor.shape for name, tensor in file_tensors(config).items()}


@dataclass(frozen=True)
class ColumnRange(TensorInfo):
    """Columns first…first+shape[0]−1 of the file's [shape[1], columns] tensor, transposed: an
    engine matrix [out, in] out of a Conv1D weight [in, out] (GPT-2). Its bytes are the whole
    file tensor's."""

    first: int = 0
    columns: int = 0


def engine_tensors(config: ModelConfig, infos: dict[str, TensorInfo], source: str) -> dict[str, TensorInfo]:
    """A source's tensors by the engine's names (expected_shapes). A file tensor that holds
    several becomes its parts, each a range of its rows (its bytes in the file; each info keeps
    the file's tensor name, so the source reads that range) or, stored transposed, a ColumnRange:
    Phi-3's fused matrices, llama.cpp's fused attn_qkv, GPT-2's c_attn and Conv1D weights (with
    or without the transformer. prefix). A fused tensor of the wrong shape is refused by name."""
    files, shapes = file_tensors(config), expected_shapes(config)
    out = {}
    for name, info in infos.items():
        tensor = files.get(name) or (files.get(f"transformer.{name}") if config.family == "gpt2" else None)
        module = name.rsplit(".", 2)[-2] if name.count(".") >= 2 else ""
        if tensor is None and module in FUSED:  # llama.cpp's fused rows under an engine name (GPT-2's attn_qkv)
            parts = tuple(name.replace(f".{module}.", f".{p}.") for p in FUSED[module])
            if all(p in shapes for p in parts):
                rows = sum(shapes[p][0] for p in parts)
                tensor = FileTensor((rows, *shapes[parts[0]][1:]), parts)
        if tensor is None or (tensor.parts == (name,) and not tensor.transposed):
            out.setdefault(name, info)
            continue
        if tuple(info.shape) != tensor.shape:
            raise WeightsError(f"{source}: tensor {name} has shape {list(info.shape)}, but config.json implies "
                               f"{list(tensor.shape)}")
        if tensor.transposed:
            first = 0
            for part in tensor.parts:
                rows = shapes[part][0]
                out[part] = ColumnRange(info.name, info.dtype, (rows, info.shape[0]), info.start, info.end, first,
                                        info.shape[1])
                first += rows
        elif len(tensor.parts) == 1:
            out[tensor.parts[0]] = info
        else:
            out.update(_row_parts(name, info, [(part, shapes[part]) for part in tensor.parts]))
    return out


def _row_parts(name: str, info: TensorInfo, parts: list[tuple[str, tuple[int, ...]]]) -> dict[str, TensorInfo]:
    """`info` as consecutive row ranges of the given shapes (floats, or whole GGUF blocks)."""
    from ..formats.gguf import GGML_TYPES

    block = {name: (per, size) for name, per, size in GGML_TYPES.values()}
    item = {"F32": 4, "F16": 2, "BF16": 2}
    cols = info.shape[1] if len(info.shape) == 2 else 1
    if info.dtype in item:
        row_bytes = cols * item[info.dtype]
    elif info.dtype in block and len(info.shape) == 2 and cols % block[info.dtype][0] == 0:
        row_bytes = cols // block[info.dtype][0] * block[info.dtype][1]
    else:
        return {name: info}  # (upload_weights names the missing parts)
    out, start = {}, info.start
    for part, shape in parts:
        out[part] = TensorInfo(info.name, info.dtype, shape, start, start + shape[0] * row_bytes)
        start += shape[0] * row_bytes
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
                         dtype: str = "auto", progress=None) -> dict[str, Buffer]:
    """Check every tensor the config needs against the source, then upload it. The frozen
    matrices are kept as:
      "auto": as the source has them: GGUF block types stay quantized on the GPU (repacked,
              every value exact), float tensors become float32;
      "f32":  float32 (GGUF blocks dequantized on the GPU);
      "f16":  float16 pairs at half the memory (converted on the GPU);
      "q4"/"q8": the linear projections quantized on the GPU to bitsandbytes' NF4 or ggml's
              Q8_0, as QLoRA does (the embeddings and the head keep "auto"'s choice).
    Norms and biases stay float32. Every choice but plain float32 needs `ops`. `progress(done,
    total)` hears of each tensor as it lands (counted in values)."""
    from ..ops import GGUF_TYPES, QUANTIZE_TO

    if dtype not in WEIGHT_DTYPES:
        raise UsageError(f"weights dtype {dtype!r}: choose one of {', '.join(WEIGHT_DTYPES)}")
    available = engine_tensors(config, source.tensors(), source.name)
    shapes = expected_shapes(config)
    missing = [n for n in shapes if n not in available]
    if missing:  # named as the files name them
        owner = {part: name for name, tensor in file_tensors(config).items() for part in tensor.parts}
        missing = list(dict.fromkeys(owner.get(n, n) for n in missing))
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
        if info.dtype in GGUF_TYPES and (len(shape) != 2 or isinstance(info, ColumnRange)):
            raise WeightsError(f"{source.name}: tensor {name} is {info.dtype}; only matrices in [out, in] order may be "
                               f"block-quantized")
    kept = {GGUF_TYPES[info.dtype][1] for n, info in ((n, available[n]) for n in shapes)
            if info.dtype in GGUF_TYPES and dtype == "auto"}
    quantized = kept | ({QUANTIZE_TO[dtype]} if dtype in QUANTIZE_TO else set())
    if ops is None and (dtype in ("f16", *QUANTIZE_TO) or any(available[n].dtype in GGUF_TYPES
                                                              or isinstance(available[n], ColumnRange) for n in shapes)):
        raise WeightsError(f"{source.name}: {dtype} weights are converted on the GPU; pass ops")
    if ops is not None:
        await ops.prepare(f16_weights=dtype == "f16", quant=tuple(sorted(quantized | {
            GGUF_TYPES[available[n].dtype][1] for n in shapes if available[n].dtype in GGUF_TYPES})))
    weights = {}
    permutation = getattr(source, "row_permutation", lambda name: 0)
    projection = {f"{module_name(i, m)}.weight" for i in range(config.num_layers) for m in config.projections}
    held: tuple | None = None  # (file tensor, its float32 buffer): the Conv1D weight whose columns are read
    total, done = sum(math.prod(shape) for shape in shapes.values()), 0
    for name, shape in shapes.items():
        if progress is not None:
            progress(done, total)
        done += math.prod(shape)
        info = available[name]
        if isinstance(info, ColumnRange):
            held = await _hold(device, source, info, held)
            buffer = device.create_buffer(shape[0] * shape[1] * 4, label=name)
            device.submit([ops.transpose(buffer, held[1], shape[1], info.columns, info.first, shape[0])])
            weights[name] = await _converted(device, ops, buffer, shape, name, dtype, projection)
            continue
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
        weights[name] = await _converted(device, ops, buffer, shape, name, dtype, projection)
    if held is not None:
        device.destroy_buffer(held[1])
    if progress is not None:
        progress(total, total)
    return fuse_attention_inputs(device, config, weights)


async def _hold(device: Device, source: WeightSource, info: "ColumnRange", held: tuple | None) -> tuple:
    """The file tensor `info` is a column range of, as float32 on the GPU: the one held already
    (q, k and v are columns of one c_attn) or read now, the one held before freed."""
    key = (info.name, info.start)
    if held is not None and held[0] == key:
        return held
    if held is not None:
        device.destroy_buffer(held[1])
    try:
        data = to_f32_bytes(info.dtype, host_bytes(await source.read(info))) if info.dtype != "F32" else \
            await source.read(info)
    except SafetensorsError as exc:
        raise WeightsError(f"{source.name}: {exc}") from None
    return key, device.create_buffer_with_data(data, label=f"{info.name}.file")


async def _converted(device: Device, ops, buffer: Buffer, shape: tuple, name: str, dtype: str,
                     projection: set[str]) -> Buffer:
    """A float32 matrix as upload_weights' `dtype` asks (float16 pairs, or a projection
    quantized on the GPU); anything else as it is."""
    from ..ops import QUANT_DTYPES, QUANTIZE_TO

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
    return buffer


def weight_bytes(config: ModelConfig, source: WeightSource, dtype: str) -> int:
    """GPU bytes upload_weights(…, dtype) gives this model's weights, without uploading them (the
    plan's precision choices)."""
    from ..ops import GGUF_TYPES, QUANTIZE_TO, quant_layout

    available = engine_tensors(config, source.tensors(), source.name)
    projection = {f"{module_name(i, m)}.weight" for i in range(config.num_layers) for m in config.projections}
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
