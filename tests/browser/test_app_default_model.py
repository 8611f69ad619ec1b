"""The app's first visit: the built-in SmolLM2-135M-Instruct loads by itself and trains a few steps."""

from __future__ import annotations

import json

import pytest

from tests.rig import wait_until_ready

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_default_model_loads_and_trains_a_few_steps(page, page_guard, site):
    page.goto(site)  # no ?autoload=0: a first visit loads the default
    wait_until_ready(page, timeout_ms=900_000)
    card = page.inner_text("[data-testid=model-card]")
    assert "SmolLM2-135M-Instruct" in card and "LlamaForCausalLM" in card
    chat = [{"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]}] * 2
    page.fill("[data-testid=dataset-text]", "".join(json.dumps(c) + "\n" for c in chat))  # used once typing pauses
    page.wait_for_function("document.querySelector('[data-testid=dataset-summary]').textContent.includes('2 records')")
    page.click("[data-testid=plan-open]")
    for testid, value in (("cfg-steps", "2"), ("cfg-batch-size", "1"), ("cfg-seq-len", "48"), ("cfg-report-every", "1")):
        page.fill(f"[data-testid={testid}]", value)
    page.click("[data-testid=train-start]")
    page.wait_for_function("document.querySelector('[data-testid=train-state]').textContent === 'done'", timeout=900_000)
    assert page.inner_text("[data-testid=train-step]").startswith("2 / 2")
    assert float(page.inner_text("[data-testid=train-loss]")) > 0
