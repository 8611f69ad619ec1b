"""PEFT adapters in and out: adapter_model.safetensors + adapter_config.json.

Keys: base_model.model.model.layers.{i}.{self_attn|mlp}.{proj}.lora_{A|B}.weight (GPT-2:
base_model.model.transformer.h.{i}.{attn|mlp}.{c_attn|c_proj|c_fc}…), A (r, in), B (out, r),
and with DoRA …{proj}.lora_magnitude_vector (out,); float32 on export. Anything else in an adapter is refused with the tensor's name.
Pure Python: used by the CLI and, with bytes from JS, by the browser.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile

from ..checks import boolean, field, integer, loads, number
from ..config import FUSED, GPT2_SITES, MAX_RANK, PROJECTIONS, LoraConfig, ModelConfig, module_name
from ..errors import UserError, short
from ..patterns import compile_whole
from .archive import read_members
from .safetensors import (
    SafetensorsError,
    first_nonfinite,
    parse_header,
    serialize,
    to_f32_bytes,
)

# Every module an adapter may sit on (Phi-3's fused ones, then GPT-2's, whose two c_proj are told
# apart by their block).
MODULES = PROJECTIONS + tuple(FUSED) + tuple(GPT2_SITES)
ADAPTER_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
ADAPTER_MEMBERS = (ADAPTER_FILE, CONFIG_FILE, "adapter_model.bin")
MAX_ADAPTER_BYTES = 1 << 30  # an r = 64 adapter of a 7B model is about 640 MB
KEY = re.compile(r"^base_model\.model\.(?:model\.layers|transformer\.h)\.(\d+)\.(self_attn|mlp|attn)\.(\w+)"
                 r"\.(?:lora_([AB])(?:\.default)?\.weight|lora_magnitude_vector(?:\.default)?(?:\.weight)?"
                 r"|lora_([ABE])(?:\.default)?)$")  # (the last: AdaLoRA's, parameters without .weight)


def parse_key(key: str) -> tuple[int, str, str] | None:
    """(layer, module, "A", "B", DoRA's magnitude "M" or AdaLoRA's "E") of an adapter tensor's key, the module as
    MODULES names it, or None when the key is not one of a supported module."""
    m = KEY.match(key)
    if not m:
        return None
    layer, block, module, kind = int(m.group(1)), m.group(2), m.group(3), m.group(4) or m.group(5) or "M"
    module = f"{block}.c_proj" if module == "c_proj" else module
    if module not in MODULES or not key.startswith(f"base_model.model.{module_name(layer, module)}.lora_"):
        return None
    return layer, module, kind


class AdapterError(UserError):
    """An adapter that cannot be read or does not fit the model; the message says which file/tensor."""


def adapter_config(lora: LoraConfig, base_model: str, revision: str | None = None) -> dict:
    targets = sorted(lora.targets, key=MODULES.index)
    if {"attn.c_proj", "mlp.c_proj"} <= set(targets):  # GPT-2's both c_proj, as PEFT users name them
        targets = [t for t in targets if t != "mlp.c_proj"]
        targets[targets.index("attn.c_proj")] = "c_proj"
    if lora.adaptive:
        return adalora_config(lora, targets, base_model, revision)
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "revision": revision,
        "r": lora.r,
        "lora_alpha": lora.alpha,
        "target_modules": targets,
        "lora_dropout": lora.dropout,
        "bias": "none",
        "fan_in_fan_out": any(t in GPT2_SITES for t in lora.targets),  # (GPT-2's Conv1D weights)
        "use_rslora": lora.use_rslora,
        "use_dora": lora.use_dora,
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
        "rank_pattern": dict(lora.rank_pattern),
        "alpha_pattern": dict(lora.alpha_pattern),
        "layers_to_transform": None,
    }


def adalora_config(lora: LoraConfig, targets: list[str], base_model: str, revision: str | None) -> dict:
    """PEFT's AdaLoraConfig of an adaptive adapter (LoraState.read_pruned): rank_pattern as PEFT
    keeps it, a mask over the init_r triplets per module (its kept ones first: the saved tensors
    hold only those, so their places among the init_r do not matter to PEFT's load)."""
    pattern = {f"{key}.lora_E": [True] * int(k) + [False] * (lora.r - int(k)) for key, k in lora.rank_pattern}
    return {
        "peft_type": "ADALORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "revision": revision, "r": lora.r, "init_r": lora.r, "target_r": lora.target_r, "tinit": lora.tinit,
        "tfinal": lora.tfinal, "deltaT": lora.delta_t, "beta1": lora.ada_beta1, "beta2": lora.ada_beta2,
        "orth_reg_weight": lora.orth_reg_weight, "total_step": lora.total_step, "lora_alpha": lora.alpha,
        "target_modules": targets, "lora_dropout": lora.dropout, "bias": "none",
        "fan_in_fan_out": any(t in GPT2_SITES for t in lora.targets), "use_rslora": False, "use_dora": False,
        "modules_to_save": None, "init_lora_weights": True, "inference_mode": True,
        "rank_pattern": pattern or None, "alpha_pattern": dict(lora.alpha_pattern), "layers_to_transform": None,
    }


def adalora_as_lora(lora: LoraConfig, state: dict) -> tuple[LoraConfig, dict]:
    """An AdaLoRA adapter (read_pruned's) as plain LoRA with the same update: per module of rank
    k, A' = diag(E) · A and B' = B · lora_alpha / (init_r + 1e-5), with r = lora_alpha = k in
    rank_pattern and alpha_pattern (scaling 1). A module pruned to rank 0 becomes rank 1 of zeros
    (LoRA has no rank 0)."""
    import struct

    out, ranks = {}, []
    for key, (shape, data) in state.items():
        if not key.endswith(".lora_A.weight"):
            continue
        base = key.removesuffix(".lora_A.weight")
        k, cols = shape
        e = struct.unpack(f"<{k}f", state[f"{base}.lora_E.weight"][1])
        a = struct.unpack(f"<{k * cols}f", data)
        (rows, _), b_data = state[f"{base}.lora_B.weight"]
        b = struct.unpack(f"<{rows * k}f", b_data)
        scale = lora.scaling_for(0, "q_proj")  # (one for every module: lora_alpha / (init_r + 1e-5))
        if k == 0:
            out[key] = ((1, cols), bytes(4 * cols))
            out[f"{base}.lora_B.weight"] = ((rows, 1), bytes(4 * rows))
        else:
            out[key] = ((k, cols), struct.pack(f"<{k * cols}f", *(a[i * cols + j] * e[i] for i in range(k)
                                                                    for j in range(cols))))
            out[f"{base}.lora_B.weight"] = ((rows, k), struct.pack(f"<{rows * k}f", *(v * scale for v in b)))
        ranks.append((base.removeprefix("base_model.model."), max(1, k)))
    r = max(k for _, k in ranks)
    plain = LoraConfig(r=r, alpha=float(r), targets=lora.targets, dropout=lora.dropout, rank_pattern=tuple(ranks),
                       alpha_pattern=tuple((name, float(k)) for name, k in ranks))
    return plain, out


def adapter_files(state: dict[str, tuple[tuple[int, int], bytes]], lora: LoraConfig, base_model: str,
                  metadata: dict[str, str] | None = None, revision: str | None = None) -> dict[str, bytes]:
    """{file name: bytes} of a PEFT adapter from LoraState.read_pruned(); `base_model` and
    `revision` as model.identity.base_model_reference gives them. AdaLoRA's parameters are saved
    without ".weight", as PEFT saves them."""
    tensors = {(key.removesuffix(".weight") if lora.adaptive else key): ("F32", shape, data)
               for key, (shape, data) in state.items()}
    return {
        ADAPTER_FILE: serialize(tensors, {"format": "pt", **(metadata or {})}),
        CONFIG_FILE: json.dumps(adapter_config(lora, base_model, revision), indent=2).encode(),
    }


def save_adapter(directory: str, files: dict[str, bytes]) -> None:
    os.makedirs(directory, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)


def files_from_path(path: str) -> dict[str, bytes]:
    """The adapter's files from a folder, a .zip, or a path to adapter_model.safetensors."""
    if os.path.isdir(path):
        names = os.listdir(path)
        found = {n: os.path.join(path, n) for n in names if n in (ADAPTER_FILE, CONFIG_FILE)}
        if ADAPTER_FILE not in found and any(n.endswith((".bin", ".pt", ".pth")) for n in names):
            raise AdapterError(f"{path}: only a pickle adapter (adapter_model.bin) was found; LoRA Lab reads "
                               f"safetensors only, since pickle files can run code. Re-save it with "
                               f"safe_serialization=True.")
        return {name: _read_file(file) for name, file in found.items()}
    if os.path.isfile(path) and (path.lower().endswith(".zip") or zipfile.is_zipfile(path)):
        return files_from_zip(path, path)
    if path.endswith(".bin"):
        raise AdapterError(f"{path}: pickle adapters are refused (they can run code); use adapter_model.safetensors")
    if not os.path.exists(path):
        raise AdapterError(f"{path}: no such file or folder")
    out = {ADAPTER_FILE: _read_file(path)}
    beside = os.path.join(os.path.dirname(path), CONFIG_FILE)
    if os.path.exists(beside):
        out[CONFIG_FILE] = _read_file(beside)
    return out


def _read_file(path: str) -> bytes:
    size = os.path.getsize(path)
    if size > MAX_ADAPTER_BYTES:
        raise AdapterError(f"{path}: {size:,} bytes is more than an adapter holds (at most {MAX_ADAPTER_BYTES:,} are read)")
    with open(path, "rb") as f:
        return f.read()


def files_from_zip(data, where: str) -> dict[str, bytes]:
    """The adapter's files from a zip (bytes or a path): only those members are unpacked, each
    within MAX_ADAPTER_BYTES (formats.archive)."""
    return read_members(data, where, ADAPTER_MEMBERS, MAX_ADAPTER_BYTES)


def parse_adapter(files: dict[str, bytes], source: str = "adapter") -> tuple[LoraConfig, dict[str, tuple[tuple[int, ...], bytes]], dict]:
    """(LoraConfig, {key: (shape, float32 bytes)}, raw config) from an adapter's two files."""
    if ADAPTER_FILE not in files:
        if "adapter_model.bin" in files:
            raise AdapterError(f"{source}: only a pickle adapter (adapter_model.bin) was found; LoRA Lab reads safetensors only")
        raise AdapterError(f"{source}: {ADAPTER_FILE} is missing")
    if CONFIG_FILE not in files:
        raise AdapterError(f"{source}: {CONFIG_FILE} is missing (it holds r, lora_alpha and target_modules)")
    where = f"{source}/{CONFIG_FILE}"
    raw = loads(files[CONFIG_FILE], where, AdapterError, unique=True)
    if not isinstance(raw, dict) or raw.get("peft_type", "LORA") not in ("LORA", "ADALORA"):
        raise AdapterError(f"{where}: not a LoRA or AdaLoRA adapter config (peft_type "
                           f"{short(raw.get('peft_type')) if isinstance(raw, dict) else '?'})")
    adaptive = raw.get("peft_type") == "ADALORA"
    patterns = {}
    for name in ("rank_pattern", "alpha_pattern"):
        value = raw.get(name) or {}
        if not isinstance(value, dict):
            raise AdapterError(f"{where}: {name} must map module names to numbers")
        if adaptive and name == "rank_pattern":  # AdaLoRA's: {module.lora_E: [kept?] per triplet}
            value = _adalora_ranks(value, where)
        patterns[name] = tuple(value.items())
    try:
        if adaptive:
            r = field(raw, "init_r", integer, where, AdapterError, 12, lo=1, hi=MAX_RANK)
            extra = dict(rank_schedule="adaptive", target_r=field(raw, "target_r", integer, where, AdapterError, 8, lo=1),
                         tinit=field(raw, "tinit", integer, where, AdapterError, 0),
                         tfinal=field(raw, "tfinal", integer, where, AdapterError, 0),
                         delta_t=field(raw, "deltaT", integer, where, AdapterError, 1, lo=1),
                         ada_beta1=field(raw, "beta1", number, where, AdapterError, 0.85),
                         ada_beta2=field(raw, "beta2", number, where, AdapterError, 0.85),
                         orth_reg_weight=field(raw, "orth_reg_weight", number, where, AdapterError, 0.5),
                         total_step=field(raw, "total_step", integer, where, AdapterError, 0))
        else:
            r = field(raw, "r", integer, where, AdapterError, 8, lo=1, hi=MAX_RANK)
            extra = {}
        lora_fields = dict(r=r, alpha=field(raw, "lora_alpha", number, where, AdapterError, float(r)),
                           dropout=field(raw, "lora_dropout", number, where, AdapterError, 0.0, lo=0.0, hi=1.0),
                           use_rslora=field(raw, "use_rslora", boolean, where, AdapterError, False),
                           use_dora=field(raw, "use_dora", boolean, where, AdapterError, False), **patterns, **extra)
        LoraConfig(**lora_fields)  # checks the patterns before any is matched
    except AdapterError:
        raise
    except UserError as exc:
        raise AdapterError(f"{where}: {exc}") from None
    if left_out(raw, where) is not None and (adaptive or lora_fields["use_dora"]):
        raise AdapterError(f"{where}: layers_to_transform / exclude_modules with "
                           f"{'AdaLoRA' if adaptive else 'DoRA'} are not supported (LoRA adapters only)")
    data = files[ADAPTER_FILE]
    try:
        header = parse_header(data, len(data), f"{source}/{ADAPTER_FILE}")
    except SafetensorsError as exc:
        raise AdapterError(str(exc)) from None
    state, targets, ranks = {}, set(), {}
    for name, info in header.tensors.items():
        parsed = parse_key(name)
        if parsed is None:
            raise AdapterError(f"{source}/{ADAPTER_FILE}: tensor {name!r} is not a LoRA A/B matrix of a supported projection")
        if info.dtype not in ("F32", "F16", "BF16"):
            raise AdapterError(f"{source}/{ADAPTER_FILE}: tensor {name!r} has dtype {info.dtype}; float is needed")
        layer, module, kind = parsed
        if len(info.shape) != (1 if kind == "M" else 2):
            raise AdapterError(f"{source}/{ADAPTER_FILE}: tensor {name!r} has shape {list(info.shape)}; "
                               + ("DoRA's magnitude is a vector" if kind == "M" else "LoRA matrices are 2-D"))
        if kind != "M" and name.endswith(".weight") == adaptive:  # (AdaLoRA's tensors are parameters: no .weight)
            raise AdapterError(f"{source}/{ADAPTER_FILE}: tensor {name!r} is " + (
                "a LoRA tensor in an AdaLoRA adapter (its tensors are lora_A, lora_E and lora_B)" if adaptive
                else f"an AdaLoRA tensor, but {CONFIG_FILE} does not say peft_type ADALORA"))
        if kind == "M" and not lora_fields["use_dora"]:
            raise AdapterError(f"{source}/{ADAPTER_FILE}: tensor {name!r} is a DoRA magnitude, but {CONFIG_FILE} "
                               f"does not say use_dora")
        key = (f"base_model.model.{module_name(layer, module)}.lora_magnitude_vector" if kind == "M"
               else f"base_model.model.{module_name(layer, module)}.lora_{kind}.weight")
        if key in state:
            raise AdapterError(f"{source}/{ADAPTER_FILE}: tensor {key} appears twice (with and without .default)")
        values = to_f32_bytes(info.dtype, data[info.start : info.end])
        bad = first_nonfinite(values)
        if bad is not None:
            raise AdapterError(f"{source}/{ADAPTER_FILE}: tensor {name!r} holds a NaN or infinite value "
                               f"(element {bad:,}); the adapter is damaged")
        state[key] = (info.shape, values)
        targets.add(module)
        if kind != "M":
            ranks[key] = (layer, module, info.shape[1] if kind == "B" else info.shape[0])
    if not state:
        raise AdapterError(f"{source}/{ADAPTER_FILE}: holds no LoRA tensors")
    lora = LoraConfig(targets=tuple(p for p in MODULES if p in targets), **lora_fields)
    for key, (layer, module, rank) in sorted(ranks.items()):
        if rank != lora.stored_rank(layer, module):
            said = f"r = {lora.r}" + (" with its rank_pattern" if lora.rank_pattern else "")
            raise AdapterError(f"{source}: {CONFIG_FILE} says {said}, i.e. rank {lora.rank(layer, module)} for "
                               f"{key}, but the tensor has rank {rank}")
    return lora, state, raw


def _adalora_ranks(pattern: dict, where: str) -> dict[str, int]:
    """PEFT AdaLoRA's rank_pattern ({"model.layers.0.self_attn.q_proj.lora_E": [True, False, …]})
    as module ranks ({"model.layers.0.self_attn.q_proj": 1})."""
    out = {}
    for key, kept in pattern.items():
        if not isinstance(kept, list) or not all(isinstance(v, bool) for v in kept):
            raise AdapterError(f"{where}: rank_pattern {short(key)} must list true/false per singular value")
        out[re.sub(r"\.lora_E(\.default)?$", "", str(key))] = sum(kept)
    return out


def left_out(raw: dict, where: str):
    """PEFT's layers_to_transform and exclude_modules as one test, `(layer, module) -> bool` for
    the projections the adapter leaves alone, or None when it leaves none out."""
    layers = raw.get("layers_to_transform")
    exclude = raw.get("exclude_modules")
    if layers is None and not exclude:
        return None
    if layers is not None:
        layers = [layers] if isinstance(layers, int) and not isinstance(layers, bool) else layers
        if not isinstance(layers, list) or not layers or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in layers):
            raise AdapterError(f"{where}: layers_to_transform must be a layer index or a list of them")
        layers = set(layers)
    pattern = None
    if isinstance(exclude, str):  # (PEFT: a string is matched whole as a regular expression)
        try:
            pattern = compile_whole(exclude, "exclude_modules")
        except UserError as exc:
            raise AdapterError(f"{where}: {exc}") from None
    elif exclude and not (isinstance(exclude, list) and all(isinstance(m, str) for m in exclude)):
        raise AdapterError(f"{where}: exclude_modules must be a module name list or a regular expression")

    def skipped(layer: int, module: str) -> bool:
        if layers is not None and layer not in layers:
            return True
        name = module_name(layer, module)
        if pattern is not None:
            return pattern.fullmatch(name) is not None
        return any(name == m or name.endswith("." + m) for m in exclude or ())

    return skipped


def check_fits(lora: LoraConfig, state: dict, model: ModelConfig, source: str = "adapter", raw: dict | None = None) -> None:
    """Every tensor of the adapter matches the model's layers and shapes, and every expected one is
    there. Projections the config leaves out (PEFT's layers_to_transform, exclude_modules: `raw`,
    the adapter_config.json) get zero A and B, which is no adapter at all and stays so in training
    (both gradients are products with the other, zero, matrix)."""
    skip = left_out(raw, f"{source}/{CONFIG_FILE}") if raw is not None else None
    expected = {}
    zero = set()
    try:
        targets = model.lora_targets(lora.targets)
    except UserError as exc:
        raise AdapterError(f"{source}: {exc}; the adapter was made for another model") from None
    for layer in range(model.num_layers):
        for module in targets:
            out_f, in_f = model.projection_shape(module)
            base = f"base_model.model.{module_name(layer, module)}"
            r = lora.stored_rank(layer, module)
            expected[f"{base}.lora_A.weight"] = (r, in_f)
            expected[f"{base}.lora_B.weight"] = (out_f, r)
            if skip is not None and skip(layer, module):
                zero.update((f"{base}.lora_A.weight", f"{base}.lora_B.weight"))
            if lora.adaptive:
                expected[f"{base}.lora_E.weight"] = (r, 1)
            if lora.use_dora:
                expected[f"{base}.lora_magnitude_vector"] = (out_f,)
    for key, (shape, _) in state.items():
        if key not in expected:
            raise AdapterError(f"{source}: tensor {key} does not exist in this model ({model.num_layers} layers); "
                               f"the adapter was made for another model")
        if tuple(shape) != expected[key]:
            raise AdapterError(f"{source}: tensor {key} has shape {list(shape)}, expected {list(expected[key])} "
                               f"for this model; the adapter was made for another model")
        if key in zero:
            raise AdapterError(f"{source}: tensor {key} is of a projection that {CONFIG_FILE}'s layers_to_transform "
                               f"or exclude_modules leaves out")
    for key in zero:
        shape = expected[key]
        state[key] = (shape, bytes(4 * shape[0] * shape[1]))
    missing = [k for k in expected if k not in state]
    if missing:
        raise AdapterError(f"{source}: tensor {missing[0]} is missing ({len(missing)} missing in all)")


def model_card(base_model: str, lora: LoraConfig, history: list[dict], dataset: dict | None = None,
               training: dict | None = None) -> str:
    """README.md for an exported adapter: what it is, the data it saw, how it was trained (the
    training config) and where the training and validation losses ended."""
    train = [h for h in history if h.get("kind") == "train"]
    valid = [h for h in history if h.get("kind") == "eval"]
    lines = [f"# LoRA adapter for {base_model}", "", "Trained with LoRA Lab (LoRA on WebGPU).", "",
             f"- base model: {base_model}", f"- r = {lora.r}, lora_alpha = {lora.alpha}, target modules: {', '.join(lora.targets)}",
             f"- dropout {lora.dropout}, rsLoRA: {lora.use_rslora}, DoRA: {lora.use_dora}"]
    if dataset:
        lines.append("- data: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in dataset.items()))
    if training:
        lines.append("- training config: " + ", ".join(f"{k} = {v}" for k, v in training.items()))
    if lora.adaptive:
        lines.append(f"- AdaLoRA: from rank {lora.r} per module to an average of {lora.target_r} (tinit {lora.tinit}, "
                     f"tfinal {lora.tfinal}, deltaT {lora.delta_t}, orth_reg_weight {lora.orth_reg_weight})")
    if lora.rank_pattern or lora.alpha_pattern:
        lines.append(f"- per-module ranks {dict(lora.rank_pattern)}, alphas {dict(lora.alpha_pattern)}")
    if train:
        lines += [f"- steps: {train[-1]['step']}, tokens: {train[-1]['tokens']:,}",
                  f"- training loss: {train[0]['loss']:.4f} at step 1, {train[-1]['loss']:.4f} at the end"]
    if valid:
        lines.append(f"- validation loss: {valid[-1]['loss']:.4f}")
    lines += ["", "Load it with PEFT: `PeftModel.from_pretrained(base_model, path)`; the full history is in the",
              "safetensors metadata (`loralab_history`)."]
    return "\n".join(lines) + "\n"


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()
