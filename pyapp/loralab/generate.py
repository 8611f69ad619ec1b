"""Text generation with a KV cache on the GPU: one prefill, then one token per submit.

Only the last position's logits are read back (V floats per token); sampling (greedy,
temperature, top-p) happens on the host in plain Python, identically on CPython and Pyodide.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Awaitable, Callable

from .config import ModelConfig
from .errors import UsageError
from .gpu.device import Buffer, Copy, Device
from .lora import LoraState
from .model.transformer import KVCache, Transformer
from .ops import Ops


def sample(logits: list[float], temperature: float, top_p: float, rng: random.Random) -> int:
    """Greedy when temperature is 0, else softmax(logits / temperature) truncated to top_p."""
    if temperature <= 0:
        return max(range(len(logits)), key=logits.__getitem__)
    m = max(logits)
    weights = [math.exp((x - m) / temperature) for x in logits]
    order = sorted(range(len(weights)), key=weights.__getitem__, reverse=True)
    total, kept, acc = sum(weights), [], 0.0
    for i in order:
        kept.append(i)
        acc += weights[i]
        if acc >= top_p * total:
            break
    return rng.choices(kept, weights=[weights[i] for i in kept])[0]


class Generator:
    def __init__(self, device: Device, ops: Ops, config: ModelConfig, weights: dict[str, Buffer],
                 lora: LoraState | None, max_len: int):
        self.device, self.ops, self.config, self.max_len = device, ops, config, max_len
        self.model = Transformer(device, ops, config, weights, lora, 1, max_len)
        self.cache = KVCache.create(device, config, max_len)
        self.last = device.create_buffer(config.hidden_size * 4, label="last_hidden")
        self.logits = device.create_buffer(config.vocab_size * 4, label="next_logits")

    def release(self) -> None:
        """Free this generator's GPU memory (activations, KV cache); weights stay."""
        self.model.release()
        for buffer in [*self.cache.k, *self.cache.v, self.last, self.logits]:
            self.device.destroy_buffer(buffer)

    async def step(self, ids: list[int], start: int) -> list[float]:
        """Run tokens `ids` at positions start…; returns the logits after the last one."""
        T, C, V = len(ids), self.config.hidden_size, self.config.vocab_size
        self.device.write_buffer(self.model.ids, struct.pack(f"<{T}I", *ids))
        self.device.write_buffer(self.model.pos, struct.pack(f"<{T}I", *range(start, start + T)))
        cmds = self.model.forward(rows=T, cache=self.cache, start=start, norms=start == 0)  # (DoRA's: once)
        cmds.append(Copy(self.model.xnf, (T - 1) * C * 4, self.last, 0, C * 4))
        cmds.extend(self.ops.matmul(self.logits, self.last, self.model.lm_head, 1, V, C))
        self.device.submit(cmds)
        return list(struct.unpack(f"<{V}f", await self.device.read_buffer(self.logits)))

    async def generate(self, prompt: list[int], max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                       seed: int = 0, stop_ids: set[int] = frozenset(), on_token=None) -> list[int]:
        if len(prompt) >= self.max_len:
            raise UsageError(f"the prompt has {len(prompt)} tokens; this generator holds at most {self.max_len - 1}")
        return await decode(self.step, prompt, max_new_tokens, self.max_len, temperature, top_p, seed, stop_ids,
                            on_token)


async def decode(step: Callable[[list[int], int], Awaitable[list[float]]], prompt: list[int], max_new_tokens: int,
                 max_len: int, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                 stop_ids: set[int] = frozenset(), on_token=None) -> list[int]:
    """The tokens after `prompt`: step(ids, start) runs `ids` at positions start… through a
    model's KV cache and returns the logits after the last one (our engine's, or an ONNX
    runtime's); one prefill, then one token per step until a stop id, max_new_tokens or
    max_len positions, or until on_token(token) returns True (the person pressed Stop)."""
    if not prompt:
        raise UsageError("the prompt is empty")
    rng = random.Random(seed)
    logits = await step(prompt, 0)
    out: list[int] = []
    position = len(prompt)
    while len(out) < max_new_tokens:
        token = sample(logits, temperature, top_p, rng)
        if token in stop_ids:
            break
        out.append(token)
        if on_token and on_token(token):
            break
        if position >= max_len or len(out) == max_new_tokens:
            break
        logits = await step([token], position)
        position += 1
    return out
