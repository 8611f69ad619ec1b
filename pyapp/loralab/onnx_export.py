"""The model with its adapter merged in, as an ONNX decoder that transformers.js, Optimum and
onnxruntime load as they are.

The graph is the one Optimum exports for decoder-only LLMs: inputs `input_ids`,
`attention_mask`, `position_ids` and `past_key_values.N.key/value` ([batch, kv heads, past,
head_dim]); outputs `logits` and `present.N.key/value` (the past with this call's keys and values
appended). It is written from the engine's own description of the model (ModelConfig), one
family at a time as the engine computes it: RMSNorm or LayerNorm, q/k norms, RoPE (the layer's
own frequencies: Llama-3 scaling, Gemma's local base, Phi-3's LongRoPE) or learned positions,
grouped-query attention with a causal mask, Gemma's sliding windows and sandwich norms, a gated or
plain MLP. Only ONNX's standard operators (opset 17) are used, so onnxruntime's CPU, wasm and
WebGPU providers all run it.

Every projection is a Gemm with transB (the weights stay [out, in], as the engine and Hugging Face
keep them; GPT-2's Conv1D weights are read back that way too), and the tied output head is the
same initializer as the embeddings. Weights are merged on the GPU (merge._merged_matrix) and
streamed into the file one tensor at a time.

The 4-bit variant (`model_q4.onnx`) keeps every projection as onnxruntime's MatMulNBits
(com.microsoft): 4-bit values in blocks of 32 along K, a float32 scale and a 4-bit zero point per
block (min/max rounding, quantize_nbits.wgsl); the embeddings are float16 there (cast once when
the session starts). Quantized GGUF blocks are re-quantized from their float32 values, merged or
not: none of llama.cpp's types is MatMulNBits' layout bit for bit.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from .config import ModelConfig
from .errors import UsageError
from .formats import onnx
from .formats.onnx import BFLOAT16, BOOL, FLOAT, FLOAT16, INT8, INT64, UINT8, Graph, Node, Tensor, Value, floats, ints
from .gpu.device import Buffer, Device
from .lora import LoraState
from .merge import _merged_matrix
from .model.weights import expected_shapes
from .ops import Ops

OPSET = 17
MS = "com.microsoft"
Q_BLOCK = 32  # MatMulNBits' block along K
FLOAT_MIN = -3.4028234663852886e38  # the mask's "never" (finfo(float32).min, as transformers)
MODEL_FILE = "onnx/model.onnx"
Q4_FILE = "onnx/model_q4.onnx"


@dataclass(frozen=True)
class Stream:
    """Initializers whose bytes come from the GPU: engine tensor `name` as float32 ("f32"),
    float16 ("f16"), or 4-bit blocks ("q4": three initializers, name + _q4, _scales, _zp)."""

    name: str
    kind: str


class _Builder:
    """Nodes with generated names, constants shared by value, streamed initializers in order."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.inits: list[Tensor] = []
        self.streams: list[Stream] = []
        self._consts: dict[tuple, str] = {}
        self._n = 0

    def op(self, op: str, *inputs: str, outs: int = 1, name: str | None = None, domain: str = "", **attrs):
        self._n += 1
        outputs = [name] if name else [f"/{op}_{self._n}" + (f"_{i}" if outs > 1 else "") for i in range(outs)]
        self.nodes.append(Node(op, list(inputs), outputs, attrs, domain))
        return outputs[0] if outs == 1 else outputs

    def const(self, values, dtype: int = FLOAT, dims: tuple[int, ...] | None = None) -> str:
        values = tuple(values)
        key = (dtype, dims, values)
        if key not in self._consts:
            name = f"const_{len(self._consts)}"
            self.inits.append((floats if dtype == FLOAT else ints)(name, values, dims))
            self._consts[key] = name
        return self._consts[key]

    def scalar(self, value: float) -> str:
        return self.const([value], FLOAT, ())

    def index(self, value: int) -> str:
        return self.const([value], INT64, ())

    def weight(self, name: str, dims: tuple[int, ...], kind: str = "f32") -> str:
        self.inits.append(Tensor(name, FLOAT16 if kind == "f16" else FLOAT, dims))
        self.streams.append(Stream(name, kind))
        return name if kind == "f32" else self.op("Cast", name, to=FLOAT)


class _Decoder:
    def __init__(self, config: ModelConfig, q4: bool, long_rope: tuple[list[float], int] | None,
                 view: "GGUFView | None" = None):
        self.c, self.q4, self.long_rope, self.view = config, q4, long_rope, view
        self.g = _Builder()

    # -- pieces
    def tensor(self, name: str, dims: tuple[int, ...], kind: str = "f32") -> str:
        """Engine tensor `name` as float32: a streamed initializer, or read in place (view)."""
        if self.view is not None:
            return self.view.tensor(self.g, name, dims)
        return self.g.weight(name, dims, kind)

    def linear(self, x: str, name: str, out_f: int, in_f: int, bias: bool) -> str:
        g = self.g
        if not self.q4:
            w = self.tensor(name + ".weight", (out_f, in_f))
            inputs = (x, w, self.tensor(name + ".bias", (out_f,))) if bias else (x, w)
            return g.op("Gemm", *inputs, transB=1)
        blocks = -(-in_f // Q_BLOCK)
        base = name + ".weight"
        g.inits += [Tensor(base + "_q4", UINT8, (out_f, blocks, Q_BLOCK // 2)),
                    Tensor(base + "_scales", FLOAT, (out_f * blocks,)),
                    Tensor(base + "_zp", UINT8, (out_f * -(-blocks // 2),))]
        g.streams.append(Stream(base, "q4"))
        y = g.op("MatMulNBits", x, base + "_q4", base + "_scales", base + "_zp", domain=MS,
                 K=in_f, N=out_f, bits=4, block_size=Q_BLOCK)
        return g.op("Add", y, self.tensor(name + ".bias", (out_f,))) if bias else y

    def norm(self, x: str, name: str, width: int) -> str:
        g, c = self.g, self.c
        w = self.tensor(name + ".weight", (width,))
        if c.layer_norm:
            return g.op("LayerNormalization", x, w, self.tensor(name + ".bias", (width,)), axis=-1,
                        epsilon=float(c.rms_norm_eps))
        mean = g.op("ReduceMean", g.op("Mul", x, x), axes=[-1], keepdims=1)
        y = g.op("Div", x, g.op("Sqrt", g.op("Add", mean, g.scalar(c.rms_norm_eps))))
        if c.norm_offset:
            w = g.op("Add", w, g.scalar(c.norm_offset))
        return g.op("Mul", y, w)

    def act(self, x: str) -> str:
        g = self.g
        if self.c.activation == "silu":
            return g.op("Mul", x, g.op("Sigmoid", x))
        # GELU's tanh form: 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))
        cube = g.op("Mul", g.op("Mul", x, x), x)
        inner = g.op("Mul", g.op("Add", x, g.op("Mul", cube, g.scalar(0.044715))), g.scalar(math.sqrt(2 / math.pi)))
        return g.op("Mul", g.op("Mul", x, g.scalar(0.5)), g.op("Add", g.op("Tanh", inner), g.scalar(1.0)))

    def rope_tables(self, inv_freq: tuple[float, ...]) -> tuple[str, str]:
        """cos and sin [B, 1, S, D] for these frequencies at position_ids (in float32, as
        transformers computes them: position × frequency, the halves repeated)."""
        g = self.g
        freq = g.const(inv_freq)
        if self.long_rope is not None and inv_freq == tuple(self.c.inv_freq()):
            # Phi-3's LongRoPE: its long factors once max(position_ids) + 1 passes the original context
            long_factors, original = self.long_rope
            base = [1.0 / self.c.rope_theta ** (i / self.c.head_dim) for i in range(0, self.c.head_dim, 2)]
            longer = g.op("Greater", g.op("ReduceMax", "position_ids", keepdims=0), g.index(original - 1))
            freq = g.op("Where", longer, g.const([f / s for f, s in zip(base, long_factors)]), freq)
        pos = g.op("Unsqueeze", g.op("Cast", "position_ids", to=FLOAT), g.const([2], INT64))
        angles = g.op("Mul", pos, freq)
        both = g.op("Concat", angles, angles, axis=-1)
        heads = g.const([1], INT64)
        return g.op("Unsqueeze", g.op("Cos", both), heads), g.op("Unsqueeze", g.op("Sin", both), heads)

    def rotate(self, x: str, cos: str, sin: str) -> str:
        g, half = self.g, self.c.head_dim // 2
        x1, x2 = g.op("Split", x, g.const([half, half], INT64), outs=2, axis=-1)
        turned = g.op("Concat", g.op("Neg", x2), x1, axis=-1)
        return g.op("Add", g.op("Mul", x, cos), g.op("Mul", turned, sin))

    # -- the graph
    def build(self) -> Graph:
        g, c = self.g, self.c
        C, D, H, KV, V = c.hidden_size, c.head_dim, c.num_heads, c.num_kv_heads, c.vocab_size
        ids_shape = g.op("Shape", "input_ids")
        S = g.op("Gather", ids_shape, g.index(1), axis=0)
        T = g.op("Gather", g.op("Shape", "attention_mask"), g.index(1), axis=0)
        P = g.op("Sub", T, S)
        queries = g.op("Unsqueeze", g.op("Range", P, T, g.index(1)), g.const([1], INT64))  # [S, 1]
        keys = g.op("Unsqueeze", g.op("Range", g.index(0), T, g.index(1)), g.const([0], INT64))  # [1, T]
        causal = g.op("LessOrEqual", keys, queries)
        padding = g.op("Unsqueeze", g.op("Cast", "attention_mask", to=BOOL), g.const([1, 2], INT64))  # [B, 1, 1, T]
        masks: dict[int, str] = {}

        def mask(window: int) -> str:  # the additive mask [B, 1, S, T] of a window (0: none)
            if window not in masks:
                seen = causal
                if window:
                    near = g.op("Less", g.op("Sub", queries, keys), g.index(window))
                    seen = g.op("And", seen, near)
                masks[window] = g.op("Where", g.op("And", seen, padding), g.scalar(0.0), g.scalar(FLOAT_MIN))
            return masks[window]

        tables: dict[tuple, tuple[str, str]] = {}
        embed_kind = "f16" if self.q4 else "f32"
        table = self.tensor("model.embed_tokens.weight", (V, C), embed_kind)
        h = g.op("Gather", table, "input_ids", axis=0)
        if c.embed_scale != 1.0:
            h = g.op("Mul", h, g.scalar(c.embed_scale))
        if c.learned_positions:
            wpe = self.tensor("model.embed_positions.weight", (c.max_positions, C))
            h = g.op("Add", h, g.op("Gather", wpe, "position_ids", axis=0))
        x = g.op("Reshape", h, g.const([-1, C], INT64))
        heads_q = g.op("Concat", ids_shape, g.const([H, D], INT64), axis=0)
        heads_kv = g.op("Concat", ids_shape, g.const([KV, D], INT64), axis=0)
        to_heads, from_heads = [0, 2, 1, 3], [0, 2, 1, 3]
        scale = c.attn_scale if c.attn_scale is not None else 1.0 / math.sqrt(D)
        bias = c.attention_bias or c.linear_bias
        for i in range(c.num_layers):
            p = f"model.layers.{i}."
            xn = self.norm(x, p + "input_layernorm", C)
            qkv = []
            for module, heads, shape in (("q_proj", H, heads_q), ("k_proj", KV, heads_kv), ("v_proj", KV, heads_kv)):
                y = self.linear(xn, p + "self_attn." + module, heads * D, C, bias)
                y = g.op("Reshape", y, shape)
                if c.qk_norm and module != "v_proj":
                    y = self.norm(y, p + f"self_attn.{module[0]}_norm", D)
                qkv.append(g.op("Transpose", y, perm=to_heads))
            q, k, v = qkv
            if not c.learned_positions:
                inv = tuple(c.layer_inv_freq(i))
                if inv not in tables:
                    tables[inv] = self.rope_tables(inv)
                q, k = (self.rotate(t, *tables[inv]) for t in (q, k))
            k = g.op("Concat", f"past_key_values.{i}.key", k, axis=2, name=f"present.{i}.key")
            v = g.op("Concat", f"past_key_values.{i}.value", v, axis=2, name=f"present.{i}.value")
            if H != KV:  # grouped-query attention: each kv head serves H / KV query heads
                groups = g.const([1, 1, H // KV, 1, 1], INT64)
                whole = g.const([0, H, -1, D], INT64)
                k, v = (g.op("Reshape", g.op("Expand", g.op("Unsqueeze", t, g.const([2], INT64)), groups), whole)
                        for t in (k, v))
            scores = g.op("Mul", g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2])), g.scalar(scale))
            probs = g.op("Softmax", g.op("Add", scores, mask(c.window(i))), axis=-1)
            att = g.op("Transpose", g.op("MatMul", probs, v), perm=from_heads)
            o = self.linear(g.op("Reshape", att, g.const([-1, H * D], INT64)), p + "self_attn.o_proj", C, H * D, c.linear_bias)
            if c.sandwich_norms:
                o = self.norm(o, p + "post_attention_layernorm", C)
            x = g.op("Add", x, o)
            xn = self.norm(x, p + ("pre_feedforward_layernorm" if c.sandwich_norms else "post_attention_layernorm"), C)
            I = c.intermediate_size
            up = self.linear(xn, p + "mlp.up_proj", I, C, c.linear_bias)
            if c.gated_mlp:
                a = g.op("Mul", self.act(self.linear(xn, p + "mlp.gate_proj", I, C, c.linear_bias)), up)
            else:
                a = self.act(up)
            m = self.linear(a, p + "mlp.down_proj", C, I, c.linear_bias)
            if c.sandwich_norms:
                m = self.norm(m, p + "post_feedforward_layernorm", C)
            x = g.op("Add", x, m)
        x = self.norm(x, "model.norm", C)
        if c.tie_word_embeddings:
            logits = g.op("Gemm", x, table, transB=1)
        else:
            logits = self.linear(x, "lm_head", V, C, False)
        g.op("Reshape", logits, g.op("Concat", ids_shape, g.const([V], INT64), axis=0), name="logits")

        past = [Value(f"past_key_values.{i}.{kv}", FLOAT, ("batch_size", KV, "past_sequence_length", D))
                for i in range(c.num_layers) for kv in ("key", "value")]
        present = [Value(f"present.{i}.{kv}", FLOAT, ("batch_size", KV, "total_sequence_length", D))
                   for i in range(c.num_layers) for kv in ("key", "value")]
        inputs = [Value("input_ids", INT64, ("batch_size", "sequence_length")),
                  Value("attention_mask", INT64, ("batch_size", "total_sequence_length")),
                  Value("position_ids", INT64, ("batch_size", "sequence_length"))] + past
        outputs = [Value("logits", FLOAT, ("batch_size", "sequence_length", V))] + present
        opsets = {"": OPSET, MS: 1} if self.q4 else {"": OPSET}
        return Graph("loralab", g.nodes, inputs, outputs, g.inits, opsets)


# GGUF block types the in-place view decodes: bytes per block of 32 values, bytes before the codes.
GGUF_BLOCKS = {"Q8_0": (34, 2), "Q4_0": (18, 2), "Q4_1": (20, 4)}
GGUF_FLOATS = {"F32": FLOAT, "F16": FLOAT16, "BF16": BFLOAT16}
GGUF_LOCATION = "model.gguf"  # the GGUF file's name as the ONNX model's external data


class GGUFView:
    """A GGUF model's tensors read in place, for ONNX Runtime without WebGPU: each tensor is an
    initializer over the file's own bytes (external data at its offset, the file named
    GGUF_LOCATION beside the model) and, for a block type, the ops that turn the blocks into
    float32: d and m from a float16 view of the blocks, the codes from a byte view (4-bit codes
    split into their two nibbles in float arithmetic). ONNX Runtime evaluates these once, when
    the session starts (constant folding), so the model runs in float32 from then on. llama.cpp's
    RoPE row order of Llama's q/k is undone and Gemma's stored 1 + w norms taken back to w, as
    the engine's loader does."""

    def __init__(self, source):  # model.gguf_model.GGUFModel
        self.source, self.infos = source, source.tensors()

    def tensor(self, g: _Builder, name: str, dims: tuple[int, ...]) -> str:
        info, where = self.infos.get(name), self.source.name
        if info is None:
            raise UsageError(f"{where}: {name} is not one tensor of the file (a fused matrix); running a GGUF file "
                             f"without WebGPU takes Llama, Qwen2, Qwen3, Mistral and Gemma 3 layouts")
        numel = math.prod(dims)
        if math.prod(info.shape) != numel:
            raise UsageError(f"{where}: tensor {name} holds {list(info.shape)}, not {list(dims)}")
        at = (GGUF_LOCATION, info.start)
        if info.dtype in GGUF_FLOATS:
            g.inits.append(Tensor(name, GGUF_FLOATS[info.dtype], dims, at=at))
            out = name if info.dtype == "F32" else g.op("Cast", name, to=FLOAT)
        elif info.dtype in GGUF_BLOCKS:
            size, head = GGUF_BLOCKS[info.dtype]
            blocks = numel // 32
            g.inits += [Tensor(name + ".halves", FLOAT16, (blocks, size // 2), at=at),
                        Tensor(name + ".bytes", INT8 if info.dtype == "Q8_0" else UINT8, (blocks, size), at=at)]
            cols = g.const([1], INT64)

            def column(t: str, first: int, last: int) -> str:
                return g.op("Slice", t, g.const([first], INT64), g.const([last], INT64), cols)

            d = g.op("Cast", column(name + ".halves", 0, 1), to=FLOAT)
            codes = g.op("Cast", column(name + ".bytes", head, size), to=FLOAT)
            if info.dtype != "Q8_0":  # two 4-bit codes a byte: values 0-15 low, 16-31 high
                high = g.op("Floor", g.op("Div", codes, g.scalar(16.0)))
                low = g.op("Sub", codes, g.op("Mul", high, g.scalar(16.0)))
                codes = g.op("Concat", low, high, axis=1)
            if info.dtype == "Q4_0":
                codes = g.op("Sub", codes, g.scalar(8.0))
            out = g.op("Mul", codes, d)
            if info.dtype == "Q4_1":
                out = g.op("Add", out, g.op("Cast", column(name + ".halves", 1, 2), to=FLOAT))
            out = g.op("Reshape", out, g.const(list(dims), INT64))
        else:
            raise UsageError(f"{where}: tensor {name} is {info.dtype}; without WebGPU, GGUF files with F32, F16, "
                             f"BF16, Q8_0, Q4_0 and Q4_1 tensors run (choose such a file, or its ONNX export)")
        head_dim = self.source.row_permutation(name)
        if head_dim:  # llama.cpp's RoPE row order, undone
            rows, K = dims
            out = g.op("Reshape", out, g.const([rows // head_dim, head_dim // 2, 2, K], INT64))
            out = g.op("Reshape", g.op("Transpose", out, perm=[0, 2, 1, 3]), g.const(list(dims), INT64))
        if self.source.arch == "gemma3" and name.endswith("norm.weight") and info.dtype == "F32":
            out = g.op("Sub", out, g.scalar(1.0))  # (llama.cpp keeps Gemma's norms as 1 + w)
        return out


def gguf_graph(source) -> Graph:
    """The decoder over a GGUF file's own bytes (GGUFView): the file itself is its external data
    (GGUF_LOCATION); the graph holds only nodes and the tensors' offsets."""
    decoder = _Decoder(source.config, False, _long_rope(source.config, source.config_dict), GGUFView(source))
    return decoder.build()


def _long_rope(config: ModelConfig, config_dict: dict) -> tuple[list[float], int] | None:
    """Phi-3's long factors and original context, where its config.json has them."""
    if not config.max_positions or config.learned_positions:
        return None
    scaling = config_dict.get("rope_scaling") or config_dict.get("rope_parameters") or {}
    factors = scaling.get("long_factor") if isinstance(scaling, dict) else None
    if (not isinstance(factors, list) or len(factors) != config.head_dim // 2
            or not all(isinstance(f, (int, float)) and not isinstance(f, bool) and f > 0 for f in factors)):
        return None
    return [float(f) for f in factors], config.max_positions


def decoder_graph(config: ModelConfig, config_dict: dict | None = None, q4: bool = False) -> tuple[Graph, list[Stream]]:
    """The decoder's graph (its big initializers without data) and the streams that fill them."""
    decoder = _Decoder(config, q4, _long_rope(config, config_dict or {}))
    graph = decoder.build()
    known = expected_shapes(config)
    missing = [s.name for s in decoder.g.streams if s.name not in known]
    if missing:
        raise ValueError(f"the ONNX graph reads tensors the model does not have: {missing[:3]}")
    return graph, decoder.g.streams


async def _stream(device: Device, ops: Ops, config: ModelConfig, weights: dict[str, Buffer], lora: LoraState | None,
                  streams: list[Stream]) -> AsyncIterator[tuple[str, bytes]]:
    """Each stream's bytes, merged (W + scaling · B · A where the adapter has the projection)."""
    shapes = expected_shapes(config)
    for s in streams:
        shape, temps = shapes[s.name], []
        numel = math.prod(shape)
        try:
            buf = _merged_matrix(device, ops, config, s.name, weights[s.name], shape, lora, temps)
            if s.kind == "f32":
                yield s.name, (await device.read_buffer(buf))[: numel * 4]
            elif s.kind == "f16":
                half = device.create_buffer(-(-numel // 2) * 4, label=f"{s.name}.f16")
                temps.append(half)
                device.submit([ops.to_f16(half, buf, numel)])
                yield s.name, (await device.read_buffer(half))[: numel * 2]
            else:
                N, K = shape
                blocks = -(-K // Q_BLOCK)
                zp_row = -(-blocks // 2)
                q = device.create_buffer(N * blocks * Q_BLOCK // 2, label=f"{s.name}.q4")
                scales = device.create_buffer(N * blocks * 4, label=f"{s.name}.scales")
                zp = device.create_buffer(N * zp_row * 4, label=f"{s.name}.zp")
                temps += [q, scales, zp]
                device.submit(ops.quantize_nbits(q, scales, zp, buf, N, K))
                yield s.name + "_q4", (await device.read_buffer(q))[: N * blocks * Q_BLOCK // 2]
                yield s.name + "_scales", (await device.read_buffer(scales))[: N * blocks * 4]
                yield s.name + "_zp", (await device.read_buffer(zp))[: N * zp_row * 4 : 4]  # (low bytes)
        finally:
            for temp in temps:
                device.destroy_buffer(temp)


def external_file(path: str) -> str:
    """The external data file's name beside `path` (transformers.js: model.onnx → model.onnx_data)."""
    return path.rsplit("/", 1)[-1] + "_data"


async def write_onnx(write: Callable[[bytes], object], device: Device, ops: Ops, config: ModelConfig,
                     config_dict: dict, weights: dict[str, Buffer], lora: LoraState | None, q4: bool = False,
                     external: Callable[[bytes], object] | None = None, path: str = MODEL_FILE) -> None:
    """The decoder with the adapter merged in, streamed through `write`; with `external`, its
    weights go there instead (the file external_file(path) beside it)."""
    if any(b.dtype == "f16" for b in weights.values()):
        raise UsageError("the ONNX export merges into float32 or quantized base weights; these are float16 "
                         "(load the model with --weights f32 or auto)")
    graph, streams = decoder_graph(config, config_dict, q4)
    data = _stream(device, ops, config, weights, lora, streams)
    await onnx.write_model(write, graph, data, (external_file(path), external) if external else None)


def onnx_size(config: ModelConfig, config_dict: dict | None = None, q4: bool = False) -> int:
    """Bytes of the model written inline (over protobuf's 2 GB: its weights go in a data file,
    about as many bytes in all)."""
    graph, _ = decoder_graph(config, config_dict, q4)
    return onnx.model_size(graph)


def needs_external(config: ModelConfig, config_dict: dict | None = None, q4: bool = False) -> bool:
    """Whether the model is over protobuf's 2 GB (its weights then go in an external data file)."""
    return onnx_size(config, config_dict, q4) > onnx.PROTOBUF_LIMIT


def folder_config(config_json: bytes, external: dict[str, bool]) -> bytes:
    """config.json for transformers.js: the merged folder's, plus which ONNX files keep their
    weights in external data."""
    config = json.loads(config_json)
    used = {path.rsplit("/", 1)[-1]: 1 for path, ext in external.items() if ext}
    if used:
        config["transformers.js_config"] = {**config.get("transformers.js_config", {}), "use_external_data_format": used}
    return json.dumps(config, indent=2).encode()

