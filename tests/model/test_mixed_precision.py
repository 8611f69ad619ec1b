"""Mixed precision (float16 products in the large matmuls, float32 everywhere else) against the
float32 path: the loss within 1e-2 relative, a 20-step training curve within 2e-2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from loralab.config import LoraConfig, TrainConfig
from loralab.data.batches import Sequence, make_batch
from loralab.gpu.device import expand
from loralab.lora import LoraState
from loralab.model.transformer import Transformer
from loralab.model.weights import HFFolder, upload_weights
from loralab.train import Trainer, step_scalars
from tests.model import hf

pytest.importorskip("torch")
# Wide enough (hidden 192, 192 tokens) that the projections take the tiled matmul, which is the
# one with a float16 twin (thinner products stay float32).
SIZES = dict(hidden_size=192, intermediate_size=384, num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(autouse=True)
def _needs_f16(gpu):
    if "shader-f16" not in gpu.info.features:
        pytest.skip("this adapter lacks shader-f16")


def batch_loss(gpu, ops, run, arrays, path, precision: str) -> tuple[float, int]:
    source = HFFolder(str(path))
    weights = run(upload_weights(gpu, source.config, source, ops))
    lora = LoraState(gpu, source.config, LoraConfig(r=4, alpha=8.0))
    gpu.submit(lora.init_dispatches(ops, seed=3))
    B, S = 2, 96
    model = Transformer(gpu, ops, source.config, weights, lora, B, S, precision=precision)
    ids, labels = hf.batch(4, B, S)
    flat, targets, n = make_batch([Sequence(list(i), list(l)) for i, l in zip(ids.tolist(), labels.tolist())], B, S)
    model.write_batch(flat, targets)
    history = arrays.up(np.zeros(1, np.float32))
    step = arrays.up(np.frombuffer(step_scalars(ops), np.float32))
    cmds = model.forward() + model.loss(history, step, backward=False)
    f16 = sum(1 for c in expand(cmds) if getattr(c, "kernel", "") == "matmul_f16")
    gpu.submit(cmds)
    return float(arrays.down(history, (1,))[0]) / n, f16


@pytest.mark.parametrize("kind", ["llama", "gemma3", "gpt2"])
def test_the_loss_in_mixed_precision_is_within_1e_2_of_float32(gpu, ops, run, arrays, tmp_path, kind):
    run(ops.prepare(mixed=True))
    path = hf.tiny_model(kind, tmp_path / kind, seed=5, **SIZES)
    exact, none = batch_loss(gpu, ops, run, arrays, path, "f32")
    mixed, products = batch_loss(gpu, ops, run, arrays, path, "mixed")
    assert none == 0 and products >= 2 * 4  # (every layer's projections went through float16)
    assert mixed == pytest.approx(exact, rel=1e-2) and mixed != exact


def curve(gpu, ops, run, path, precision: str) -> list[float]:
    source = HFFolder(str(path))
    weights = run(upload_weights(gpu, source.config, source, ops))
    lora = LoraState(gpu, source.config, LoraConfig(r=4, alpha=8.0))
    gpu.submit(lora.init_dispatches(ops, seed=1))
    config = TrainConfig(steps=20, batch_size=2, seq_len=96, lr=3e-3, shuffle=False, report_every=5, precision=precision)
    rng = np.random.default_rng(6)
    data = [Sequence(ids, ids) for ids in (rng.integers(0, 96, 96).tolist() for _ in range(6))]
    model = Transformer(gpu, ops, source.config, weights, lora, 2, 96, precision=precision)
    history = run(Trainer(gpu, ops, model, lora, config, data).train())
    return [h["loss"] for h in history if h["kind"] == "train"]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_a_20_step_curve_in_mixed_precision_follows_float32(gpu, ops, run, tmp_path, kind):
    run(ops.prepare(mixed=True))
    path = hf.tiny_model(kind, tmp_path / kind, seed=8, **SIZES)
    exact, mixed = curve(gpu, ops, run, path, "f32"), curve(gpu, ops, run, path, "mixed")
    assert len(exact) == len(mixed) == 20 and exact[-1] < exact[0]
    np.testing.assert_allclose(mixed, exact, rtol=2e-2)


def test_the_default_model_in_mixed_precision(tmp_path):
    """`loralab eval default --precision mixed` against float32 on the built-in SmolLM2-135M."""
    loralab = str(Path(sys.executable).with_name("loralab"))
    data = tmp_path / "tokens.jsonl"
    rng = np.random.default_rng(2)
    data.write_text("".join(json.dumps({"input_ids": [1] + rng.integers(2, 40000, 95).tolist()}) + "\n"
                            for _ in range(2)))
    losses = {}
    for precision in ("f32", "mixed"):
        out = subprocess.run([loralab, "eval", "default", str(data), "--format", "tokens", "--seq-len", "96",
                              "--batch-size", "2", "--precision", precision], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        losses[precision] = json.loads(out.stdout)["loss"]
    assert losses["mixed"] == pytest.approx(losses["f32"], rel=1e-2)
