"""The app's first visit: the built-in SmolLM2-135M-Instruct loads by itself and trains a few steps."""

from __future__ import annotations

import json

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


def test_default_model_loads_and_trains_a_few_steps(page, page_guard, site):
    """The first visit loads the default model with a progress bar (testid progress) that moves
    forward only and ends at 1, then trains a few steps."""
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
    chat = [{"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]}] * 2
    app.paste_dataset("".join(json.dumps(c) + "\n" for c in chat), "2 records", click=False)  # used once typing pauses
    app.train({"steps": 2, "batch-size": 1, "seq-len": 48, "report-every": 1}, timeout=900_000)
    assert app.text("train-step").startswith("2 / 2")
    assert float(app.text("train-loss")) > 0
