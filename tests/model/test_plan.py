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
    measured = plan["precision"]  # the tiled matmul timed in both arithmetics where shader-f16 is
    assert measured["f32_gflops"] > 0 and measured["faster"] in ("f32", "mixed")
    assert (measured["mixed_gflops"] or 0) > 0 if "shader-f16" in session.device.info.features else \
        measured["mixed_gflops"] is None
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


def test_each_weights_choice_takes_the_bytes_the_plan_says(tmp_path, run):
    """The plan's precision list (Session.precisions) against the uploads themselves, for a float
    model and a quantized GGUF; set_weights switches in place, and a plan that does not fit
    points to a precision that would."""
    from loralab.model.gguf_model import GGUFModel
    from tests.hostile import files as F

    hf.tiny_model("llama", tmp_path / "model", seed=2, tied=True, hidden_size=64, intermediate_size=128)
    (tmp_path / "tiny.gguf").write_bytes(F.tiny_gguf())

    async def no_tokenizer(*_):
        return None

    session = Session()
    run(session.start(run(NativeDevice.create()), directory_reader()))
    for source in (HFFolder(str(tmp_path / "model")), GGUFModel.from_path(str(tmp_path / "tiny.gguf"))):
        run(session.open_model(source, ("m", None), no_tokenizer))
        choices = session.precisions()
        for dtype in ("auto", "f32", "f16", "q8", "q4"):
            model = run(session.set_weights(dtype))
            assert model.dtype == dtype and sum(b.size for b in model.weights.values()) == choices[dtype], dtype
        assert choices["q4"] < choices["q8"] <= choices["f32"] and choices["f16"] < choices["f32"]  # (Q8_0 needs columns in 32s)
    session.close_model()
    assert session.device.allocated_bytes < 1 << 16  # (the kernels' uniforms and scratch only)

    run(session.open_model(HFFolder(str(tmp_path / "model")), ("m", None), no_tokenizer))
    run(session.set_weights("f32"))
    train, lora = TrainConfig(steps=1, batch_size=1, seq_len=16), LoraConfig(r=2, alpha=4)
    need = run(session.plan(train, lora, budget=1 << 40))["memory"]
    plan = run(session.plan(train, lora, budget=need["total"] - need["weights"] + session.precisions()["q8"]))
    assert not plan["fits"] and plan["advice"].startswith("keep the weights as q8")
    assert plan["weights"]["current"] == "f32" and set(plan["weights"]["choices"]) == {"auto", "f32", "f16", "q8", "q4"}
    session.close_model()


def test_auto_weights_take_the_first_precision_whose_weights_fit(tmp_path, run, monkeypatch):
    """A float model stays float32 while its weights take at most plan.AUTO_WEIGHTS_SHARE of the
    GPU budget; past it, "auto" uploads f16, then q8, then q4 (here the share is squeezed, as a
    small GPU would)."""
    from loralab import plan as plan_module
    from loralab.model.weights import weight_types
    from loralab.plan import memory_budget

    hf.tiny_model("llama", tmp_path / "model", seed=3)

    async def no_tokenizer(*_):
        raise AssertionError("the tiny model has no tokenizer")

    session = Session()
    run(session.start(run(NativeDevice.create()), directory_reader()))
    run(session.open_model(HFFolder(str(tmp_path / "model")), ("tiny", None), no_tokenizer))
    sizes = session.precisions()
    assert sizes["auto"] > sizes["f16"] > sizes["q8"] > sizes["q4"]
    budget = memory_budget(session.device.info)
    for room, want in ((sizes["auto"], "auto"), (sizes["f16"], "f16"), (sizes["q8"], "q8"), (sizes["q4"], "q4"),
                       (1, "q4")):
        monkeypatch.setattr(plan_module, "AUTO_WEIGHTS_SHARE", (room + 0.5) / budget)
        assert session.weights_for("auto") == want
        assert session.weights_for("f32") == "f32"  # a choice the person made is kept
    model = run(session.upload())
    assert model.dtype == "q4" and "nf4" in weight_types(model.weights)
    assert run(session.plan(TrainConfig(steps=1, batch_size=1, seq_len=8), LoraConfig(r=2)))["weights"]["current"] == "q4"


# Three GPUs by what the plan knows of them: the memory budget and the measured matmul rate.
GPUS = {"tiny": (384 << 20, 5.0), "swiftshader-like": (2 << 30, 20.0), "h200-like": (140 << 30, 30_000.0)}


@pytest.mark.parametrize("name", list(GPUS))
def test_auto_plan_fits_each_gpu_and_the_time_budget(ops, name):
    """rank_schedule auto for SmolLM2-135M (its shape, weights on a counting device) and 400 chat
    examples: the chosen plan's estimated peak memory is within the GPU's budget (with the fifth
    kept free), its estimated time within the 10-minute budget, and every part has a reason."""
    from dataclasses import replace

    from loralab.bench import random_weights
    from loralab.config import NAMED_CONFIGS, ModelConfig
    from loralab.data.batches import Sequence
    from loralab.plan import AUTO_MEMORY_SHARE, auto_plan

    budget, gflops = GPUS[name]
    config = ModelConfig.from_dict(NAMED_CONFIGS["smollm2-135m"])
    counting = CountingDevice(ops.device.info)
    weights = random_weights(ops.on(counting), config)
    now = sum(b.size for b in weights.values())
    precisions = {"auto": now, "f32": now, "f16": now // 2, "q8": now * 34 // 128, "q4": now * 18 // 128}
    rng = np.random.default_rng(1)
    records = []
    for _ in range(400):
        n = int(rng.integers(60, 700))
        records.append(Sequence(list(range(n)), [-100] * (n // 3) + list(range(n // 3, n))))
    choice = auto_plan(ops, config, weights, records, TrainConfig(epochs=2, time_budget="10m"),
                       LoraConfig(rank_schedule="auto"), budget, gflops, precisions, "f32")
    assert choice["memory"]["total"] <= AUTO_MEMORY_SHARE * budget
    assert choice["total_seconds"] <= 600
    assert set(choice["reasons"]) == {"seq_len", "rank", "targets", "batch_size", "grad_accum",
                                      "gradient_checkpointing", "weights", "steps"}
    train, lora = choice["train"], choice["lora"]
    assert lora.rank_schedule == "fixed" and lora.r == 16 and set(lora.targets) == set(config.lora_modules())
    if name == "tiny":  # float32 weights alone are over the budget: smaller weights, checkpointing
        assert choice["weights"] in ("q8", "q4") and train.gradient_checkpointing
    else:
        assert train.seq_len == 699
    if name == "h200-like":
        assert choice["weights"] == "f32" and not train.gradient_checkpointing and train.batch_size == 16
        assert train.steps == 0  # two whole epochs fit the budget there
    else:  # the slow GPUs: as many steps as 10 minutes allow, fewer than two epochs take
        epochs_steps = replace(train, steps=0).total_steps(len(records))
        assert 1 <= train.steps < epochs_steps and "min allow" in choice["reasons"]["steps"]


def test_auto_plan_refuses_a_gpu_nothing_fits(ops):
    from loralab.bench import random_weights
    from loralab.config import NAMED_CONFIGS, ModelConfig
    from loralab.data.batches import Sequence
    from loralab.errors import UserError
    from loralab.plan import auto_plan

    config = ModelConfig.from_dict(NAMED_CONFIGS["smollm2-135m"])
    weights = random_weights(ops.on(CountingDevice(ops.device.info)), config)
    now = sum(b.size for b in weights.values())
    with pytest.raises(UserError, match="no plan fits this GPU"):
        auto_plan(ops, config, weights, [Sequence(list(range(50)), list(range(50)))] * 30, TrainConfig(),
                  LoraConfig(rank_schedule="auto"), 32 << 20, 5.0, {"q4": now // 8}, "f32")
