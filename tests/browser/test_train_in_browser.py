"""The engine trains in the browser's worker exactly as it does natively."""

from __future__ import annotations

import json

import numpy as np
import pytest

from loralab.data.formats import load_dataset
from loralab.devserver import serve_in_background
from loralab.engine import fit_seq_len, prepare_training
from loralab.formats.peft import files_from_path, parse_adapter
from loralab.model.weights import HFFolder
from loralab.config import TrainConfig
from tests.model import hf
from tests.rig import wait_for_engine

pytestmark = pytest.mark.browser
torch = pytest.importorskip("torch")


@pytest.fixture
def files(tmp_path):
    hf.tiny_model("qwen2", tmp_path / "model", seed=12, tied=False)
    hf.peft_model(tmp_path / "model", r=4, alpha=8.0, b_std=0.02, seed=3).save_pretrained(tmp_path / "adapter")
    rng = np.random.default_rng(1)
    with open(tmp_path / "data.jsonl", "w") as f:
        for _ in range(6):
            f.write(json.dumps({"input_ids": rng.integers(0, 96, int(rng.integers(6, 14))).tolist()}) + "\n")
    server, url = serve_in_background(tmp_path, cross_origin=True)
    yield tmp_path, url
    server.shutdown()


def test_browser_and_native_training_agree(app_page, files, ops, run):
    root, url = files
    train = {"steps": 4, "batch_size": 2, "seq_len": 16, "lr": 1e-2, "lr_schedule": "cosine", "warmup_steps": 1,
             "shuffle": False, "report_every": 2, "weight_decay": 0.01}
    request = {"model_url": url + "model/", "data_url": url + "data.jsonl", "adapter_url": url + "adapter/",
               "format": "tokens", "train": train}
    wait_for_engine(app_page)
    answer = json.loads(app_page.evaluate("([name, req]) => window.loralabEngine(name, req)", ["train_run", json.dumps(request)]))
    assert answer["ok"], answer.get("error")
    browser = [h["loss"] for h in answer["history"] if h["kind"] == "train"]

    source = HFFolder(str(root / "model"))
    records, _ = load_dataset("data.jsonl", (root / "data.jsonl").read_text(), "tokens", None, 16, source.config.vocab_size)
    lora_config, state, _ = parse_adapter(files_from_path(str(root / "adapter")))
    config = TrainConfig(**{**train, "seq_len": fit_seq_len(records, 16)})
    trainer = run(prepare_training(ops, source, source.config, records, [], lora_config, state, config))
    native = [h["loss"] for h in run(trainer.train()) if h["kind"] == "train"]
    assert len(browser) == len(native) == 4
    np.testing.assert_allclose(browser, native, rtol=1e-3)
    assert browser[-1] < browser[0]
