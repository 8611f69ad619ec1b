"""An end-to-end check of the GPU path that runs unchanged in the browser worker and on CPython.

It uploads two matrices, runs the matmul kernel, reads the result back and compares it with a
pure-Python product (the browser has no numpy). The inputs are small multiples of 1/32, so every
partial sum is exact in float32: any correct kernel, on any adapter, returns the same bits.
"""

from __future__ import annotations

import hashlib
import struct
import time

from .gpu.device import Device
from .kernels import KernelLibrary
from .ops import Ops


def check_inputs(M: int, N: int, K: int) -> tuple[list[float], list[float]]:
    a = [((i * 7 + k * 3) % 9 - 4) / 4 for i in range(M) for k in range(K)]  # [M, K]
    b = [((j * 5 + k * 11) % 7 - 3) / 8 for j in range(N) for k in range(K)]  # [N, K]
    return a, b


def matmul_reference(a: list[float], b: list[float], M: int, N: int, K: int) -> list[float]:
    return [sum(a[i * K + k] * b[j * K + k] for k in range(K)) for i in range(M) for j in range(N)]


def pack_f32(values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def unpack_f32(data: bytes) -> list[float]:
    return list(struct.unpack(f"<{len(data) // 4}f", data))


async def matmul_check(device: Device, library: KernelLibrary, M: int = 37, N: int = 45, K: int = 70) -> dict:
    """Run wgsl/matmul.wgsl on [M,K]·[N,K]ᵀ and compare with the reference; returns a plain dict."""
    started = time.perf_counter()
    ops = Ops(device, {"matmul": await library.get("matmul")})
    a, b = check_inputs(M, N, K)
    A = device.create_buffer_with_data(pack_f32(a), label="check.A")
    B = device.create_buffer_with_data(pack_f32(b), label="check.B")
    C = device.create_buffer(M * N * 4, label="check.C")
    device.submit(ops.matmul(C, A, B, M, N, K))
    raw = await device.read_buffer(C)
    for buf in (A, B, C):
        device.destroy_buffer(buf)
    out = unpack_f32(raw)
    expected = matmul_reference(a, b, M, N, K)
    max_err = max(abs(x - y) for x, y in zip(out, expected))
    return {
        "kernel": "matmul",
        "shape": [M, N, K],
        "max_abs_error": max_err,
        "ok": max_err == 0.0,
        "sha256": hashlib.sha256(raw).hexdigest(),
        "output": out,
        "ms": round((time.perf_counter() - started) * 1000, 1),
    }
