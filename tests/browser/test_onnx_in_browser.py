"""ONNX Runtime Web in the page (real Chromium): the compare panel's third answer from our ONNX
export of the model and its adapter, the logit check against our engine, the export download
(onnxruntime on CPython equals PEFT on it), and chat without WebGPU, from a dropped ONNX folder
and from the built-in model, with no request leaving the site."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from tests.browser.app import App
from tests.browser.test_app_flow import chat_jsonl, make_chat_model
from tests.model import hf
from tests.rig import CHROMIUM, PageGuard
from tests.test_onnx_export import ort_run, session

pytestmark = pytest.mark.browser
pytest.importorskip("torch")


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    return make_chat_model(tmp_path_factory.mktemp("onnx-chat"), "qwen3")


def test_compare_panel_answers_with_onnx_runtime_web_and_exports_onnx(app, chat_model, tmp_path):
    """After a short run: the third answer comes from ONNX Runtime Web and equals base + adapter's
    (greedy); the check line's largest logit difference is ≤ 1e-4; the ONNX zip's model runs in
    onnxruntime like PEFT with the downloaded adapter."""
    import peft
    import torch

    page = app.page
    app.engine_up()
    assert page.locator("[data-testid=onnx-files]").is_hidden()  # (chat without WebGPU only)
    app.load_model_files(chat_model)
    app.use_dataset_file(chat_jsonl(tmp_path / "chat.jsonl"))
    app.train({"steps": 4, "lr": 0.02, "batch-size": 3, "report-every": 2})
    page.evaluate("document.querySelector('[data-testid=gen-output-onnx]').dataset.done = ''")
    assert page.is_checked(app.sel("gen-onnx"))  # (on by default)
    _, adapter_answer = app.generate("Where is the key?", onnx=True)
    page.wait_for_function("document.querySelector('[data-testid=gen-output-onnx]').dataset.done === '1'",
                           timeout=300_000)
    check = app.page.locator("[data-testid=onnx-check]")
    result = json.loads(check.get_attribute("data-result") or "null")
    assert result is not None, app.text("onnx-check")
    assert result["provider"] in ("webgpu", "wasm")
    print(f"onnx check: {result}")
    assert result["max_abs_diff"] <= 1e-4, result
    assert app.text("gen-output-onnx") == adapter_answer
    app.ready()
    on_wasm = app.engine("onnx_compare", {"prompt": "Who guards the gate?", "max_new_tokens": 4, "provider": "wasm"})
    assert on_wasm["provider"] == "wasm" and on_wasm["max_abs_diff"] <= 1e-4, on_wasm

    page.select_option(app.sel("export-onnx-dtype"), "fp32")
    with zipfile.ZipFile(app.download("export-onnx", tmp_path / "onnx.zip")) as zf:
        assert {"config.json", "tokenizer.json", "tokenizer_config.json", "onnx/model.onnx"} <= set(zf.namelist())
        zf.extractall(tmp_path / "onnx")
    with zipfile.ZipFile(app.download("export-adapter", tmp_path / "adapter.zip")) as zf:
        zf.extractall(tmp_path / "adapter")
    ids = np.array([[5, 9, 17, 33, 2, 40, 7]])
    logits = ort_run(session(tmp_path / "onnx" / "onnx" / "model.onnx"), ids)[0]
    with torch.no_grad():
        reference = peft.PeftModel.from_pretrained(hf.load_hf(chat_model), str(tmp_path / "adapter"))(
            input_ids=torch.tensor(ids)).logits.numpy()
    assert np.abs(logits - reference).max() <= 1e-4


@pytest.fixture
def no_webgpu(playwright, site):
    """A page in Chromium without WebGPU (its flags left out), every request kept on the site."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-background-networking", "--disable-component-update", "--no-first-run",
        "--disable-webgpu"])
    context = browser.new_context()
    page = context.new_page()
    guard = PageGuard(context, page)
    page.goto(site + "?autoload=0")
    yield App(page)
    guard.check()
    browser.close()


def test_without_webgpu_chat_runs_on_onnx_runtime_web(no_webgpu, chat_model, tmp_path):
    """The page loads, says why training is unavailable, and answers through ONNX Runtime Web's wasm
    provider: from an ONNX folder (exported by the CLI) chosen in onnx-files, the same greedy
    answer as `loralab generate`; and from the built-in model."""
    from tests.test_cli_train import loralab

    app = no_webgpu
    status = app.engine_up()
    assert "ready" not in status.lower() and "no WebGPU" in status
    assert "Training needs WebGPU" in app.text("error")
    assert app.page.locator("[data-testid=train-start]").is_disabled()

    peft_model = hf.peft_model(chat_model, b_std=0.05)
    peft_model.save_pretrained(tmp_path / "adapter")
    out = tmp_path / "exported"
    loralab("export", tmp_path / "adapter", "--to", "onnx", "--model", chat_model, "--out", out, "--onnx-dtype", "fp32")
    files = sorted(p for p in out.rglob("*") if p.is_file())
    app.page.set_input_files(app.sel("onnx-files"), [str(p) for p in files])
    app.wait_text("onnx-info", "wasm")
    # (its files went through the progress bar, which ended and went away)
    assert app.page.get_attribute(app.sel("progress"), "data-progress") == "1.0000"
    assert app.page.is_hidden(app.sel("progress"))
    prompt = "Where is the key?"
    app.page.fill(app.sel("gen-max-tokens"), "12")
    shown = ask(app, prompt)
    ours = loralab("generate", chat_model, "--adapter", tmp_path / "adapter", "--chat", prompt, "--max-new-tokens", 12)
    assert shown == ours.stdout.removesuffix("\n")  # (print's own newline)

    app.page.click(app.sel("onnx-default"))  # the built-in model: its GGUF read in place, nothing else fetched
    app.wait_text("onnx-info", "read in place", timeout=300_000)
    assert "Paris" in ask(app, "What is the capital of France?")

    app.page.reload()  # both are kept: the ONNX folder loads again from the model cache
    app.engine_up()
    app.page.wait_for_function("document.querySelectorAll('[data-testid=cache-item][data-kind=onnx]').length === 1",
                               timeout=60_000)
    app.page.click("[data-testid=cache-item][data-kind=onnx] [data-testid=cache-use]")
    app.wait_text("onnx-info", "wasm")
    app.page.fill(app.sel("gen-max-tokens"), "12")
    assert ask(app, prompt) == shown


def ask(app: App, prompt: str) -> str:
    """The third column's answer to `prompt` (Answer clicked, its stream finished)."""
    app.page.fill(app.sel("gen-prompt"), prompt)
    app.page.evaluate("document.querySelector('[data-testid=gen-output-onnx]').dataset.done = ''")
    app.page.click(app.sel("gen-run"))
    app.page.wait_for_function("document.querySelector('[data-testid=gen-output-onnx]').dataset.done === '1'",
                               timeout=300_000)
    return app.page.eval_on_selector(app.sel("gen-output-onnx"), "e => e.textContent")


@pytest.mark.slow
def test_without_webgpu_the_built_in_model_chats_offline_after_one_visit(playwright):
    """One visit online without WebGPU (the built-in model loaded into ONNX Runtime Web once), then
    the server gone and the browser offline: after a reload the page chats again, its runtime from
    the service worker's cache and the model from the model cache."""
    from loralab.devserver import serve_in_background
    from tests.rig import DIST

    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-background-networking", "--disable-component-update", "--no-first-run",
        "--disable-webgpu"])
    try:
        context = browser.new_context()
        page = context.new_page()
        guard = PageGuard(context, page)
        server, url = serve_in_background(DIST)
        page.goto(url + "?autoload=0")
        app = App(page)
        app.engine_up()
        page.wait_for_function("navigator.serviceWorker.controller !== null", timeout=120_000)
        page.click(app.sel("onnx-default"))
        app.wait_text("onnx-info", "read in place", timeout=300_000)
        server.shutdown()
        server.server_close()
        context.set_offline(True)
        guard.allow_console = ("Failed to load resource", "ERR_INTERNET_DISCONNECTED", "ERR_CONNECTION_REFUSED")
        page.reload()
        app.engine_up()
        page.click(app.sel("onnx-default"))
        app.wait_text("onnx-info", "read in place", timeout=300_000)
        assert "Paris" in ask(app, "What is the capital of France?")
        guard.check()
    finally:
        browser.close()
