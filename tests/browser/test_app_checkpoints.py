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
from tests.rig import drop_files, wait_for_engine, wait_until_ready

pytestmark = pytest.mark.browser
torch = pytest.importorskip("torch")

STEPS = 40
PLAN = (("cfg-steps", str(STEPS)), ("cfg-lr", "0.02"), ("cfg-batch-size", "2"), ("cfg-seq-len", "32"), ("cfg-rank", "4"),
        ("cfg-alpha", "8"), ("cfg-warmup-steps", "3"), ("cfg-report-every", "1"), ("cfg-dropout", "0.1"))


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


def load_model_and_data(page, model_folder, data) -> None:
    wait_for_engine(page)
    page.set_input_files("[data-testid=model-files]", [str(p) for p in sorted(model_folder.iterdir())])
    wait_until_ready(page)
    page.set_input_files("[data-testid=dataset-files]", str(data))
    page.wait_for_function("document.querySelector('[data-testid=dataset-summary]').textContent.includes('7 records')")


def set_plan(page, plan=PLAN) -> None:
    if page.get_attribute("[data-testid=plan-open]", "aria-expanded") != "true":
        page.click("[data-testid=plan-open]")
    page.select_option("[data-testid=cfg-lr-schedule]", "cosine")
    for testid, value in plan:
        page.fill(f"[data-testid={testid}]", value)


def wait_state(page, value: str, timeout: int = 300_000) -> None:
    page.wait_for_function(f"document.querySelector('[data-testid=train-state]').textContent === '{value}'",
                           timeout=timeout)


def metrics(page) -> list[dict]:
    with page.expect_download() as d:
        page.click("[data-testid=metrics-download]")
    return [json.loads(line) for line in open(d.value.path()).read().splitlines()]


def adapter_tensors(page, tmp_path, name: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    with page.expect_download() as d:
        page.click("[data-testid=export-adapter]")
    path = tmp_path / name
    d.value.save_as(path)
    with zipfile.ZipFile(path) as zf:
        return load(zf.read("adapter_model.safetensors"))


def train_losses(lines):
    return {r["step"]: r["loss"] for r in lines if r["kind"] == "train"}


def test_pause_reload_resume_equals_a_straight_run(app_page, model_folder, tokens_data, tmp_path):
    page = app_page
    load_model_and_data(page, model_folder, tokens_data)
    set_plan(page)
    page.fill("[data-testid=checkpoint-every]", "0")  # saved at pause and at the end only
    page.click("[data-testid=train-start]")
    wait_state(page, "done")
    straight = train_losses(metrics(page))
    assert sorted(straight) == list(range(1, STEPS + 1))
    straight_adapter = adapter_tensors(page, tmp_path, "straight.zip")

    page.evaluate("document.querySelector('[data-testid=train-step]').textContent = '0'")
    page.click("[data-testid=train-start]")  # the same run again, paused part-way
    page.wait_for_function("parseInt(document.querySelector('[data-testid=train-step]').textContent) >= 3",
                           timeout=120_000)
    page.click("[data-testid=train-pause]")
    page.wait_for_function("document.querySelector('[data-testid=checkpoint-status]').dataset.step", timeout=120_000)
    paused_at = int(page.get_attribute("[data-testid=checkpoint-status]", "data-step"))
    assert 3 <= paused_at < STEPS

    page.reload()  # a reload (or a crash): the run is offered again once its model is loaded
    wait_for_engine(page)
    page.wait_for_selector("[data-testid=checkpoint-offer]:not([hidden])")
    assert int(page.get_attribute("[data-testid=checkpoint-offer]", "data-step")) == paused_at
    assert "tokens.jsonl" in page.inner_text("[data-testid=checkpoint-info]")
    page.set_input_files("[data-testid=model-files]", [str(p) for p in sorted(model_folder.iterdir())])
    wait_until_ready(page)
    page.click("[data-testid=checkpoint-resume]")
    wait_state(page, "done")
    resumed = train_losses(metrics(page))
    assert sorted(resumed) == list(range(1, STEPS + 1)), "metrics continue at the saved step + 1"
    for step in range(1, STEPS + 1):
        assert resumed[step] == pytest.approx(straight[step], abs=1e-5), step
    resumed_adapter = adapter_tensors(page, tmp_path, "resumed.zip")
    assert resumed_adapter.keys() == straight_adapter.keys()
    for key, value in straight_adapter.items():
        np.testing.assert_allclose(resumed_adapter[key], value, atol=1e-5, err_msg=key)


def test_a_lost_gpu_device_resumes_from_the_last_checkpoint(app_page, model_folder, tokens_data):
    page = app_page
    load_model_and_data(page, model_folder, tokens_data)
    set_plan(page)
    page.fill("[data-testid=checkpoint-every]", "2")
    page.click("[data-testid=train-start]")
    page.wait_for_function("parseInt(document.querySelector('[data-testid=checkpoint-status]').dataset.step) >= 4",
                           timeout=120_000)
    page.evaluate("window.loralabEngine('debug_lose_device', '{}')")
    wait_state(page, "error", timeout=120_000)
    assert "lost" in page.inner_text("[data-testid=error]")
    page.wait_for_selector("[data-testid=checkpoint-offer]:not([hidden])")
    assert "lost" in page.inner_text("[data-testid=checkpoint-info]")
    page.click("[data-testid=checkpoint-resume]")
    wait_state(page, "done")
    lines = metrics(page)
    assert sorted(train_losses(lines)) == list(range(1, STEPS + 1))
    page.fill("[data-testid=gen-prompt]", "Where is the key?")
    page.click("[data-testid=gen-run]")  # the new device answers too
    page.wait_for_function("document.querySelector('[data-testid=gen-output-adapter]').dataset.done === '1'",
                           timeout=300_000)
    assert page.inner_text("[data-testid=gen-output-adapter]")
    assert page.inner_text("[data-testid=status]") == "ready"


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


def test_evaluation_import_export_and_merged_model_match_peft(app_page, model_folder, tokens_data, tmp_path):
    import peft
    from safetensors.numpy import load

    page = app_page
    load_model_and_data(page, model_folder, tokens_data)
    set_plan(page, (("cfg-steps", "6"), ("cfg-lr", "0.02"), ("cfg-batch-size", "3"), ("cfg-report-every", "3")))
    page.click("[data-testid=train-start]")
    wait_state(page, "done")
    page.click("[data-testid=eval-run]")
    page.wait_for_function("document.querySelector('[data-testid=eval-loss]').dataset.result")
    ours = json.loads(page.get_attribute("[data-testid=eval-loss]", "data-result"))

    with page.expect_download() as d:
        page.click("[data-testid=export-adapter]")
    zpath = tmp_path / "adapter.zip"
    d.value.save_as(zpath)
    with zipfile.ZipFile(zpath) as zf:
        zf.extractall(tmp_path / "adapter")
        card = zf.read("README.md").decode()
    assert "tokens.jsonl" in card and "training config" in card and "training loss" in card
    with_adapter = peft.PeftModel.from_pretrained(hf.load_hf(model_folder), str(tmp_path / "adapter")).eval()
    loss, count = peft_loss(with_adapter, tokens_data)
    assert ours["tokens"] == count
    assert ours["adapter"] == pytest.approx(loss, abs=1e-4)
    assert ours["base"] == pytest.approx(peft_loss(hf.load_hf(model_folder).eval(), tokens_data)[0], abs=1e-4)

    with page.expect_download() as d:  # merged: a Hugging Face folder equal to base + adapter
        page.click("[data-testid=export-merged]")
    with zipfile.ZipFile(d.value.path()) as zf:
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
    drop_files(page, [tmp_path / "made" / "adapter_config.json", tmp_path / "made" / "adapter_model.safetensors"])
    page.wait_for_function("document.querySelector('[data-testid=adapter-info]').textContent.includes('Imported')")
    page.evaluate("document.querySelector('[data-testid=eval-loss]').dataset.result = ''")
    page.click("[data-testid=eval-run]")
    page.wait_for_function("document.querySelector('[data-testid=eval-loss]').dataset.result")
    imported = json.loads(page.get_attribute("[data-testid=eval-loss]", "data-result"))
    assert imported["adapter"] == pytest.approx(peft_loss(made.eval(), tokens_data)[0], abs=1e-4)
    with page.expect_download() as d:
        page.click("[data-testid=export-adapter]")
    with zipfile.ZipFile(d.value.path()) as zf:
        exported = load(zf.read("adapter_model.safetensors"))
    original = load((tmp_path / "made" / "adapter_model.safetensors").read_bytes())
    assert exported.keys() == original.keys()
    for key, value in original.items():
        assert np.array_equal(exported[key], value), key
