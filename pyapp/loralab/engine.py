"""Assembling a run (kernels, model, adapter, trainer) the same way for the CLI and the worker."""

from __future__ import annotations

from .data.batches import Sequence
from .gpu.device import Device
from .kernels import KernelLibrary, SourceReader
from .lora import LoraConfig, LoraState
from .model.config import ModelConfig
from .model.transformer import Transformer
from .model.weights import WeightSource, upload_weights
from .ops import Ops
from .train import TrainConfig, Trainer


async def load_ops(device: Device, read_source: SourceReader) -> Ops:
    """Every kernel compiled for `device`."""
    return await Ops.load(device, KernelLibrary(device, read_source))


def fit_seq_len(records: list[Sequence], limit: int) -> int:
    """The model is built for the longest record (right padding changes no loss), capped at limit."""
    return max(1, min(limit, max(len(r.input_ids) for r in records)))


def make_lora(ops: Ops, config: ModelConfig, lora_config: LoraConfig, state: dict | None = None, seed: int = 0) -> LoraState:
    """An adapter on the GPU: from `state` ({peft_key: (shape, f32 bytes)}) or PEFT's init with `seed`."""
    lora = LoraState(ops.device, config, lora_config)
    if state is not None:
        lora.load_state({key: data for key, (_, data) in state.items()})
    else:
        ops.device.submit(lora.init_dispatches(ops, seed))
    return lora


async def prepare_training(ops: Ops, source: WeightSource, config: ModelConfig, records: list[Sequence],
                           valid: list[Sequence], lora_config: LoraConfig, state: dict | None, train: TrainConfig,
                           pad_id: int = 0, weights_dtype: str = "f32") -> Trainer:
    await ops.specialize_head_dim(config.head_dim)
    lora = make_lora(ops, config, lora_config, state, train.seed)
    weights = await upload_weights(ops.device, config, source, ops, weights_dtype)
    model = Transformer(ops.device, ops, config, weights, lora, train.batch_size, train.seq_len, train.gradient_checkpointing)
    return Trainer(ops.device, ops, model, lora, train, records, valid, pad_id)
