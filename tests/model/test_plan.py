"""The plan's memory estimate is what training allocates: it is computed by building the run on
a device that only counts bytes, and here it is held to a real run on a fresh native device."""

from __future__ import annotations

import json

import numpy as np
import pytest

from loralab.config import LoraConfig, TrainConfig
from loralab.gpu.counting import CountingDevice
from loralab.gpu.native import NativeDevice
from loralab.kernels import directory_reader
from loralab.model.weights import HFFolder
from loralab.plan import estimate_memory
from loralab.session import Session
from tests.model import hf


def uniform_bytes(device) -> int:
    return sum(b.size for b in device._uniforms.values())


@pytest.mark.parametrize("checkpointing, grad_accum, dtype", [(False, 1, "f32"), (True, 2, "f16")])
def test_the_estimate_equals_what_a_run_allocates(tmp_path, run, checkpointing, grad_accum, dtype):
    hf.tiny_model("qwen2", tmp_path / "model", seed=4, tied=False)
    rng = np.random.default_rng(0)
    text = "".join(json.dumps({"input_ids": rng.integers(0, 96, int(rng.integers(5, 30))).tolist()}) + "\n"
                   for _ in range(9))

    async def no_tokenizer(*_):
        raise AssertionError("the tiny model has no tokenizer")

    session = Session()
    run(session.start(run(NativeDevice.create()), directory_reader()))
    run(session.open_model(HFFolder(str(tmp_path / "model")), ("tiny", None), no_tokenizer))
    run(session.upload(dtype))
    dataset = session.use_dataset("t.jsonl", text, "tokens", seq_len=24)
    train = TrainConfig(steps=2, batch_size=3, seq_len=24, grad_accum=grad_accum, gradient_checkpointing=checkpointing)
    lora = LoraConfig(r=4, alpha=8)
    plan = run(session.plan(train, lora, budget=1 << 40))
    counting = CountingDevice(session.device.info)
    memory = estimate_memory(session.ops, session.model.config, session.model.weights, train, lora, dataset.train,
                             counting)
    assert plan["memory"] == memory and plan["fits"]
    assert memory["total"] == sum(memory[k] for k in ("weights", "activations", "logits", "adapter_and_optimizer"))
    assert memory["logits"] > 0 and memory["adapter_and_optimizer"] > 0

    device = session.device
    before, uniforms_before = device.allocated_bytes, uniform_bytes(device)
    assert before - uniforms_before >= memory["weights"]
    session_run = run(session.start_run(train, lora))
    session_run.trainer.record()
    allocated = device.allocated_bytes - before - (uniform_bytes(device) - uniforms_before)
    counted = counting.allocated_bytes - uniform_bytes(counting)
    # The same buffers, byte for byte; the split-K scratch of a fresh Ops may already exist on the real one.
    scratch = counting.by_label.get("matmul.split_k", 0) + counting.by_label.get("spare", 0)
    assert counted - scratch <= allocated <= counted
    assert memory["total"] - memory["weights"] == counting.peak_bytes
    session.close_model()
