"""numpy twins of every WGSL kernel: same names, same argument order, float32 maths.

CPython only (tests, benchmarks); the browser never imports this module.
"""

from __future__ import annotations

import numpy as np


def matmul(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """C[M, N] = A[M, K] · B[N, K]ᵀ (wgsl/matmul.wgsl)."""
    return (A.astype(np.float32) @ B.astype(np.float32).T).astype(np.float32)
