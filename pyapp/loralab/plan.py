"""The plan's estimates: GPU memory and time of a training run before it starts."""

from __future__ import annotations

from .config import LoraConfig, ModelConfig, TrainConfig


def estimate_memory(config: ModelConfig, train: TrainConfig, lora: LoraConfig, weight_bytes: int) -> dict:
    """GPU bytes a run needs: the model's weights, the activations the backward pass keeps (all
    layers, or one with checkpointing), the logits block, and LoRA with AdamW's state and the
    gradient's token slices (Transformer)."""
    from .model.transformer import GRAD_SLICE_TOKENS, GRAD_SLICES, logit_chunk_rows

    T = train.batch_size * train.seq_len
    C, I, q, kv = config.hidden_size, config.intermediate_size, config.q_size, config.kv_size
    per_layer = T * (4 * C + 2 * q + 2 * kv + 3 * I + 2 + config.num_heads + len(lora.targets) * lora.r)
    layers = 1 if train.gradient_checkpointing else config.num_layers
    activations = 4 * (per_layer * layers + T * C * (config.num_layers + 6) + T * (2 * q + 2 * kv + 3 * I))
    logits = 4 * logit_chunk_rows(T, config.vocab_size) * config.vocab_size
    params = sum(lora.r * sum(config.projection_shape(m)) for m in lora.targets) * config.num_layers
    slices = max(1, min(GRAD_SLICES, T // GRAD_SLICE_TOKENS))
    adapter = 16 * params + (4 * params * slices if slices > 1 else 0)
    total = weight_bytes + activations + logits + adapter
    return {"weights": weight_bytes, "activations": activations, "logits": logits, "adapter_and_optimizer": adapter,
            "total": total}


def estimate_step_seconds(config: ModelConfig, train: TrainConfig, lora: LoraConfig, gflops: float) -> float:
    """Seconds per optimizer step from a measured matmul rate: the forward and the input-gradient
    products of every projection and the LM head (LoRA trains no base weight), plus attention."""
    T = train.batch_size * train.seq_len
    proj = sum(config.projection_shape(m)[0] * config.projection_shape(m)[1] for m in
               ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
    flops = 2 * 2 * T * (proj * config.num_layers + config.vocab_size * config.hidden_size)
    flops += 3 * 2 * 2 * train.batch_size * train.seq_len ** 2 / 2 * config.q_size * config.num_layers
    return flops * train.grad_accum / max(gflops * 1e9, 1.0)
