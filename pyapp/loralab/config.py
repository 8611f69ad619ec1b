"""The configurations, as plain dataclasses: the model's shape (read from a Hugging Face
`config.json` or GGUF metadata), the LoRA adapter's and the training run's.

Each validates itself in one place, and the page imports this module alone for its plan form
(it is generated from the fields and their help), so nothing here touches the engine.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass, field, fields

from . import checks
from .checks import boolean, integer, number
from .errors import UsageError, UserError, short
from .patterns import compile_key, first_match

ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma3ForCausalLM": "gemma3_text",
    "Phi3ForCausalLM": "phi3",
    "GPT2LMHeadModel": "gpt2",
}
# Upper limits on a config's sizes: far above any model a browser can train, low enough that
# nothing is sized from an absurd value before the weights are checked against it.
MAX_HIDDEN = 1 << 16
MAX_HEADS = 1024
MAX_LAYERS = 1024
MAX_VOCAB = 1 << 22
MAX_TEMPLATE = 1 << 20  # characters of a chat template
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTENTION = PROJECTIONS[:4]  # in self_attn; the rest are in mlp
# Where adapters sit ("sites", the modules PEFT names), each with the projections it computes.
# Phi-3 keeps q, k and v in one matrix, and gate and up in another (rows one after the other);
# GPT-2's c_attn holds q, k and v (its two c_proj are told apart by their block; it has no gate).
# The engine computes the parts as the projections above, and an adapter on a fused module is
# PEFT's, one A and one B over all its rows (the parts share A; each takes its rows of B).
PHI3_SITES = {"qkv_proj": ATTENTION[:3], "o_proj": ("o_proj",), "gate_up_proj": ("gate_proj", "up_proj"),
              "down_proj": ("down_proj",)}
GPT2_SITES = {"c_attn": ATTENTION[:3], "attn.c_proj": ("o_proj",), "c_fc": ("up_proj",), "mlp.c_proj": ("down_proj",)}
GPT2_PATHS = {"c_attn": "attn.c_attn", "attn.c_proj": "attn.c_proj", "c_fc": "mlp.c_fc", "mlp.c_proj": "mlp.c_proj"}
FUSED = {site: parts for site, parts in PHI3_SITES.items() if len(parts) > 1}
FUSED_PROJECTIONS = tuple(PHI3_SITES)
# Every name a LoRA target may take ("c_proj": both of GPT-2's).
TARGET_NAMES = PROJECTIONS + tuple(FUSED) + tuple(GPT2_SITES) + ("c_proj",)


def module_name(layer: int, module: str) -> str:
    """A projection's (or an adapter site's) Hugging Face module name, e.g.
    model.layers.3.self_attn.q_proj, transformer.h.3.attn.c_attn."""
    if module in GPT2_PATHS:
        return f"transformer.h.{layer}.{GPT2_PATHS[module]}"
    return f"model.layers.{layer}.{'self_attn' if module in ATTENTION or module == 'qkv_proj' else 'mlp'}.{module}"


_LAYER_INDEX = re.compile(r"^(?:model\.layers|(?:transformer\.)?h)\.(\d+)\.")


def model_name(config: dict) -> str | None:
    """A name for a model given as loose files (no folder, no .gguf): where it came from
    (`_name_or_path`, which transformers writes into config.json), else its type; None when the
    config says neither."""
    origin = str(config.get("_name_or_path") or "").replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    if origin not in ("", "."):
        return origin[:100]
    kind = config.get("model_type")
    return f"{kind} model" if isinstance(kind, str) and kind.strip() else None


class ModelConfigError(UserError):
    """config.json describes a model LoRA Lab cannot train, or is inconsistent."""


@dataclass(frozen=True)
class ModelConfig:
    architecture: str  # a key of ARCHITECTURES
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    tie_word_embeddings: bool
    attention_bias: bool  # q/k/v biases (Qwen2)
    max_position_embeddings: int
    qk_norm: bool = False  # RMSNorm over each head of q and k before RoPE (Qwen3)
    # llama.cpp's rope_freqs tensor (a GGUF's Llama-3 RoPE scaling): each frequency divided by it.
    rope_freq_factors: tuple[float, ...] | None = None
    # Gemma 3: the MLP's activation (ops.GLU_ACTIVATIONS), norms that scale by (w_offset + w),
    # norms after attention and after the MLP too, embeddings times embed_scale, q·k times
    # attn_scale (None: 1/√head_dim), and per layer a sliding window (0: global attention) whose
    # layers rotate with local_rope_theta.
    activation: str = "silu"
    norm_offset: float = 0.0
    sandwich_norms: bool = False
    embed_scale: float = 1.0
    attn_scale: float | None = None
    layer_windows: tuple[int, ...] = ()
    local_rope_theta: float | None = None
    fused: bool = False  # Phi-3: qkv_proj and gate_up_proj (FUSED)
    # The positions RoPE serves exactly (Phi-3's LongRoPE: its short factors, up to its original
    # context), or the learned position embeddings hold (GPT-2); 0: any.
    max_positions: int = 0
    # GPT-2: LayerNorm (centred, with biases), learned position embeddings instead of RoPE, an
    # MLP without a gate (act(up)), and biases on every projection.
    layer_norm: bool = False
    learned_positions: bool = False
    gated_mlp: bool = True
    linear_bias: bool = False

    @classmethod
    def from_dict(cls, cfg: dict, source: str = "config.json") -> "ModelConfig":
        """Every field checked for type and range, and the shapes for consistency (head counts
        divide sizes), before anything is sized from them. Limits: see MAX_* above."""
        E = ModelConfigError
        if not isinstance(cfg, dict):
            raise E(f"{source}: expected a JSON object, found {type(cfg).__name__}")
        archs = cfg.get("architectures") or []
        if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
            raise E(f"{source}: architectures must be a list of names, not {short(archs)}")
        arch = next((a for a in archs if a in ARCHITECTURES), None)
        if arch is None:
            named = ", ".join(archs)[:200] if archs else "(none given)"
            raise E(f"{source}: architecture {named} is not supported; "
                    f"LoRA Lab trains {', '.join(ARCHITECTURES)}")
        original = cfg
        if ARCHITECTURES[arch] == "gpt2":  # its own field names, as the common ones
            cfg = _gpt2_fields(cfg, source)
        hidden = checks.field(cfg, "hidden_size", integer, source, E, lo=1, hi=MAX_HIDDEN)
        heads = checks.field(cfg, "num_attention_heads", integer, source, E, lo=1, hi=MAX_HEADS)
        kv_heads = checks.field(cfg, "num_key_value_heads", integer, source, E, heads, lo=1, hi=MAX_HEADS)
        if cfg.get("head_dim") is None and hidden % heads:
            raise E(f"{source}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
        head_dim = checks.field(cfg, "head_dim", integer, source, E, hidden // heads, lo=2, hi=256)
        rope_params = cfg.get("rope_parameters") or {}
        scaling = cfg.get("rope_scaling")
        for name, value in (("rope_parameters", rope_params), ("rope_scaling", scaling)):
            if value is not None and not isinstance(value, dict):
                raise E(f"{source}: {name} must be a JSON object, not {short(value)}")
        if not scaling and rope_params.get("rope_type", "default") != "default":
            scaling = rope_params
        theta = cfg.get("rope_theta") if cfg.get("rope_theta") is not None else rope_params.get("rope_theta", 10000.0)
        config = cls(
            architecture=arch,
            vocab_size=checks.field(cfg, "vocab_size", integer, source, E, lo=1, hi=MAX_VOCAB),
            hidden_size=hidden,
            intermediate_size=checks.field(cfg, "intermediate_size", integer, source, E, lo=1, hi=MAX_HIDDEN * 16),
            num_layers=checks.field(cfg, "num_hidden_layers", integer, source, E, lo=1, hi=MAX_LAYERS),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=checks.field(cfg, "rms_norm_eps", number, source, E, 1e-6, lo=0.0, hi=1.0, open_lo=True),
            rope_theta=number(theta, f"{source}: rope_theta", E, lo=0.0, open_lo=True),
            rope_scaling=dict(scaling) if scaling else None,
            tie_word_embeddings=checks.field(cfg, "tie_word_embeddings", boolean, source, E, False),
            attention_bias=ARCHITECTURES[arch] == "qwen2",
            max_position_embeddings=checks.field(cfg, "max_position_embeddings", integer, source, E, 2048, lo=1, hi=1 << 24),
            qk_norm=ARCHITECTURES[arch] == "qwen3",
        )
        # Biases the engine does not add: refused by name rather than dropped (Qwen2's q/k/v biases
        # are its architecture's, not this flag's).
        if ARCHITECTURES[arch] != "qwen2" and checks.field(cfg, "attention_bias", boolean, source, E, False):
            raise E(f"{source}: attention_bias is true (biases on q, k, v and o_proj); LoRA Lab runs this "
                    f"architecture without them")
        if checks.field(cfg, "mlp_bias", boolean, source, E, False):
            raise E(f"{source}: mlp_bias is true (biases on the MLP projections); LoRA Lab runs them without")
        if heads % kv_heads:
            raise E(f"{source}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
        if head_dim % 2:
            raise E(f"{source}: head_dim {head_dim} must be even and at most 256")
        if config.rope_scaling and ARCHITECTURES[arch] != "phi3":  # (Phi-3's LongRoPE: _phi3)
            kind = config.rope_scaling.get("rope_type", config.rope_scaling.get("type"))
            if kind not in ("llama3", "linear", "default"):
                raise E(f"{source}: rope_scaling {short(config.rope_scaling)} is not supported (llama3 and linear are)")
            if kind == "linear":
                checks.field(config.rope_scaling, "factor", number, f"{source}: rope_scaling", E, lo=0.0, open_lo=True)
            if kind == "llama3":
                s = config.rope_scaling
                where = f"{source}: rope_scaling"
                low = checks.field(s, "low_freq_factor", number, where, E, 1.0, lo=0.0, open_lo=True)
                high = checks.field(s, "high_freq_factor", number, where, E, 4.0, lo=low, open_lo=True)
                checks.field(s, "factor", number, where, E, lo=0.0, open_lo=True)
                checks.field(s, "original_max_position_embeddings", integer, where, E, 8192, lo=1, hi=1 << 24)
                if high == low:
                    raise E(f"{where}: high_freq_factor must be greater than low_freq_factor")
        if cfg.get("sliding_window") and cfg.get("use_sliding_window"):
            raise E(f"{source}: sliding-window attention is not supported")
        if ARCHITECTURES[arch] == "gemma3_text":
            config = _gemma3(config, cfg, source)
        if ARCHITECTURES[arch] == "phi3":
            config = _phi3(config, cfg, source)
        if ARCHITECTURES[arch] == "gpt2":
            config = _gpt2(config, original, source)
        return config

    def check_layers(self, names, source: str, what: str = "num_hidden_layers") -> None:
        """The layer count agrees with the layers the weights hold (`names`: tensor names), so a
        config that claims a million layers fails here, before anything is sized from it."""
        present = set()
        for name in names:  # (model.layers.N. …, GPT-2's transformer.h.N. … or h.N. …)
            m = _LAYER_INDEX.match(name)
            if m:
                present.add(int(m.group(1)))
        count = max(present) + 1 if present else 0
        if count != self.num_layers:
            raise ModelConfigError(f"{source}: {what} is {self.num_layers}, but the weights hold {count} layers; "
                                   f"the config and the weights belong to different models")

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def projection_shape(self, name: str) -> tuple[int, int]:
        """(out_features, in_features) of a projection, as nn.Linear stores its weight, or of an
        adapter site (a fused module: its projections' rows together)."""
        h, i = self.hidden_size, self.intermediate_size
        shapes = {"q_proj": (self.q_size, h), "k_proj": (self.kv_size, h), "v_proj": (self.kv_size, h),
                  "o_proj": (h, self.q_size), "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i)}
        if name in shapes:
            return shapes[name]
        parts = (PHI3_SITES if name in PHI3_SITES else GPT2_SITES)[name]
        return sum(shapes[p][0] for p in parts), shapes[parts[0]][1]

    @property
    def family(self) -> str:
        """The architecture's short name (ARCHITECTURES' values: llama, gpt2, …)."""
        return ARCHITECTURES[self.architecture]

    @property
    def projections(self) -> tuple[str, ...]:
        """The linear projections the engine computes in each layer (GPT-2 has no gate)."""
        return PROJECTIONS if self.gated_mlp else tuple(p for p in PROJECTIONS if p != "gate_proj")

    def sites(self) -> dict[str, tuple[str, ...]]:
        """The modules an adapter can sit on, as PEFT names them for this model, each with the
        projections it computes."""
        if self.family == "gpt2":
            return GPT2_SITES
        if self.fused:
            return PHI3_SITES
        return {p: (p,) for p in self.projections}

    def lora_modules(self) -> tuple[str, ...]:
        """The modules an adapter can target, as PEFT names them for this model."""
        return tuple(self.sites())

    def site(self, module: str) -> str:
        """The module whose adapter a projection uses: its fused module (Phi-3's, GPT-2's), or itself."""
        return next((s for s, parts in self.sites().items() if module in parts), module)

    def lora_targets(self, targets: tuple[str, ...]) -> tuple[str, ...]:
        """`targets` as this model's modules. A module is targeted by its name or by all of the
        projections it computes, so the default, every projection, targets them all (GPT-2:
        c_proj names both of its c_proj modules). A fused module's parts alone, or a module of
        another family, are refused."""
        sites = self.sites()
        alien = [t for t in targets if t not in PROJECTIONS and t not in sites
                 and not (t == "c_proj" and self.family == "gpt2")]
        if alien:
            apart = [p for t in alien for p in FUSED.get(t, ())]
            raise UsageError(f"{', '.join(alien)}: this model has no such module"
                             + (f" (it keeps {', '.join(apart)} apart)" if apart else "")
                             + f"; its modules are {', '.join(sites)}")
        out = []
        for site, parts in sites.items():
            chosen = (site in targets or all(p in targets for p in parts)
                      or (site.endswith(".c_proj") and "c_proj" in targets))
            if not chosen and any(p in targets for p in parts):
                raise UsageError(f"this model fuses {', '.join(parts)} into {site}: target {site} (or all of them)")
            if chosen:
                out.append(site)
        if not out:
            raise UsageError(f"none of the targets {', '.join(targets)} is a module of this model; its modules are "
                             f"{', '.join(sites)}")
        return tuple(out)

    def features(self) -> list[str]:
        """What sets this model apart from a plain Llama, in words (the model card lists them)."""
        out = []
        if self.qk_norm:
            out.append("q/k norms")
        if self.sandwich_norms:
            out.append("norms after attention and the MLP")
        if self.norm_offset:
            out.append(f"norms scale by {self.norm_offset:g} + w")
        if self.layer_norm:
            out.append("LayerNorm with biases")
        if self.linear_bias:
            out.append("biases on every projection")
        if self.activation != "silu":
            out.append("GELU (tanh) MLP" + ("" if self.gated_mlp else " without a gate"))
        windows = [w for w in self.layer_windows if w]
        if windows:
            out.append(f"sliding window of {windows[0]:,} tokens on {len(windows)} of {self.num_layers} layers")
        if self.fused:
            out.append("fused qkv_proj and gate_up_proj")
        if self.learned_positions:
            out.append(f"learned positions up to {self.max_positions:,} tokens")
        elif self.max_positions:
            out.append(f"LongRoPE up to {self.max_positions:,} tokens")
        if self.family == "gpt2":
            out.append("Conv1D weights (transposed as they load)")
        if self.rope_scaling or self.rope_freq_factors and not self.max_positions:
            out.append("scaled RoPE")
        out.append("tied embeddings" if self.tie_word_embeddings else "separate output head")
        return out

    def window(self, layer: int) -> int:
        """Layer `layer`'s sliding window (0: it attends to every earlier token)."""
        return self.layer_windows[layer] if self.layer_windows else 0

    def layer_inv_freq(self, layer: int) -> list[float]:
        """The RoPE frequencies of layer `layer`: Gemma's sliding layers rotate with their own
        base (unscaled); every other layer with inv_freq()."""
        if self.window(layer) and self.local_rope_theta is not None:
            D = self.head_dim
            return [1.0 / self.local_rope_theta ** (i / D) for i in range(0, D, 2)]
        return self.inv_freq()

    def inv_freq(self) -> list[float]:
        """RoPE inverse frequencies (Hugging Face's, including Llama-3 scaling, or llama.cpp's
        frequency factors), in float64."""
        D = self.head_dim
        inv = [1.0 / self.rope_theta ** (i / D) for i in range(0, D, 2)]
        if self.rope_freq_factors:
            return [f / factor for f, factor in zip(inv, self.rope_freq_factors)]
        s = self.rope_scaling
        if s and s.get("rope_type", s.get("type")) == "linear":
            return [f / float(s["factor"]) for f in inv]
        if s and s.get("rope_type", s.get("type")) == "llama3":
            factor, low, high = float(s["factor"]), float(s.get("low_freq_factor", 1.0)), float(s.get("high_freq_factor", 4.0))
            old = float(s.get("original_max_position_embeddings", 8192))
            low_wl, high_wl = old / low, old / high
            out = []
            for f in inv:
                wavelen = 2 * math.pi / f
                if wavelen > low_wl:
                    out.append(f / factor)
                elif wavelen < high_wl:
                    out.append(f)
                else:
                    smooth = (old / wavelen - low) / (high - low)
                    out.append((1 - smooth) * f / factor + smooth * f)
            inv = out
        return inv


def _gemma3(config: ModelConfig, cfg: dict, source: str) -> ModelConfig:
    """Gemma3ForCausalLM's fields (text-only Gemma 3): its activation, norms, embedding scale,
    attention scale, sliding layers and their RoPE base. What the engine cannot run (logit
    soft-capping, bidirectional attention) is refused by name."""
    import dataclasses

    E = ModelConfigError
    act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise E(f"{source}: hidden_activation {short(act)} is not supported (gelu_pytorch_tanh is)")
    for name in ("final_logit_softcapping", "attn_logit_softcapping"):
        if cfg.get(name) is not None:
            raise E(f"{source}: {name} is set; LoRA Lab does not soft-cap logits")
    if cfg.get("use_bidirectional_attention"):
        raise E(f"{source}: use_bidirectional_attention is true; LoRA Lab trains causal models")
    L = config.num_layers
    window = checks.field(cfg, "sliding_window", integer, source, E, 0, lo=0, hi=1 << 24) or 0
    types = cfg.get("layer_types")
    if types is None:  # older configs: every `sliding_window_pattern`-th layer is global
        pattern = checks.field(cfg, "sliding_window_pattern", integer, source, E,
                               cfg.get("_sliding_window_pattern", 6), lo=1, hi=MAX_LAYERS)
        types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(L)]
    if (not isinstance(types, list) or len(types) != L
            or any(t not in ("sliding_attention", "full_attention") for t in types)):
        raise E(f"{source}: layer_types must list sliding_attention or full_attention for each of the {L} layers")
    rope = cfg.get("rope_parameters") or {}
    local = rope.get("sliding_attention") if isinstance(rope.get("sliding_attention"), dict) else {}
    full = rope.get("full_attention") if isinstance(rope.get("full_attention"), dict) else {}
    local_theta = local.get("rope_theta", cfg.get("rope_local_base_freq", 10000.0))
    theta = full.get("rope_theta", cfg.get("rope_theta", 1000000.0))
    scaling = config.rope_scaling
    if full.get("rope_type", "default") != "default":
        scaling = dict(full)
        if scaling.get("rope_type") != "linear":
            raise E(f"{source}: rope_parameters.full_attention {short(full)} is not supported (linear is)")
        checks.field(scaling, "factor", number, f"{source}: rope_parameters.full_attention", E, lo=0.0, open_lo=True)
    if local.get("rope_type", "default") != "default":
        raise E(f"{source}: rope_parameters.sliding_attention {short(local)} is not supported (default is)")
    scalar = checks.field(cfg, "query_pre_attn_scalar", number, source, E, config.head_dim, lo=0.0, open_lo=True)
    return dataclasses.replace(
        config, activation="gelu_tanh", norm_offset=1.0, sandwich_norms=True, qk_norm=True,
        embed_scale=float(struct.unpack("<f", struct.pack("<f", config.hidden_size ** 0.5))[0]),
        attn_scale=float(scalar) ** -0.5, rope_theta=number(theta, f"{source}: rope_theta", E, lo=0.0, open_lo=True),
        rope_scaling=scaling, local_rope_theta=number(local_theta, f"{source}: rope_local_base_freq", E, lo=0.0,
                                                      open_lo=True),
        layer_windows=tuple(window if t == "sliding_attention" else 0 for t in types),
        tie_word_embeddings=checks.field(cfg, "tie_word_embeddings", boolean, source, E, True))


def _phi3(config: ModelConfig, cfg: dict, source: str) -> ModelConfig:
    """Phi3ForCausalLM: fused qkv_proj and gate_up_proj, an optional sliding window on every
    layer, and LongRoPE, which is supported up to the original context (its short factors and
    attention factor); longer sequences, partial rotary and other activations are refused."""
    import dataclasses

    E = ModelConfigError
    rope = cfg.get("rope_parameters") or {}
    partial = cfg.get("partial_rotary_factor", rope.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise E(f"{source}: partial_rotary_factor {short(partial)} is not supported (RoPE over the whole head is)")
    if cfg.get("hidden_act", "silu") != "silu":
        raise E(f"{source}: hidden_act {short(cfg.get('hidden_act'))} is not supported (silu is)")
    window = checks.field(cfg, "sliding_window", integer, source, E, 0, lo=0, hi=1 << 24) or 0
    changes: dict = {"fused": True, "layer_windows": (window,) * config.num_layers if window else ()}
    scaling = cfg.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind not in ("longrope", "su"):
            raise E(f"{source}: rope_scaling {short(scaling)} is not supported (longrope is)")
        half = config.head_dim // 2
        factors = scaling.get("short_factor")
        if (not isinstance(factors, list) or len(factors) != half
                or not all(isinstance(f, (int, float)) and not isinstance(f, bool) and f > 0 for f in factors)):
            raise E(f"{source}: rope_scaling.short_factor must list {half} positive numbers")
        where = f"{source}: rope_scaling"
        original = checks.field(cfg, "original_max_position_embeddings", integer, source, E,
                                checks.field(scaling, "original_max_position_embeddings", integer, where, E,
                                             config.max_position_embeddings, lo=1, hi=1 << 24),
                                lo=1, hi=1 << 24)
        factor = config.max_position_embeddings / original
        default = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
        attention = checks.field(scaling, "attention_factor", number, where, E, default, lo=0.0, open_lo=True)
        # cos and sin times the attention factor rotate q and k both: q·k scales by its square.
        changes.update(rope_freq_factors=tuple(float(f) for f in factors), max_positions=original,
                       attn_scale=float(attention) ** 2 / math.sqrt(config.head_dim), rope_scaling=None)
    return dataclasses.replace(config, **changes)


def _gpt2_fields(cfg: dict, source: str) -> dict:
    """GPT2LMHeadModel's config.json under the common field names (n_embd → hidden_size, …),
    each checked under its own name. What the engine cannot run is refused by name."""
    E = ModelConfigError
    for name, what in (("scale_attn_by_inverse_layer_idx", "scales attention by 1 / (layer + 1)"),
                       ("add_cross_attention", "has cross-attention layers")):
        if cfg.get(name):
            raise E(f"{source}: {name} is true (the model {what}); LoRA Lab does not run that")
    act = cfg.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        raise E(f"{source}: activation_function {short(act)} is not supported (gelu_new, GELU's tanh form, is)")
    hidden = checks.field(cfg, "n_embd", integer, source, E, 768, lo=1, hi=MAX_HIDDEN)
    inner = checks.field(cfg, "n_inner", integer, source, E, 4 * hidden, lo=1, hi=MAX_HIDDEN * 16)
    return {"architectures": cfg.get("architectures"), "vocab_size": cfg.get("vocab_size", 50257),
            "hidden_size": hidden, "intermediate_size": inner,
            "num_hidden_layers": checks.field(cfg, "n_layer", integer, source, E, 12, lo=1, hi=MAX_LAYERS),
            "num_attention_heads": checks.field(cfg, "n_head", integer, source, E, 12, lo=1, hi=MAX_HEADS),
            "rms_norm_eps": checks.field(cfg, "layer_norm_epsilon", number, source, E, 1e-5, lo=0.0, hi=1.0,
                                         open_lo=True),
            "max_position_embeddings": checks.field(cfg, "n_positions", integer, source, E, 1024, lo=1, hi=1 << 20),
            "tie_word_embeddings": checks.field(cfg, "tie_word_embeddings", boolean, source, E, True)}


def _gpt2(config: ModelConfig, cfg: dict, source: str) -> ModelConfig:
    """GPT2LMHeadModel: LayerNorm, learned positions, a GELU (tanh) MLP without a gate, biases
    on every projection, and q·k scaled by 1/√head_dim unless scale_attn_weights is false."""
    import dataclasses

    scaled = checks.field(cfg, "scale_attn_weights", boolean, source, ModelConfigError, True)
    return dataclasses.replace(config, layer_norm=True, learned_positions=True, gated_mlp=False, linear_bias=True,
                               activation="gelu_tanh", max_positions=config.max_position_embeddings,
                               attn_scale=None if scaled else 1.0)


MAX_RANK = 4096


@dataclass(frozen=True)
class LoraConfig:
    r: int = field(default=8, metadata={"help": "LoRA rank: the inner size of A (r × in) and B (out × r)"})
    alpha: float = field(default=16.0, metadata={"help": "scaling numerator: the update is (alpha / r) · B · A"})
    targets: tuple[str, ...] = field(default=PROJECTIONS, metadata={"help": "projections that get an adapter"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter's input (training only)"})
    use_rslora: bool = field(default=False, metadata={"help": "scale by alpha / sqrt(r) (rank-stabilised LoRA)"})
    use_dora: bool = field(default=False, metadata={
        "help": "DoRA: a trained magnitude per output times the direction of W + scaling · B · A (PEFT's use_dora)"})
    rank_schedule: str = field(default="fixed", metadata={
        "help": "fixed: rank r throughout; progressive: grow to r at the steps of rank_steps; adaptive: AdaLoRA "
                "(SVD-form adapters started at rank r, pruned by importance to an average of target_r); auto: the "
                "rank, targets, batch, sequence length, accumulation, checkpointing and weights chosen for this "
                "GPU, the data and time_budget"})
    rank_steps: str = field(default="", metadata={
        "help": "progressive: RANK@STEP,… from step 0 up to r, e.g. 4@0,8@100,16@300 with r = 16"})
    rank_pattern: tuple[tuple[str, int], ...] = field(
        default=(), metadata={"help": "per-module ranks, (pattern, r) pairs as PEFT's rank_pattern"})
    alpha_pattern: tuple[tuple[str, float], ...] = field(
        default=(), metadata={"help": "per-module alphas, (pattern, alpha) pairs as PEFT's alpha_pattern"})
    # adaptive (AdaLoRA, Zhang et al. 2023, as PEFT's AdaLoraConfig; r is its init_r):
    target_r: int = field(default=0, metadata={"help": "adaptive: the average rank left per module at the end"})
    tinit: int = field(default=0, metadata={"help": "adaptive: steps before any pruning"})
    tfinal: int = field(default=0, metadata={"help": "adaptive: the last steps, at the final ranks"})
    delta_t: int = field(default=1, metadata={"help": "adaptive: steps between two budget allocations"})
    ada_beta1: float = field(default=0.85, metadata={"help": "adaptive: the importance's moving average"})
    ada_beta2: float = field(default=0.85, metadata={"help": "adaptive: the uncertainty's moving average"})
    orth_reg_weight: float = field(default=0.5, metadata={"help": "adaptive: the orthogonality regulariser's weight"})
    total_step: int = field(default=0, metadata={
        "help": "adaptive: the steps the budget schedule spans (0: the run's)"})

    def __post_init__(self):
        for name in ("rank_pattern", "alpha_pattern"):  # from JSON: lists (or a dict) -> pairs
            value = getattr(self, name)
            pairs = value.items() if isinstance(value, dict) else value
            object.__setattr__(self, name, tuple((str(k), v) for k, v in pairs))
        integer(self.r, "LoRA rank r", UsageError, 1, MAX_RANK)
        number(self.alpha, "lora_alpha", UsageError)
        if self.rank_schedule == "adaptive" and not self.target_r:  # (PEFT's defaults: 8 of 12)
            object.__setattr__(self, "target_r", max(1, round(self.r * 2 / 3)))
        for key, value in self.rank_pattern:
            compile_key(key, "rank_pattern")  # (AdaLoRA prunes a module to rank 0)
            integer(value, f"rank_pattern {key!r}: the rank", UsageError, 0 if self.rank_schedule == "adaptive" else 1,
                    MAX_RANK)
        for key, value in self.alpha_pattern:
            compile_key(key, "alpha_pattern")
            number(value, f"alpha_pattern {key!r}: lora_alpha", UsageError)
        unknown = [t for t in self.targets if t not in TARGET_NAMES]
        if unknown or not self.targets:
            raise UsageError(f"unknown LoRA target modules {unknown}; choose from {', '.join(PROJECTIONS)} "
                             f"(Phi-3: {', '.join(FUSED_PROJECTIONS)}; GPT-2: c_attn, c_proj, c_fc, attn.c_proj, "
                             f"mlp.c_proj)")
        if not 0.0 <= number(self.dropout, "LoRA dropout", UsageError) < 1.0:
            raise UsageError(f"LoRA dropout must be in [0, 1) (got {self.dropout})")
        if self.rank_schedule not in RANK_SCHEDULES:
            raise UsageError(f"rank_schedule is one of {', '.join(RANK_SCHEDULES)}, not {short(self.rank_schedule)}")
        _ = self.rank_switches  # (checks rank_steps)
        if self.rank_schedule == "adaptive":
            self._check_adaptive()
        if self.use_dora and self.dropout > 0:
            raise UsageError("DoRA runs without LoRA dropout here (PEFT's DoRA with dropout takes a second product "
                             "over the dropped input, not yet built): set dropout to 0")

    def _check_adaptive(self) -> None:
        """AdaLoRA's fields, checked as PEFT's AdaLoraConfig checks them (and what this engine adds)."""
        if self.use_dora or self.use_rslora:
            raise UsageError("rank_schedule adaptive (AdaLoRA) goes without DoRA and rsLoRA (PEFT has neither for it)")
        if self.r > MAX_ADAPTIVE_RANK:
            raise UsageError(f"rank_schedule adaptive starts at rank ≤ {MAX_ADAPTIVE_RANK} per module (got {self.r})")
        integer(self.target_r, "adaptive target_r", UsageError, 1)
        if self.target_r >= self.r:
            raise UsageError(f"adaptive: target_r ({self.target_r}) must be below the starting rank r ({self.r})")
        for name in ("tinit", "tfinal", "total_step"):
            integer(getattr(self, name), f"adaptive {name}", UsageError, 0)
        integer(self.delta_t, "adaptive delta_t", UsageError, 1)
        for name in ("ada_beta1", "ada_beta2"):
            if not 0.0 < number(getattr(self, name), f"adaptive {name}", UsageError) < 1.0:
                raise UsageError(f"adaptive {name} must be in (0, 1) (got {getattr(self, name)})")
        if number(self.orth_reg_weight, "orth_reg_weight", UsageError) < 0:
            raise UsageError(f"orth_reg_weight must be ≥ 0 (got {self.orth_reg_weight})")
        if self.total_step and self.tinit >= self.total_step - self.tfinal:
            raise UsageError(f"adaptive: tinit {self.tinit} and tfinal {self.tfinal} leave no steps of "
                             f"{self.total_step} for pruning; lower them or train longer")

    @property
    def adaptive(self) -> bool:
        return self.rank_schedule == "adaptive"

    @property
    def scaling(self) -> float:
        if self.adaptive:  # AdaLoRA: lora_alpha / (ranknum + 1e-5), ranknum its starting rank
            return self.alpha / (self.r + 1e-5)
        return self.alpha / math.sqrt(self.r) if self.use_rslora else self.alpha / self.r

    @staticmethod
    def _match(pattern: tuple, layer: int, module: str, default):
        """PEFT's rule: the first pattern key that matches the end of the module's name."""
        name = module_name(layer, module)
        key = first_match([k for k, _ in pattern], name)
        return default if key is None else dict(pattern)[key]

    def rank(self, layer: int, module: str) -> int:
        """The module's rank on the GPU (an AdaLoRA module pruned to 0 keeps one zero triplet)."""
        return max(1, self.stored_rank(layer, module)) if self.adaptive else self.stored_rank(layer, module)

    def stored_rank(self, layer: int, module: str) -> int:
        """The module's rank as its adapter file stores it."""
        return int(self._match(self.rank_pattern, layer, module, self.r))

    def scaling_for(self, layer: int, module: str) -> float:
        if self.adaptive:  # (a pruned module keeps its starting ranknum, as PEFT's)
            return float(self._match(self.alpha_pattern, layer, module, self.alpha)) / (self.r + 1e-5)
        r, alpha = self.rank(layer, module), float(self._match(self.alpha_pattern, layer, module, self.alpha))
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r

    @property
    def rank_switches(self) -> tuple[tuple[int, int], ...]:
        """Progressive: ((step, rank), …) from step 0 to rank r, each rank from its step on
        (fixed: ((0, r),)). Checked here: increasing steps and ranks, ending at r."""
        if self.rank_schedule != "progressive":
            if self.rank_steps:
                raise UsageError("rank_steps goes with rank_schedule progressive")
            return ((0, self.r),)
        if not isinstance(self.rank_steps, str) or not self.rank_steps.strip():
            raise UsageError("rank_schedule progressive needs rank_steps, e.g. 4@0,8@100,16@300 (rank@step, up to r)")
        out = []
        for part in self.rank_steps.split(","):
            rank, at, step = part.strip().partition("@")
            if not at or not rank.strip().isdigit() or not step.strip().isdigit():
                raise UsageError(f"rank_steps: {short(part.strip())} is not RANK@STEP (e.g. 8@100)")
            out.append((int(step), int(rank)))
        if out[0][0] != 0:
            raise UsageError(f"rank_steps must start at step 0 (it starts at step {out[0][0]})")
        for (s0, r0), (s1, r1) in zip(out, out[1:]):
            if s1 <= s0 or r1 <= r0:
                raise UsageError(f"rank_steps must grow: steps and ranks both increasing ({r0}@{s0} then {r1}@{s1})")
        if out[-1][1] != self.r:
            raise UsageError(f"rank_steps must end at the rank r = {self.r} (it ends at {out[-1][1]}): give --rank "
                             f"{out[-1][1]}")
        if self.rank_pattern:
            raise UsageError("rank_schedule progressive goes without a rank_pattern")
        return tuple(out)

    def rank_at(self, step: int) -> int:
        """The rank in use at optimizer step `step` (0: the first)."""
        return [rank for at, rank in self.rank_switches if at <= step][-1]

    @property
    def max_rank(self) -> int:
        return max([self.r] + [int(v) for _, v in self.rank_pattern])


SCHEDULES = ("constant", "linear", "cosine")
RANK_SCHEDULES = ("fixed", "progressive", "adaptive", "auto")
MAX_ADAPTIVE_RANK = 255  # (orth_gram's grid has r² workgroups along x, at most 65535)


def parse_duration(text: str, what: str = "time budget") -> float | None:
    """Seconds of "90s", "10m", "1.5h" or a bare number of seconds ("": none)."""
    text = (text or "").strip().lower()
    if not text:
        return None
    unit = {"s": 1, "m": 60, "h": 3600}.get(text[-1])
    try:
        value = float(text[:-1] if unit else text) * (unit or 1)
    except ValueError:
        raise UsageError(f"{what} {text!r} is not a duration such as 90s, 10m or 1.5h") from None
    if not 0 < value < float("inf"):
        raise UsageError(f"{what} must be a positive duration, not {text!r}")
    return value
OPTIMIZERS = ("adamw", "sgd")
# The arithmetic of the large (tiled) matmuls: float32, or float16 products summed in float32
# (wgsl/matmul_f16.wgsl; needs the adapter's shader-f16). The adapter, its gradients, the
# optimizer's state and the loss stay float32 either way.
PRECISIONS = ("f32", "mixed")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = field(default=0, metadata={"help": "optimizer steps (0: use epochs)"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the training set when steps is 0"})
    batch_size: int = field(default=4, metadata={"help": "sequences per micro-batch"})
    seq_len: int = field(default=256, metadata={"help": "tokens per sequence; longer ones are truncated"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    lr: float = field(default=2e-4, metadata={"help": "peak learning rate"})
    lr_schedule: str = field(default="constant", metadata={"help": "constant, linear or cosine decay after warmup"})
    warmup_steps: int = field(default=0, metadata={"help": "steps of linear warmup from 0"})
    optimizer: str = field(default="adamw", metadata={"help": "adamw (torch.optim.AdamW) or sgd"})
    weight_decay: float = field(default=0.0, metadata={"help": "decoupled weight decay (AdamW) / L2 (SGD)"})
    beta1: float = field(default=0.9, metadata={"help": "AdamW β1"})
    beta2: float = field(default=0.999, metadata={"help": "AdamW β2"})
    eps: float = field(default=1e-8, metadata={"help": "AdamW ε"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "clip the global gradient norm (0: off)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute each layer in the backward pass: far less activation memory, about a third more compute"})
    seed: int = field(default=0, metadata={"help": "seed for LoRA init and shuffling"})
    shuffle: bool = field(default=True, metadata={"help": "shuffle records each epoch"})
    report_every: int = field(default=10, metadata={"help": "read losses back every N steps"})
    eval_every: int = field(default=0, metadata={"help": "validation loss every N steps (0: at the end only)"})
    time_budget: str = field(default="", metadata={
        "help": "with rank_schedule auto: the longest the run may take, e.g. 10m (90s, 1.5h; empty: no limit)"})
    precision: str = field(default="f32", metadata={"help": "f32, or mixed: the large matmuls multiply in float16 "
                                                            "(GPUs with shader-f16), summing in float32"})

    def __post_init__(self):
        problems = []
        for name in ("batch_size", "seq_len", "grad_accum", "report_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if self.steps < 0 or self.epochs <= 0 and self.steps == 0:
            problems.append("give a positive number of steps or epochs")
        if self.lr_schedule not in SCHEDULES:
            problems.append(f"lr_schedule must be one of {', '.join(SCHEDULES)}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {', '.join(OPTIMIZERS)}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(PRECISIONS)}")
        # Finite and in range (a NaN learning rate would train to a NaN adapter without a word).
        for name, lo, hi in (("epochs", 0.0, math.inf), ("lr", 0.0, math.inf), ("weight_decay", 0.0, math.inf),
                             ("max_grad_norm", 0.0, math.inf), ("beta1", 0.0, 1.0), ("beta2", 0.0, 1.0),
                             ("eps", 0.0, math.inf)):
            try:
                value = number(getattr(self, name), name, UsageError, lo, hi)
            except UsageError as exc:
                problems.append(str(exc))
                continue
            if name in ("beta1", "beta2") and value == 1.0 or name == "eps" and value == 0.0:
                problems.append(f"{name} is {value:g}; it must be {'below 1' if name != 'eps' else 'above 0'}")
        if self.warmup_steps < 0:
            problems.append("warmup_steps cannot be negative")
        if problems:
            raise UsageError("; ".join(problems))
        parse_duration(self.time_budget, "time_budget")

    @classmethod
    def field_help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}

    def total_steps(self, train_records: int) -> int:
        if self.steps:
            return self.steps
        per_epoch = math.ceil(train_records / (self.batch_size * self.grad_accum))
        return max(1, math.ceil(per_epoch * self.epochs))


# Re-quantized merged exports (a GGUF base with the adapter merged in): the types a merged matrix
# may take (ops.GGML_QUANTIZERS writes them on the GPU with ggml's reference quantizers).
MERGED_GGUF_TYPES = ("Q8_0", "Q4_0")

CHOICES = {"lr_schedule": SCHEDULES, "optimizer": OPTIMIZERS, "precision": PRECISIONS, "rank_schedule": RANK_SCHEDULES}  # fields with a fixed set of values
DATASET_FORMATS = ("tokens", "text", "completion", "chat", "alpaca")  # (and "auto": detect per file)

# Model configurations `loralab bench` and the app's hardware panel time with random weights.
NAMED_CONFIGS = {
    "tiny": {"architectures": ["LlamaForCausalLM"], "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": True,
             "rms_norm_eps": 1e-5, "rope_theta": 10000.0},
    "smollm2-135m": {"architectures": ["LlamaForCausalLM"], "vocab_size": 49152, "hidden_size": 576,
                     "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                     "num_key_value_heads": 3, "tie_word_embeddings": True, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
                     "max_position_embeddings": 8192},
    "qwen2.5-0.5b": {"architectures": ["Qwen2ForCausalLM"], "vocab_size": 151936, "hidden_size": 896,
                     "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
                     "num_key_value_heads": 2, "tie_word_embeddings": True, "rms_norm_eps": 1e-6,
                     "rope_theta": 1000000.0, "max_position_embeddings": 32768},
    "qwen2.5-1.5b": {"architectures": ["Qwen2ForCausalLM"], "vocab_size": 151936, "hidden_size": 1536,
                     "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
                     "num_key_value_heads": 2, "tie_word_embeddings": True, "rms_norm_eps": 1e-6,
                     "rope_theta": 1000000.0, "max_position_embeddings": 32768},
    "llama3.2-1b": {"architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 2048,
                    "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
                    "num_key_value_heads": 8, "tie_word_embeddings": True, "rms_norm_eps": 1e-5,
                    "rope_theta": 500000.0, "max_position_embeddings": 131072,
                    "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}},
    "qwen3-0.6b": {"architectures": ["Qwen3ForCausalLM"], "vocab_size": 151936, "hidden_size": 1024,
                   "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16,
                   "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": True, "rms_norm_eps": 1e-6,
                   "rope_theta": 1000000.0, "max_position_embeddings": 40960},
    "gemma3-1b": {"architectures": ["Gemma3ForCausalLM"], "vocab_size": 262144, "hidden_size": 1152,
                  "intermediate_size": 6912, "num_hidden_layers": 26, "num_attention_heads": 4,
                  "num_key_value_heads": 1, "head_dim": 256, "tie_word_embeddings": True, "rms_norm_eps": 1e-6,
                  "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 256, "sliding_window": 512,
                  "layer_types": ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(26)],
                  "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                      "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}},
                  "max_position_embeddings": 32768},
}
NAMED_CONFIGS["gpt2"] = {"architectures": ["GPT2LMHeadModel"], "vocab_size": 50257, "n_embd": 768, "n_layer": 12,
                         "n_head": 12, "n_positions": 1024, "activation_function": "gelu_new",
                         "layer_norm_epsilon": 1e-5}
NAMED_CONFIG_LABELS = {"gpt2": "GPT-2 (124M)", "smollm2-135m": "SmolLM2-135M", "qwen2.5-0.5b": "Qwen2.5-0.5B", "qwen2.5-1.5b": "Qwen2.5-1.5B",
                       "llama3.2-1b": "Llama-3.2-1B", "qwen3-0.6b": "Qwen3-0.6B", "gemma3-1b": "Gemma-3-1B", "tiny": "a tiny test model"}


def option_fields(cls) -> list:
    """The fields of TrainConfig or LoraConfig a person sets (the CLI's flags, the app's plan
    form): all but the per-module patterns, which come with imported adapters."""
    return [f for f in fields(cls) if f.name not in ("rank_pattern", "alpha_pattern")]
