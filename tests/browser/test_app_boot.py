"""The first page: local Pyodide, the engine in a worker, WebGPU from Python, a checked kernel."""

from __future__ import annotations

import json

import pytest

from loralab.selftest import matmul_check
from tests.browser.app import App
from tests.rig import CHROMIUM, PageGuard

pytestmark = pytest.mark.browser


def test_engine_comes_up_on_webgpu(app_page):
    assert App(app_page).engine_up() == "No model loaded"  # "ready" needs a model too
    hw = app_page.locator("[data-testid=hw-info]")
    assert hw.get_attribute("data-vendor") == "google"
    assert hw.get_attribute("data-architecture") == "swiftshader"
    text = hw.inner_text()
    assert "swiftshader" in text and "shader-f16" in text and "verified" in text
    assert app_page.locator("[data-testid=error]").is_hidden()


def test_the_hardware_panel_measures_the_training_step(app_page):
    """The same step benchmark as `loralab bench` (here the tiny config: SwiftShader is a CPU)."""
    App(app_page).engine_up()
    app_page.select_option("[data-testid=hw-bench-config]", "tiny")
    app_page.fill("[data-testid=hw-bench-batch]", "2")
    app_page.fill("[data-testid=hw-bench-seq]", "32")
    app_page.click("[data-testid=hw-bench]")
    app_page.wait_for_function("document.querySelector('[data-testid=hw-bench-result]').dataset.result", timeout=120_000)
    result = json.loads(app_page.get_attribute("[data-testid=hw-bench-result]", "data-result"))
    assert result["tokens_per_s"] > 0 and result["batch_size"] == 2 and result["seq_len"] == 32
    assert result["submits_per_step"] == 1 and result["dispatches_per_step"] > 50
    assert result["host_ms_per_step"] > 0  # (the encoding's cost: printed, never asserted against a time)
    assert "tokens/s" in app_page.inner_text("[data-testid=hw-bench-result]")
    assert "on the CPU, encoding and submitting" in app_page.inner_text("[data-testid=hw-bench-result]")
    scripted = App(app_page).engine("bench", {"config": "tiny", "batch_size": 1, "seq_len": 16, "steps": 2})
    assert scripted["host_ms_per_step"] > 0 and scripted["dispatches_per_step"] > 50
    assert app_page.locator("[data-testid=error]").is_hidden()


def test_browser_and_native_kernels_agree(app_page, gpu, kernels, run):
    native = run(matmul_check(gpu, kernels))
    App(app_page).engine_up()
    browser = json.loads(app_page.locator("[data-testid=hw-info]").get_attribute("data-check"))
    assert browser["ok"] and native["ok"]
    assert browser["shape"] == native["shape"]
    assert browser["sha256"] == native["sha256"], "SwiftShader and lavapipe returned different bits"


def test_without_webgpu_the_page_says_so(playwright, site):
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
    )
    try:
        context = browser.new_context()
        page = context.new_page()
        guard = PageGuard(context, page)
        page.goto(site)
        status = App(page).engine_up()
        assert "ready" not in status.lower()
        error = page.inner_text("[data-testid=error]")
        assert "WebGPU" in error and "Chrome" in error
        assert page.locator("[data-testid=error]").is_visible()
        guard.check()
    finally:
        browser.close()
