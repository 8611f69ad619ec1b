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


def settle(coro):
    """The result of a coroutine that never waits on anything (a reader over local files), run
    to its end without an event loop: the tests that fuzz readers call it thousands of times,
    and Playwright's loop may already run on this thread."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("the coroutine waited on something; run it on an event loop")
