"""The README's screenshots are made by tests/browser/screenshots.py: it runs here end to end (a
tiny model trained in the page, light and dark, 1280 px and 390 px), so it stays working."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser
pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[2]


def png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


def test_screenshots_at_1280_and_390_light_and_dark(tmp_path, site):
    # (its own process: pytest-playwright's browser already runs an event loop in this one)
    subprocess.run([sys.executable, "-m", "tests.browser.screenshots", str(tmp_path)], cwd=ROOT, check=True,
                   timeout=900)
    shots = {p.name: png_size(p) for p in tmp_path.glob("*.png")}
    for scheme in ("light", "dark"):
        assert shots[f"plan-{scheme}.png"][0] == shots[f"trained-{scheme}.png"][0] == 1280
        assert shots[f"trained-{scheme}-390.png"][0] == 390  # (and no sideways scroll: main checks it)
        assert shots[f"trained-{scheme}.png"][1] > 900  # the whole page
