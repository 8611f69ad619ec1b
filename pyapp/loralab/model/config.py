"""The model shapes LoRA Lab trains, read from a Hugging Face `config.json`."""

from __future__ import annotations

import math
from dataclasses import dataclass

ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class ModelConfigError(ValueError):
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
        archs = cfg.get("architectures") or []
        arch = next((a for a in archs if a in ARCHITECTURES), None)
        if arch is None:
            raise ModelConfigError(
                f"{source}: architecture {', '.join(archs) or '(none given)'} is not supported; "
                f"LoRA Lab trains {', '.join(ARCHITECTURES)}"
            )
        try:
            hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
            kv_heads = int(cfg.get("num_key_value_heads") or heads)
            head_dim = int(cfg.get("head_dim") or hidden // heads)
            rope_params = cfg.get("rope_parameters") or {}
            scaling = cfg.get("rope_scaling") or (rope_params if rope_params.get("rope_type", "default") != "default" else None)
            config = cls(
                architecture=arch,
                vocab_size=int(cfg["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(cfg["intermediate_size"]),
                num_layers=int(cfg["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=kv_heads,
                head_dim=head_dim,
                rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                rope_theta=float(cfg.get("rope_theta") or rope_params.get("rope_theta") or 10000.0),
                rope_scaling=dict(scaling) if scaling else None,
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                attention_bias=ARCHITECTURES[arch] == "qwen2" or bool(cfg.get("attention_bias", False)),
                max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelConfigError(f"{source}: missing or invalid field {exc}") from None
        if heads % kv_heads:
            raise ModelConfigError(f"{source}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
        if head_dim % 2 or head_dim > 128:
            raise ModelConfigError(f"{source}: head_dim {head_dim} must be even and at most 128")
        if config.rope_scaling and config.rope_scaling.get("rope_type", config.rope_scaling.get("type")) not in ("llama3", "default"):
            raise ModelConfigError(f"{source}: rope_scaling {config.rope_scaling} is not supported (only llama3)")
        if cfg.get("sliding_window") and cfg.get("use_sliding_window"):
            raise ModelConfigError(f"{source}: sliding-window attention is not supported")
        return config

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
