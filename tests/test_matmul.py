"""wgsl/matmul.wgsl against its numpy twin."""

from __future__ import annotations

import numpy as np
import pytest

from loralab import ref
from loralab.kernels import groups


def run_matmul(gpu, kernels, run, A: np.ndarray, B: np.ndarray) -> np.ndarray:
    (M, K), (N, _) = A.shape, B.shape
    kernel = run(kernels.get("matmul"))
    a = gpu.create_buffer_with_data(A.astype(np.float32).tobytes(), label="A")
    b = gpu.create_buffer_with_data(B.astype(np.float32).tobytes(), label="B")
    c = gpu.create_buffer(M * N * 4, label="C")
    grid = (groups(N, kernel.source.constant("TILE_N")), groups(M, kernel.source.constant("TILE_M")))
    gpu.submit([kernel.dispatch(gpu, grid, {"M": M, "N": N, "K": K}, A=a, B=b, C=c)])
    return np.frombuffer(run(gpu.read_buffer(c)), np.float32).reshape(M, N)


@pytest.mark.parametrize("M, N, K", [(1, 1, 1), (64, 64, 16), (37, 45, 70), (130, 200, 96), (8, 576, 576)])
def test_matmul_matches_numpy(gpu, kernels, run, M, N, K):
    rng = np.random.default_rng(M * 1000 + N + K)
    A = rng.standard_normal((M, K), dtype=np.float32)
    B = rng.standard_normal((N, K), dtype=np.float32)
    C = run_matmul(gpu, kernels, run, A, B)
    np.testing.assert_allclose(C, ref.matmul(A, B), rtol=1e-5, atol=1e-5 * np.sqrt(K))


def test_selftest_is_exact_natively(gpu, kernels, run):
    from loralab.selftest import matmul_check

    check = run(matmul_check(gpu, kernels))
    assert check["ok"] and check["max_abs_error"] == 0.0
