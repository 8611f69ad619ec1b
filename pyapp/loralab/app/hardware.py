"""The hardware panel: the WebGPU adapter, the kernel self-check, GPU memory and the speed benchmark."""

from __future__ import annotations

import json

from pyodide.ffi import jsnull  # type: ignore[import-not-found]
from pyscript import document  # type: ignore[import-not-found]

from ..presets import duration
from . import client
from .page import el, mib, rate, refresh_status, render_rows


def render_hw_info(adapter: dict, check: dict) -> None:
    limits = adapter["limits"]
    render_rows("hw-info", [
        ("Adapter", f"{adapter['vendor'] or '?'} · {adapter['architecture'] or '?'}"),
        ("Device", adapter["device"] or adapter["description"] or "not reported by the browser"),
        ("shader-f16", "yes" if adapter["f16"] else "no"),
        ("subgroups", "yes" if adapter["subgroups"] else "no"),
        ("Max storage binding", mib(limits.get("maxStorageBufferBindingSize"))),
        ("Max buffer", mib(limits.get("maxBufferSize"))),
        ("Workgroup storage", f"{(limits.get('maxComputeWorkgroupStorageSize') or 0) // 1024} KiB"),
        ("Invocations / workgroup", str(limits.get("maxComputeInvocationsPerWorkgroup"))),
        ("Kernel check", "a {}×{} by {}×{} matrix product: {} (largest error {:.1e}, took {})".format(
            check["shape"][0], check["shape"][2], check["shape"][2], check["shape"][1],
            "verified against the CPU" if check["ok"] else "WRONG", check["max_abs_error"], duration(check["ms"] / 1000))),
    ])
    hw = el("hw-info")
    hw.dataset.vendor = adapter["vendor"]
    hw.dataset.architecture = adapter["architecture"]
    hw.dataset.check = json.dumps({k: check[k] for k in ("ok", "sha256", "max_abs_error", "shape")})


async def on_bench(event) -> None:
    """The training step benchmark (LoRA r = 8 on every projection, AdamW) on this GPU."""
    el("hw-bench-result").textContent = "measuring…"
    result = await client.busy_call("Measuring the training speed…", "bench_step", {
        "config": el("hw-bench-config").value, "steps": 5, "rank": 8,
        "batch_size": int(float(el("hw-bench-batch").value or 4)), "seq_len": int(float(el("hw-bench-seq").value or 128))})
    node = el("hw-bench-result")
    if result:
        node.textContent = (f"{result['config']}, {result['batch_size']} × {result['seq_len']} tokens: "
                            f"{result['tokens_per_s']:,.0f} tokens/s, {result['ms_per_step']:,.1f} ms per step "
                            f"({result['host_ms_per_step']:,.2f} ms of it on the CPU, encoding and submitting), "
                            f"{result['dispatches_per_step']:.0f} dispatches in {result['submits_per_step']:.0f} "
                            f"submit(s) per step, peak GPU memory {mib(result['peak_gpu_bytes'])}")
        node.dataset.result = json.dumps(result)
    else:
        node.textContent = ""
    refresh_status()


async def show_gpu_status() -> None:
    result = await client.call("gpu_status", background=True)
    if result:
        rows = [("GPU memory in use", mib(result["allocated_bytes"])), ("Peak GPU memory", mib(result["peak_bytes"]))]
        if result["gflops"]:
            rows.append(("Measured matmul", rate(result["gflops"])))
        dl = el("hw-info")
        for name, value in rows:
            existing = dl.querySelector(f'dd[data-row="{name}"]')
            if existing is None or existing is jsnull:
                dt, existing = document.createElement("dt"), document.createElement("dd")
                dt.textContent = name
                existing.dataset.row = name
                dl.append(dt, existing)
            existing.textContent = value
