"""Decoders (Llama, Mistral, Qwen2/3, Gemma 3, Phi-3, GPT-2) on the GPU: forward, loss and backward with LoRA, recorded
as dispatch lists (one submit per micro-batch, no readback inside).

Shapes: B batch, S sequence, T = B·S tokens, C hidden, I intermediate, V vocabulary,
Hq/Hkv query/key-value heads of size D, r LoRA rank. Activations are row-major [T, features],
the layout every projection reads and writes, so no transposes are ever materialised.
Base weights are frozen: only the LoRA tensors get gradients.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..config import PROJECTIONS, ModelConfig, module_name
from ..errors import UsageError
from ..gpu.device import VIEW_ALIGNMENT, Buffer, Copy, Device
from ..lora import LoraState
from ..ops import MAX_ROWS_OUTPUTS, QUANT_DTYPES, Blocks, Ops, Product
from .weights import adjacent

LOGITS_CHUNK_BYTES = 96 * 2**20  # the [rows, V] logits block computed at once
# LoRA's gradients sum over the tokens: each gradient product splits the tokens this many ways
# (at most; at least GRAD_SLICE_TOKENS each) into its own slice of a gradient-shaped buffer,
# and one dispatch after the backward pass adds the slices for the whole adapter, instead of a
# reduction after every product (2 × 7 per layer).
# The slices take at most GRAD_SLICES_BYTES: a large adapter (1-2 B models) gets fewer slices
# rather than several copies of its gradient.
GRAD_SLICES = 32
GRAD_SLICE_TOKENS = 128
GRAD_SLICES_BYTES = 128 * 2**20
# Chunks are multiples of 128 rows, the matmul's tile height (no tile half past the chunk), or of
# 64 for vocabularies too large for that; 64 · 4 bytes keeps the views 256-aligned.
ROW_ALIGN = 128
# Products over at least this many rows take a quantized weight dequantized into a scratch
# buffer first (one bandwidth-bound pass) and then the float32 matmul; fewer rows (generation's
# steps) read the codes directly.
DEQUANT_ROWS = 64
ATTENTION_INPUTS = ("q_proj", "k_proj", "v_proj")


def logit_chunk_rows(T: int, V: int) -> int:
    """Rows of the [rows, V] logits block computed at once (all T if they fit)."""
    rows = max(1, LOGITS_CHUNK_BYTES // (V * 4))
    align = ROW_ALIGN if rows >= ROW_ALIGN else ROW_ALIGN // 2  # huge vocabularies: 64-row chunks
    return T if rows >= T else max(align, rows // align * align)


@dataclass
class KVCache:
    """Per-layer keys and values [max_len, Hkv·D] of the tokens generated so far."""

    k: list[Buffer]
    v: list[Buffer]

    @classmethod
    def create(cls, device: Device, config: ModelConfig, max_len: int) -> "KVCache":
        size = max_len * config.kv_size * 4
        return cls([device.create_buffer(size, label=f"kcache.{l}") for l in range(config.num_layers)],
                   [device.create_buffer(size, label=f"vcache.{l}") for l in range(config.num_layers)])


@dataclass
class LayerActivations:
    """What the forward pass of one layer keeps for the backward pass."""

    xn1: Buffer  # [T, C] input_layernorm output (input of q, k, v)
    rstd1: Buffer  # [T]
    q: Buffer  # [T, Hq·D] after RoPE
    k: Buffer  # [T, Hkv·D] after RoPE
    v: Buffer  # [T, Hkv·D]
    attn: Buffer  # [T, Hq·D] attention output (input of o_proj)
    lse: Buffer  # [B, Hq, S]
    mid: Buffer  # [T, C] residual stream after attention
    xn2: Buffer  # [T, C] post_attention_layernorm output
    rstd2: Buffer  # [T]
    gate: Buffer | None  # [T, I] (None: an MLP without a gate, GPT-2)
    up: Buffer  # [T, I]
    h: Buffer  # [T, I] act(gate) · up (input of down_proj)
    u: dict  # module -> [T, r]: x · Aᵀ, the LoRA inner activation
    p: dict = field(default_factory=dict)  # DoRA module -> [T, out]: x · Wᵀ + s · u · Bᵀ, before the magnitude
    qkv: Buffer | None = None  # q, k, v one after the other (their views), for the fused product
    u_qkv: Buffer | None = None  # u of q, k, v, blocks Transformer.u_block floats apart (their views)
    # With qk_norm (Qwen3): q and k above are the projections' outputs; attention reads these,
    # each head RMS-normalised, then rotated.
    # With sandwich_norms (Gemma): o_proj's and down_proj's outputs before their norms.
    ao: Buffer | None = None  # [T, C]
    rstd_ao: Buffer | None = None  # [T]
    mo: Buffer | None = None  # [T, C]
    rstd_mo: Buffer | None = None  # [T]
    qn: Buffer | None = None  # [T, Hq·D]
    kn: Buffer | None = None  # [T, Hkv·D]
    rstd_q: Buffer | None = None  # [T·Hq]
    rstd_k: Buffer | None = None  # [T·Hkv]

    @property
    def q_att(self) -> Buffer:
        """The queries attention reads (normalised where the model norms them)."""
        return self.qn if self.qn is not None else self.q

    @property
    def k_att(self) -> Buffer:
        return self.kn if self.kn is not None else self.k


class Transformer:
    def __init__(self, device: Device, ops: Ops, config: ModelConfig, weights: dict[str, Buffer],
                 lora: LoraState | None, batch: int, seq_len: int, checkpointing: bool = False,
                 precision: str = "f32"):
        """checkpointing: keep only each layer's input and recompute the layer during the
        backward pass (one layer's activations in memory instead of all of them). precision:
        the large products' arithmetic (config.PRECISIONS; "mixed" needs ops.prepare(mixed=True))."""
        if config.max_positions and seq_len > config.max_positions:
            what = ("has learned position embeddings for n_positions" if config.learned_positions else
                    "'s RoPE (LongRoPE) is supported up to original_max_position_embeddings")
            raise UsageError(f"this model {what} = {config.max_positions} tokens; {seq_len} were asked for: use a "
                             f"shorter sequence length")
        self.device, self.ops, self.config, self.w, self.lora = device, ops.with_precision(precision), config, weights, lora
        self.B, self.S, self.T = batch, seq_len, batch * seq_len
        self.checkpointing = checkpointing
        cfg, T = config, self.T
        C, I, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size

        self.buffers: list[Buffer] = []  # everything allocated here, for release()

        def buf(count: int, label: str) -> Buffer:
            buffer = device.create_buffer(count * 4, label=label)
            self.buffers.append(buffer)
            return buffer

        # Quantized projections are dequantized, one at a time, into this float32 scratch (DEQUANT_ROWS).
        quantized = [m for m in cfg.projections if self._weight(0, m).dtype in QUANT_DTYPES]
        self.wscratch = buf(max(cfg.projection_shape(m)[0] * cfg.projection_shape(m)[1] for m in quantized),
                            "weights.dequantized") if quantized else None

        self.ids = buf(T, "ids")  # [T] u32
        self.targets = buf(T, "targets")  # [T] i32, the next token or -100
        self.pos = device.create_buffer_with_data(struct.pack(f"<{T}I", *(t % seq_len for t in range(T))), label="pos")
        self.buffers.append(self.pos)
        by_freqs: dict[tuple, Buffer] = {}  # each layer's RoPE frequencies (Gemma: local and global)
        for l in range(cfg.num_layers):
            freqs = tuple(cfg.layer_inv_freq(l))
            if freqs not in by_freqs:
                by_freqs[freqs] = device.create_buffer_with_data(struct.pack(f"<{len(freqs)}f", *freqs), label="inv_freq")
                self.buffers.append(by_freqs[freqs])
        self.inv_freqs = [by_freqs[tuple(cfg.layer_inv_freq(l))] for l in range(cfg.num_layers)]
        self.res = [buf(T * C, f"res.{l}") for l in range(cfg.num_layers + 1)]
        r = lora.config.max_rank if lora else 0
        kept = 1 if checkpointing else cfg.num_layers  # with checkpointing all layers share one set
        # q, k and v (and their gradients) one after the other, so that the three projections
        # can run as one product (see _qkv_fusable); views need 256-byte-aligned offsets.
        self.qkv_sizes = (T * cfg.q_size, T * cfg.kv_size, T * cfg.kv_size)
        self.u_block = -(-T * max(r, 1) // (VIEW_ALIGNMENT // 4)) * (VIEW_ALIGNMENT // 4)  # floats per u block

        def blocks(sizes: tuple, label: str) -> tuple[Buffer | None, list[Buffer]]:
            """One buffer and a view per size, or (None, separate buffers) where a view's offset
            would not be aligned."""
            if any(n * 4 % VIEW_ALIGNMENT for n in sizes[:-1]):
                return None, [buf(n, f"{label}.{i}") for i, n in enumerate(sizes)]
            whole = buf(sum(sizes), label)
            views, at = [], 0
            for n in sizes:
                views.append(whole.view(at * 4, n * 4))
                at += n
            return whole, views

        def layer_activations(l: int) -> LayerActivations:
            qkv, (q, k, v) = blocks(self.qkv_sizes, f"l{l}.qkv")
            u_qkv, u_views = blocks((self.u_block,) * 3, f"l{l}.u_qkv")
            u = {}
            for m in [m for m in cfg.projections if cfg.site(m) in lora.config.targets] if lora else ():
                u[m] = u_views[ATTENTION_INPUTS.index(m)] if m in ATTENTION_INPUTS else buf(T * r, f"l{l}.u.{m}")
            p = {m: buf(T * cfg.projection_shape(m)[0], f"l{l}.dora_p.{m}") for m in dora_modules}
            a = LayerActivations(
                xn1=buf(T * C, f"l{l}.xn1"), rstd1=buf(T, f"l{l}.rstd1"), q=q, k=k, v=v,
                attn=buf(T * cfg.q_size, f"l{l}.attn"), lse=buf(T * cfg.num_heads, f"l{l}.lse"),
                mid=buf(T * C, f"l{l}.mid"), xn2=buf(T * C, f"l{l}.xn2"), rstd2=buf(T, f"l{l}.rstd2"),
                gate=buf(T * I, f"l{l}.gate") if cfg.gated_mlp else None, up=buf(T * I, f"l{l}.up"),
                h=buf(T * I, f"l{l}.h"),
                u=u, qkv=qkv, u_qkv=u_qkv, p=p,
            )
            if cfg.sandwich_norms:
                a.ao, a.rstd_ao = buf(T * C, f"l{l}.ao"), buf(T, f"l{l}.rstd_ao")
                a.mo, a.rstd_mo = buf(T * C, f"l{l}.mo"), buf(T, f"l{l}.rstd_mo")
            if cfg.qk_norm:
                a.qn, a.kn = buf(T * cfg.q_size, f"l{l}.qn"), buf(T * cfg.kv_size, f"l{l}.kn")
                a.rstd_q, a.rstd_k = buf(T * cfg.num_heads, f"l{l}.rstd_q"), buf(T * cfg.num_kv_heads, f"l{l}.rstd_k")
            return a

        # DoRA: each adapted module's weight norms (one view per module, recomputed from A and B
        # in every forward pass), and each layer keeps its projections before the magnitude.
        dora_modules = [m for m in cfg.projections if lora and lora.dora(0, m)]
        self.dora_norms: dict[tuple[int, str], Buffer] = {}
        if dora_modules:
            step = VIEW_ALIGNMENT // 4
            sizes = {m: -(-cfg.projection_shape(m)[0] // step) * step for m in dora_modules}
            norms = buf(cfg.num_layers * sum(sizes.values()), "dora.norms")
            at = 0
            for l in range(cfg.num_layers):
                for m in dora_modules:
                    self.dora_norms[(l, m)] = norms.view(at * 4, cfg.projection_shape(m)[0] * 4)
                    at += sizes[m]
            self.dp = buf(T * max(cfg.projection_shape(m)[0] for m in dora_modules), "dora.dp")
        layers = [layer_activations(l) for l in range(kept)]
        self.layers = layers * cfg.num_layers if checkpointing else layers
        self.xnf, self.rstdf = buf(T * C, "xnf"), buf(T, "rstdf")
        self.token_loss = buf(T, "token_loss")  # [T] per-token loss
        # Logits in row chunks: the [T, V] block never exists at once.
        rows = logit_chunk_rows(T, V)
        self.logits = buf(min(rows, T) * V, "logits")  # [rows, V], then d(loss)/d(logits) in place
        self.chunks = []
        for r0 in range(0, T, rows):
            n = min(rows, T - r0)
            self.chunks.append((n, self.xnf.view(r0 * C * 4, n * C * 4), self.targets.view(r0 * 4, n * 4),
                                self.token_loss.view(r0 * 4, n * 4)))
        # Backward scratch, shared by all layers.
        self.d_res, self.d_mid, self.dxn = buf(T * C, "d_res"), buf(T * C, "d_mid"), buf(T * C, "dxn")
        # Gemma: the gradient of o_proj's or down_proj's output, through the norm after it.
        self.d_sub = buf(T * C, "d_sub") if cfg.sandwich_norms else None
        self.dxnf = buf(T * C, "dxnf")
        self.dxnf_chunks = [self.dxnf.view(r0 * C * 4, min(rows, T - r0) * C * 4) for r0 in range(0, T, rows)]
        self.dh, self.dup = buf(T * I, "dh"), buf(T * I, "dup")
        self.dgate = buf(T * I, "dgate") if cfg.gated_mlp else None
        self.d_attn = buf(T * cfg.q_size, "d_attn")
        self.dqkv, (self.dq, self.dk, self.dv) = blocks(self.qkv_sizes, "dqkv")
        self.delta = buf(T * cfg.num_heads, "delta")
        # qk_norm: attention's gradients of the normalised q and k, before the norms' backward.
        self.dqn = buf(T * cfg.q_size, "dqn") if cfg.qk_norm else None
        self.dkn = buf(T * cfg.kv_size, "dkn") if cfg.qk_norm else None
        self.dk_heads, self.dv_heads = buf(T * cfg.q_size, "dk_heads"), buf(T * cfg.q_size, "dv_heads")
        self.du = buf(T * max(r, 1), "du")
        self.du_qkv, self.du_views = blocks((self.u_block,) * 3, "du_qkv")  # q, k, v's du for the fused product
        self.grad_slices = 1
        if lora:
            limit = min(GRAD_SLICES_BYTES, device.info.limits.get("maxStorageBufferBindingSize", 128 * 2**20))
            self.grad_slices = max(1, min(GRAD_SLICES, T // GRAD_SLICE_TOKENS, limit // lora.nbytes))
            if self.grad_slices > 1:
                self.grad_parts = buf(self.grad_slices * lora.numel, "lora.grad_slices")
        if lora and lora.config.dropout > 0:  # the dropped adapter input and its gradient
            widest = max(C, I, cfg.q_size)
            self.x_drop, self.dx_drop = buf(T * widest, "lora.x_drop"), buf(T * widest, "lora.dx_drop")

    def release(self) -> None:
        """Free the activation buffers (weights and the adapter belong to the caller)."""
        for buffer in self.buffers:
            self.device.destroy_buffer(buffer)
        self.buffers = []

    @property
    def lm_head(self) -> Buffer:
        return self.w["model.embed_tokens.weight" if self.config.tie_word_embeddings else "lm_head.weight"]

    def _weight(self, layer: int, module: str, suffix: str = "weight") -> Buffer:
        return self.w[f"{module_name(layer, module)}.{suffix}"]

    def _matrix(self, cmds: list, layer: int, module: str, T: int) -> Buffer:
        """The projection's weight as a product over T rows reads it: a quantized weight is
        dequantized into the scratch first when T ≥ DEQUANT_ROWS (the values are exact, so the
        product equals the float32 path's), else read as codes."""
        weight = self._weight(layer, module)
        if weight.dtype not in QUANT_DTYPES or T < DEQUANT_ROWS:
            return weight
        cmds.append(self.ops.dequantize(self.wscratch, weight, *self.config.projection_shape(module)))
        return self.wscratch

    def write_batch(self, ids: list[int], targets: list[int]) -> None:
        """Token ids [T] and next-token targets [T] (-100 = ignored) of the next micro-batch."""
        self.device.write_buffer(self.ids, struct.pack(f"<{self.T}I", *ids))
        self.device.write_buffer(self.targets, struct.pack(f"<{self.T}i", *targets))

    # -- one projection ---------------------------------------------------------------------
    def _lora_input(self, cmds: list, x: Buffer, layer: int, module: str, T: int, step: Buffer | None) -> Buffer:
        """The adapter's input: x, or dropout(x) in training (mask regenerated from step's seed)."""
        p = self.lora.config.dropout
        if step is None or p == 0.0:
            return x
        in_f = self.config.projection_shape(module)[1]
        cmds.append(self.ops.dropout(self.x_drop, x, step, T * in_f, p, self._stream(layer, module)))
        return self.x_drop

    def _stream(self, layer: int, module: str) -> int:
        """The dropout stream of `module`'s adapter input (a fused module's parts share its mask)."""
        first = self.config.sites()[self.config.site(module)][0]
        return layer * len(PROJECTIONS) + PROJECTIONS.index(first)

    def _linear(self, cmds: list, y: Buffer, x: Buffer, layer: int, module: str, T: int, beta: float = 0.0,
                step: Buffer | None = None, residual: Buffer | None = None) -> None:
        """y (+)= x · Wᵀ (+ bias) + s · (dropout(x) · Aᵀ) · Bᵀ over the first T rows; `step`
        (training) supplies the dropout seed. With `residual`, y = residual + … (no copy first)."""
        out_f, in_f = self.config.projection_shape(module)
        ops = self.ops
        plus = None
        if self.lora and self.lora.has(layer, module):  # u = dropout(x) · Aᵀ first; s · u · Bᵀ rides on x · Wᵀ
            r, s = self.lora.rank(layer, module), self.lora.scaling(layer, module)
            u = self.layers[layer].u[module]
            x_in = self._lora_input(cmds, x, layer, module, T, step)
            cmds.extend(ops.matmul(u, x_in, self.lora.param(layer, module, "A"), T, r, in_f))
            plus = Product(u, self.lora.param(layer, module, "B"), r, alpha=s)
            if self.lora.dora(layer, module):  # DoRA: y = (m / n) · (x · Wᵀ + s · u · Bᵀ) (+ residual, bias)
                p = self.layers[layer].p[module]
                cmds.extend(ops.matmul(p, x, self._matrix(cmds, layer, module, T), T, out_f, in_f, plus=plus))
                bias = self._weight(layer, module, "bias") if self._has_bias(module) else None
                cmds.append(ops.dora_scale(y, p, self.lora.param(layer, module, "M"), self.dora_norms[(layer, module)],
                                           T, out_f, res=residual, bias=bias))
                return
        cmds.extend(ops.matmul(y, x, self._matrix(cmds, layer, module, T), T, out_f, in_f,
                               beta=1.0 if residual else beta, plus=plus, c_in=residual))
        if self._has_bias(module):
            cmds.append(ops.bias_add(y, self._weight(layer, module, "bias"), T, out_f))

    def _dora_norms(self, cmds: list) -> None:
        """Each DoRA module's weight norms ‖W + s · B · A‖ per output row, from the adapter as it
        is now (held constant through the backward pass, as PEFT detaches them); a quantized
        weight is dequantized into the scratch first."""
        for (layer, module), n in self.dora_norms.items():
            out_f, in_f = self.config.projection_shape(module)
            weight = self._weight(layer, module)
            if weight.dtype in QUANT_DTYPES:
                cmds.append(self.ops.dequantize(self.wscratch, weight, out_f, in_f))
                weight = self.wscratch
            lora = self.lora
            cmds.append(self.ops.dora_norm(n, weight, lora.param(layer, module, "A"), lora.param(layer, module, "B"),
                                           out_f, in_f, lora.rank(layer, module), lora.scaling(layer, module)))

    def _has_bias(self, module: str) -> bool:
        """Whether the projection adds a bias (Qwen2's q, k and v; every one of GPT-2's)."""
        return self.config.linear_bias or self.config.attention_bias and module in ATTENTION_INPUTS

    def _grad_out(self, layer: int, module: str, kind: str) -> tuple:
        """Where a gradient product writes: (C, slices) for Ops.matmul."""
        if self.grad_slices == 1:
            return self.lora.grad(layer, module, kind), None
        view = self.lora.grad_slices(self.grad_parts, self.grad_slices, layer, module, kind)
        return view, (self.grad_slices, self.lora.numel)

    def _lora_grads(self, cmds: list, dy: Buffer, x: Buffer, layer: int, module: str, accumulate_grads: bool,
                    step: Buffer | None, du: Buffer) -> Buffer:
        """LoRA gradients dB (+)= s · dyᵀ · u, dA (+)= (s · dy · B)ᵀ · dropout(x), leaving
        du = s · dy · B; returns the adapter's input (x, or dropout(x))."""
        r, s, lora = self.lora.rank(layer, module), self.lora.scaling(layer, module), self.lora
        out_f, in_f = self.config.projection_shape(module)
        T, ops = self.T, self.ops
        g = 1.0 if accumulate_grads else 0.0
        u = self.layers[layer].u[module]
        grad, slices = self._grad_out(layer, module, "B")
        cmds.extend(ops.matmul(grad, dy, u, out_f, r, T, trans_a=True, trans_b=True, alpha=s, beta=g, slices=slices))
        cmds.extend(ops.matmul(du, dy, lora.param(layer, module, "B"), T, r, out_f, trans_b=True, alpha=s))
        x_in = self._lora_input(cmds, x, layer, module, T, step)
        grad, slices = self._grad_out(layer, module, "A")
        g_a = 1.0 if lora.shares_a(layer, module) else g  # (a fused module's A: its parts' gradients add up)
        cmds.extend(ops.matmul(grad, du, x_in, r, in_f, T, trans_a=True, trans_b=True, beta=g_a, slices=slices))
        return x_in

    # -- q, k and v as one product --------------------------------------------------------------
    def _qkv_fusable(self, layer: int, T: int) -> Buffer | None:
        """The q, k and v weights as one buffer where the three projections can run as one
        product: the weights lie one after the other (fuse_attention_inputs), so do the
        activations, the whole batch runs (not a KV-cache step), and q, k and v have adapters
        alike (same rank and scaling, no dropout) or none."""
        a = self.layers[layer]
        if T != self.T or a.qkv is None or a.u_qkv is None or self.dqkv is None or self.du_qkv is None:
            return None
        if min(T, self.config.hidden_size) <= MAX_ROWS_OUTPUTS:  # products this thin skip the tiled kernel
            return None
        weight = adjacent([self._weight(layer, m) for m in ATTENTION_INPUTS])
        if weight is None or (weight.dtype == "f16") not in self.ops.blocks:  # Ops.prepare compiles it
            return None
        if not self.lora:
            return weight
        has = [self.lora.has(layer, m) for m in ATTENTION_INPUTS]
        if not any(has):
            return weight
        if any(self.lora.dora(layer, m) for m in ATTENTION_INPUTS):  # (each scales its own output)
            return None
        lora = self.lora
        if (not all(has) or lora.config.dropout > 0 or len({lora.rank(layer, m) for m in ATTENTION_INPUTS}) > 1
                or len({lora.scaling(layer, m) for m in ATTENTION_INPUTS}) > 1):
            return None
        return weight

    def _qkv_blocks(self, layer: int, kind: str) -> tuple[int, Blocks]:
        """The adapter's rank and the Blocks of the fused product: forward (kind "B": u · Bᵀ,
        block-diagonal) or backward (kind "A": du · A)."""
        cfg = self.config
        bounds = (cfg.q_size, cfg.q_size + cfg.kv_size)
        if not (self.lora and self.lora.has(layer, "q_proj")):
            return 0, Blocks(n=bounds) if kind == "B" else Blocks(k=bounds)
        r = self.lora.rank(layer, "q_proj")
        offsets = tuple(self.lora.offset(layer, m, kind) for m in ATTENTION_INPUTS)
        if kind == "B":
            return r, Blocks(n=bounds, r=r, a2_block=self.u_block, b2_offsets=offsets, b2_strides=(r, 1),
                             b2_diagonal=True)
        return r, Blocks(k=bounds, r=r, a2_block=self.u_block, b2_offsets=offsets, b2_strides=(1, cfg.hidden_size))

    def _qkv_forward(self, cmds: list, layer: int, weight: Buffer) -> None:
        """q, k, v = xn1 · [Wq; Wk; Wv]ᵀ (+ bias) + s · u · Bᵀ per block, one product."""
        cfg, ops, T, a = self.config, self.ops, self.T, self.layers[layer]
        C, N = cfg.hidden_size, cfg.q_size + 2 * cfg.kv_size
        r, blocks = self._qkv_blocks(layer, "B")
        plus = None
        if r:
            for m in ATTENTION_INPUTS:
                cmds.extend(ops.matmul(a.u[m], a.xn1, self.lora.param(layer, m, "A"), T, r, C))
            plus = Product(a.u_qkv, self.lora.b_source, 3 * r, alpha=self.lora.scaling(layer, "q_proj"))
        cmds.extend(ops.matmul(a.qkv, a.xn1, weight, T, N, C, plus=plus, blocks=blocks))
        if self._has_bias("q_proj"):
            for m, y in zip(ATTENTION_INPUTS, (a.q, a.k, a.v)):
                cmds.append(ops.bias_add(y, self._weight(layer, m, "bias"), T, cfg.projection_shape(m)[0]))

    def _qkv_backward(self, cmds: list, dx: Buffer | None, layer: int, weight: Buffer, accumulate_grads: bool,
                      step: Buffer | None) -> None:
        """The LoRA gradients of q, k and v, and dx = [dq dk dv] · [Wq; Wk; Wv] + Σ du · A, one product."""
        cfg, a = self.config, self.layers[layer]
        r, blocks = self._qkv_blocks(layer, "A")
        plus = None
        if r:
            for m, dy, du in zip(ATTENTION_INPUTS, (self.dq, self.dk, self.dv), self.du_views):
                self._lora_grads(cmds, dy, a.xn1, layer, m, accumulate_grads, step, du)
            plus = Product(self.du_qkv, self.lora.params, 3 * r)
        if dx is not None:
            cmds.extend(self.ops.matmul(dx, self.dqkv, weight, self.T, cfg.hidden_size, cfg.q_size + 2 * cfg.kv_size,
                                        trans_b=True, plus=plus, blocks=blocks))

    def _linear_backward(self, cmds: list, dx: Buffer | None, dy: Buffer, x: Buffer, layer: int, module: str,
                         accumulate_dx: bool, accumulate_grads: bool, step: Buffer | None = None) -> None:
        """dx (+)= dy · W (+ dropout'(dy · s·B · A)); LoRA gradients dB (+)= s · dyᵀ · u,
        dA (+)= (s · dy · B)ᵀ · dropout(x)."""
        out_f, in_f = self.config.projection_shape(module)
        T, ops = self.T, self.ops
        beta_dx = 1.0 if accumulate_dx else 0.0
        if not (self.lora and self.lora.has(layer, module)):
            if dx is not None:
                cmds.extend(ops.matmul(dx, dy, self._matrix(cmds, layer, module, T), T, in_f, out_f, trans_b=True,
                                       beta=beta_dx))
            return
        r, lora = self.lora.rank(layer, module), self.lora
        if lora.dora(layer, module):  # DoRA: dm (+)= Σ dy · p / n; the rest sees dy · m / n
            n, m = self.dora_norms[(layer, module)], lora.param(layer, module, "M")
            grad, _ = self._grad_out(layer, module, "M")
            cmds.append(ops.dora_grad(grad, dy, self.layers[layer].p[module], n, T, out_f, accumulate_grads))
            cmds.append(ops.dora_scale(self.dp, dy, m, n, T, out_f))
            dy = self.dp
        x_in = self._lora_grads(cmds, dy, x, layer, module, accumulate_grads, step, self.du)
        if dx is None:
            return
        weight = self._matrix(cmds, layer, module, T)
        if x_in is x:  # dx (+)= dy · W + du · A in one pass
            cmds.extend(ops.matmul(dx, dy, weight, T, in_f, out_f, trans_b=True, beta=beta_dx,
                                   plus=Product(self.du, lora.param(layer, module, "A"), r, trans_b=True)))
        else:  # through the dropout: dx += mask · (du · A) / (1 − p)
            cmds.extend(ops.matmul(dx, dy, weight, T, in_f, out_f, trans_b=True, beta=beta_dx))
            cmds.extend(ops.matmul(self.dx_drop, self.du, lora.param(layer, module, "A"), T, in_f, r, trans_b=True))
            cmds.append(ops.dropout(dx, self.dx_drop, step, T * in_f, lora.config.dropout,
                                    self._stream(layer, module), accumulate=True))

    # -- whole model ------------------------------------------------------------------------
    def _norm(self, cmds: list, y: Buffer, rstd: Buffer, x: Buffer, weight: str, rows: int, C: int,
              residual: Buffer | None = None) -> None:
        """y (= residual +) RMSNorm(x) with the named weight (Gemma's: 1 + w), or GPT-2's
        LayerNorm (with the bias beside the weight)."""
        cfg = self.config
        bias = self.w[weight.replace(".weight", ".bias")] if cfg.layer_norm else None
        cmds.append(self.ops.rmsnorm(y, rstd, x, self.w[weight], rows, C, cfg.rms_norm_eps, cfg.norm_offset, residual,
                                     bias))

    def _norm_backward(self, cmds: list, dx: Buffer, x: Buffer, weight: str, rstd: Buffer, dy: Buffer, rows: int,
                       C: int, residual: Buffer | None = None) -> None:
        cmds.append(self.ops.rmsnorm_backward(dx, x, self.w[weight], rstd, dy, rows, C, residual=residual,
                                              w_offset=self.config.norm_offset, center=self.config.layer_norm))

    def forward(self, rows: int | None = None, cache: "KVCache | None" = None, start: int = 0,
                step: Buffer | None = None, norms: bool = True) -> list:
        """Embedding, every layer, the final norm: xnf holds the normalised last hidden states.
        With a KV cache (generation, B = 1): only the first `rows` tokens, at positions
        start…start+rows−1 (written to `pos` by the caller), attending to the cache.
        `step` marks a training pass: LoRA dropout draws its masks from step's seed. `norms`:
        DoRA's weight norms (AdaLoRA's B · diag E) are computed first (False: the adapter has not
        changed since)."""
        cfg, T = self.config, rows or self.T
        cmds: list = []
        if norms:
            if self.lora:
                cmds += self.lora.apply_dispatches(self.ops)
            self._dora_norms(cmds)
        cmds += [self.ops.embedding(self.res[0], self.ids, self.w["model.embed_tokens.weight"], T, cfg.hidden_size,
                                         cfg.vocab_size, cfg.embed_scale)]
        if cfg.learned_positions:  # GPT-2: plus the positions' embeddings
            cmds.append(self.ops.embedding(self.res[0], self.pos, self.w["model.embed_positions.weight"], T,
                                           cfg.hidden_size, cfg.max_positions, accumulate=True))
        for l in range(cfg.num_layers):
            self._layer_forward(cmds, l, T, cache, start, step=step)
        self._norm(cmds, self.xnf, self.rstdf, self.res[-1], "model.norm.weight", T, cfg.hidden_size)
        return cmds

    def _mlp_norm_weight(self, l: int) -> str:
        """The norm before layer l's MLP (Gemma names it pre_feedforward_layernorm)."""
        name = "pre_feedforward_layernorm" if self.config.sandwich_norms else "post_attention_layernorm"
        return f"model.layers.{l}.{name}.weight"

    def _layer_forward(self, cmds: list, l: int, T: int, cache: "KVCache | None" = None, start: int = 0,
                       recompute: bool = False, step: Buffer | None = None) -> None:
        """Layer l from res[l] to res[l+1]. `recompute` (gradient checkpointing) rebuilds the
        layer's activations for its backward pass and leaves res[l+1] alone."""
        cfg, ops, B, S = self.config, self.ops, self.B, self.S
        C, I, D = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
        a, p = self.layers[l], f"model.layers.{l}."
        self._norm(cmds, a.xn1, a.rstd1, self.res[l], p + "input_layernorm.weight", T, C)
        weight = self._qkv_fusable(l, T)
        if weight is not None:
            self._qkv_forward(cmds, l, weight)
        else:
            for m, y in zip(ATTENTION_INPUTS, (a.q, a.k, a.v)):
                self._linear(cmds, y, a.xn1, l, m, T, step=step)
        if cfg.qk_norm:  # each head of q and k RMS-normalised (their own weights over D)
            self._norm(cmds, a.qn, a.rstd_q, a.q, p + "self_attn.q_norm.weight", T * cfg.num_heads, D)
            self._norm(cmds, a.kn, a.rstd_k, a.k, p + "self_attn.k_norm.weight", T * cfg.num_kv_heads, D)
        q, k = a.q_att, a.k_att
        scale, window = cfg.attn_scale, cfg.window(l)
        if not cfg.learned_positions:
            cmds.append(ops.rope(q, self.pos, self.inv_freqs[l], T, cfg.num_heads, D, y=k, H2=cfg.num_kv_heads))
        if cache is None:
            cmds.append(ops.attention(a.attn, a.lse, q, k, a.v, B, S, cfg.num_heads, cfg.num_kv_heads, D, scale, window))
        else:
            kv_bytes = cfg.kv_size * 4
            cmds.append(Copy(k, 0, cache.k[l], start * kv_bytes, T * kv_bytes))
            cmds.append(Copy(a.v, 0, cache.v[l], start * kv_bytes, T * kv_bytes))
            cmds.append(ops.attention_cached(a.attn, q, cache.k[l], cache.v[l], T, start,
                                             cfg.num_heads, cfg.num_kv_heads, D, scale, window))
        if cfg.sandwich_norms:  # mid = res + norm(o_proj(attn))
            self._linear(cmds, a.ao, a.attn, l, "o_proj", T, step=step)
            self._norm(cmds, a.mid, a.rstd_ao, a.ao, p + "post_attention_layernorm.weight", T, C, residual=self.res[l])
        else:
            self._linear(cmds, a.mid, a.attn, l, "o_proj", T, step=step, residual=self.res[l])
        self._norm(cmds, a.xn2, a.rstd2, a.mid, self._mlp_norm_weight(l), T, C)
        if cfg.gated_mlp:
            self._linear(cmds, a.gate, a.xn2, l, "gate_proj", T, step=step)
        self._linear(cmds, a.up, a.xn2, l, "up_proj", T, step=step)
        if cfg.gated_mlp:
            cmds.append(ops.glu(a.h, a.gate, a.up, T * I, cfg.activation))
        else:  # GPT-2: h = act(up)
            cmds.append(ops.glu(a.h, a.up, None, T * I, cfg.activation))
        if cfg.sandwich_norms:  # res[l+1] = mid + norm(down(h)); recomputing, only its rstd is kept
            self._linear(cmds, a.mo, a.h, l, "down_proj", T, step=step)
            self._norm(cmds, self.dxn if recompute else self.res[l + 1], a.rstd_mo, a.mo,
                       p + "post_feedforward_layernorm.weight", T, C, residual=a.mid)
        elif not recompute:
            self._linear(cmds, self.res[l + 1], a.h, l, "down_proj", T, step=step, residual=a.mid)
        elif self.lora and self.lora.dora(l, "down_proj"):  # u and DoRA's p (dxn is free: its output goes there)
            self._linear(cmds, self.dxn, a.h, l, "down_proj", T, step=step, residual=a.mid)
        elif self.lora and self.lora.has(l, "down_proj"):  # down_proj's LoRA input activation u
            x_in = self._lora_input(cmds, a.h, l, "down_proj", T, step)
            cmds.extend(ops.matmul(a.u["down_proj"], x_in, self.lora.param(l, "down_proj", "A"), T,
                                   self.lora.rank(l, "down_proj"), I))

    def logits_into(self, out: Buffer) -> list:
        """All logits [T, V] into `out` (tests and generation; training uses loss_and_grad)."""
        cfg = self.config
        return self.ops.matmul(out, self.xnf, self.lm_head, self.T, cfg.vocab_size, cfg.hidden_size)

    def loss(self, history: Buffer, step: Buffer, backward: bool) -> list:
        """Per-token losses summed into history[step[4]]; with `backward`, dxnf = d(Σ loss)/d(xnf)."""
        cfg, ops = self.config, self.ops
        C, V = cfg.hidden_size, cfg.vocab_size
        cmds = []
        for (rows, xnf, targets, loss), dxnf in zip(self.chunks, self.dxnf_chunks):
            cmds.extend(ops.matmul(self.logits, xnf, self.lm_head, rows, V, C))
            cmds.append(ops.cross_entropy(loss, self.logits, targets, rows, V, 1.0))
            if backward:
                cmds.extend(ops.matmul(dxnf, self.logits, self.lm_head, rows, C, V, trans_b=True))
        cmds.append(ops.loss_sum(history, self.token_loss, step, self.T))
        return cmds

    def backward(self, accumulate_grads: bool, step: Buffer | None = None) -> list:
        """LoRA gradients of Σ loss into lora.grads (written, or added with `accumulate_grads`);
        `step` as in forward."""
        cfg, ops, T, B, S = self.config, self.ops, self.T, self.B, self.S
        C, I, D = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
        acc = accumulate_grads
        cmds: list = []
        self._norm_backward(cmds, self.d_res, self.res[-1], "model.norm.weight", self.rstdf, self.dxnf, T, C)
        for l in reversed(range(cfg.num_layers)):
            a, p = self.layers[l], f"model.layers.{l}."
            if self.checkpointing and l != cfg.num_layers - 1:  # the last layer's are still in place
                self._layer_forward(cmds, l, T, recompute=True, step=step)
            first = l == 0  # the embedding is frozen: layer 0 needs no input gradient
            d_down = self.d_res
            if cfg.sandwich_norms:  # through the norm after the MLP
                self._norm_backward(cmds, self.d_sub, a.mo, p + "post_feedforward_layernorm.weight", a.rstd_mo,
                                    self.d_res, T, C)
                d_down = self.d_sub
            self._linear_backward(cmds, self.dh, d_down, a.h, l, "down_proj", False, acc, step)
            if cfg.gated_mlp:
                cmds.append(ops.glu_backward(self.dgate, self.dup, a.gate, a.up, self.dh, T * I, cfg.activation))
                self._linear_backward(cmds, self.dxn, self.dgate, a.xn2, l, "gate_proj", False, acc, step)
            else:
                cmds.append(ops.glu_backward(self.dup, None, a.up, None, self.dh, T * I, cfg.activation))
            self._linear_backward(cmds, self.dxn, self.dup, a.xn2, l, "up_proj", cfg.gated_mlp, acc, step)
            self._norm_backward(cmds, self.d_mid, a.mid, self._mlp_norm_weight(l), a.rstd2, self.dxn, T, C,
                                residual=self.d_res)
            d_o = self.d_mid
            if cfg.sandwich_norms:  # through the norm after attention
                self._norm_backward(cmds, self.d_sub, a.ao, p + "post_attention_layernorm.weight", a.rstd_ao,
                                    self.d_mid, T, C)
                d_o = self.d_sub
            self._linear_backward(cmds, self.d_attn, d_o, a.attn, l, "o_proj", False, acc, step)
            dq, dk = (self.dqn, self.dkn) if cfg.qk_norm else (self.dq, self.dk)
            cmds.extend(ops.attention_backward(dq, dk, self.dv, self.delta, self.dk_heads, self.dv_heads,
                                               a.q_att, a.k_att, a.v, a.attn, self.d_attn, a.lse, B, S, cfg.num_heads,
                                               cfg.num_kv_heads, D, cfg.attn_scale, cfg.window(l)))
            if not cfg.learned_positions:
                cmds.append(ops.rope(dq, self.pos, self.inv_freqs[l], T, cfg.num_heads, D, backward=True, y=dk,
                                     H2=cfg.num_kv_heads))
            if cfg.qk_norm:  # through the per-head norms, into the projections' output gradients
                self._norm_backward(cmds, self.dq, a.q, p + "self_attn.q_norm.weight", a.rstd_q, dq, T * cfg.num_heads, D)
                self._norm_backward(cmds, self.dk, a.k, p + "self_attn.k_norm.weight", a.rstd_k, dk,
                                    T * cfg.num_kv_heads, D)
            dxn = None if first else self.dxn
            weight = self._qkv_fusable(l, T)
            if weight is not None:
                self._qkv_backward(cmds, dxn, l, weight, acc, step)
            else:
                self._linear_backward(cmds, dxn, self.dq, a.xn1, l, "q_proj", False, acc, step)
                self._linear_backward(cmds, dxn, self.dk, a.xn1, l, "k_proj", True, acc, step)
                self._linear_backward(cmds, dxn, self.dv, a.xn1, l, "v_proj", True, acc, step)
            if not first:
                self._norm_backward(cmds, self.d_res, self.res[l], p + "input_layernorm.weight", a.rstd1, self.dxn, T, C,
                                    residual=self.d_mid)
        if self.lora and self.grad_slices > 1:  # the gradients are the sums of their slices
            cmds.append(ops.sum_slices(self.lora.grads, self.grad_parts, self.grad_slices, self.lora.numel))
        return cmds
