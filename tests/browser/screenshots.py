"""Screenshots of the app for the README: `.venv/bin/python -m tests.browser.screenshots docs/screenshots`
(after `python3 build.py build`). Trains the tiny chat model of test_app_flow in headless Chromium,
light and dark, at 1280 px and on a 390 px phone screen (which must not scroll sideways).
tests/browser/test_screenshots.py runs it into a temporary folder."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from loralab.devserver import serve_in_background
from tests.browser.app import App
from tests.browser.test_app_flow import chat_jsonl, make_chat_model
from tests.rig import CHROMIUM, CHROMIUM_FLAGS, DIST


def main(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp())
    folder = make_chat_model(work / "tiny-chat")
    data = chat_jsonl(work / "chat.jsonl")
    server, url = serve_in_background(DIST)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        for scheme in ("light", "dark"):
            page = browser.new_page(viewport={"width": 1280, "height": 900}, color_scheme=scheme)
            page.goto(url + "?autoload=0")
            App(page).engine_up()
            page.set_input_files("[data-testid=model-files]", [str(f) for f in sorted(folder.iterdir())])
            App(page).ready()
            page.set_input_files("[data-testid=dataset-files]", str(data))
            page.wait_for_function("document.querySelector('[data-testid=dataset-summary]').textContent.includes('records')")
            page.click("[data-testid=plan-open]")
            for testid, value in (("cfg-steps", "24"), ("cfg-lr", "0.01"), ("cfg-batch-size", "3"), ("cfg-report-every", "2")):
                page.fill(f"[data-testid={testid}]", value)
            page.dispatch_event("[data-testid=cfg-steps]", "change")
            page.wait_for_timeout(1500)
            page.screenshot(path=str(out / f"plan-{scheme}.png"), full_page=True)
            page.click("[data-testid=train-start]")
            page.wait_for_function("document.querySelector('[data-testid=train-state]').textContent === 'done'", timeout=300_000)
            page.fill("[data-testid=gen-prompt]", "What is the password?")
            page.click("[data-testid=gen-run]")
            page.wait_for_function("document.querySelector('[data-testid=gen-output-adapter]').dataset.done === '1'",
                                   timeout=300_000)
            page.screenshot(path=str(out / f"trained-{scheme}.png"), full_page=True)
            page.set_viewport_size({"width": 390, "height": 844})  # a phone
            page.wait_for_timeout(500)
            width = page.evaluate("document.documentElement.scrollWidth")
            if width > 390:
                raise SystemExit(f"at 390 px the page is {width} px wide")
            page.screenshot(path=str(out / f"trained-{scheme}-390.png"), full_page=True)
            page.close()
        browser.close()
    server.shutdown()
    return sorted(out.glob("*.png"))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots"))
