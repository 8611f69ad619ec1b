"""The engine trains in the browser's worker exactly as it does natively: the test drives the
worker through the commands the app's panels send (load_model, import_adapter, set_dataset,
train_start), and the same Session calls on CPython."""

from __future__ import annotations

import time

import numpy as np
import pytest

from loralab.config import TrainConfig
from loralab.data.tokenizer import HFTokenizer
from loralab.devserver import serve_in_background
from loralab.formats.peft import files_from_path
from loralab.model.weights import HFFolder
from loralab.session import Session
from tests.browser.app import App
from tests.browser.test_app_flow import chat_jsonl, make_chat_model
from tests.model import hf

pytestmark = pytest.mark.browser
torch = pytest.importorskip("torch")

TRAIN = {"steps": 4, "batch_size": 2, "seq_len": 48, "lr": 1e-2, "lr_schedule": "cosine", "warmup_steps": 1,
         "shuffle": False, "report_every": 2, "weight_decay": 0.01}


@pytest.fixture
def files(tmp_path):
    make_chat_model(tmp_path / "model")
    hf.peft_model(tmp_path / "model", r=4, alpha=8.0, b_std=0.02, seed=3).save_pretrained(tmp_path / "adapter")
    chat_jsonl(tmp_path / "chat.jsonl", repeats=2)
    server, url = serve_in_background(tmp_path, cross_origin=True)
    yield tmp_path, url
    server.shutdown()


def test_browser_and_native_training_agree(app, files, ops, run):
    root, url = files
    app.engine_up()
    model_files = {p.name: f"{url}model/{p.name}" for p in sorted((root / "model").iterdir())}
    app.engine("load_model", {"kind": "files", "files": model_files, "name": "tiny-chat"})
    adapter = {n: f"{url}adapter/{n}" for n in ("adapter_model.safetensors", "adapter_config.json")}
    app.engine("import_adapter", {"files": adapter})
    text = (root / "chat.jsonl").read_text()
    app.engine("set_dataset", {"name": "chat.jsonl", "text": text, "seq_len": 48, "valid_fraction": 0.2})
    app.engine("train_start", {"train": TRAIN})
    deadline = time.monotonic() + 300
    while (status := app.engine("train_status"))["state"] in ("running", "paused"):
        assert time.monotonic() < deadline, "the browser's run did not finish"
        time.sleep(0.3)
    assert status["state"] == "done", status
    browser = status["history"]

    async def make_tokenizer(tokenizer_json, config, template):
        return HFTokenizer(tokenizer_json, config, template)

    session = Session(ops=ops)
    run(session.open_model(HFFolder(str(root / "model")), ("tiny-chat", None), make_tokenizer))
    try:
        dataset = session.use_dataset("chat.jsonl", text, seq_len=48, valid_fraction=0.2)
        session.import_adapter(files_from_path(str(root / "adapter")), "adapter")
        native_run = run(session.start_run(TrainConfig(**TRAIN)))
        assert run(native_run.train()) is None
        native = native_run.history
    finally:
        session.close_model()

    def losses(history, kind):
        return [h["loss"] for h in history if h["kind"] == kind]

    assert len(dataset.valid) == 1 and len(losses(browser, "train")) == len(losses(native, "train")) == 4
    np.testing.assert_allclose(losses(browser, "train"), losses(native, "train"), rtol=1e-3)
    np.testing.assert_allclose(losses(browser, "eval"), losses(native, "eval"), rtol=1e-3)
    assert losses(browser, "eval") and losses(browser, "train")[-1] < losses(browser, "train")[0]


def test_debugging_commands_exist_only_when_the_page_asks(page, page_guard, site):
    page.goto(site + "?autoload=0")
    app = App(page)
    app.engine_up()
    answer = app.engine("debug_lose_device", ok=False)
    assert not answer["ok"] and "no command 'debug_lose_device'" in answer["error"]
    answer = app.engine("set_dataset", {"text": 3}, ok=False)
    assert answer == {"ok": False, "error": "the set_dataset request: text must be a string, not 3"}
    answer = app.engine("train_start", {"train": {"batch_size": "4"}}, ok=False)
    assert answer["error"] == "the train_start request: train: batch_size must be an integer, not '4'"
