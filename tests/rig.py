"""Shared pieces of the test rig (imported by conftest.py and by tests)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIST = ROOT / "dist"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--enable-unsafe-webgpu",
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
LOCAL = re.compile(r"^(https?://127\.0\.0\.1[:/]|blob:http://127\.0\.0\.1[:/]|data:|about:)")


class PageGuard:
    """Collects what must fail a browser test: page errors, console errors, outside requests."""

    def __init__(self, context, page, allow_console: tuple[str, ...] = ()):
        self.problems: list[str] = []
        self.allow_console = allow_console
        context.route(lambda url: not LOCAL.match(url), self._block)
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("console", self._console)

    def _block(self, route) -> None:
        self.problems.append(f"request left 127.0.0.1: {route.request.url}")
        route.abort()

    def _console(self, message) -> None:
        if message.type == "error" and not any(a in message.text for a in self.allow_console):
            self.problems.append(f"console error: {message.text}")

    def check(self) -> None:
        assert not self.problems, "\n".join(self.problems)


def wait_for_engine(page, timeout_ms: int = 120_000) -> str:
    """Wait until the engine is up (the GPU checked) or has failed; returns the status text."""
    page.wait_for_function(
        "document.querySelector('[data-testid=hw-info]').dataset.check !== undefined"
        " || document.querySelector('[data-testid=status]').dataset.state === 'error'", timeout=timeout_ms
    )
    page.wait_for_function("document.querySelector('[data-testid=status]').dataset.state !== 'busy'", timeout=timeout_ms)
    return page.inner_text("[data-testid=status]")


def wait_until_ready(page, timeout_ms: int = 600_000) -> None:
    """Wait until training can start (status "ready"); fails fast on a shown error."""
    page.wait_for_function(
        "(() => { const s = document.querySelector('[data-testid=status]');"
        " const e = document.querySelector('[data-testid=error]');"
        " return s.textContent.trim() === 'ready' || (!e.hidden && e.textContent.length > 0); })()", timeout=timeout_ms)
    error = page.locator("[data-testid=error]")
    assert error.is_hidden(), error.inner_text()


def drop_files(page, paths) -> None:
    """Drop files on the page as a person drags them from a file manager."""
    files = [(Path(p).name, list(Path(p).read_bytes())) for p in paths]
    handle = page.evaluate_handle("""(files) => {
        const dt = new DataTransfer();
        for (const [name, bytes] of files) dt.items.add(new File([new Uint8Array(bytes)], name));
        return dt; }""", files)
    page.dispatch_event("body", "drop", {"dataTransfer": handle})
