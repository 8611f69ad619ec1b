"""LoRA adapters: the configuration, where every A and B lives on the GPU, and the PEFT mapping.

All LoRA tensors of a model share four flat buffers (parameters, gradients, AdamW's m and v),
each tensor at a 256-byte-aligned offset. So the optimizer, the gradient norm and clipping are
one dispatch each over the whole adapter, and checkpoints and exports are one readback.
Padding between tensors is never written: it stays zero in all four buffers.

Initialisation follows PEFT (Hu et al. 2021, "LoRA"; PEFT's LoraLayer.reset_lora_parameters):
A ~ kaiming_uniform(a = √5), i.e. U(±1/√in_features); B = 0. Scaling = alpha / r, or
alpha / √r with rsLoRA (Kalajdzievski 2023).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import LoraConfig, ModelConfig, module_name
from .gpu.device import VIEW_ALIGNMENT, Buffer, Device


@dataclass(frozen=True)
class LoraTensor:
    layer: int
    module: str  # the projection it serves, e.g. "q_proj" (a fused module's A: the fused name)
    kind: str  # "A" (r × in), "B" (out × r) or DoRA's magnitude "M" (out × 1)
    shape: tuple[int, int]
    offset: int  # bytes into the flat buffers
    site: str = ""  # the module PEFT names it by ("qkv_proj" for q's rows of Phi-3's B), if not `module`
    row: int = 0  # its first row in that module's B (or M)

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def peft_key(self) -> str:
        name = module_name(self.layer, self.site or self.module)
        if self.kind == "M":  # PEFT's DoRA magnitude: a vector, saved without ".weight"
            return f"base_model.model.{name}.lora_magnitude_vector"
        return f"base_model.model.{name}.lora_{self.kind}.weight"


def layout(config: ModelConfig, lora: LoraConfig) -> tuple[list[LoraTensor], int]:
    """Every LoRA tensor of the model with its place in the flat buffers, and their size in bytes.
    A module that computes several projections (Phi-3's fused ones, GPT-2's c_attn) has one A
    and its B in parts, one per projection."""
    tensors, offset = [], 0

    def add(layer: int, module: str, kind: str, shape: tuple[int, int], site: str = "", row: int = 0) -> None:
        nonlocal offset
        tensors.append(LoraTensor(layer, module, kind, shape, offset, site, row))
        offset += -(-shape[0] * shape[1] * 4 // VIEW_ALIGNMENT) * VIEW_ALIGNMENT

    targets = config.lora_targets(lora.targets)
    for layer in range(config.num_layers):
        for module, parts in config.sites().items():
            if module not in targets:
                continue
            in_f = config.projection_shape(parts[0])[1]
            r = lora.rank(layer, module)
            add(layer, module, "A", (r, in_f))
            row = 0
            for part in parts:
                rows = config.projection_shape(part)[0]
                add(layer, part, "B", (rows, r), module if part != module else "", row)
                row += rows
            if lora.use_dora:  # DoRA: a magnitude per output row, in the same parts
                row = 0
                for part in parts:
                    rows = config.projection_shape(part)[0]
                    add(layer, part, "M", (rows, 1), module if part != module else "", row)
                    row += rows
    return tensors, max(offset, VIEW_ALIGNMENT)


class LoraState:
    """The adapter on the GPU: parameters, gradients and optimizer moments, with per-tensor views."""

    def __init__(self, device: Device, config: ModelConfig, lora: LoraConfig):
        import dataclasses

        # The targets as this model names its modules (Phi-3: every projection → its fused modules).
        lora = dataclasses.replace(lora, targets=config.lora_targets(lora.targets))
        self.device, self.model_config, self.config = device, config, lora
        self.tensors, self.nbytes = layout(config, lora)
        self.numel = self.nbytes // 4  # elements of the flat buffers, padding included
        self.params = device.create_buffer(self.nbytes, label="lora.params")
        self.grads = device.create_buffer(self.nbytes, label="lora.grads")
        self.m = device.create_buffer(self.nbytes, label="lora.adam_m")
        self.v = device.create_buffer(self.nbytes, label="lora.adam_v")
        # PEFT key -> its tensor; a fused module's B -> its parts, in row order.
        self.parts: dict[str, list[LoraTensor]] = {}
        for t in self.tensors:
            self.parts.setdefault(t.peft_key, []).append(t)
        self.by_key = {key: parts[0] for key, parts in self.parts.items() if len(parts) == 1}
        self._views = {}
        sites = config.sites()
        for t in self.tensors:
            view = (t, self.params.view(t.offset, t.numel * 4), self.grads.view(t.offset, t.numel * 4))
            self._views[(t.layer, t.module, t.kind)] = view
            if t.kind == "A":  # the projections read their module's A
                for part in sites[t.module]:
                    self._views[(t.layer, part, "A")] = view

    def release(self) -> None:
        for buf in (self.params, self.grads, self.m, self.v):
            self.device.destroy_buffer(buf)

    @property
    def trainable_parameters(self) -> int:
        return sum(t.numel for t in self.tensors)

    def has(self, layer: int, module: str) -> bool:
        return (layer, module, "A") in self._views

    def dora(self, layer: int, module: str) -> bool:
        """Whether `module`'s adapter is DoRA's (a trained magnitude per output row)."""
        return (layer, module, "M") in self._views

    def rank(self, layer: int, module: str) -> int:
        """The rank of the adapter `module` uses (its fused module's, on Phi-3)."""
        return self.config.rank(layer, self.model_config.site(module))

    def scaling(self, layer: int, module: str) -> float:
        return self.config.scaling_for(layer, self.model_config.site(module))

    def shares_a(self, layer: int, module: str) -> bool:
        """Whether `module` reads an A that another projection's gradient also adds to, and is not
        its first: its A gradient adds instead of writing (Phi-3's fused modules, GPT-2's c_attn)."""
        return self.model_config.sites()[self.model_config.site(module)][0] != module

    def param(self, layer: int, module: str, kind: str) -> Buffer:
        return self._views[(layer, module, kind)][1]

    def grad(self, layer: int, module: str, kind: str) -> Buffer:
        return self._views[(layer, module, kind)][2]

    def offset(self, layer: int, module: str, kind: str) -> int:
        """Where a tensor starts in the flat buffers, in floats."""
        return self._views[(layer, module, kind)][0].offset // 4

    def grad_slices(self, parts: Buffer, count: int, layer: int, module: str, kind: str) -> Buffer:
        """A tensor's place in `parts`, `count` gradient-shaped slices (each `numel` floats):
        the view from its first slice to the end of its last."""
        t = self._views[(layer, module, kind)][0]
        return parts.view(t.offset, (count - 1) * self.nbytes + t.numel * 4)

    def init_dispatches(self, ops, seed: int) -> list:
        """PEFT's init on the GPU: A seeded kaiming-uniform, B zero (fresh buffers are zero). A
        progressive rank schedule starts with its first rank's rows of A; the rest stay zero."""
        return self.grow_dispatches(ops, 0, self.config.rank_switches[0][1], seed)

    def grow_dispatches(self, ops, rank_from: int, rank_to: int, seed: int) -> list:
        """Rows rank_from…rank_to − 1 of every A initialised as PEFT initialises A (B's columns
        for them are zero, so the model's function does not change, and with zero gradients
        until then, AdamW's moments for them are zero too)."""
        return [
            ops.lora_init(self.params, t.offset // 4 + rank_from * t.shape[1], (min(rank_to, t.shape[0]) - rank_from)
                          * t.shape[1], t.shape[1], seed)
            for t in self.tensors
            if t.kind == "A" and rank_from < min(rank_to, t.shape[0])
        ]

    def rank_now(self, step: int) -> int:
        """The adapter's rank in use at optimizer step `step` (a progressive schedule's)."""
        return self.config.rank_at(step)

    def init_magnitudes(self, ops, weights: dict[str, Buffer]) -> None:
        """DoRA's magnitudes as PEFT starts them: the norm of each output row of W (B is zero), a
        quantized W dequantized first."""
        from .ops import QUANT_DTYPES

        for t in self.tensors:
            if t.kind != "M":
                continue
            W = weights[f"{module_name(t.layer, t.module)}.weight"]
            out_f, in_f = self.model_config.projection_shape(t.module)
            temp = None
            if W.dtype in QUANT_DTYPES:
                temp = self.device.create_buffer(out_f * in_f * 4, label="dora.dequantized")
                self.device.submit([ops.dequantize(temp, W, out_f, in_f)])
                W = temp
            self.device.submit([ops.dora_norm(self.param(t.layer, t.module, "M"), W, None, None, out_f, in_f)])
            if temp is not None:
                self.device.destroy_buffer(temp)

    def load_state(self, state: dict[str, bytes]) -> None:
        """Write float32 tensors {peft_key: raw bytes} (as read from an adapter) into the parameters
        (a fused module's B split into its parts' rows)."""
        for key, data in state.items():
            at = 0
            for t in self.parts[key]:
                self.device.write_buffer(self.params, data[at : at + t.numel * 4], t.offset)
                at += t.numel * 4

    def peft_tensors(self, raw: bytes) -> dict[str, tuple[tuple[int, ...], bytes]]:
        """{peft_key: (shape, float32 bytes)} out of a readback of the flat buffers (parameters or
        gradients): a fused module's B (and DoRA magnitude) joined from its parts."""
        out = {}
        for key, parts in self.parts.items():
            rows = sum(t.shape[0] for t in parts)
            shape = (rows,) if parts[0].kind == "M" else (rows, parts[0].shape[1])
            out[key] = (shape, b"".join(raw[t.offset : t.offset + t.numel * 4] for t in parts))
        return out

    async def read_state(self) -> dict[str, tuple[tuple[int, int], bytes]]:
        """{peft_key: (shape, float32 bytes)} of the current parameters: one readback."""
        return self.peft_tensors(await self.device.read_buffer(self.params))

    def zero_optimizer(self) -> None:
        zeros = bytes(self.nbytes)
        for buf in (self.grads, self.m, self.v):
            self.device.write_buffer(buf, zeros)
