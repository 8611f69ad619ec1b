"""The app's first visit: the built-in SmolLM2-135M-Instruct loads by itself and trains a few steps."""

from __future__ import annotations

import json
import zipfile

import pytest

from tests.browser.app import App

pytestmark = [pytest.mark.browser, pytest.mark.slow]


PROGRESS_WATCH = """
document.addEventListener('DOMContentLoaded', () => {
  window.__progress = [];
  const node = document.querySelector('[data-testid=progress]');
  new MutationObserver(() => window.__progress.push([+node.dataset.progress, node.hidden]))
    .observe(node, {attributes: true, attributeFilter: ['data-progress']});
});
"""


def test_default_model_guided_flow_from_a_fresh_profile(page, page_guard, site, tmp_path):
    """A first visit, as the step bar leads it: the default model loads by itself with a progress
    bar (testid progress) that moves forward only and ends at 1; a pasted dataset; a preset; a
    few steps of training; base and adapter compared; the adapter exported for PEFT."""
    page.add_init_script(PROGRESS_WATCH)
    page.goto(site)  # no ?autoload=0: a first visit loads the default
    app = App(page)
    app.ready(timeout_ms=900_000)
    seen = page.evaluate("window.__progress")
    values = [v for v, _ in seen]
    assert len(values) >= 10 and values == sorted(values), values
    assert values[-1] == 1.0 and seen[-1][1] is True  # ends at 1, and the bar goes away
    assert any(0 < v < 1 for v in values)
    card = app.text("model-card")
    assert "SmolLM2-135M-Instruct" in card and "LlamaForCausalLM" in card
    assert page.get_attribute("[data-testid=steps]", "data-current") == "data"
    chat = [{"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]}] * 2
    app.paste_dataset("".join(json.dumps(c) + "\n" for c in chat), "2 records", click=False)  # used once typing pauses
    page.select_option(app.sel("plan-preset"), "quick")
    app.wait_text("plan-summary", "all attention projections")
    rank = int(page.input_value(app.sel("cfg-rank")))
    app.train({"steps": 2, "batch-size": 1, "report-every": 1}, timeout=900_000)  # the preset, but 2 steps
    assert app.text("train-step").startswith("2 / 2")
    assert float(app.text("train-loss")) > 0
    assert page.get_attribute("[data-testid=steps]", "data-current") == "try"

    page.fill(app.sel("gen-max-tokens"), "4")
    base, adapter = app.generate("Say hi.", timeout=900_000)
    assert base.strip() and adapter.strip()
    assert page.get_attribute("[data-testid=steps]", "data-current") == "done"
    with zipfile.ZipFile(app.download("export-adapter", tmp_path / "adapter.zip")) as zf:
        config = json.loads(zf.read("adapter_config.json"))
        assert "adapter_model.safetensors" in zf.namelist()
    assert app.download_name.startswith("SmolLM2-135M-Instruct")
    assert config["r"] == rank and config["peft_type"] == "LORA"
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}  # the preset's targets
