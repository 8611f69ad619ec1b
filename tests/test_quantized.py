"""Frozen weights kept quantized on the GPU (QLoRA): quantizing at load against numpy
references written from the definitions (bitsandbytes' NF4, ggml's Q8_0 through gguf-py), and
every reader of a quantized weight (the tiled and thin matmuls, forward and transposed, the
embedding lookup) against float32 over the dequantized values."""

from __future__ import annotations

import numpy as np
import pytest

from loralab import ref
from loralab.ops import QUANT_DTYPES

gguf = pytest.importorskip("gguf")


def quantized(ops, arrays, dtype: str, w: np.ndarray):
    """w quantized on the GPU as `dtype` ("nf4" or "q8_0"), and the values its readers see."""
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
    _, values = quantized(ops, arrays, "q8_0", w)
    blocks = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
    np.testing.assert_array_equal(values, gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q8_0))


@pytest.mark.parametrize("dtype", sorted(QUANT_DTYPES))
@pytest.mark.parametrize("M, N, K", [(150, 96, 64), (3, 64, 128), (40, 32, 256)])
def test_every_reader_sees_the_dequantized_values(ops, arrays, dtype, M, N, K):
    """x · Wᵀ (forward), dy · W (the input gradient, W read transposed) and the embedding lookup
    with W quantized equal float32 over W's dequantized values."""
    from tests.formats.test_gguf import BLOCKS, random_blocks

    rng = np.random.default_rng(M + N + K)
    kind = dtype.upper()
    if dtype == "nf4" or (dtype == "q8_0" and M != 3):  # quantized at load (Q8_0 repacked at M = 3)
        packed, w = quantized(ops, arrays, dtype, rng.standard_normal((N, K)).astype(np.float32))
    elif BLOCKS[kind][0] > K:
        pytest.skip(f"{kind}'s blocks are longer than K = {K}")
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


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0"])
@pytest.mark.parametrize("rows, cols, head_dim", [(6, 96, 0), (8, 64, 4), (3, 32, 0)])
def test_to_ggml_writes_the_blocks_gguf_py_quantizes(ops, arrays, kind, rows, cols, head_dim):
    """Merged exports re-quantized: ggml's reference quantizers (through gguf-py), byte for
    byte, with llama.cpp's q/k row order when head_dim is given."""
    from loralab.ops import ggml_bytes

    rng = np.random.default_rng(rows * cols)
    w = (rng.standard_normal((rows, cols)) * rng.uniform(0.001, 2, (rows, 1))).astype(np.float32)
    w[1] = 0.0  # all-zero blocks
    w[2, 3] = -4 * np.abs(w[2]).max()  # a negative extreme sets Q4_0's d
    out = arrays.gpu.create_buffer(ggml_bytes(kind, w.size, pairs=True), label="blocks")
    arrays.submit(ops.to_ggml(out, arrays.up(w), kind, rows, cols, head_dim))
    got = arrays.down(out, (out.size,), "uint8")[: ggml_bytes(kind, w.size)]
    order = w
    if head_dim:  # GGUF row h·D + 2j + s holds row h·D + s·D/2 + j
        order = w.reshape(rows // head_dim, 2, head_dim // 2, cols).swapaxes(1, 2).reshape(rows, cols)
    want = gguf.quants.quantize(order, getattr(gguf.GGMLQuantizationType, kind))
    np.testing.assert_array_equal(got, want.reshape(-1))
