"""The app as the browser tests drive it: one page object over the `data-testid` hooks, so the
tests say what a person does (load a model, use a dataset, plan, train, download) and the
selectors and waits live here once."""

from __future__ import annotations

import json
from pathlib import Path


class App:
    def __init__(self, page):
        self.page = page

    # -- reading the page -----------------------------------------------------------------------
    @staticmethod
    def sel(testid: str) -> str:
        return f"[data-testid={testid}]"

    def text(self, testid: str) -> str:
        return self.page.inner_text(self.sel(testid))

    def wait_text(self, testid: str, contains: str, timeout: int = 120_000) -> None:
        self.page.wait_for_function(
            "([sel, want]) => document.querySelector(sel).textContent.includes(want)",
            arg=[self.sel(testid), contains], timeout=timeout)

    # -- the engine ----------------------------------------------------------------------------------
    def engine_up(self, timeout_ms: int = 120_000) -> str:
        """Wait until the engine is up (the GPU checked) or failed; returns the status text."""
        self.page.wait_for_function(
            "document.querySelector('[data-testid=hw-info]').dataset.check !== undefined"
            " || document.querySelector('[data-testid=status]').dataset.state === 'error'", timeout=timeout_ms)
        self.page.wait_for_function("document.querySelector('[data-testid=status]').dataset.state !== 'busy'",
                                    timeout=timeout_ms)
        return self.text("status")

    def ready(self, timeout_ms: int = 600_000) -> None:
        """Wait until training can start (status "ready"); fails fast on a shown error."""
        self.page.wait_for_function(
            "(() => { const s = document.querySelector('[data-testid=status]');"
            " const e = document.querySelector('[data-testid=error]');"
            " return s.textContent.trim() === 'ready' || (!e.hidden && e.textContent.length > 0); })()",
            timeout=timeout_ms)
        error = self.page.locator("[data-testid=error]")
        assert error.is_hidden(), error.inner_text()

    def engine(self, name: str, request: dict | None = None, ok: bool = True) -> dict:
        """A worker command, as the panels send it (window.loralabEngine)."""
        answer = json.loads(self.page.evaluate("([n, r]) => window.loralabEngine(n, r)",
                                               [name, json.dumps(request or {})]))
        if ok:
            assert answer["ok"], f"{name}: {answer.get('error')}"
        return answer

    def shown_error(self, expect: str, timeout: int = 120_000) -> str:
        """The error line once it mentions `expect`: one line, never an internal error."""
        self.page.wait_for_function("(want) => { const e = document.querySelector('[data-testid=error]');"
                                    " return !e.hidden && e.textContent.includes(want); }", arg=expect, timeout=timeout)
        text = self.text("error")
        assert "\n" not in text.strip() and "internal error" not in text, text
        return text

    # -- model and data ----------------------------------------------------------------------------------
    def load_model_files(self, paths, wait: bool = True) -> None:
        """Choose a model's files (a folder's files, or a .gguf) in the model panel."""
        paths = sorted(Path(paths).iterdir()) if isinstance(paths, (str, Path)) and Path(paths).is_dir() else paths
        self.page.set_input_files(self.sel("model-files"), [str(p) for p in paths] if isinstance(paths, list)
                                  else str(paths))
        if wait:
            self.ready()

    def drop(self, paths) -> None:
        """Drop files on the page as a person drags them from a file manager."""
        files = [(Path(p).name, list(Path(p).read_bytes())) for p in paths]
        handle = self.page.evaluate_handle("""(files) => {
            const dt = new DataTransfer();
            for (const [name, bytes] of files) dt.items.add(new File([new Uint8Array(bytes)], name));
            return dt; }""", files)
        self.page.dispatch_event("body", "drop", {"dataTransfer": handle})

    def use_dataset_file(self, path, expect: str = "records", valid: str | None = None) -> None:
        if valid is not None:
            self.page.select_option(self.sel("dataset-valid"), valid)
        self.page.set_input_files(self.sel("dataset-files"), str(path))
        self.wait_text("dataset-summary", expect)

    def paste_dataset(self, text: str, expect: str = "records", click: bool = True) -> None:
        self.page.fill(self.sel("dataset-text"), text)
        if click:
            self.page.click(self.sel("dataset-use"))
        self.wait_text("dataset-summary", expect)

    # -- plan and training ------------------------------------------------------------------------------------
    def set_plan(self, values: dict[str, str], schedule: str | None = None) -> None:
        """Open the plan and fill its fields by cfg-* hook (`{"steps": "40", "lr": "0.01"}`)."""
        if self.page.get_attribute(self.sel("plan-open"), "aria-expanded") != "true":
            self.page.click(self.sel("plan-open"))
        if schedule:
            self.page.select_option(self.sel("cfg-lr-schedule"), schedule)
        for name, value in values.items():
            self.page.fill(self.sel(f"cfg-{name}"), str(value))
        self.page.dispatch_event(self.sel(f"cfg-{next(iter(values))}"), "change")

    def wait_state(self, value: str, timeout: int = 300_000) -> None:
        self.page.wait_for_function(f"document.querySelector('[data-testid=train-state]').textContent === '{value}'",
                                    timeout=timeout)

    def train(self, values: dict[str, str] | None = None, timeout: int = 600_000) -> None:
        """Set the plan (if given), start, and wait until the run is done."""
        if values:
            self.set_plan(values)
        self.page.click(self.sel("train-start"))
        self.wait_state("done", timeout)

    def metrics(self) -> list[dict]:
        """The metrics download: one JSON record per step and evaluation."""
        return [json.loads(line) for line in self.download("metrics-download").read_text().splitlines()]

    def download(self, testid: str, save_as=None) -> Path:
        with self.page.expect_download() as d:
            self.page.click(self.sel(testid))
        self.download_name = d.value.suggested_filename
        if save_as is None:
            return Path(d.value.path())
        d.value.save_as(save_as)
        return Path(save_as)

    def generate(self, prompt: str | None = None, timeout: int = 300_000, onnx: bool = False) -> tuple[str, str]:
        """(base answer, adapter answer) to the prompt in the compare panel; with `onnx`, ONNX
        Runtime Web's third answer too (its own tests ask for it: it exports the model first)."""
        if prompt is not None:
            self.page.fill(self.sel("gen-prompt"), prompt)
        self.page.set_checked(self.sel("gen-onnx"), onnx)
        self.page.evaluate("for (const id of ['adapter', 'onnx'])"
                           " document.querySelector(`[data-testid=gen-output-${id}]`).dataset.done = ''")
        self.page.click(self.sel("gen-run"))
        # (the third answer, ONNX Runtime Web's, comes last; the status is "ready" again after it)
        self.page.wait_for_function("document.querySelector('[data-testid=gen-output-adapter]').dataset.done === '1'"
                                    " && document.querySelector('[data-testid=gen-output-onnx]').dataset.done === '1'",
                                    timeout=timeout)
        return self.text("gen-output-base"), self.text("gen-output-adapter")
