"""Every kernel against its numpy twin in loralab.ref, at odd sizes (not multiples of a tile).

Tolerances are explicit: float32 kernels vs float32/float64 numpy, so they scale with the
length of the reductions involved.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from loralab import ref
from loralab.errors import UsageError
from loralab.train import step_scalars

RTOL = 1e-5


def rng(*key):
    """A generator seeded by the key (crc32, not hash(): str hashes change from run to run)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("M, N, K", [(1, 1, 1), (37, 45, 70), (130, 67, 96), (8, 576, 576), (140, 192, 80)])
def test_matmul_transposes(ops, arrays, M, N, K, trans_a, trans_b):
    r = rng("mm", M, N, K, trans_a, trans_b)
    A = r.standard_normal((M, K), dtype=np.float32)
    B = r.standard_normal((N, K), dtype=np.float32)
    C0 = r.standard_normal((M, N), dtype=np.float32)
    a = arrays.up(A.T.copy() if trans_a else A)
    b = arrays.up(B.T.copy() if trans_b else B)
    c = arrays.up(C0)
    arrays.submit(ops.matmul(c, a, b, M, N, K, trans_a=trans_a, trans_b=trans_b, alpha=0.5, beta=1.0))
    np.testing.assert_allclose(arrays.down(c, (M, N)), 0.5 * ref.matmul(A, B) + C0, rtol=1e-5, atol=1e-5 * np.sqrt(K))


@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (False, True), (True, False)])
@pytest.mark.parametrize("M, N, K, splits", [(140, 192, 80, 1), (300, 260, 1000, 1), (130, 140, 2000, 3)])
def test_matmul_in_float16_arithmetic(ops, arrays, run, M, N, K, splits, trans_a, trans_b):
    """The tiled products with precision "mixed" (matmul_f16.wgsl): float16 products summed in
    float32 per 16-wide step of K, with the second product (LoRA's) riding along; within float16's
    rounding of the operands (2⁻¹¹ each) of the float64 product."""
    if "shader-f16" not in ops.device.info.features:
        pytest.skip("this adapter lacks shader-f16")
    run(ops.prepare(mixed=True))
    mixed = ops.with_precision("mixed")
    r = rng("mm16", M, N, K, trans_a, trans_b)
    A, B = r.standard_normal((M, K), dtype=np.float32), r.standard_normal((N, K), dtype=np.float32)
    U, V = r.standard_normal((M, 8), dtype=np.float32), r.standard_normal((N, 8), dtype=np.float32)
    C0 = r.standard_normal((M, N), dtype=np.float32)
    c = arrays.up(C0)
    from loralab.ops import Product

    d = mixed.matmul(c, arrays.up(A.T.copy() if trans_a else A), arrays.up(B.T.copy() if trans_b else B), M, N, K,
                     trans_a=trans_a, trans_b=trans_b, alpha=0.5, beta=1.0, splits=splits,
                     plus=Product(arrays.up(U), arrays.up(V), 8, alpha=0.25))
    assert d[0].kernel == "matmul_f16" and d[0].grid[2] == splits
    arrays.submit(d)
    want = 0.5 * ref.matmul(A, B) + 0.25 * ref.matmul(U, V) + C0
    bound = 2 * 2.0 ** -11 * 0.5 * (np.abs(A) @ np.abs(B).T) + 1e-3
    assert (np.abs(arrays.down(c, (M, N)) - want) <= bound).all()
    assert ops.matmul(c, arrays.up(A), arrays.up(B), M, N, K)[0].kernel == "matmul"  # (the f32 kernels untouched)


@pytest.mark.parametrize("splits", [2, 5])
@pytest.mark.parametrize("trans_a, trans_b, beta", [(False, False, 0.0), (True, True, 1.0)])
def test_matmul_split_k(ops, arrays, splits, trans_a, trans_b, beta):
    M, N, K = 20, 70, 333
    r = rng("split", splits, trans_a)
    A = r.standard_normal((M, K), dtype=np.float32)
    B = r.standard_normal((N, K), dtype=np.float32)
    C0 = r.standard_normal((M, N), dtype=np.float32)
    c = arrays.up(C0)
    d = ops.matmul(c, arrays.up(A.T.copy() if trans_a else A), arrays.up(B.T.copy() if trans_b else B), M, N, K,
                   trans_a=trans_a, trans_b=trans_b, alpha=0.5, beta=beta, splits=splits)
    assert len(d) == 2 and d[0].grid[2] == splits
    arrays.submit(d)
    np.testing.assert_allclose(arrays.down(c, (M, N)), 0.5 * ref.matmul(A, B) + beta * C0, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("M, N, K, splits, expected", [(300, 260, 500, 3, ["matmul", "matmul_reduce4"]),
                                                      (300, 8, 64, None, ["copy", "matmul_rows"])])
@pytest.mark.parametrize("residual", [False, True])
def test_matmul_with_a_residual(ops, arrays, M, N, K, splits, expected, residual):
    """c_in: the beta term reads the residual and C is only written (y = residual + x·Wᵀ, no copy
    first), also through a split product's reduction (four elements per invocation,
    matmul_reduce4); kernels without a residual input get a copy first."""
    r = rng("split4", residual, N)
    A, B = r.standard_normal((M, K), dtype=np.float32), r.standard_normal((N, K), dtype=np.float32)
    C0, R0 = r.standard_normal((M, N), dtype=np.float32), r.standard_normal((M, N), dtype=np.float32)
    c = arrays.up(C0)
    d = ops.matmul(c, arrays.up(A), arrays.up(B), M, N, K, alpha=0.5, beta=1.0, splits=splits,
                   c_in=arrays.up(R0) if residual else None)
    assert [getattr(x, "kernel", "copy") for x in d] == (expected if residual else [k for k in expected if k != "copy"])
    arrays.submit(d)
    np.testing.assert_allclose(arrays.down(c, (M, N)), 0.5 * ref.matmul(A, B) + (R0 if residual else C0),
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("splits", [None, 2])
def test_matmul_fused_projections_in_blocks(ops, arrays, splits):
    """Blocks: q, k, v as one product. Forward: C's column blocks are three row-major outputs one
    after the other, and the second product (LoRA's u · Bᵀ) is block-diagonal. Backward: A's K
    blocks are three inputs one after the other, the second product's blocks all meet C."""
    from loralab.ops import Blocks, Product

    M, K, r, widths = 150, 64, 4, (96, 32, 32)
    bounds = (widths[0], widths[0] + widths[1])
    N = sum(widths)
    g = rng("blocks", splits)
    x = g.standard_normal((M, K), dtype=np.float32)
    W = [g.standard_normal((w, K), dtype=np.float32) for w in widths]
    u = [g.standard_normal((M, r), dtype=np.float32) for _ in widths]
    Bl = [g.standard_normal((w, r), dtype=np.float32) for w in widths]
    pad = 64  # B's blocks sit in one buffer with gaps, as in LoRA's flat parameters
    flat, offsets = [], []
    for b in Bl:
        offsets.append(sum(a.size for a in flat))
        flat += [b.ravel(), np.zeros(pad, np.float32)]
    c = arrays.empty(M * N)
    d = ops.matmul(c, arrays.up(x), arrays.up(np.concatenate(W)), M, N, K, alpha=0.5, splits=splits,
                   plus=Product(arrays.up(np.concatenate([a.ravel() for a in u])), arrays.up(np.concatenate(flat)),
                                3 * r, alpha=1.5),
                   blocks=Blocks(n=bounds, r=r, a2_block=M * r, b2_offsets=tuple(offsets), b2_strides=(r, 1),
                                 b2_diagonal=True))
    arrays.submit(d)
    got = arrays.down(c, (M * N,))
    at = 0
    for Wg, ug, Bg, w in zip(W, u, Bl, widths):
        expected = 0.5 * ref.matmul(x, Wg) + 1.5 * ref.matmul(ug, Bg)
        np.testing.assert_allclose(got[at:at + M * w].reshape(M, w), expected, rtol=1e-5, atol=1e-4)
        at += M * w

    # backward: dx = Σ_g dy_g · W_g + Σ_g du_g · A_g
    dy = [g.standard_normal((M, w), dtype=np.float32) for w in widths]
    Al = [g.standard_normal((r, K), dtype=np.float32) for _ in widths]
    flat, offsets = [], []
    for a in Al:
        offsets.append(sum(b.size for b in flat))
        flat += [a.ravel(), np.zeros(pad, np.float32)]
    dx = arrays.empty(M * K)
    d = ops.matmul(dx, arrays.up(np.concatenate([a.ravel() for a in dy])), arrays.up(np.concatenate(W)), M, K, N,
                   trans_b=True, splits=splits,
                   plus=Product(arrays.up(np.concatenate([a.ravel() for a in u])), arrays.up(np.concatenate(flat)),
                                3 * r, alpha=2.0),
                   blocks=Blocks(k=bounds, r=r, a2_block=M * r, b2_offsets=tuple(offsets), b2_strides=(1, K)))
    arrays.submit(d)
    expected = sum(ref.matmul(a, Wg.T) + 2.0 * ref.matmul(ug, Ag.T) for a, Wg, ug, Ag in zip(dy, W, u, Al))
    np.testing.assert_allclose(arrays.down(dx, (M, K)), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("M, N, K, trans_a, trans_b", [(8, 70, 333, True, True), (70, 8, 333, True, True),
                                                      (8, 72, 333, True, True), (72, 8, 333, True, True),
                                                      (20, 40, 300, False, False)])
def test_matmul_into_slices_accumulates_each_split(ops, arrays, M, N, K, trans_a, trans_b):
    """slices = (S, stride): split z of K adds alpha · (its part of the product) to C + z·stride
    (beta = 1), one dispatch; a split past K adds nothing. The slices sum to the whole product."""
    S, stride = 7, M * N + 13  # 7 splits of 48 (thin) or 64 (tiled) k: some lie past K = 333
    r = rng("slices", M, N, K)
    A = r.standard_normal((M, K), dtype=np.float32)
    B = r.standard_normal((N, K), dtype=np.float32)
    C0 = r.standard_normal((S, stride), dtype=np.float32)
    c = arrays.up(C0)
    d = ops.matmul(c, arrays.up(A.T.copy() if trans_a else A), arrays.up(B.T.copy() if trans_b else B), M, N, K,
                   trans_a=trans_a, trans_b=trans_b, alpha=0.5, beta=1.0, slices=(S, stride))
    assert len(d) == 1 and d[0].grid[2] == S
    arrays.submit(d)
    got = arrays.down(c, (S, stride))
    np.testing.assert_array_equal(got[:, M * N:], C0[:, M * N:])  # nothing outside the slices
    parts = got[:, : M * N] - C0[:, : M * N]
    np.testing.assert_allclose(parts.sum(0).reshape(M, N), 0.5 * ref.matmul(A, B), rtol=1e-4, atol=1e-4)
    if d[0].kernel == "matmul_thin":  # 64-long K tiles, so the 7th split (k ≥ 384) lies past K
        assert not parts[-1].any()


def test_sum_slices(ops, arrays):
    S, n = 5, 1000
    parts = rng("sum_slices").standard_normal((S, n), dtype=np.float32)
    out = arrays.up(np.full(n, 7.0, np.float32))
    arrays.submit(ops.sum_slices(out, arrays.up(parts), S, n))
    np.testing.assert_allclose(arrays.down(out, (n,)), parts.sum(0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("M, N, K, K2", [(130, 257, 70, 8), (33, 200, 600, 40), (300, 140, 160, 3)])
@pytest.mark.parametrize("trans_b, trans_b2, splits, beta", [(False, False, None, 0.0), (True, True, None, 1.0),
                                                               (False, True, 3, 1.0)])
def test_matmul_with_a_second_product(ops, arrays, M, N, K, K2, trans_b, trans_b2, splits, beta):
    """C = alpha · A·Bᵀ + alpha2 · A2·B2ᵀ + beta · C in one pass (LoRA's up-projection on the
    frozen weight's product), split-K too: only the first split adds the second product."""
    from loralab.ops import Product

    r = rng("plus", M, N, K, trans_b, splits)
    A, B = r.standard_normal((M, K), dtype=np.float32), r.standard_normal((N, K), dtype=np.float32)
    A2, B2 = r.standard_normal((M, K2), dtype=np.float32), r.standard_normal((N, K2), dtype=np.float32)
    C0 = r.standard_normal((M, N), dtype=np.float32)
    c = arrays.up(C0)
    plus = Product(arrays.up(A2), arrays.up(B2.T.copy() if trans_b2 else B2), K2, trans_b=trans_b2, alpha=1.5)
    d = ops.matmul(c, arrays.up(A), arrays.up(B.T.copy() if trans_b else B), M, N, K, trans_b=trans_b, alpha=0.5,
                   beta=beta, splits=splits, plus=plus)
    assert d[0].kernel == "matmul" and (len(d) == 2 or not splits)
    arrays.submit(d)
    expected = 0.5 * ref.matmul(A, B) + 1.5 * ref.matmul(A2, B2) + beta * C0
    np.testing.assert_allclose(arrays.down(c, (M, N)), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("M, N, K", [(8, 300, 77), (300, 5, 50), (16, 129, 1000), (700, 12, 2000), (1, 1, 3)])
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, True), (False, True)])
def test_matmul_thin_products(ops, arrays, M, N, K, trans_a, trans_b):
    """≤ 16 rows or columns: matmul_thin.wgsl (columns by computing the transpose), split-K when long;
    ≤ 16 columns of rows read along K (and K a multiple of 4): matmul_rows.wgsl; both operands
    read across K (weight gradients) and the wide side a multiple of 4: matmul_cols.wgsl."""
    r = rng("thin", M, N, K, trans_a, trans_b)
    A = r.standard_normal((M, K), dtype=np.float32)
    B = r.standard_normal((N, K), dtype=np.float32)
    C0 = r.standard_normal((M, N), dtype=np.float32)
    c = arrays.up(C0)
    d = ops.matmul(c, arrays.up(A.T.copy() if trans_a else A), arrays.up(B.T.copy() if trans_b else B), M, N, K,
                   trans_a=trans_a, trans_b=trans_b, alpha=0.5, beta=1.0)
    rows = N <= 16 < M and not trans_a and K % 4 == 0
    cols = trans_a and trans_b and M > 1 and (M <= 16 and N % 4 == 0 or N <= 16 and M % 4 == 0)
    assert d[0].kernel == ("matmul_rows" if rows else "matmul_cols" if cols else "matmul_thin")
    arrays.submit(d)
    np.testing.assert_allclose(arrays.down(c, (M, N)), 0.5 * ref.matmul(A, B) + C0, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("T, R, K", [(4096, 8, 576), (37, 1, 4), (300, 5, 260), (33, 12, 1536), (17, 16, 1000),
                                     (1000, 4, 64)])
@pytest.mark.parametrize("trans_b, beta", [(False, 0.0), (True, 1.0)])
def test_matmul_rows(ops, arrays, T, R, K, trans_b, beta):
    """C[T, R ≤ 16] = alpha · X · op(W)ᵀ + beta · C with X's rows contiguous (x·Aᵀ, dy·B): K walked
    in 256-long chunks, rows past T and k past K masked, W read either way."""
    r = rng("rows", T, R, K, trans_b)
    X = r.standard_normal((T, K), dtype=np.float32)
    W = r.standard_normal((R, K), dtype=np.float32)
    C0 = r.standard_normal((T, R), dtype=np.float32)
    c = arrays.up(C0)
    d = ops.matmul(c, arrays.up(X), arrays.up(W.T.copy() if trans_b else W), T, R, K, trans_b=trans_b, alpha=0.5,
                   beta=beta)
    assert [x.kernel for x in d] == ["matmul_rows"]
    arrays.submit(d)
    np.testing.assert_allclose(arrays.down(c, (T, R)), 0.5 * ref.matmul(X, W) + beta * C0, rtol=1e-5,
                               atol=1e-5 * np.sqrt(K))


@pytest.mark.parametrize("M, N, K, splits", [(8, 576, 4096, None), (576, 8, 300, None), (5, 64, 17, 1),
                                             (16, 1000, 2000, 3), (12, 4, 50, None), (2, 8, 1, None)])
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_matmul_cols(ops, arrays, M, N, K, splits, beta):
    """Both operands stored K-major ([K, M] and [K, N]), one side ≤ 16: weight gradients through
    matmul_cols.wgsl, split over K and reduced when long, transposed output when N is the small side."""
    r = rng("cols", M, N, K)
    A = r.standard_normal((M, K), dtype=np.float32)
    B = r.standard_normal((N, K), dtype=np.float32)
    C0 = r.standard_normal((M, N), dtype=np.float32)
    c = arrays.up(C0)
    d = ops.matmul(c, arrays.up(A.T.copy()), arrays.up(B.T.copy()), M, N, K, trans_a=True, trans_b=True, alpha=0.5,
                   beta=beta, splits=splits)
    assert d[0].kernel == "matmul_cols" and len(d) == (1 if d[0].grid[2] == 1 else 2)
    arrays.submit(d)
    np.testing.assert_allclose(arrays.down(c, (M, N)), 0.5 * ref.matmul(A, B) + beta * C0, rtol=1e-5,
                               atol=1e-5 * np.sqrt(K))


def to_f16_buffer(ops, arrays, x):
    """x as packed float16 pairs on the GPU (through the to_f16 kernel), and x rounded to f16."""
    flat = arrays.up(x.astype(np.float32))
    packed = ops.device.create_buffer(-(-x.size // 2) * 4, label="f16")
    packed.dtype = "f16"
    arrays.submit(ops.to_f16(packed, flat, x.size))
    return packed, x.astype(np.float16).astype(np.float32)


def test_to_f16_rounds_like_numpy(ops, arrays):
    x = rng("f16").standard_normal(1001).astype(np.float32) * 100
    packed, rounded = to_f16_buffer(ops, arrays, x)
    got = np.frombuffer(arrays.down(packed, (501,), "uint32").tobytes(), np.float16)[:1001].astype(np.float32)
    np.testing.assert_array_equal(got, rounded)


@pytest.mark.parametrize("N, K, r", [(37, 70, 3), (130, 200, 8), (1, 5, 1)])
def test_dora_kernels_like_numpy(ops, arrays, N, K, r):
    """DoRA's weight norm (with the adapter, without it, over float16 weights), the magnitude over
    the direction (per column with a residual and bias, per row), and the magnitude's gradient
    (written and accumulated)."""
    g = rng("dora")
    W = g.standard_normal((N, K)).astype(np.float32)
    A, B = g.standard_normal((r, K)).astype(np.float32), g.standard_normal((N, r)).astype(np.float32)
    n = arrays.empty(N)
    arrays.submit(ops.dora_norm(n, arrays.up(W), arrays.up(A), arrays.up(B), N, K, r, 0.7))
    np.testing.assert_allclose(arrays.down(n, (N,)), ref.dora_norm(W, A, B, 0.7), rtol=1e-5)
    arrays.submit(ops.dora_norm(n, arrays.up(W), None, None, N, K))
    np.testing.assert_allclose(arrays.down(n, (N,)), ref.dora_norm(W), rtol=1e-5)
    packed, W16 = to_f16_buffer(ops, arrays, W)
    arrays.submit(ops.dora_norm(n, packed, arrays.up(A), arrays.up(B), N, K, r, 0.7))
    np.testing.assert_allclose(arrays.down(n, (N,)), ref.dora_norm(W16, A, B, 0.7), rtol=1e-5)

    T = 29
    m, norms = g.uniform(0.5, 2, N).astype(np.float32), g.uniform(0.5, 2, N).astype(np.float32)
    x, res, bias = (g.standard_normal((T, N)).astype(np.float32), g.standard_normal((T, N)).astype(np.float32),
                    g.standard_normal(N).astype(np.float32))
    y = arrays.empty(T * N)
    mb, nb = arrays.up(m), arrays.up(norms)
    arrays.submit(ops.dora_scale(y, arrays.up(x), mb, nb, T, N, res=arrays.up(res), bias=arrays.up(bias)))
    np.testing.assert_allclose(arrays.down(y, (T, N)), ref.dora_scale(x, m, norms, res=res, bias=bias), rtol=1e-6,
                               atol=1e-6)
    rows = arrays.empty(N * K)
    arrays.submit(ops.dora_scale(rows, arrays.up(W), mb, nb, N, K, by_row=True))
    np.testing.assert_allclose(arrays.down(rows, (N, K)), ref.dora_scale(W, m, norms, by_row=True), rtol=1e-6)

    dy, p = g.standard_normal((T, N)).astype(np.float32), g.standard_normal((T, N)).astype(np.float32)
    dm = arrays.empty(N)
    arrays.submit(ops.dora_grad(dm, arrays.up(dy), arrays.up(p), nb, T, N))
    np.testing.assert_allclose(arrays.down(dm, (N,)), ref.dora_grad(dy, p, norms), rtol=1e-4, atol=1e-5)
    arrays.submit(ops.dora_grad(dm, arrays.up(dy), arrays.up(p), nb, T, N, accumulate=True))
    np.testing.assert_allclose(arrays.down(dm, (N,)), 2 * ref.dora_grad(dy, p, norms), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("N, K", [(5, 64), (3, 96), (7, 70), (2, 32)])
def test_quantize_nbits_like_numpy(ops, arrays, N, K):
    """MatMulNBits' 4-bit blocks (ONNX export): codes, scales and zero points as ref.quantize_nbits,
    with an odd number of blocks per row (a zero-point byte's high nibble unused), K past the last
    whole block, an all-zero block and an all-positive one; codes may differ only at rounding ties."""
    w = rng("nbits").standard_normal((N, K)).astype(np.float32)
    w[0, :32] = 0.0
    w[-1, :32] = np.abs(w[-1, :32]) + 0.5
    blocks = -(-K // 32)
    zp_row = -(-blocks // 2)
    q, scales, zp = arrays.empty(N * blocks * 4), arrays.empty(N * blocks), arrays.empty(N * zp_row)
    arrays.submit(ops.quantize_nbits(q, scales, zp, arrays.up(w), N, K))
    codes = arrays.down(q, (N, blocks, 16), "uint8")
    codes = np.stack([codes & 15, codes >> 4], -1).reshape(N, blocks, 32)
    points = arrays.down(zp, (N, zp_row), "uint32")
    q_ref, s_ref, z_ref = ref.quantize_nbits(w)
    np.testing.assert_allclose(arrays.down(scales, (N, blocks)), s_ref, rtol=1e-6)
    assert (points < 256).all()
    assert ((points & 15) == z_ref[:, 0::2]).all() and ((points >> 4)[:, : blocks // 2] == z_ref[:, 1::2]).all()
    padded = np.zeros((N, blocks * 32), np.float32)
    padded[:, :K] = w
    ratio = padded.reshape(N, blocks, 32) / np.where(s_ref > 0, s_ref, 1)[..., None]
    tie = np.abs(np.abs(ratio % 1) - 0.5) < 1e-4
    assert (codes == q_ref)[~tie].all() and (np.abs(codes.astype(int) - q_ref) <= 1).all()
    assert (codes[0, 0] == 0).all() and s_ref[0, 0] == 0 and z_ref[0, 0] == 0


@pytest.mark.parametrize("M, N, K, trans_b", [(37, 45, 70, False), (130, 67, 96, True), (5, 300, 64, False),
                                              (300, 3, 50, True)])
def test_matmul_with_float16_weights(ops, arrays, M, N, K, trans_b):
    """B (the weight operand) stored as float16 pairs: exact products of the rounded weights."""
    r = rng("mm16", M, N, K)
    A = r.standard_normal((M, K), dtype=np.float32)
    W = r.standard_normal((N, K), dtype=np.float32)
    packed, W16 = to_f16_buffer(ops, arrays, W.T.copy() if trans_b else W)
    c = arrays.empty(M * N)
    arrays.submit(ops.matmul(c, arrays.up(A), packed, M, N, K, trans_b=trans_b))
    want = ref.matmul(A, W16.T if trans_b else W16)
    np.testing.assert_allclose(arrays.down(c, (M, N)), want, rtol=1e-5, atol=1e-4)


def test_embedding_with_float16_table(ops, arrays):
    T, C, V = 11, 33, 40
    table = rng("emb16").standard_normal((V, C), dtype=np.float32)
    ids = rng("ids16").integers(0, V, T).astype(np.uint32)
    packed, table16 = to_f16_buffer(ops, arrays, table)
    out = arrays.empty(T * C)
    arrays.submit(ops.embedding(out, arrays.up(ids), packed, T, C, V))
    np.testing.assert_array_equal(arrays.down(out, (T, C)), ref.embedding(ids, table16))


def test_matmul_splits_long_thin_products_by_itself(ops):
    a = ops.device.create_buffer(8 * 4096 * 4, label="a")
    b = ops.device.create_buffer(576 * 4096 * 4, label="b")
    c = ops.device.create_buffer(8 * 576 * 4, label="c")
    assert len(ops.matmul(c, a, b, 8, 576, 4096, trans_a=True, trans_b=True)) == 2  # LoRA's dA: split
    assert len(ops.matmul(b, a, c, 4096, 576, 8)) == 1  # short K: not split


def test_matmul_selftest_is_exact(gpu, kernels, run):
    from loralab.selftest import matmul_check

    check = run(matmul_check(gpu, kernels))
    assert check["ok"] and check["max_abs_error"] == 0.0


@pytest.mark.parametrize("T, C", [(1, 7), (5, 64), (33, 300)])
def test_rmsnorm_forward_and_backward(ops, arrays, T, C):
    r = rng("rms", T, C)
    x = r.standard_normal((T, C), dtype=np.float32)
    w = r.standard_normal(C, dtype=np.float32)
    dy = r.standard_normal((T, C), dtype=np.float32)
    dx0 = r.standard_normal((T, C), dtype=np.float32)
    bx, bw, bdy = arrays.up(x), arrays.up(w), arrays.up(dy)
    y, rstd, dx = arrays.empty(T * C), arrays.empty(T), arrays.up(dx0)
    arrays.submit(ops.rmsnorm(y, rstd, bx, bw, T, C, 1e-5), ops.rmsnorm_backward(dx, bx, bw, rstd, bdy, T, C, accumulate=True))
    y_ref, rstd_ref = ref.rmsnorm(x, w, 1e-5)
    np.testing.assert_allclose(arrays.down(y, (T, C)), y_ref, rtol=RTOL, atol=1e-5)
    np.testing.assert_allclose(arrays.down(rstd, (T,)), rstd_ref, rtol=RTOL)
    np.testing.assert_allclose(arrays.down(dx, (T, C)), dx0 + ref.rmsnorm_backward(x, w, rstd_ref, dy), rtol=1e-4, atol=1e-5)


def test_rmsnorm_with_gemmas_offset_and_a_residual(ops, arrays):
    """Gemma's (1 + w), and y = residual + norm(x) for the norms after attention and the MLP."""
    T, C = 5, 48
    r = rng("rms1", T, C)
    x, res, dy = (r.standard_normal((T, C), dtype=np.float32) for _ in range(3))
    w = 0.1 * r.standard_normal(C, dtype=np.float32)
    bx, bw = arrays.up(x), arrays.up(w)
    y, rstd, dx = arrays.empty(T * C), arrays.empty(T), arrays.empty(T * C)
    arrays.submit(ops.rmsnorm(y, rstd, bx, bw, T, C, 1e-6, w_offset=1.0, residual=arrays.up(res)),
                  ops.rmsnorm_backward(dx, bx, bw, rstd, arrays.up(dy), T, C, w_offset=1.0))
    y_ref, rstd_ref = ref.rmsnorm(x, w, 1e-6, w_offset=1.0)
    np.testing.assert_allclose(arrays.down(y, (T, C)), res + y_ref, rtol=RTOL, atol=1e-5)
    np.testing.assert_allclose(arrays.down(dx, (T, C)), ref.rmsnorm_backward(x, w, rstd_ref, dy, w_offset=1.0),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("T, C", [(1, 7), (6, 64), (9, 300)])
def test_layernorm_forward_and_backward(ops, arrays, T, C):
    """GPT-2's LayerNorm (the norm kernels with a bias: centred rows), on rows whose mean is far
    from zero (the residual streams of GPT-2 have a few large features)."""
    r = rng("layernorm", T, C)
    x = r.standard_normal((T, C), dtype=np.float32) + 30.0
    w, b = r.standard_normal(C, dtype=np.float32), r.standard_normal(C, dtype=np.float32)
    dy, res = r.standard_normal((T, C), dtype=np.float32), r.standard_normal((T, C), dtype=np.float32)
    bx, bw = arrays.up(x), arrays.up(w)
    y, rstd, dx = arrays.empty(T * C), arrays.empty(T), arrays.empty(T * C)
    arrays.submit(ops.rmsnorm(y, rstd, bx, bw, T, C, 1e-5, bias=arrays.up(b)),
                  ops.rmsnorm_backward(dx, bx, bw, rstd, arrays.up(dy), T, C, residual=arrays.up(res), center=True))
    y_ref, rstd_ref = ref.layernorm(x, w, b, 1e-5)
    np.testing.assert_allclose(arrays.down(y, (T, C)), y_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(arrays.down(rstd, (T,)), rstd_ref, rtol=1e-4)
    np.testing.assert_allclose(arrays.down(dx, (T, C)), res + ref.layernorm_backward(x, w, dy, 1e-5), rtol=1e-3,
                               atol=1e-3)


def test_transpose_of_a_column_range(ops, arrays):
    R, K = 37, 90
    x = rng("transpose").standard_normal((R, K), dtype=np.float32)
    out = arrays.empty(30 * R)
    arrays.submit(ops.transpose(out, arrays.up(x), R, K, first=30, N=30))
    np.testing.assert_array_equal(arrays.down(out, (30, R)), ref.transpose(x, 30, 30))
    whole = arrays.empty(R * K)
    arrays.submit(ops.transpose(whole, arrays.up(x), R, K))
    np.testing.assert_array_equal(arrays.down(whole, (K, R)), ref.transpose(x))


@pytest.mark.parametrize("T, H, D, theta", [(3, 2, 8, 10000.0), (17, 3, 64, 100000.0)])
def test_rope_forward_and_inverse(ops, arrays, T, H, D, theta):
    r = rng("rope", T, H, D)
    x = r.standard_normal((T, H, D), dtype=np.float32)
    pos = (np.arange(T) % 11).astype(np.uint32)
    inv_freq = ref.rope_inv_freq(D, theta)
    bx, bpos, bf = arrays.up(x), arrays.up(pos), arrays.up(inv_freq)
    arrays.submit(ops.rope(bx, bpos, bf, T, H, D))
    np.testing.assert_allclose(arrays.down(bx, (T, H, D)), ref.rope(x, pos, inv_freq), rtol=1e-5, atol=1e-5)
    arrays.submit(ops.rope(bx, bpos, bf, T, H, D, backward=True))
    np.testing.assert_allclose(arrays.down(bx, (T, H, D)), x, rtol=1e-5, atol=1e-5)


def test_rope_of_queries_and_keys_in_one_dispatch(ops, arrays):
    T, Hq, Hkv, D = 37, 6, 2, 16
    r = rng("rope2")
    q, k = r.standard_normal((T, Hq, D), dtype=np.float32), r.standard_normal((T, Hkv, D), dtype=np.float32)
    pos = (np.arange(T) % 11).astype(np.uint32)
    inv_freq = ref.rope_inv_freq(D, 10000.0)
    bq, bk = arrays.up(q), arrays.up(k)
    arrays.submit(ops.rope(bq, arrays.up(pos), arrays.up(inv_freq), T, Hq, D, y=bk, H2=Hkv))
    np.testing.assert_allclose(arrays.down(bq, (T, Hq, D)), ref.rope(q, pos, inv_freq), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(arrays.down(bk, (T, Hkv, D)), ref.rope(k, pos, inv_freq), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("N", [1, 1000, 70001])
def test_glu_forward_and_backward(ops, arrays, N, act):
    r = rng("glu", N)
    g, u, dh = (r.standard_normal(N, dtype=np.float32) * 3 for _ in range(3))
    bg, bu, bdh = arrays.up(g), arrays.up(u), arrays.up(dh)
    h, dg, du = arrays.empty(N), arrays.empty(N), arrays.empty(N)
    arrays.submit(ops.glu(h, bg, bu, N, act), ops.glu_backward(dg, du, bg, bu, bdh, N, act))
    # exp and tanh differ from numpy's by a few ulps: values near 0 get an absolute tolerance
    np.testing.assert_allclose(arrays.down(h, (N,)), ref.glu(g, u, act), rtol=1e-5, atol=1e-5)
    dg_ref, du_ref = ref.glu_backward(g, u, dh, act)
    np.testing.assert_allclose(arrays.down(dg, (N,)), dg_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(arrays.down(du, (N,)), du_ref, rtol=1e-5, atol=1e-5)


def test_ungated_activation_forward_and_backward(ops, arrays):
    """GPT-2's MLP: h = GELU(x), no gate."""
    N = 1000
    r = rng("act", N)
    g, dh = (r.standard_normal(N, dtype=np.float32) * 3 for _ in range(2))
    bg = arrays.up(g)
    h, dg = arrays.empty(N), arrays.empty(N)
    arrays.submit(ops.glu(h, bg, None, N, "gelu_tanh"), ops.glu_backward(dg, None, bg, None, arrays.up(dh), N, "gelu_tanh"))
    np.testing.assert_allclose(arrays.down(h, (N,)), ref.glu(g, None, "gelu_tanh"), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(arrays.down(dg, (N,)), ref.glu_backward(g, None, dh, "gelu_tanh")[0], rtol=1e-5,
                               atol=1e-5)


def test_bias_add(ops, arrays):
    T, N = 7, 45
    r = rng("bias")
    y, bias = r.standard_normal((T, N), dtype=np.float32), r.standard_normal(N, dtype=np.float32)
    by = arrays.up(y)
    arrays.submit(ops.bias_add(by, arrays.up(bias), T, N))
    np.testing.assert_array_equal(arrays.down(by, (T, N)), ref.bias_add(y, bias))


def test_embedding_lookup(ops, arrays):
    T, C, V = 13, 19, 50
    r = rng("emb")
    table = r.standard_normal((V, C), dtype=np.float32)
    ids = r.integers(0, V, T).astype(np.uint32)
    ids[3] = V + 5  # out of range reads as zeros, never out of bounds
    out = arrays.empty(T * C)
    arrays.submit(ops.embedding(out, arrays.up(ids), arrays.up(table), T, C, V))
    np.testing.assert_array_equal(arrays.down(out, (T, C)), ref.embedding(ids, table))
    positions = (np.arange(T) % 7).astype(np.uint32)  # GPT-2's position embeddings add on
    arrays.submit(ops.embedding(out, arrays.up(positions), arrays.up(table), T, C, V, accumulate=True))
    np.testing.assert_allclose(arrays.down(out, (T, C)), ref.embedding(ids, table) + ref.embedding(positions, table),
                               rtol=1e-6)


def test_embedding_backward_sums_repeated_ids(ops, arrays):
    T, C, V = 29, 70, 11
    r = rng("embb")
    ids = r.integers(0, V + 2, T).astype(np.uint32)  # repeats, and two out-of-range ids ignored
    d_out = r.standard_normal((T, C), dtype=np.float32)
    d_table = arrays.up(np.zeros((V, C), np.float32))
    arrays.submit(ops.embedding_backward(d_table, arrays.up(ids), arrays.up(d_out), T, C, V))
    np.testing.assert_allclose(arrays.down(d_table, (V, C)), ref.embedding_backward(ids, d_out, V), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("R, V", [(1, 5), (9, 1000), (4, 49157)])
def test_cross_entropy_loss_and_gradient(ops, arrays, R, V):
    r = rng("ce", R, V)
    logits = r.standard_normal((R, V), dtype=np.float32) * 4
    targets = r.integers(0, V, R).astype(np.int32)
    targets[::3] = -100
    n_valid = max(1, int((targets >= 0).sum()))
    bl, loss = arrays.up(logits), arrays.empty(R)
    arrays.submit(ops.cross_entropy(loss, bl, arrays.up(targets), R, V, 1.0 / n_valid))
    loss_ref, grad_ref = ref.cross_entropy(logits, targets, 1.0 / n_valid)
    np.testing.assert_allclose(arrays.down(loss, (R,)), loss_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(arrays.down(bl, (R, V)), grad_ref, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("B, S, Hq, Hkv, D", [(1, 1, 1, 1, 4), (2, 7, 4, 2, 8), (1, 19, 3, 1, 64), (2, 5, 2, 2, 33),
                                              (2, 70, 6, 2, 16), (1, 37, 2, 1, 128), (1, 21, 4, 1, 256)])
@pytest.mark.parametrize("variant", ["generic", "portable", "tiled", "lanes"])
def test_attention_forward_and_backward(ops, arrays, run, B, S, Hq, Hkv, D, variant):
    ops._by_head_dim.clear()
    if variant == "tiled" and (D % 4 or D > 128) or variant == "lanes" and D % 16:
        with pytest.raises(UsageError, match="multiple of 4|D/16 lanes"):
            run(ops.specialize_head_dim(D, variant))
        return
    if variant == "lanes" and not ops.tile_lanes(D):
        pytest.skip("subgroups narrower than D/16 on this adapter")
    if variant != "generic":
        run(ops.specialize_head_dim(D, variant))
    family = {"tiled": "attention_tiled", "lanes": "attention_lanes"}.get(variant)
    if family:
        assert (family, D) in ops._by_head_dim
    r = rng("attn", B, S, Hq, Hkv, D)
    q = r.standard_normal((B * S, Hq * D), dtype=np.float32)
    k = r.standard_normal((B * S, Hkv * D), dtype=np.float32)
    v = r.standard_normal((B * S, Hkv * D), dtype=np.float32)
    d_o = r.standard_normal((B * S, Hq * D), dtype=np.float32)
    bq, bk, bv, bdo = arrays.up(q), arrays.up(k), arrays.up(v), arrays.up(d_o)
    o, lse = arrays.empty(B * S * Hq * D), arrays.empty(B * Hq * S)
    dq, dk, dv, delta = arrays.empty(B * S * Hq * D), arrays.empty(B * S * Hkv * D), arrays.empty(B * S * Hkv * D), arrays.empty(B * Hq * S)
    dk_heads, dv_heads = arrays.empty(B * S * Hq * D), arrays.empty(B * S * Hq * D)
    arrays.submit(
        ops.attention(o, lse, bq, bk, bv, B, S, Hq, Hkv, D),
        ops.attention_backward(dq, dk, dv, delta, dk_heads, dv_heads, bq, bk, bv, o, bdo, lse, B, S, Hq, Hkv, D),
    )
    o_ref, lse_ref = ref.attention(q, k, v, B, S, Hq, Hkv, D)
    np.testing.assert_allclose(arrays.down(o, o_ref.shape), o_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(arrays.down(lse, lse_ref.shape), lse_ref, rtol=1e-5, atol=1e-5)
    for got, want in zip((dq, dk, dv), ref.attention_backward(q, k, v, d_o, B, S, Hq, Hkv, D)):
        np.testing.assert_allclose(arrays.down(got, want.shape), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("tiled", [False, True])
@pytest.mark.parametrize("B, S, Hq, Hkv, D, window", [(2, 13, 4, 2, 16, 4), (1, 70, 2, 1, 8, 33), (1, 9, 2, 2, 16, 9)])
def test_sliding_window_attention_and_its_gradients(ops, arrays, run, B, S, Hq, Hkv, D, window, tiled):
    """Gemma's local layers: each query sees its `window` latest keys, with Gemma's own scale; a
    window as long as the sequence is plain causal attention (the tiled kernels serve it)."""
    ops._by_head_dim.clear()
    if tiled:
        run(ops.specialize_head_dim(D, "tiled"))
    scale = 0.3
    r = rng("window", B, S, D, window)
    q, d_o = (r.standard_normal((B * S, Hq * D), dtype=np.float32) for _ in range(2))
    k, v = (r.standard_normal((B * S, Hkv * D), dtype=np.float32) for _ in range(2))
    bq, bk, bv, bdo = arrays.up(q), arrays.up(k), arrays.up(v), arrays.up(d_o)
    o, lse = arrays.empty(B * S * Hq * D), arrays.empty(B * Hq * S)
    dq, dk, dv, delta = arrays.empty(B * S * Hq * D), arrays.empty(B * S * Hkv * D), arrays.empty(B * S * Hkv * D), arrays.empty(B * Hq * S)
    dk_heads, dv_heads = arrays.empty(B * S * Hq * D), arrays.empty(B * S * Hq * D)
    arrays.submit(
        ops.attention(o, lse, bq, bk, bv, B, S, Hq, Hkv, D, scale=scale, window=window),
        *ops.attention_backward(dq, dk, dv, delta, dk_heads, dv_heads, bq, bk, bv, o, bdo, lse, B, S, Hq, Hkv, D,
                                scale=scale, window=window),
    )
    o_ref, lse_ref = ref.attention(q, k, v, B, S, Hq, Hkv, D, scale, window)
    np.testing.assert_allclose(arrays.down(o, o_ref.shape), o_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(arrays.down(lse, lse_ref.shape), lse_ref, rtol=1e-5, atol=1e-5)
    for got, want in zip((dq, dk, dv), ref.attention_backward(q, k, v, d_o, B, S, Hq, Hkv, D, scale, window)):
        np.testing.assert_allclose(arrays.down(got, want.shape), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("T, start, window", [(5, 0, 2), (1, 9, 4), (3, 4, 3)])
def test_attention_with_kv_cache_and_a_sliding_window(ops, arrays, T, start, window):
    Hq, Hkv, D = 4, 2, 8
    r = rng("cachewin", T, start)
    cap = start + T + 2
    q = r.standard_normal((T, Hq * D), dtype=np.float32)
    kc, vc = (r.standard_normal((cap, Hkv * D), dtype=np.float32) for _ in range(2))
    o = arrays.empty(T * Hq * D)
    arrays.submit(ops.attention_cached(o, arrays.up(q), arrays.up(kc), arrays.up(vc), T, start, Hq, Hkv, D, scale=0.2,
                                       window=window))
    want = ref.attention_cached(q, kc, vc, T, start, Hq, Hkv, D, 0.2, window)
    np.testing.assert_allclose(arrays.down(o, want.shape), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("T, start, Hq, Hkv, D", [(5, 0, 4, 2, 8), (1, 9, 3, 1, 16), (3, 4, 2, 2, 33)])
def test_attention_with_kv_cache(ops, arrays, T, start, Hq, Hkv, D):
    r = rng("cache", T, start)
    cap = start + T + 2
    q = r.standard_normal((T, Hq * D), dtype=np.float32)
    kc = r.standard_normal((cap, Hkv * D), dtype=np.float32)
    vc = r.standard_normal((cap, Hkv * D), dtype=np.float32)
    o = arrays.empty(T * Hq * D)
    arrays.submit(ops.attention_cached(o, arrays.up(q), arrays.up(kc), arrays.up(vc), T, start, Hq, Hkv, D))
    want = ref.attention_cached(q, kc, vc, T, start, Hq, Hkv, D)
    np.testing.assert_allclose(arrays.down(o, want.shape), want, rtol=1e-4, atol=1e-5)
    if start == 0:  # prefill equals full causal attention
        full, _ = ref.attention(q, kc[:T], vc[:T], 1, T, Hq, Hkv, D)
        np.testing.assert_allclose(want, full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("N, max_norm, scale", [(3, 1.0, 1.0), (10007, 0.5, 0.25), (10007, 0.0, 0.5), (5000, 1e6, 1.0)])
def test_grad_norm_and_clip(ops, arrays, N, max_norm, scale):
    grad = rng("norm", N).standard_normal(N, dtype=np.float32)
    clip, partial = arrays.up(np.zeros(3, np.float32)), arrays.empty(ops.sumsq_partials(N))
    step = arrays.up(np.frombuffer(step_scalars(ops, lr=1e-3, grad_scale=scale, slot=1), np.float32))
    history = arrays.up(np.array([np.nan, 2.5], np.float32))  # this step's loss is slot 1's
    arrays.submit(ops.grad_norm(clip, partial, arrays.up(grad), step, history, N, max_norm))
    norm, factor, halted = arrays.down(clip, (3,))
    assert halted == 0
    norm_ref, coefficient_ref = ref.grad_clip(grad * np.float32(scale), max_norm)
    assert norm == pytest.approx(norm_ref, rel=1e-5)
    assert factor == pytest.approx(coefficient_ref * scale, rel=1e-5)


def test_loss_sum_accumulates_into_the_step_slot(ops, arrays):
    T = 1000
    loss = rng("loss", T).random(T, dtype=np.float32)
    history = arrays.up(np.zeros(4, np.float32))
    step = arrays.up(np.frombuffer(step_scalars(ops, slot=2), np.float32))
    arrays.submit(ops.loss_sum(history, arrays.up(loss), step, T), ops.loss_sum(history, arrays.up(loss), step, T))
    got = arrays.down(history, (4,))
    assert got[[0, 1, 3]].tolist() == [0, 0, 0]
    assert got[2] == pytest.approx(2 * loss.astype(np.float64).sum(), rel=1e-5)


def test_adamw_steps(ops, arrays):
    N, lr, b1, b2, eps, wd = 1031, 1e-3, 0.9, 0.999, 1e-8, 0.01
    r = rng("adamw")
    p = r.standard_normal(N, dtype=np.float32)
    m, v = np.zeros(N, np.float32), np.zeros(N, np.float32)
    bp, bm, bv = arrays.up(p), arrays.up(m), arrays.up(v)
    step, clip, last_good = arrays.empty(6), arrays.up(np.array([0.0, 0.7, 0.0], np.float32)), arrays.empty(N)
    for t in range(1, 4):
        g = r.standard_normal(N, dtype=np.float32)
        arrays.gpu.write_buffer(step, step_scalars(ops, lr=lr, bc1=1 - b1**t, bc2=1 - b2**t))
        arrays.submit(ops.adamw(bp, bm, bv, arrays.up(g), step, clip, last_good, N, beta1=b1, beta2=b2, eps=eps,
                                weight_decay=wd))
        before, (p, m, v) = p, ref.adamw(p, m, v, g, lr, t, b1, b2, eps, wd, clip=0.7)
    np.testing.assert_allclose(arrays.down(bp, (N,)), p, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(arrays.down(last_good, (N,)), before, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(arrays.down(bm, (N,)), m, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(arrays.down(bv, (N,)), v, rtol=1e-5, atol=1e-9)


def test_sgd_step(ops, arrays):
    N = 777
    r = rng("sgd")
    p, g = r.standard_normal(N, dtype=np.float32), r.standard_normal(N, dtype=np.float32)
    bp = arrays.up(p)
    step, clip = arrays.up(np.frombuffer(step_scalars(ops, lr=0.1), np.float32)), arrays.up(np.array([0.0, 0.5], np.float32))
    arrays.submit(ops.sgd(bp, arrays.up(g), step, clip, arrays.empty(N), N, weight_decay=0.01))
    np.testing.assert_allclose(arrays.down(bp, (N,)), ref.sgd(p, g, 0.1, 0.01, clip=0.5), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
@pytest.mark.parametrize("bad", ["loss", "norm"])
def test_a_step_whose_loss_or_norm_is_not_finite_restores_the_last_good_adapter(ops, arrays, optimizer, bad):
    """Step 1 is finite (last_good ← p0, p ← p1); step 2 finds a NaN loss or an infinite gradient:
    it halts, p ← p0, and step 3, finite again, stays halted (m and v untouched throughout)."""
    N = 300
    r = rng("halt")
    p0 = r.standard_normal(N, dtype=np.float32)
    bp, bm, bv, last_good = arrays.up(p0), arrays.empty(N), arrays.empty(N), arrays.empty(N)
    clip, partial = arrays.up(np.zeros(3, np.float32)), arrays.empty(ops.sumsq_partials(N))
    step = arrays.empty(6)
    history = arrays.up(np.array([1.0, 1.0, 1.0], np.float32))
    for t in range(1, 4):
        g = r.standard_normal(N, dtype=np.float32)
        if t == 2:
            if bad == "loss":
                arrays.gpu.write_buffer(history, np.array([1.0, np.nan], np.float32).tobytes())
            else:
                g[7] = np.inf
        arrays.gpu.write_buffer(step, step_scalars(ops, lr=0.1, bc1=0.1, bc2=0.001, grad_scale=1.0, slot=t - 1))
        grad = arrays.up(g)
        cmds = ops.grad_norm(clip, partial, grad, step, history, N, 1.0)
        if optimizer == "adamw":
            cmds.append(ops.adamw(bp, bm, bv, grad, step, clip, last_good, N, beta1=0.9, beta2=0.999, eps=1e-8,
                                  weight_decay=0.0))
        else:
            cmds.append(ops.sgd(bp, grad, step, clip, last_good, N, weight_decay=0.0))
        arrays.submit(*cmds)
        after = arrays.down(bp, (N,))
        assert np.isfinite(after).all()
        if t == 1:
            m1 = arrays.down(bm, (N,))
            assert not np.array_equal(after, p0)
        else:
            np.testing.assert_array_equal(after, p0)
            np.testing.assert_array_equal(arrays.down(bm, (N,)), m1)
        assert arrays.down(clip, (3,))[2] == (0 if t == 1 else 1)


def test_dropout_mask_scaling_and_accumulate(ops, arrays):
    N, p, seed, stream = 5003, 0.25, 9876543, 17
    x = rng("drop").standard_normal(N, dtype=np.float32)
    y0 = rng("drop0").standard_normal(N, dtype=np.float32)
    step = arrays.up(np.frombuffer(step_scalars(ops, seed=seed), np.float32))
    y, acc = arrays.empty(N), arrays.up(y0)
    arrays.submit(ops.dropout(y, arrays.up(x), step, N, p, stream), ops.dropout(acc, arrays.up(x), step, N, p, stream, accumulate=True))
    want = ref.dropout(x, p, seed, stream)
    np.testing.assert_allclose(arrays.down(y, (N,)), want, rtol=1e-6)  # WGSL division: 2.5 ulp at most
    np.testing.assert_allclose(arrays.down(acc, (N,)), y0 + want, rtol=1e-6, atol=1e-6)  # y0 + want may cancel
    assert (want == 0).mean() == pytest.approx(p, abs=0.02)
    assert not np.array_equal(ref.dropout_mask(N, p, seed, stream), ref.dropout_mask(N, p, seed, stream + 1))


def test_lora_init_is_seeded_uniform(ops, arrays):
    N, fan_in, offset = 64 * 96, 96, 40
    flat = arrays.up(np.full(offset + N + 8, 7.0, np.float32))
    arrays.submit(ops.lora_init(flat, offset, N, fan_in, seed=1234))
    out = arrays.down(flat, (offset + N + 8,))
    assert (out[:offset] == 7).all() and (out[offset + N:] == 7).all(), "writes stay inside their slice"
    A = out[offset : offset + N]
    np.testing.assert_array_equal(A, ref.lora_init(offset, N, fan_in, 1234))
    bound = 1 / np.sqrt(fan_in)
    assert np.abs(A).max() <= bound and A.std() == pytest.approx(bound / np.sqrt(3), rel=0.05)
    assert not np.array_equal(A, ref.lora_init(offset, N, fan_in, 1235))
    arrays.submit(ops.lora_init(flat, offset, N, fan_in, seed=99, std=0.02))  # AdaLoRA's N(0, 0.02²)
    A = arrays.down(flat, (offset + N + 8,))[offset : offset + N]
    np.testing.assert_allclose(A, ref.lora_init(offset, N, fan_in, 99, std=0.02), rtol=1e-5, atol=1e-7)
    assert A.mean() == pytest.approx(0.0, abs=2e-3) and A.std() == pytest.approx(0.02, rel=0.05)


def test_adalora_kernels_like_numpy(ops, arrays):
    """AdaLoRA's kernels over a flat adapter of three modules (ranks 3, 3 and 2; one B in two parts,
    as a fused module's): B · diag(E), the gradients of B and E, the orthogonality regulariser,
    the importance averages and a budget step's pruning, then the final phase's re-masking."""
    import struct

    g = rng("adalora")
    table, at, t_base = [], 0, 0
    for r, n, parts in ((3, 5, (7,)), (3, 4, (6, 5)), (2, 6, (9,))):
        row = [at, at + r * n, r, n, 0, 0, 0, 0, 0, 0, t_base, sum(parts)]
        at += r * n + r
        for p, rows in enumerate(parts):
            row[4 + 2 * p], row[5 + 2 * p] = at, rows
            at += rows * r + 3  # (padding between parts, never touched)
        table.append(row)
        t_base += r
    M, R, N, max_rows = len(table), 3, t_base, 11
    flat = g.standard_normal(at).astype(np.float32)
    pads = np.ones(at, bool)
    for a_off, e_off, r, n, *rest in table:
        pads[a_off : e_off + r] = False
        for p in range(3):
            pads[rest[2 * p] : rest[2 * p] + rest[2 * p + 1] * r] = False
    flat[pads] = 0.0
    words = [w for row in table for w in row]
    tb = arrays.gpu.create_buffer(4 * len(words), label="table")
    arrays.gpu.write_buffer(tb, struct.pack(f"<{len(words)}I", *words))
    lora = arrays.up(flat)

    eff = arrays.empty(at)
    arrays.submit(ops.adalora_apply(eff, lora, tb, M, R))
    np.testing.assert_allclose(arrays.down(eff, (at,)), ref.adalora_apply(flat, table), rtol=1e-6)

    dflat = g.standard_normal(at).astype(np.float32) * ~pads
    grads = arrays.up(dflat)
    arrays.submit(ops.adalora_grad(grads, lora, tb, M, R))
    expect = ref.adalora_grad(dflat, flat, table)
    np.testing.assert_allclose(arrays.down(grads, (at,)), expect, rtol=1e-5, atol=1e-6)

    step = arrays.up(np.frombuffer(step_scalars(ops, grad_scale=0.25, slot=2), np.float32))
    fro, gram, hist = arrays.empty(2 * M), arrays.empty(M * 2 * R * R), arrays.empty(4)
    arrays.submit(ops.orth_reg(grads, fro, gram, lora, tb, step, M, R, max_rows, 0.5))
    arrays.submit(ops.orth_sum(hist, fro, step, M, 0.5))
    expect, ref_fro, value = ref.orth_reg(expect, flat, table, 0.5, 0.25)
    np.testing.assert_allclose(arrays.down(grads, (at,)), expect, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(arrays.down(fro, (2 * M,)), ref_fro, rtol=1e-5)
    assert arrays.down(hist, (4,))[2] == pytest.approx(value, rel=1e-5)

    ema0, unc0 = (np.abs(g.standard_normal(at)).astype(np.float32) * ~pads for _ in range(2))
    ema, unc = arrays.up(ema0), arrays.up(unc0)
    clip, ctl = arrays.up(np.array([0.0, 0.3, 0.0], np.float32)), arrays.gpu.create_buffer(16, label="ctl")
    ref_ema, ref_unc = ref.ada_ipt(ema0, unc0, flat, expect, 0.3, 0.85, 0.8)
    scores, threshold, mask = arrays.empty(N), arrays.empty(4), arrays.up(np.ones(N, np.float32))
    ref_lora, ref_mask, ref_scores = ref.ada_prune(flat, np.ones(N, np.float32), ref_ema, ref_unc, table, 1, 3)
    arrays.gpu.write_buffer(ctl, struct.pack("<4I", 1, 1, 3, 0))
    arrays.submit(ops.ada_ipt(ema, unc, lora, grads, clip, ctl, at, 0.85, 0.8))
    np.testing.assert_allclose(arrays.down(ema, (at,)), ref_ema, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(arrays.down(unc, (at,)), ref_unc, rtol=1e-5, atol=1e-7)
    arrays.submit(ops.ada_prune(lora, mask, scores, threshold, ema, unc, ctl, tb, M, R, N))
    np.testing.assert_allclose(arrays.down(scores, (N,)), ref_scores, rtol=1e-5)
    np.testing.assert_array_equal(arrays.down(mask, (N,)), ref_mask)
    assert ref_mask.sum() == N - 3
    np.testing.assert_array_equal(arrays.down(lora, (at,)), ref_lora)

    revived = ref_lora.copy()  # the optimizer moves pruned values; the final phase prunes them again
    revived[[row[1] for row in table]] = 9.0
    arrays.gpu.write_buffer(lora, revived.tobytes())
    arrays.gpu.write_buffer(ctl, struct.pack("<4I", 0, 2, 0, 0))
    arrays.submit(ops.ada_prune(lora, mask, scores, threshold, ema, unc, ctl, tb, M, R, N))
    np.testing.assert_array_equal(arrays.down(lora, (at,)), ref.ada_prune(revived, ref_mask, ref_ema, ref_unc,
                                                                           table, 2, 0)[0])
