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
    kind: str  # "A" (r × in), "B" (out × r), DoRA's magnitude "M" (out × 1) or AdaLoRA's singular values "E" (r × 1)
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
            if lora.adaptive:  # AdaLoRA: B · diag(E) · A, E after its A
                add(layer, module, "E", (r, 1))
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


def adalora_control(lora: LoraConfig, step: int, total: int, init_bgt: int, modules: int) -> tuple[int, int, int, int]:
    """AdaLoRA's allocation after optimizer step `step` (0-based, PEFT's update_and_allocate(
    global_step)) of a schedule over `total` steps: (update the importance?, mask mode, triplets
    to prune k, the budget in force after it). Mode 0: none; 1: prune the k least important
    (a budget step, or the forced one at total − tfinal); 2: re-apply the last mask (final phase).
    The budget falls from init_bgt (every module at r) to target_r per module along a cubic
    between tinit and total − tfinal, and is allocated every delta_t steps."""
    target = lora.target_r * modules
    final = total - lora.tfinal
    if step < final:
        if step <= lora.tinit:
            return 1, 0, 0, init_bgt
        budget = int((init_bgt - target) * (1 - (step - lora.tinit) / (final - lora.tinit)) ** 3 + target)
        if step % lora.delta_t:
            return 1, 0, 0, adalora_control(lora, step - step % lora.delta_t, total, init_bgt, modules)[3]
        return 1, 1, init_bgt - budget, budget
    if step == final:
        return 0, 1, init_bgt - target, target
    return 0, 2, 0, target


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
        self.adaptive = lora.adaptive
        if self.adaptive:
            self._adalora_buffers()

    # -- AdaLoRA -----------------------------------------------------------------------------------
    def _adalora_buffers(self) -> None:
        """AdaLoRA's module table (include/adalora.wgsl), the B · diag(E) the model reads (`eff`,
        the flat layout), and the mask of kept triplets (1.0 or 0.0 per singular value, module by
        module: `triplets`)."""
        import struct

        words, self.triplets, self.max_rows, self.modules = [], 0, 0, []
        for t in self.tensors:
            if t.kind == "A":
                row = [t.offset // 4, 0, t.shape[0], t.shape[1], 0, 0, 0, 0, 0, 0, self.triplets, 0]
                words.append(row)
                self.modules.append((t.layer, t.module))
                self.triplets += t.shape[0]
                parts = 0
            elif t.kind == "E":
                row[1] = t.offset // 4
            elif t.kind == "B":
                row[4 + 2 * parts], row[5 + 2 * parts] = t.offset // 4, t.shape[0]
                row[11] += t.shape[0]
                self.max_rows = max(self.max_rows, row[11])
                parts += 1
        self.M, self.R = len(words), max(w[2] for w in words)
        flat = [w for row in words for w in row]
        self.table = self.device.create_buffer(4 * len(flat), label="adalora.table")
        self.device.write_buffer(self.table, struct.pack(f"<{len(flat)}I", *flat))
        self.eff = self.device.create_buffer(self.nbytes, label="adalora.eff_B")
        self.mask = self.device.create_buffer(4 * self.triplets, label="adalora.mask")
        self.device.write_buffer(self.mask, struct.pack(f"<{self.triplets}f", *[1.0] * self.triplets))
        for t in self.tensors:  # the model reads B · diag(E): B's views into eff
            if t.kind == "B":
                key = (t.layer, t.module, "B")
                self._views[key] = (t, self.eff.view(t.offset, t.numel * 4), self._views[key][2])

    def apply_dispatches(self, ops) -> list:
        """What makes the adapter readable by the model after its parameters changed: AdaLoRA's
        B · diag(E) (nothing for other adapters)."""
        return [ops.adalora_apply(self.eff, self.params, self.table, self.M, self.R)] if self.adaptive else []

    @property
    def b_source(self) -> Buffer:
        """The flat buffer whose B regions the model multiplies by (AdaLoRA's B · diag(E))."""
        return self.eff if self.adaptive else self.params

    async def ranks(self) -> dict[tuple[int, str], int]:
        """AdaLoRA: each module's singular values left by the pruning, {(layer, module): rank}."""
        import struct

        mask = struct.unpack(f"<{self.triplets}f", await self.device.read_buffer(self.mask))
        out, at = {}, 0
        for layer, module in self.modules:
            r = self.rank(layer, module)
            out[(layer, module)] = sum(1 for v in mask[at : at + r] if v != 0.0)
            at += r
        return out

    def release(self) -> None:
        for buf in (self.params, self.grads, self.m, self.v) + ((self.table, self.eff, self.mask) if self.adaptive else ()):
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
        progressive rank schedule starts with its first rank's rows of A; the rest stay zero.
        AdaLoRA's: A and B ~ N(0, 0.02²), E zero."""
        if self.adaptive:
            return [ops.lora_init(self.params, t.offset // 4, t.numel, 1, seed, std=0.02)
                    for t in self.tensors if t.kind in "AB"]
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
            if not data:  # (an AdaLoRA module pruned to rank 0: its one triplet stays zero)
                continue
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

    async def read_pruned(self) -> tuple[LoraConfig, dict[str, tuple[tuple[int, ...], bytes]]]:
        """The adapter as its file keeps it: for AdaLoRA, each module's kept triplets only (the
        rows of A and E and the columns of B the mask keeps, as PEFT's save resizes them), with
        the ranks left as the config's rank_pattern; other adapters as read_state."""
        import dataclasses
        import struct

        from .config import module_name

        state = await self.read_state()
        if not self.adaptive:
            return self.config, state
        mask = struct.unpack(f"<{self.triplets}f", await self.device.read_buffer(self.mask))
        out, pattern, at = {}, [], 0
        for layer, module in self.modules:
            r = self.rank(layer, module)
            keep = [i for i in range(r) if mask[at + i] != 0.0 and i < self.config.stored_rank(layer, module)]
            at += r
            pattern.append((module_name(layer, module), len(keep)))
            base = f"base_model.model.{module_name(layer, module)}"
            for kind in "AEB":
                shape, data = state[f"{base}.lora_{kind}.weight"]
                rows, cols = shape
                if kind == "B":  # columns
                    words = struct.unpack(f"<{rows * cols}f", data)
                    picked = [words[o * cols + i] for o in range(rows) for i in keep]
                    out[f"{base}.lora_B.weight"] = ((rows, len(keep)), struct.pack(f"<{len(picked)}f", *picked))
                else:  # rows
                    out[f"{base}.lora_{kind}.weight"] = ((len(keep), cols),
                                                         b"".join(data[i * cols * 4 : (i + 1) * cols * 4] for i in keep))
        return dataclasses.replace(self.config, rank_pattern=tuple(pattern)), out

    def zero_optimizer(self) -> None:
        zeros = bytes(self.nbytes)
        for buf in (self.grads, self.m, self.v):
            self.device.write_buffer(buf, zeros)
