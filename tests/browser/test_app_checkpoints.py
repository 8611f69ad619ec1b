"""Issue 6 in Chromium: exact resume from the browser's saved run (after a reload and after a
lost GPU device), the app's evaluation loss against PEFT, import → export round trip, and the
merged-model download against PEFT's base + adapter."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from tests.browser.test_app_flow import make_chat_model
from tests.model import hf

pytestmark = pytest.mark.browser
torch = pytest.importorskip("torch")

STEPS = 40
PLAN = {"steps": STEPS, "lr": 0.02, "batch-size": 2, "seq-len": 32, "rank": 4, "alpha": 8, "warmup-steps": 3,
        "report-every": 1, "dropout": 0.1}


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return make_chat_model(tmp_path_factory.mktemp("tiny-chat"))


@pytest.fixture(scope="module")
def tokens_data(tmp_path_factory):
    """Token-id records (no tokenizer in the way of the PEFT comparison)."""
    rng = np.random.default_rng(3)
    path = tmp_path_factory.mktemp("data") / "tokens.jsonl"
    lines = []
    for i in range(7):
        ids = rng.integers(0, 300, int(rng.integers(8, 30))).tolist()
        lines.append(json.dumps({"input_ids": ids, **({"labels": [-100] * 4 + ids[4:]} if i % 2 else {})}))
    path.write_text("\n".join(lines) + "\n")
    return path


def load_model_and_data(app, model_folder, data) -> None:
    app.engine_up()
    app.load_model_files(model_folder)
    app.use_dataset_file(data, "7 records")


def adapter_tensors(app, tmp_path, name: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    with zipfile.ZipFile(app.download("export-adapter", tmp_path / name)) as zf:
        return load(zf.read("adapter_model.safetensors"))


def train_losses(lines):
    return {r["step"]: r["loss"] for r in lines if r["kind"] == "train"}


def test_pause_reload_resume_equals_a_straight_run(app, model_folder, tokens_data, tmp_path):
    page = app.page
    load_model_and_data(app, model_folder, tokens_data)
    app.set_plan(PLAN, schedule="cosine")
    page.fill("[data-testid=checkpoint-every]", "0")  # saved at pause and at the end only
    app.train()
    straight = train_losses(app.metrics())
    assert sorted(straight) == list(range(1, STEPS + 1))
    straight_adapter = adapter_tensors(app, tmp_path, "straight.zip")

    page.evaluate("document.querySelector('[data-testid=train-step]').textContent = '0'")
    page.click("[data-testid=train-start]")  # the same run again, paused part-way
    page.wait_for_function("parseInt(document.querySelector('[data-testid=train-step]').textContent) >= 3",
                           timeout=120_000)
    page.click("[data-testid=train-pause]")
    page.wait_for_function("document.querySelector('[data-testid=checkpoint-status]').dataset.step", timeout=120_000)
    paused_at = int(page.get_attribute("[data-testid=checkpoint-status]", "data-step"))
    assert 3 <= paused_at < STEPS

    page.reload()  # a reload (or a crash): the run is offered again once its model is loaded
    app.engine_up()
    page.wait_for_selector("[data-testid=checkpoint-offer]:not([hidden])")
    assert int(page.get_attribute("[data-testid=checkpoint-offer]", "data-step")) == paused_at
    assert "tokens.jsonl" in app.text("checkpoint-info")
    app.load_model_files(model_folder)
    page.click("[data-testid=checkpoint-resume]")
    app.wait_state("done")
    resumed = train_losses(app.metrics())
    assert sorted(resumed) == list(range(1, STEPS + 1)), "metrics continue at the saved step + 1"
    for step in range(1, STEPS + 1):
        assert resumed[step] == pytest.approx(straight[step], abs=1e-5), step
    resumed_adapter = adapter_tensors(app, tmp_path, "resumed.zip")
    assert resumed_adapter.keys() == straight_adapter.keys()
    for key, value in straight_adapter.items():
        np.testing.assert_allclose(resumed_adapter[key], value, atol=1e-5, err_msg=key)


def test_a_lost_gpu_device_resumes_from_the_last_checkpoint(app, model_folder, tokens_data):
    page = app.page
    load_model_and_data(app, model_folder, tokens_data)
    app.set_plan(PLAN, schedule="cosine")
    page.fill("[data-testid=checkpoint-every]", "2")
    page.click("[data-testid=train-start]")
    page.wait_for_function("parseInt(document.querySelector('[data-testid=checkpoint-status]').dataset.step) >= 4",
                           timeout=120_000)
    app.engine("debug_lose_device")
    app.wait_state("error", timeout=120_000)
    assert "lost" in app.text("error")
    page.wait_for_selector("[data-testid=checkpoint-offer]:not([hidden])")
    assert "lost" in app.text("checkpoint-info")
    page.click("[data-testid=checkpoint-resume]")
    app.wait_state("done")
    lines = app.metrics()
    assert sorted(train_losses(lines)) == list(range(1, STEPS + 1))
    assert app.generate("Where is the key?")[1]  # the new device answers too
    assert app.text("status") == "ready"


def peft_loss(model, data_path) -> tuple[float, int]:
    total, count = 0.0, 0
    for line in data_path.read_text().splitlines():
        rec = json.loads(line)
        labels = rec.get("labels", rec["input_ids"])
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([rec["input_ids"]])).logits[0]
        targets = torch.tensor(labels[1:])
        total += torch.nn.functional.cross_entropy(logits[:-1], targets, ignore_index=-100, reduction="sum").item()
        count += int((targets != -100).sum())
    return total / count, count


def test_evaluation_import_export_and_merged_model_match_peft(app, model_folder, tokens_data, tmp_path):
    import peft
    from safetensors.numpy import load

    page = app.page
    load_model_and_data(app, model_folder, tokens_data)
    app.train({"steps": 6, "lr": 0.02, "batch-size": 3, "report-every": 3})
    page.click("[data-testid=eval-run]")
    page.wait_for_function("document.querySelector('[data-testid=eval-loss]').dataset.result")
    ours = json.loads(page.get_attribute("[data-testid=eval-loss]", "data-result"))

    with zipfile.ZipFile(app.download("export-adapter", tmp_path / "adapter.zip")) as zf:
        zf.extractall(tmp_path / "adapter")
        card = zf.read("README.md").decode()
    assert "tokens.jsonl" in card and "training config" in card and "training loss" in card
    with_adapter = peft.PeftModel.from_pretrained(hf.load_hf(model_folder), str(tmp_path / "adapter")).eval()
    loss, count = peft_loss(with_adapter, tokens_data)
    assert ours["tokens"] == count
    assert ours["adapter"] == pytest.approx(loss, abs=1e-4)
    assert ours["base"] == pytest.approx(peft_loss(hf.load_hf(model_folder).eval(), tokens_data)[0], abs=1e-4)

    with zipfile.ZipFile(app.download("export-merged")) as zf:  # merged: a Hugging Face folder equal to base + adapter
        assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(zf.namelist())
        zf.extractall(tmp_path / "merged")
    ids = torch.tensor([[5, 17, 33, 2, 90, 41, 7]])
    with torch.no_grad():
        merged = hf.load_hf(tmp_path / "merged")(ids).logits
        reference = with_adapter(ids).logits
    assert float((merged - reference).abs().max()) <= 1e-4

    # A PEFT-made adapter: imported, evaluated like PEFT, exported with identical tensors.
    made = peft.get_peft_model(hf.load_hf(model_folder), peft.LoraConfig(
        r=4, lora_alpha=12, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0, init_lora_weights=False))
    made.save_pretrained(tmp_path / "made")
    app.drop([tmp_path / "made" / "adapter_config.json", tmp_path / "made" / "adapter_model.safetensors"])
    app.wait_text("adapter-info", "Imported")
    page.evaluate("document.querySelector('[data-testid=eval-loss]').dataset.result = ''")
    page.click("[data-testid=eval-run]")
    page.wait_for_function("document.querySelector('[data-testid=eval-loss]').dataset.result")
    imported = json.loads(page.get_attribute("[data-testid=eval-loss]", "data-result"))
    assert imported["adapter"] == pytest.approx(peft_loss(made.eval(), tokens_data)[0], abs=1e-4)
    with zipfile.ZipFile(app.download("export-adapter")) as zf:
        exported = load(zf.read("adapter_model.safetensors"))
    original = load((tmp_path / "made" / "adapter_model.safetensors").read_bytes())
    assert exported.keys() == original.keys()
    for key, value in original.items():
        assert np.array_equal(exported[key], value), key
