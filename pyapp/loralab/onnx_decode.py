"""Text from an ONNX decoder (this package's export, or any Optimum / transformers.js decoder of a
family the engine knows) through an ONNX runtime: onnxruntime-web in the browser (browser/ort.py),
or any runtime with the same small interface.

The decoder takes input_ids, attention_mask, position_ids and past_key_values.N.key/value and
returns logits and present.N.key/value (onnx_export's layout). The runtime keeps the cache
between steps, so the decoding loop and the sampling are generate.decode's, the same as our
engine's own generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from . import checks
from .config import ModelConfig, ModelConfigError
from .generate import decode


class Runtime(Protocol):
    """An ONNX decoder session."""

    provider: str  # where it runs ("webgpu", "wasm", "cpu")

    async def run(self, ids: list[int], start: int, past: object | None) -> tuple[list[float], object]:
        """The logits after the last of `ids` (at positions start…, after `past`, None at first)
        and the cache with them appended."""


@dataclass(frozen=True)
class DecoderShape:
    """What decoding through an ONNX decoder needs of its model: the cache's (layers, kv heads,
    head_dim) and the longest sequence."""

    layers: int
    kv_heads: int
    head_dim: int
    max_positions: int

    @classmethod
    def of(cls, config: ModelConfig) -> "DecoderShape":
        return cls(config.num_layers, config.num_kv_heads, config.head_dim, config.max_position_embeddings)

    @classmethod
    def from_config(cls, config: dict, source: str = "config.json") -> "DecoderShape":
        """From any decoder's config.json (an ONNX folder of a family the engine may not train):
        the field names transformers.js reads (GPT-2's n_layer/n_head/n_embd/n_positions, or
        num_hidden_layers, num_key_value_heads, num_attention_heads, head_dim, hidden_size,
        max_position_embeddings; a text_config inside when there is one)."""
        if isinstance(config.get("text_config"), dict):
            config = {**config["text_config"]}

        def number(*names: str, default: int | None = None) -> int:
            for name in names:
                value = config.get(name)
                if value is not None:
                    return checks.integer(value, f"{source}: {name}", ModelConfigError, lo=1, hi=1 << 24)
            if default is None:
                raise ModelConfigError(f"{source}: {' or '.join(names)} is missing (the decoder's cache shape)")
            return default

        layers = number("num_hidden_layers", "n_layer", "num_layers")
        heads = number("num_attention_heads", "n_head", "num_heads")
        kv_heads = number("num_key_value_heads", "num_kv_heads", default=heads)
        head_dim = config.get("head_dim")
        if head_dim is None:
            hidden = number("hidden_size", "n_embd", "d_model")
            if hidden % heads:
                raise ModelConfigError(f"{source}: hidden size {hidden} is not a multiple of {heads} heads")
            head_dim = hidden // heads
        head_dim = checks.integer(head_dim, f"{source}: head_dim", ModelConfigError, lo=1, hi=1 << 16)
        return cls(layers, kv_heads, head_dim, number("max_position_embeddings", "n_positions", default=1 << 20))


async def onnx_generate(runtime: Runtime, prompt: list[int], max_new_tokens: int, max_len: int,
                        temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                        stop_ids: set[int] = frozenset(), on_token=None) -> list[int]:
    """The tokens after `prompt`, as generate.Generator would pick them from these logits."""
    past = None

    async def step(ids: list[int], start: int) -> list[float]:
        nonlocal past
        logits, past = await runtime.run(ids, start, past)
        return logits

    return await decode(step, prompt, max_new_tokens, max_len, temperature, top_p, seed, stop_ids, on_token)


async def prompt_logits(runtime: Runtime, prompt: list[int]) -> list[float]:
    """The logits after the whole prompt."""
    logits, _ = await runtime.run(prompt, 0, None)
    return logits
