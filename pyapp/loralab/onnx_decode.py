"""Text from an ONNX decoder (this package's export, or any Optimum / transformers.js decoder of a
family the engine knows) through an ONNX runtime: onnxruntime-web in the browser (browser/ort.py),
or any runtime with the same small interface.

The decoder takes input_ids, attention_mask, position_ids and past_key_values.N.key/value and
returns logits and present.N.key/value (onnx_export's layout). The runtime keeps the cache
between steps, so the decoding loop and the sampling are generate.decode's, the same as our
engine's own generation.
"""

from __future__ import annotations

from typing import Protocol

from .config import ModelConfig
from .generate import decode


class Runtime(Protocol):
    """An ONNX decoder session."""

    provider: str  # where it runs ("webgpu", "wasm", "cpu")

    async def run(self, ids: list[int], start: int, past: object | None) -> tuple[list[float], object]:
        """The logits after the last of `ids` (at positions start…, after `past`, None at first)
        and the cache with them appended."""


def cache_shape(config: ModelConfig) -> tuple[int, int, int]:
    """(layers, kv heads, head_dim) of the decoder's past_key_values."""
    return config.num_layers, config.num_kv_heads, config.head_dim


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
