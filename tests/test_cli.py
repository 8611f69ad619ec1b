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


def test_bench_prints_the_step_and_kernel_figures():
    """`loralab bench --kernels`: the step's JSON line (the issue's fields), then matmul, attention
    and loss-kernel rows at the model's shapes; --attention picks the attention kernels."""
    cmd = [sys.executable, "-m", "loralab.cli", "bench", "--config", "tiny", "--batch-size", "2", "--seq-len", "32",
           "--steps", "2", "--kernels", "--attention", "tiled"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    step = rows[0]
    for key in ("tokens_per_s", "ms_per_step", "dispatches_per_step", "submits_per_step", "peak_gpu_bytes", "adapter"):
        assert step[key], key
    assert step["submits_per_step"] == 1 and step["attention"] == "tiled"
    ops = [r.get("op") for r in rows[1:]]
    assert ops.count("matmul") == 5 and "attention" in ops and "cross_entropy" in ops
    attention = next(r for r in rows if r.get("op") == "attention")
    assert attention["kernels"] == "tiled" and attention["forward_gflops"] > 0 and attention["backward_gflops"] > 0
    assert next(r for r in rows if r.get("op") == "cross_entropy")["gbps"] > 0
