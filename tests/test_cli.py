"""The `loralab` console script on the native GPU."""

from __future__ import annotations

import json
import subprocess
import sys


def test_info_reports_adapter_and_verified_kernel():
    out = subprocess.run([sys.executable, "-m", "loralab.cli", "info"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["adapter"]["driver"] == "native"
    assert result["check"]["ok"] is True
