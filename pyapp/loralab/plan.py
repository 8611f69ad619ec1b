"""The plan's estimates: GPU memory and time of a training run before it starts."""

from __future__ import annotations

from .config import LoraConfig, ModelConfig, TrainConfig
from .data.batches import Sequence
from .gpu.device import AdapterInfo, Buffer
from .ops import Ops

# "auto" weights keep a float model in float32 while its weights take at most this share of the
# GPU budget (the rest is the run's: activations, logits, the adapter and its optimizer state).
AUTO_WEIGHTS_SHARE = 0.6


def memory_budget(info: AdapterInfo) -> int:
    """GPU bytes a run may plan on. WebGPU reports no memory size: the largest buffer the adapter
    grants stands for it, and at least 2 GiB (browsers give a tab a few GiB)."""
    return max(int(info.limits.get("maxBufferSize", 0)), 2 << 30)


def estimate_memory(ops: Ops, config: ModelConfig, weights: dict[str, Buffer], train: TrainConfig, lora: LoraConfig,
                    records: list[Sequence] | None = None, counting=None) -> dict:
    """GPU bytes a run needs, found by building it (adapter and AdamW state, the network for the
    batch shape, the trainer, the step's recorded commands) on a device that only counts bytes:
    the same code that training runs, so the estimate is what training allocates. `weights` are
    the model's, already on the GPU; `records` the training set (a one-record stand-in without);
    `counting`, a CountingDevice to use (tests read its counts)."""
    from .data.batches import IGNORE
    from .gpu.counting import CountingDevice
    from .lora import LoraState
    from .model.transformer import Transformer
    from .train import Trainer

    device = counting or CountingDevice(ops.device.info)
    recording = ops.on(device)
    adapter = LoraState(device, config, lora)
    after_adapter = device.allocated_bytes
    network = Transformer(device, recording, config, weights, adapter, train.batch_size, train.seq_len,
                          train.gradient_checkpointing)
    after_network = device.allocated_bytes
    records = records or [Sequence([0] * train.seq_len, [IGNORE] * train.seq_len)]
    trainer = Trainer(device, recording, network, adapter, train, records, [], 0)
    after_trainer = device.allocated_bytes
    trainer.record()
    weight_bytes = sum(b.size for b in weights.values())
    logits = device.by_label.get("logits", 0)
    return {"weights": weight_bytes, "activations": after_network - after_adapter - logits
            + device.peak_bytes - after_trainer, "logits": logits,
            "adapter_and_optimizer": after_adapter + after_trainer - after_network,
            "total": weight_bytes + device.peak_bytes}


def estimate_step_seconds(config: ModelConfig, train: TrainConfig, lora: LoraConfig, gflops: float) -> float:
    """Seconds per optimizer step from a measured matmul rate: the forward and the input-gradient
    products of every projection and the LM head (LoRA trains no base weight), plus attention."""
    T = train.batch_size * train.seq_len
    proj = sum(config.projection_shape(m)[0] * config.projection_shape(m)[1] for m in
               ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
    flops = 2 * 2 * T * (proj * config.num_layers + config.vocab_size * config.hidden_size)
    flops += 3 * 2 * 2 * train.batch_size * train.seq_len ** 2 / 2 * config.q_size * config.num_layers
    return flops * train.grad_accum / max(gflops * 1e9, 1.0)
