"""numpy twins of every WGSL kernel: same names, same argument order, float32 maths.

CPython only (tests, benchmarks); the browser never imports this module.
"""

from __future__ import annotations

import numpy as np


def matmul(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """C[M, N] = A[M, K] · B[N, K]ᵀ (wgsl/matmul.wgsl)."""
    return (A.astype(np.float32) @ B.astype(np.float32).T).astype(np.float32)


def bias_add(y: np.ndarray, bias: np.ndarray) -> np.ndarray:
    return (y + bias).astype(np.float32)


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float, w_offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(y, rstd) for x [T, C], w [C] (wgsl/rmsnorm.wgsl; Gemma's norms: w_offset 1)."""
    x = x.astype(np.float32)
    rstd = (1.0 / np.sqrt((x * x).mean(-1) + np.float32(eps))).astype(np.float32)
    return (x * rstd[:, None] * (w + np.float32(w_offset))).astype(np.float32), rstd


def rmsnorm_backward(x: np.ndarray, w: np.ndarray, rstd: np.ndarray, dy: np.ndarray,
                     w_offset: float = 0.0) -> np.ndarray:
    """dx for frozen w (wgsl/rmsnorm_backward.wgsl, accumulate = 0)."""
    g = dy * (w + np.float32(w_offset))
    C = x.shape[-1]
    k = rstd**2 * (g * x).sum(-1) / C
    return (rstd[:, None] * (g - x * k[:, None])).astype(np.float32)


def layernorm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(y, rstd) of LayerNorm (wgsl/rmsnorm.wgsl with center), in float64."""
    x = x.astype(np.float64)
    xc = x - x.mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt((xc * xc).mean(-1) + eps)
    return (xc * rstd[:, None] * w + b).astype(np.float32), rstd.astype(np.float32)


def layernorm_backward(x: np.ndarray, w: np.ndarray, dy: np.ndarray, eps: float) -> np.ndarray:
    """dx of LayerNorm for frozen w and b (wgsl/rmsnorm_backward.wgsl with center), in float64."""
    x = x.astype(np.float64)
    xc = x - x.mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt((xc * xc).mean(-1, keepdims=True) + eps)
    xhat, g = xc * rstd, dy.astype(np.float64) * w
    return (rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))).astype(np.float32)


def transpose(x: np.ndarray, first: int = 0, n: int | None = None) -> np.ndarray:
    """Columns first…first+n−1 of x, transposed (wgsl/transpose.wgsl)."""
    n = x.shape[1] - first if n is None else n
    return np.ascontiguousarray(x[:, first:first + n].T)


def dora_norm(W: np.ndarray, A: np.ndarray | None = None, B: np.ndarray | None = None, s: float = 0.0) -> np.ndarray:
    """‖W + s · B · A‖₂ of each row (wgsl/dora_norm.wgsl; PEFT's DoRA weight norm)."""
    V = W.astype(np.float64) + (s * (B.astype(np.float64) @ A.astype(np.float64)) if s else 0.0)
    return np.sqrt((V * V).sum(1)).astype(np.float32)


def dora_scale(x: np.ndarray, m: np.ndarray, n: np.ndarray, by_row: bool = False, res: np.ndarray | None = None,
               bias: np.ndarray | None = None) -> np.ndarray:
    """(m / n) · x per column (or per row) + res + bias (wgsl/dora_scale.wgsl)."""
    g = (m / n).astype(np.float32)
    y = x * (g[:, None] if by_row else g[None, :])
    return y + (res if res is not None else 0) + (bias[None, :] if bias is not None else 0)


def dora_grad(dy: np.ndarray, p: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Σ_t dy · p / n per column (wgsl/dora_grad.wgsl)."""
    return ((dy.astype(np.float64) * p).sum(0) / n).astype(np.float32)


def quantize_nbits(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """w [N, K] as MatMulNBits' 4-bit blocks of 32 (wgsl/quantize_nbits.wgsl): codes [N, blocks,
    32] (unpacked), scales [N, blocks], zero points [N, blocks]."""
    N, K = w.shape
    blocks = -(-K // 32)
    x = np.zeros((N, blocks * 32), np.float32)
    x[:, :K] = w
    x = x.reshape(N, blocks, 32)
    lo, hi = np.minimum(x.min(-1), 0), np.maximum(x.max(-1), 0)
    scale = ((hi - lo) / np.float32(15)).astype(np.float32)
    safe = np.where(scale > 0, scale, 1).astype(np.float32)
    zp = np.where(scale > 0, np.clip(np.round(-lo / safe), 0, 15), 0)
    q = np.where(scale[..., None] > 0, np.clip(np.round(x / safe[..., None]) + zp[..., None], 0, 15), 0)
    return q.astype(np.uint8), scale, zp.astype(np.uint8)


def rope_inv_freq(D: int, theta: float) -> np.ndarray:
    return (1.0 / theta ** (np.arange(0, D, 2, dtype=np.float64) / D)).astype(np.float32)


def rope(x: np.ndarray, pos: np.ndarray, inv_freq: np.ndarray, backward: bool = False) -> np.ndarray:
    """x [T, H, D] rotated by rotate_half (wgsl/rope.wgsl); backward applies the inverse rotation."""
    half = x.shape[-1] // 2
    angle = pos.astype(np.float32)[:, None] * inv_freq[None, :]  # [T, D/2]
    c, s = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    if backward:
        s = -s
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1).astype(np.float32)


def silu(g: np.ndarray) -> np.ndarray:
    return g / (1.0 + np.exp(-g))


GELU_K = np.sqrt(2.0 / np.pi)


def gelu_tanh(g: np.ndarray) -> np.ndarray:
    return 0.5 * g * (1.0 + np.tanh(GELU_K * (g + 0.044715 * g**3)))


def glu(gate: np.ndarray, up: np.ndarray | None, act: str = "silu") -> np.ndarray:
    """act(gate) · up: SiLU (Llama, Qwen) or tanh-approximated GELU (Gemma), in float64;
    without `up`, act(gate) (GPT-2)."""
    g = gate.astype(np.float64)
    return ((silu(g) if act == "silu" else gelu_tanh(g)) * (1.0 if up is None else up)).astype(np.float32)


def glu_backward(gate: np.ndarray, up: np.ndarray | None, dh: np.ndarray,
                 act: str = "silu") -> tuple[np.ndarray, np.ndarray]:
    """(dgate, dup); without `up`, dup is None."""
    if up is None:
        return glu_backward(gate, np.ones_like(gate), dh, act)[0], None
    g = gate.astype(np.float64)
    if act == "silu":
        sig = 1.0 / (1.0 + np.exp(-g))
        slope, value = sig * (1 + g * (1 - sig)), silu(g)
    else:
        t = np.tanh(GELU_K * (g + 0.044715 * g**3))
        slope = 0.5 * (1 + t) + 0.5 * g * (1 - t * t) * GELU_K * (1 + 3 * 0.044715 * g * g)
        value = gelu_tanh(g)
    return (dh * up * slope).astype(np.float32), (dh * value).astype(np.float32)


def embedding(ids: np.ndarray, table: np.ndarray) -> np.ndarray:
    out = np.zeros((len(ids), table.shape[1]), np.float32)
    ok = ids < table.shape[0]
    out[ok] = table[ids[ok]]
    return out


def embedding_backward(ids: np.ndarray, d_out: np.ndarray, V: int) -> np.ndarray:
    d_table = np.zeros((V, d_out.shape[1]), np.float64)
    ok = ids < V
    np.add.at(d_table, ids[ok], d_out[ok])
    return d_table.astype(np.float32)


def cross_entropy(logits: np.ndarray, targets: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(loss [R], dlogits [R, V]) as wgsl/cross_entropy.wgsl computes them."""
    logits = logits.astype(np.float64)
    valid = (targets >= 0) & (targets < logits.shape[1])
    m = logits.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[:, 0]
    t = np.where(valid, targets, 0)
    loss = np.where(valid, lse - logits[np.arange(len(t)), t], 0.0)
    grad = np.exp(logits - lse[:, None])
    grad[np.arange(len(t)), t] -= 1.0
    grad = np.where(valid[:, None], grad * scale, 0.0)
    return loss.astype(np.float32), grad.astype(np.float32)


def _heads(x: np.ndarray, B: int, S: int, H: int, D: int) -> np.ndarray:
    return x.reshape(B, S, H, D).transpose(0, 2, 1, 3).astype(np.float64)  # [B, H, S, D]


def visible(queries: np.ndarray, keys: np.ndarray, window: int = 0) -> np.ndarray:
    """[len(queries), len(keys)] mask: key j is seen by query i when j ≤ i and, with a sliding
    window, i − j < window (wgsl/include/attention_window.wgsl)."""
    i, j = queries[:, None], keys[None, :]
    return (j <= i) & ((i - j < window) if window else True)


def attention(q, k, v, B: int, S: int, Hq: int, Hkv: int, D: int, scale: float | None = None, window: int = 0):
    """(o [B·S, Hq·D], lse [B, Hq, S]) of causal GQA attention (wgsl/attention.wgsl)."""
    rep = Hq // Hkv
    Q = _heads(q, B, S, Hq, D)
    K = np.repeat(_heads(k, B, S, Hkv, D), rep, axis=1)
    V = np.repeat(_heads(v, B, S, Hkv, D), rep, axis=1)
    s = Q @ K.transpose(0, 1, 3, 2) * (1 / np.sqrt(D) if scale is None else scale)
    s = np.where(visible(np.arange(S), np.arange(S), window), s, -np.inf)
    m = s.max(-1, keepdims=True)
    lse = m + np.log(np.exp(s - m).sum(-1, keepdims=True))
    o = np.exp(s - lse) @ V
    return o.transpose(0, 2, 1, 3).reshape(B * S, Hq * D).astype(np.float32), lse[..., 0].astype(np.float32)


def attention_backward(q, k, v, d_o, B: int, S: int, Hq: int, Hkv: int, D: int, scale: float | None = None,
                       window: int = 0):
    """(dq, dk, dv) in the projections' layouts (wgsl/attention_backward_*.wgsl)."""
    rep = Hq // Hkv
    Q = _heads(q, B, S, Hq, D)
    K = np.repeat(_heads(k, B, S, Hkv, D), rep, axis=1)
    V = np.repeat(_heads(v, B, S, Hkv, D), rep, axis=1)
    dO = _heads(d_o, B, S, Hq, D)
    scale = 1 / np.sqrt(D) if scale is None else scale
    s = np.where(visible(np.arange(S), np.arange(S), window), Q @ K.transpose(0, 1, 3, 2) * scale, -np.inf)
    P = np.exp(s - s.max(-1, keepdims=True))
    P /= P.sum(-1, keepdims=True)
    dV = P.transpose(0, 1, 3, 2) @ dO
    dP = dO @ V.transpose(0, 1, 3, 2)
    dS = P * (dP - (dP * P).sum(-1, keepdims=True)) * scale
    dQ = dS @ K
    dK = dS.transpose(0, 1, 3, 2) @ Q

    def merge(x, H):  # sum the query heads of each kv group, back to [B·S, H·D]
        if H != Hq:
            x = x.reshape(B, H, rep, S, D).sum(2)
        return x.transpose(0, 2, 1, 3).reshape(B * S, H * D).astype(np.float32)

    return merge(dQ, Hq), merge(dK, Hkv), merge(dV, Hkv)


def grad_clip(grad: np.ndarray, max_norm: float) -> tuple[float, float]:
    """(norm, coefficient) as torch.nn.utils.clip_grad_norm_ computes them."""
    norm = float(np.sqrt((grad.astype(np.float64) ** 2).sum()))
    return norm, (min(1.0, max_norm / (norm + 1e-6)) if max_norm > 0 else 1.0)


def adamw(param, m, v, grad, lr, t, beta1, beta2, eps, weight_decay, clip=1.0):
    """One torch.optim.AdamW step (step number t ≥ 1); returns new (param, m, v)."""
    g = grad * clip
    p = param * (1 - lr * weight_decay)
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    bc1, bc2 = 1 - beta1**t, 1 - beta2**t
    p = p - (lr / bc1) * m / (np.sqrt(v) / np.sqrt(bc2) + eps)
    return p.astype(np.float32), m.astype(np.float32), v.astype(np.float32)


def sgd(param, grad, lr, weight_decay, clip=1.0):
    return (param - lr * (grad * clip + weight_decay * param)).astype(np.float32)


def _pcg(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.uint64)
    mask = np.uint64(0xFFFFFFFF)
    state = (v * np.uint64(747796405) + np.uint64(2891336453)) & mask
    word = (((state >> ((state >> np.uint64(28)) + np.uint64(4))) ^ state) * np.uint64(277803737)) & mask
    return ((word >> np.uint64(22)) ^ word) & mask


def lora_init(offset: int, N: int, fan_in: int, seed: int, std: float = 0.0) -> np.ndarray:
    """The values wgsl/lora_init.wgsl writes at [offset, offset + N)."""
    r = _pcg(_pcg(np.array([seed], np.uint64)) ^ (np.uint64(offset) + np.arange(N, dtype=np.uint64)))
    u = (r >> np.uint64(8)).astype(np.float32) / np.float32(16777216.0)
    if std > 0:
        u1 = ((_pcg(r) >> np.uint64(8)).astype(np.float32) + np.float32(1.0)) / np.float32(16777216.0)
        return (np.sqrt(-2.0 * np.log(u1)) * np.cos(2 * np.pi * u) * std).astype(np.float32)
    return ((np.float32(2.0) * u - np.float32(1.0)) * np.float32(1.0 / np.sqrt(fan_in))).astype(np.float32)


def attention_cached(q, k_cache, v_cache, T: int, start: int, Hq: int, Hkv: int, D: int, scale: float | None = None,
                     window: int = 0) -> np.ndarray:
    """o [T, Hq·D] of T new tokens at positions start… against the cache (wgsl/attention_cached.wgsl)."""
    rep = Hq // Hkv
    Q = q.reshape(T, Hq, D).transpose(1, 0, 2).astype(np.float64)
    n = start + T
    K = np.repeat(k_cache[:n].reshape(n, Hkv, D).transpose(1, 0, 2), rep, axis=0).astype(np.float64)
    V = np.repeat(v_cache[:n].reshape(n, Hkv, D).transpose(1, 0, 2), rep, axis=0).astype(np.float64)
    s = Q @ K.transpose(0, 2, 1) * (1 / np.sqrt(D) if scale is None else scale)
    s = np.where(visible(start + np.arange(T), np.arange(n), window), s, -np.inf)
    P = np.exp(s - s.max(-1, keepdims=True))
    P /= P.sum(-1, keepdims=True)
    return (P @ V).transpose(1, 0, 2).reshape(T, Hq * D).astype(np.float32)


def dropout_mask(N: int, p: float, seed: int, stream: int) -> np.ndarray:
    """The keep mask wgsl/dropout.wgsl draws (True = kept)."""
    inner = _pcg(np.uint64(seed) ^ _pcg(np.array([stream], np.uint64)))
    r = _pcg(inner ^ np.arange(N, dtype=np.uint64))
    u = (r >> np.uint64(8)).astype(np.float32) / np.float32(16777216.0)
    return u >= np.float32(p)


def dropout(x: np.ndarray, p: float, seed: int, stream: int) -> np.ndarray:
    keep = dropout_mask(x.size, p, seed, stream).reshape(x.shape)
    return np.where(keep, x / np.float32(1.0 - p), 0.0).astype(np.float32)


# bitsandbytes' NF4 code (QLoRA, Dettmers et al. 2023): the 16 levels as float32.
NF4_LEVELS = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                       0.7229568362236023, 1.0], np.float32)


def nf4_quantize(x: np.ndarray, block: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(codes [n] uint8, absmax [blocks] float32) of x flattened row-major, as bitsandbytes'
    quantize_4bit(quant_type="nf4", blocksize=64) without double quantization: per block of 64
    the absmax, each value times float32(1 / absmax), then the level whose midpoints bracket it
    (a value on a midpoint takes the lower level: bitsandbytes compares with `>`). An all-zero
    block codes every value as level 7 (0.0) (wgsl/quantize.wgsl, quantize_nf4)."""
    flat = x.astype(np.float32).ravel()
    n = flat.size
    pad = np.zeros(-n % block, np.float32)
    blocks = np.concatenate([flat, pad]).reshape(-1, block)
    absmax = np.abs(blocks).max(axis=1).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(absmax > 0, np.float32(1.0) / absmax, np.float32(0.0)).astype(np.float32)
    normed = (blocks * inv[:, None]).astype(np.float32)
    mids = ((NF4_LEVELS[:-1].astype(np.float64) + NF4_LEVELS[1:].astype(np.float64)) / 2).astype(np.float32)
    codes = (normed[..., None] > mids).sum(-1).astype(np.uint8)
    codes[absmax == 0] = 7
    return codes.ravel()[:n], absmax


def nf4_dequantize(codes: np.ndarray, absmax: np.ndarray, block: int = 64) -> np.ndarray:
    """NF4 level · absmax of each value's block (bitsandbytes' dequantize_4bit)."""
    return (NF4_LEVELS[codes] * np.repeat(absmax, block)[: codes.size]).astype(np.float32)


# -- AdaLoRA (wgsl/adalora_*.wgsl, orth_*.wgsl, ada_*.wgsl) over the flat adapter and its module
# table (lora.LoraState.adalora_table: rows of [a_off, e_off, r, in, b_off0, rows0, b_off1, rows1,
# b_off2, rows2, t_base, rows]).
def _adalora_modules(flat: np.ndarray, table: list[list[int]]):
    """Per module: (A view [r, in], E view [r], B rows stacked [rows, r] and the B parts' views)."""
    out = []
    for a_off, e_off, r, n, *parts_and_rest in table:
        parts = [(parts_and_rest[2 * p], parts_and_rest[2 * p + 1]) for p in range(3) if parts_and_rest[2 * p + 1]]
        A = flat[a_off : a_off + r * n].reshape(r, n)
        E = flat[e_off : e_off + r]
        Bs = [flat[off : off + rows * r].reshape(rows, r) for off, rows in parts]
        out.append((A, E, Bs))
    return out


def adalora_apply(lora: np.ndarray, table: list[list[int]]) -> np.ndarray:
    """The flat buffer with every B replaced by B · diag(E) (the rest zero)."""
    eff = np.zeros_like(lora)
    for (_, E, Bs), (_, _, views) in zip(_adalora_modules(lora, table), _adalora_modules(eff, table)):
        for B, out in zip(Bs, views):
            out[...] = B * E[None, :]
    return eff


def adalora_grad(grads: np.ndarray, lora: np.ndarray, table: list[list[int]]) -> np.ndarray:
    """dE = Σ_o dEff ∘ B per column, dB = dEff · diag(E) (A's gradient unchanged)."""
    out = grads.copy()
    for (_, E, Bs), (_, dE, dBs) in zip(_adalora_modules(lora, table), _adalora_modules(out, table)):
        dE[...] = sum((dB * B).sum(axis=0, dtype=np.float64) for dB, B in zip(dBs, Bs)).astype(np.float32)
        for dB in dBs:
            dB *= E[None, :]
    return out


def orth_reg(grads: np.ndarray, lora: np.ndarray, table: list[list[int]], weight: float, grad_scale: float):
    """(grads + the regulariser's gradient / grad_scale, [‖AAᵀ − I‖, ‖BᵀB − I‖] per module, its value)."""
    out, fro = grads.copy(), []
    c = weight / (2 * len(table))
    for (A, _, Bs), (dA, _, dBs) in zip(_adalora_modules(lora, table), _adalora_modules(out, table)):
        A64, B64 = A.astype(np.float64), np.concatenate(Bs).astype(np.float64)
        for P, which in ((A64, 0), (B64, 1)):
            R = (P @ P.T if which == 0 else P.T @ P) - np.eye(P.shape[0] if which == 0 else P.shape[1])
            f = np.linalg.norm(R)
            fro.append(f)
            if f == 0:
                continue
            if which == 0:
                dA += (2 * c / (f * grad_scale) * (R @ A64)).astype(np.float32)
            else:
                g, at = 2 * c / (f * grad_scale) * (B64 @ R), 0
                for dB in dBs:
                    dB += g[at : at + dB.shape[0]].astype(np.float32)
                    at += dB.shape[0]
    return out, np.array(fro, np.float32), np.float32(c * sum(fro))


def ada_ipt(ema: np.ndarray, unc: np.ndarray, lora: np.ndarray, grads: np.ndarray, factor: float, beta1: float,
            beta2: float) -> tuple[np.ndarray, np.ndarray]:
    """PEFT's RankAllocator.update_ipt over the flat adapter, the gradient times `factor`."""
    ipt = np.abs(lora * (grads * np.float32(factor)))
    ema = np.float32(beta1) * ema + np.float32(1 - beta1) * ipt
    unc = np.float32(beta2) * unc + np.float32(1 - beta2) * np.abs(ipt - ema)
    return ema.astype(np.float32), unc.astype(np.float32)


def ada_prune(lora: np.ndarray, mask: np.ndarray, ema: np.ndarray, unc: np.ndarray, table: list[list[int]],
              mode: int, k: int):
    """(lora with pruned E zeroed, mask, scores) as ada_mask leaves them after ada_score and ada_kth
    (PEFT's mask_to_budget: mode 1; mask_using_rank_pattern: mode 2)."""
    lora, mask, s = lora.copy(), mask.copy(), ema * unc
    scores = np.concatenate([
        s_E + (s_A.mean(axis=1, dtype=np.float64) + np.concatenate(s_Bs).mean(axis=0, dtype=np.float64))
        for s_A, s_E, s_Bs in _adalora_modules(s, table)]).astype(np.float32)
    if mode == 1:
        keep = scores > np.sort(scores)[k - 1] if k else np.ones(len(scores), bool)
        mask[:] = keep
    for (_, E, _), (_, _, r, *_rest) in zip(_adalora_modules(lora, table), table):
        base = _rest[-2]
        if mode:
            E[mask[base : base + r] == 0] = 0.0
    return lora, mask, scores
