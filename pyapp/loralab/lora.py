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

from .config import PROJECTIONS, LoraConfig, ModelConfig, module_name
from .gpu.device import VIEW_ALIGNMENT, Buffer, Device


@dataclass(frozen=True)
class LoraTensor:
    layer: int
    module: str  # a projection name, e.g. "q_proj"
    kind: str  # "A" (r × in) or "B" (out × r)
    shape: tuple[int, int]
    offset: int  # bytes into the flat buffers

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def peft_key(self) -> str:
        return f"base_model.model.{module_name(self.layer, self.module)}.lora_{self.kind}.weight"


def layout(config: ModelConfig, lora: LoraConfig) -> tuple[list[LoraTensor], int]:
    """Every LoRA tensor of the model with its place in the flat buffers, and their size in bytes."""
    tensors, offset = [], 0
    for layer in range(config.num_layers):
        for module in PROJECTIONS:
            if module not in lora.targets:
                continue
            out_f, in_f = config.projection_shape(module)
            r = lora.rank(layer, module)
            for kind, shape in (("A", (r, in_f)), ("B", (out_f, r))):
                tensors.append(LoraTensor(layer, module, kind, shape, offset))
                offset += -(-shape[0] * shape[1] * 4 // VIEW_ALIGNMENT) * VIEW_ALIGNMENT
    return tensors, max(offset, VIEW_ALIGNMENT)


class LoraState:
    """The adapter on the GPU: parameters, gradients and optimizer moments, with per-tensor views."""

    def __init__(self, device: Device, config: ModelConfig, lora: LoraConfig):
        self.device, self.model_config, self.config = device, config, lora
        self.tensors, self.nbytes = layout(config, lora)
        self.numel = self.nbytes // 4  # elements of the flat buffers, padding included
        self.params = device.create_buffer(self.nbytes, label="lora.params")
        self.grads = device.create_buffer(self.nbytes, label="lora.grads")
        self.m = device.create_buffer(self.nbytes, label="lora.adam_m")
        self.v = device.create_buffer(self.nbytes, label="lora.adam_v")
        self.by_key = {t.peft_key: t for t in self.tensors}
        self._views = {
            (t.layer, t.module, t.kind): (t, self.params.view(t.offset, t.numel * 4), self.grads.view(t.offset, t.numel * 4))
            for t in self.tensors
        }

    def release(self) -> None:
        for buf in (self.params, self.grads, self.m, self.v):
            self.device.destroy_buffer(buf)

    @property
    def trainable_parameters(self) -> int:
        return sum(t.numel for t in self.tensors)

    def has(self, layer: int, module: str) -> bool:
        return (layer, module, "A") in self._views

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
        """PEFT's init on the GPU: A seeded kaiming-uniform, B zero (fresh buffers are zero)."""
        return [
            ops.lora_init(self.params, t.offset // 4, t.numel, t.shape[1], seed)
            for t in self.tensors
            if t.kind == "A"
        ]

    def load_state(self, state: dict[str, bytes]) -> None:
        """Write float32 tensors {peft_key: raw bytes} (as read from an adapter) into the parameters."""
        for key, data in state.items():
            t = self.by_key[key]
            self.device.write_buffer(self.params, data, t.offset)

    async def read_state(self) -> dict[str, tuple[tuple[int, int], bytes]]:
        """{peft_key: (shape, float32 bytes)} of the current parameters: one readback."""
        raw = await self.device.read_buffer(self.params)
        return {t.peft_key: (t.shape, raw[t.offset : t.offset + t.numel * 4]) for t in self.tensors}

    def zero_optimizer(self) -> None:
        zeros = bytes(self.nbytes)
        for buf in (self.grads, self.m, self.v):
            self.device.write_buffer(buf, zeros)
