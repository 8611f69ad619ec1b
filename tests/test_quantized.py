"""Frozen weights kept quantized on the GPU (QLoRA): quantizing at load against numpy
references written from the definitions (bitsandbytes' NF4, ggml's Q8_0 through gguf-py), and
every reader of a quantized weight (the tiled and thin matmuls, forward and transposed, the
embedding lookup) against float32 over the dequantized values."""

from __future__ import annotations

import numpy as np
import pytest

from loralab import ref
from loralab.ops import GGUF_TYPES, QUANT_DTYPES

gguf = pytest.importorskip("gguf")


def quantized(ops, arrays, dtype: str, w: np.ndarray):
    """w quantized on the GPU as `dtype` ("nf4" or "q8_32"), and the values its readers see."""
    rows, cols = w.shape
    packed = ops.quantized_buffer(dtype, rows, cols, "w")
    values = arrays.empty(rows * cols)
    arrays.submit(ops.quantize(packed, arrays.up(w), rows, cols), ops.dequantize(values, packed, rows, cols))
    return packed, arrays.down(values, (rows, cols))


@pytest.mark.parametrize("shape", [(8, 64), (5, 40), (3, 7)])
def test_nf4_matches_the_bitsandbytes_definition(ops, arrays, shape):
    rng = np.random.default_rng(sum(shape))
    w = (rng.standard_normal(shape) * 0.05).astype(np.float32)
    flat = w.reshape(-1)
    if flat.size > 128:
        flat[:64] = 0.0  # an all-zero block
    flat[flat.size // 2] = 0.0
    packed, values = quantized(ops, arrays, "nf4", w)
    codes, absmax = ref.nf4_quantize(w)
    np.testing.assert_array_equal(values.ravel(), ref.nf4_dequantize(codes, absmax))
    words = arrays.down(packed, (packed.size // 4,), "uint32")
    got = np.array([(words[e // 8] >> (4 * (e % 8))) & 15 for e in range(w.size)], np.uint8)
    np.testing.assert_array_equal(got, codes)
    # Values on a midpoint between two levels take the lower one, as bitsandbytes' `>` does.
    mids = ((ref.NF4_LEVELS[:-1].astype(np.float64) + ref.NF4_LEVELS[1:]) / 2).astype(np.float32)
    edge = np.concatenate([[1.0], mids, -mids]).astype(np.float32).reshape(1, -1)
    _, values = quantized(ops, arrays, "nf4", np.pad(edge, ((0, 0), (0, 64 - edge.shape[1]))))
    np.testing.assert_array_equal(values.ravel()[: edge.size], ref.nf4_dequantize(*ref.nf4_quantize(edge)))


def test_q8_0_matches_ggml_through_gguf_py(ops, arrays):
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((6, 96)) * rng.uniform(0.001, 2, (6, 1))).astype(np.float32)
    w[2] = 0.0
    w[3, 5] = 0.5 * w[3].max()  # exact halves after scaling exercise the rounding
    _, values = quantized(ops, arrays, "q8_32", w)
    blocks = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
    np.testing.assert_array_equal(values, gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q8_0))


@pytest.mark.parametrize("dtype", sorted(QUANT_DTYPES))
@pytest.mark.parametrize("M, N, K", [(150, 96, 64), (3, 64, 128), (40, 32, 256)])
def test_every_reader_sees_the_dequantized_values(ops, arrays, dtype, M, N, K):
    """x · Wᵀ (forward), dy · W (the input gradient, W read transposed) and the embedding lookup
    with W quantized equal float32 over W's dequantized values."""
    from tests.formats.test_gguf import BLOCKS, random_blocks

    rng = np.random.default_rng(M + N + K)
    kind = next((k for k, (_, d) in sorted(GGUF_TYPES.items()) if d == dtype and BLOCKS[k][0] <= K), None)
    if dtype == "nf4" or kind is None:
        packed, w = quantized(ops, arrays, "nf4" if dtype == "nf4" else "q8_32", rng.standard_normal((N, K)).astype(np.float32))
        if packed.dtype != dtype:
            pytest.skip(f"no GGUF type of {dtype} fits K = {K}")
    else:
        raw = random_blocks(kind, N * K // BLOCKS[kind][0], seed=N)
        packed = ops.quantized_buffer(dtype, N, K, "w")
        w_buf = arrays.empty(N * K)
        arrays.submit(ops.repack(packed, arrays.up(np.frombuffer(raw + bytes(-len(raw) % 4), np.uint8)), kind, N, K),
                      ops.dequantize(w_buf, packed, N, K))
        w = arrays.down(w_buf, (N, K))
    x = rng.standard_normal((M, K)).astype(np.float32)
    y = arrays.empty(M * N)
    arrays.submit(*ops.matmul(y, arrays.up(x), packed, M, N, K))
    np.testing.assert_allclose(arrays.down(y, (M, N)), ref.matmul(x, w), rtol=1e-5, atol=1e-5 * np.abs(w).max() * K)
    dy = rng.standard_normal((M, N)).astype(np.float32)
    dx = arrays.empty(M * K)
    arrays.submit(*ops.matmul(dx, arrays.up(dy), packed, M, K, N, trans_b=True))
    np.testing.assert_allclose(arrays.down(dx, (M, K)), dy @ w, rtol=1e-5, atol=1e-5 * np.abs(w).max() * N)
    ids = rng.integers(0, N, M).astype(np.uint32)
    out = arrays.empty(M * K)
    arrays.submit(ops.embedding(out, arrays.up(ids), packed, M, K, N))
    np.testing.assert_array_equal(arrays.down(out, (M, K)), w[ids])
