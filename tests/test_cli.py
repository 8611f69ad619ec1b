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


def test_the_torch_reference_trains_each_family_as_peft_names_its_modules():
    """bench --compare-torch's reference (on the CPU here): PEFT on every linear module, by the
    names of the family (GPT-2's Conv1D c_attn / c_proj / c_fc); unknown precisions refused."""
    import pytest

    pytest.importorskip("peft")
    from loralab.bench_torch import bench_torch_training

    gpt2 = {"architectures": ["GPT2LMHeadModel"], "vocab_size": 64, "n_embd": 32, "n_layer": 1, "n_head": 2,
            "n_positions": 32}
    result = bench_torch_training(gpt2, 1, 8, 1, 4, "fp32", warmup=1)
    assert result["tokens_per_s"] > 0 and result["loss"] > 0
    with pytest.raises(ValueError, match="fp8"):
        bench_torch_training(gpt2, 1, 8, 1, 4, "fp8")


def test_bench_timeline_prints_the_top_kernels_and_writes_a_chrome_trace(tmp_path):
    cmd = [sys.executable, "-m", "loralab.cli", "bench", "--config", "tiny", "--batch-size", "1", "--seq-len", "16",
           "--steps", "1", "--timeline", str(tmp_path / "t.json")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    step, kernels = rows[0], [r for r in rows if "timeline" in r]
    assert 0 < len(kernels) <= 12 and kernels == sorted(kernels, key=lambda r: -r["ms"])
    trace = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    dispatched = [e for e in trace if e["name"] not in ("copy", "timestamp")]
    assert len(dispatched) == step["dispatches_per_step"]  # every dispatch of the step, in order
    assert all(e["ph"] == "X" and e["dur"] >= 0 for e in trace)
    assert [e["ts"] for e in trace] == sorted(e["ts"] for e in trace)
    assert {r["kernel"] for r in kernels} <= {e["name"] for e in trace}
    assert sum(r["share"] for r in kernels) <= 1.0 + 1e-9
