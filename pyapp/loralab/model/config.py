"""The model shapes LoRA Lab trains, read from a Hugging Face `config.json`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..checks import boolean, field, integer, number
from ..errors import UserError, short

ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
# Upper limits on a config's sizes: far above any model a browser can train, low enough that
# nothing is sized from an absurd value before the weights are checked against it.
MAX_HIDDEN = 1 << 16
MAX_HEADS = 1024
MAX_LAYERS = 1024
MAX_VOCAB = 1 << 22
MAX_TEMPLATE = 1 << 20  # characters of a chat template
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


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
        hidden = field(cfg, "hidden_size", integer, source, E, lo=1, hi=MAX_HIDDEN)
        heads = field(cfg, "num_attention_heads", integer, source, E, lo=1, hi=MAX_HEADS)
        kv_heads = field(cfg, "num_key_value_heads", integer, source, E, heads, lo=1, hi=MAX_HEADS)
        if cfg.get("head_dim") is None and hidden % heads:
            raise E(f"{source}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
        head_dim = field(cfg, "head_dim", integer, source, E, hidden // heads, lo=2, hi=128)
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
            vocab_size=field(cfg, "vocab_size", integer, source, E, lo=1, hi=MAX_VOCAB),
            hidden_size=hidden,
            intermediate_size=field(cfg, "intermediate_size", integer, source, E, lo=1, hi=MAX_HIDDEN * 16),
            num_layers=field(cfg, "num_hidden_layers", integer, source, E, lo=1, hi=MAX_LAYERS),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=field(cfg, "rms_norm_eps", number, source, E, 1e-6, lo=0.0, hi=1.0, open_lo=True),
            rope_theta=number(theta, f"{source}: rope_theta", E, lo=0.0, open_lo=True),
            rope_scaling=dict(scaling) if scaling else None,
            tie_word_embeddings=field(cfg, "tie_word_embeddings", boolean, source, E, False),
            attention_bias=ARCHITECTURES[arch] == "qwen2" or field(cfg, "attention_bias", boolean, source, E, False),
            max_position_embeddings=field(cfg, "max_position_embeddings", integer, source, E, 2048, lo=1, hi=1 << 24),
        )
        if heads % kv_heads:
            raise E(f"{source}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
        if head_dim % 2:
            raise E(f"{source}: head_dim {head_dim} must be even and at most 128")
        if config.rope_scaling:
            kind = config.rope_scaling.get("rope_type", config.rope_scaling.get("type"))
            if kind not in ("llama3", "default"):
                raise E(f"{source}: rope_scaling {short(config.rope_scaling)} is not supported (only llama3)")
            if kind == "llama3":
                s = config.rope_scaling
                where = f"{source}: rope_scaling"
                low = field(s, "low_freq_factor", number, where, E, 1.0, lo=0.0, open_lo=True)
                high = field(s, "high_freq_factor", number, where, E, 4.0, lo=low, open_lo=True)
                field(s, "factor", number, where, E, lo=0.0, open_lo=True)
                field(s, "original_max_position_embeddings", integer, where, E, 8192, lo=1, hi=1 << 24)
                if high == low:
                    raise E(f"{where}: high_freq_factor must be greater than low_freq_factor")
        if cfg.get("sliding_window") and cfg.get("use_sliding_window"):
            raise E(f"{source}: sliding-window attention is not supported")
        return config

    def check_layers(self, names, source: str, what: str = "num_hidden_layers") -> None:
        """The layer count agrees with the layers the weights hold (`names`: tensor names), so a
        config that claims a million layers fails here, before anything is sized from it."""
        present = set()
        for name in names:
            if name.startswith("model.layers."):
                index = name[len("model.layers."):].split(".", 1)[0]
                if index.isdigit():
                    present.add(int(index))
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
        """(out_features, in_features) of a projection, as nn.Linear stores its weight."""
        h, i = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (self.q_size, h),
            "k_proj": (self.kv_size, h),
            "v_proj": (self.kv_size, h),
            "o_proj": (h, self.q_size),
            "gate_proj": (i, h),
            "up_proj": (i, h),
            "down_proj": (h, i),
        }[name]

    def inv_freq(self) -> list[float]:
        """RoPE inverse frequencies (Hugging Face's, including Llama-3 scaling), in float64."""
        D = self.head_dim
        inv = [1.0 / self.rope_theta ** (i / D) for i in range(0, D, 2)]
        s = self.rope_scaling
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
