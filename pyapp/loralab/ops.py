"""Every kernel as a Python call that records one dispatch: outputs, then inputs, then sizes.

`Ops` loads and compiles all of `wgsl/` once; each method returns the `Dispatch` to put in a
command list (one list per training step, submitted at once). Grids are derived from the
workgroup sizes and tile constants declared in the WGSL. The numpy twin of each method is the
function of the same name in `loralab.ref`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from .config import PRECISIONS
from .errors import UsageError
from .gpu.device import Buffer, Copy, Device, Dispatch
from .kernels import Kernel, KernelLibrary, StructLayout

KERNELS = (
    "matmul",
    "rmsnorm",
    "rmsnorm_backward",
    "rope",
    "glu",
    "glu_backward",
    "embedding",
    "cross_entropy",
    "attention",
    "attention_backward_dq",
    "attention_backward_dk",
    "attention_backward_dv",
    "adamw",
    "sgd",
    "sumsq",
    "grad_clip",
    "lora_init",
    "loss_sum",
    "bias_add",
    "attention_cached",
    "dropout",
    "embedding_backward",
    "matmul_reduce",
    "matmul_reduce4",
    "head_sum",
    "matmul_thin",
    "to_f16",
    "transpose",
    "quantize_nbits",
    "dora_norm",
    "dora_scale",
    "dora_grad",
    "adalora_apply",
    "adalora_grad",
    "orth_gram",
    "orth_grad",
    "orth_sum",
    "ada_ipt",
    "ada_score",
    "ada_kth",
    "ada_mask",
)
# Frozen weights kept quantized on the GPU (wgsl/include/qweight.wgsl): Buffer.dtype -> (bits
# per code, values per group, NF4 table). Codes, then a f32 scale per group, then (affine types)
# a f32 offset per group.
# Quantized frozen weights on the GPU (include/qweight.wgsl): dtype -> (code bits, group, format,
# zero). Each GGUF block type keeps its own scales (format 1: the block's f16 d and m; 2, 3: the
# k-quants' 6-bit/8-bit sub-block scales under an f16 super-block scale), so the values are exact
# and the bytes close to the file's; NF4 is bitsandbytes' (an f32 absmax per 64).
QUANT_DTYPES = {"q8_0": (8, 32, 1, 128), "q4_0": (4, 32, 1, 8), "q4_1": (4, 32, 1, 0), "q5_0": (8, 32, 1, 16),
                "q5_1": (8, 32, 1, 0), "q4_k": (4, 32, 2, 0), "q5_k": (8, 32, 2, 0), "q6_k": (8, 16, 3, 32),
                "nf4": (4, 64, 0, 0)}
# GGUF block types -> (quantize.wgsl's `repack` kind, dtype).
GGUF_TYPES = {name: (kind, name.lower()) for kind, name in
              enumerate(("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"))}
# GGUF types to_ggml writes (quantize.wgsl's kind) -> bytes per 32 values.
GGML_QUANTIZERS = {"Q8_0": 0, "Q4_0": 1}
GGML_BLOCK_BYTES = {"Q8_0": 34, "Q4_0": 18}


def ggml_bytes(gguf_type: str, numel: int, pairs: bool = False) -> int:
    """Bytes of `numel` values as GGUF blocks of `gguf_type` (pairs: rounded up to two blocks)."""
    blocks = -(-numel // 32)
    return GGML_BLOCK_BYTES[gguf_type] * (blocks + blocks % 2 if pairs else blocks)


# Quantizing float weights at load: the --weights choice -> its dtype.
QUANTIZE_TO = {"q4": "nf4", "q8": "q8_0"}
# Kernels that read a quantized weight: (file, entry point), each specialised per dtype.
QUANT_READERS = (("matmul", "matmul"), ("matmul_thin", "matmul_thin"), ("embedding", "embedding"),
                 ("quantize", "dequantize"), ("quantize", "random_layout"))


def quant_layout(dtype: str, numel: int) -> tuple[int, int, int]:
    """(words of codes, groups, words in all) of a quantized weight of `numel` values: the codes,
    then one head per group (32 bits; 16 for Q4_K/Q5_K, 8 for Q6_K), then a word per super-block
    of 256 values (k-quants)."""
    bits, group, fmt, _ = QUANT_DTYPES[dtype]
    codes, groups = -(-numel * bits // 32), -(-numel // group)
    head_bits = {2: 16, 3: 8}.get(fmt, 32)
    supers = -(-numel // 256) if fmt >= 2 else 0
    return codes, groups, codes + -(-groups * head_bits // 32) + supers


# Pipelines specialised for float16 weights: (kernel, override constant).
F16_VARIANTS = (("matmul", "B_F16"), ("matmul_thin", "A_F16"), ("matmul_thin", "B_F16"), ("embedding", "TABLE_F16"),
                ("dora_norm", "W_F16"))

MAX_GROUPS = 65535
# The gated MLP's activations (glu.wgsl's `act`): SiLU (Llama, Qwen), tanh-approximated GELU (Gemma).
GLU_ACTIVATIONS = ("silu", "gelu_tanh")


@dataclass(frozen=True)
class Product:
    """A second product for Ops.matmul: alpha · op(A)[M, K] · op(B)[N, K]ᵀ."""

    A: Buffer
    B: Buffer
    K: int
    trans_a: bool = False
    trans_b: bool = False
    alpha: float = 1.0


@dataclass(frozen=True)
class Blocks:
    """A fused product's blocks for Ops.matmul (matmul.wgsl): q, k and v as one product.
    n: C's column bounds (s1, s2): columns [0, s1), [s1, s2), [s2, N) each a row-major [M, width]
    block after the one before. k: A's K bounds likewise (A's blocks [M, width], read along K).
    r: the second product in blocks of r k: A2's block g at A2 + g · a2_block floats ([M, r]
    row-major), B2's at b2_offsets[g] with strides b2_strides (n, i); with b2_diagonal, B2's
    block g meets only C's column block g."""

    n: tuple[int, int] | None = None
    k: tuple[int, int] | None = None
    r: int = 0
    a2_block: int = 0
    b2_offsets: tuple[int, int, int] = (0, 0, 0)
    b2_strides: tuple[int, int] = (1, 1)
    b2_diagonal: bool = False


def grid_1d(workgroups: int) -> tuple[int, int]:
    """`workgroups` laid out as (x, y) within the per-dimension limit; kernels index
    x + y · 65535 (rows) or gid.x + gid.y · nwg.x · WG (elements)."""
    workgroups = max(1, workgroups)
    if workgroups <= MAX_GROUPS:
        return (workgroups, 1)
    return (MAX_GROUPS, math.ceil(workgroups / MAX_GROUPS))


# Kernels with a HEAD_DIM4 pipeline constant: their generic pipeline serves any head size up to
# MAX_HEAD_DIM; specialize_head_dim compiles one whose loops unroll into registers.
HEAD_DIM_KERNELS = ("attention", "attention_backward_dq", "attention_backward_dk", "attention_backward_dv")
MAX_HEAD_DIM = 256
# Portable kernels that stage keys (queries) through workgroup memory, one invocation per row with
# the row in registers: preferred where the head size is a multiple of 4 and the rows fit in
# registers (three rows of TILED_MAX_HEAD_DIM floats per invocation).
TILED_KERNELS = ("attention_tiled", "attention_backward_dq_tiled", "attention_backward_dkv_tiled")
TILED_MAX_HEAD_DIM = 64
TILED_KERNELS_MAX_HEAD_DIM = 128  # (their rows in registers: MAX_D4 vec4s)
# Their subgroup twins: a row spread over D/16 lanes (four vec4s each, in named registers), so
# the GPU has more invocations in flight for the same registers.
LANES_KERNELS = ("attention_lanes", "attention_backward_dq_lanes", "attention_backward_dkv_lanes")
ATTENTION_VARIANTS = ("auto", "lanes", "tiled", "portable")
# Split-K: a matmul with fewer output tiles than this and a long K is split along K.
SPLIT_BELOW_TILES = 264
SPLIT_MIN_K = 128
SPLIT_TARGET_GROUPS = 512
SPLIT_MIN_K_PER_SPLIT = 128
# matmul_thin (LoRA's rank-sized products) is bound by reading its long operand: it needs many
# workgroups in flight, so with fewer tiles than THIN_SPLIT_BELOW_TILES (LoRA's gradients: K is
# the token count) K is split whenever that gives each split at least THIN_MIN_K_PER_SPLIT.
# With more (x·Aᵀ, dy·B at 4096 tokens: 128 tiles) one dispatch beats split + reduce (H100:
# 41 vs 52 µs).
THIN_SPLIT_BELOW_TILES = 64
# matmul_rows (x·Aᵀ, dy·B: many rows, each meeting all of a small W): outputs per row at most.
MAX_ROWS_OUTPUTS = 16
PREPARED_RV = (2, 4)  # …compiled for ranks up to 8 and up to 16 (a smaller rank leaves outputs unused)
THIN_TARGET_GROUPS = 4096
THIN_MIN_K_PER_SPLIT = 128
# matmul_reduce: up to REDUCE_MAX_WAYS invocations per element while the total stays under this.
REDUCE_TARGET_INVOCATIONS = 1 << 17
REDUCE_MAX_WAYS = 16


class Ops:
    def __init__(self, device: Device, kernels: dict[str, Kernel], library: KernelLibrary | None = None):
        self.device = device
        self.k = kernels
        self.library = library
        self.step: StructLayout | None = None  # the per-step scalars (wgsl/include/step.wgsl), from load
        self._by_head_dim: dict[tuple[str, int], Kernel] = {}
        self._scratch_box: list[Buffer | None] = [None]  # partial products of split-K matmuls (shared by
        # the with_precision copies)
        self._spare_buffer: Buffer | None = None
        self.subgroup_size = 0  # measured at load where the adapter has subgroups
        self.f16: dict[tuple[str, str], Kernel] = {}
        self.q: dict[tuple[str, str], Kernel] = {}  # (entry point, quantized dtype) -> its reader
        self.rows: dict[int, Kernel] = {}  # matmul_rows by RV (vec4s of outputs per row)
        self.cols: dict[int, Kernel] = {}  # matmul_cols by RV
        self.blocks: dict[bool, Kernel] = {}  # matmul for fused products (Blocks), by float16 B
        self.f16_math: dict[Kernel, Kernel] = {}  # each tiled matmul pipeline -> its matmul_f16 twin
        self.mixed = False  # (with_precision)

    def on(self, device: Device) -> "Ops":
        """These kernels recording for another device (the plan's counting device): pipelines
        shared, scratch buffers its own."""
        import copy

        ops = copy.copy(self)
        ops.device, ops._scratch_box, ops._spare_buffer = device, [None], None
        return ops

    def with_precision(self, precision: str) -> "Ops":
        """These kernels with the tiled matmul's arithmetic in float16 ("mixed": matmul_f16.wgsl,
        float32 sums across K; the other products stay float32) or as they are ("f32"). Mixed
        needs prepare(mixed=True), which needs the adapter's shader-f16."""
        import copy

        if precision not in PRECISIONS:
            raise UsageError(f"precision {precision!r}: choose {' or '.join(PRECISIONS)}")
        if precision == "f32" or self.mixed:
            return self
        if not self.f16_math:
            raise UsageError("mixed precision needs the GPU's shader-f16 feature (this one lacks it); use f32")
        ops = copy.copy(self)
        ops.mixed = True
        return ops

    @classmethod
    async def load(cls, device: Device, library: KernelLibrary,
                   on_progress: Callable[[str, float], None] | None = None) -> "Ops":
        """Every base kernel compiled for `device` (on_progress(what, fraction) as they go)."""
        kernels = {}
        for i, name in enumerate(KERNELS, 1):
            kernels[name] = await library.get(name)
            if on_progress is not None:
                on_progress("Compiling the GPU kernels", i / len(KERNELS))
        for entry in ("repack", "quantize_nf4", "quantize_q8_0", "to_ggml"):
            kernels[entry] = await library.get("quantize", entry)
        ops = cls(device, kernels, library)
        ops.step = await library.step_layout()
        if device.info.has_subgroups:
            ops.subgroup_size = await measure_subgroup_size(device, library)
        return ops

    async def prepare(self, f16_weights: bool = False, quant: tuple[str, ...] = (), mixed: bool = False) -> None:
        """Compile the pipelines a model's products need beyond the base kernels (call before
        building a Transformer; upload_weights does): LoRA's row and column products for ranks
        up to 8 and up to 16, the fused q/k/v matmul for the weights' dtype, the float16
        variants when the weights are float16, and the readers of each quantized dtype in
        `quant`; with `mixed`, every tiled matmul pipeline's float16-arithmetic twin (for
        with_precision("mixed")). Without them those products take the generic kernels."""
        library = self.library
        if library is None:
            return
        for dtype in quant:
            bits, group, fmt, zero = QUANT_DTYPES[dtype]
            for name, entry in QUANT_READERS:
                if (entry, dtype) not in self.q:
                    self.q[(entry, dtype)] = await library.get(name, entry, constants={
                        "Q_BITS": bits, "Q_GROUP": group, "Q_FORMAT": fmt, "Q_ZERO": zero})
        for rv in PREPARED_RV:
            if rv not in self.rows:
                self.rows[rv] = await library.get("matmul_rows", constants={"RV": rv})
                self.cols[rv] = await library.get("matmul_cols", constants={"RV": rv})
        if f16_weights not in self.blocks:
            constants = {"BLOCKS": True, **({"B_F16": True} if f16_weights else {})}
            self.blocks[f16_weights] = await library.get("matmul", constants=constants)
        if f16_weights:
            for name, flag in F16_VARIANTS:
                if (name, flag) not in self.f16:
                    self.f16[(name, flag)] = await library.get(name, constants={flag: True})
        if mixed or self.f16_math:  # (once asked for, every later pipeline gets its twin too)
            if "shader-f16" not in self.device.info.features:
                raise UsageError("mixed precision needs the GPU's shader-f16 feature (this one lacks it); use f32")
            tiled = [self.k["matmul"], *self.blocks.values(), *(k for (n, _), k in self.f16.items() if n == "matmul"),
                     *(k for (n, _), k in self.q.items() if n == "matmul")]
            for kernel in tiled:
                if kernel not in self.f16_math:
                    self.f16_math[kernel] = await library.get("matmul_f16", constants=kernel.constants)

    async def prepare_all(self) -> None:
        """Every pipeline prepare can compile (tests and benchmarks)."""
        await self.prepare(False, tuple(QUANT_DTYPES))
        await self.prepare(True)

    def subgroup_width(self) -> int:
        """Lanes the subgroup kernels may rely on in one subgroup (0 without subgroups)."""
        if not self.subgroup_size:
            return 0
        reported = self.device.info.subgroup_min_size
        # A reported minimum of 8 or more is a real bound (browsers); wgpu-native reports 4 for
        # every GPU, so there the measured width decides.
        return min(reported, self.subgroup_size) if reported >= 8 else self.subgroup_size

    def tile_lanes(self, D: int) -> int:
        """Lanes per row for the subgroup attention kernels (attention_lanes: four vec4s of a
        row per lane, so D/16 lanes), or 0 where they cannot run (no `subgroups`, D not a
        multiple of 16, D/16 not a power of two or wider than the subgroups)."""
        lanes = D // 16
        if D % 16 or lanes & (lanes - 1) or not lanes:
            return 0
        return lanes if self.subgroup_width() >= lanes else 0

    async def specialize_head_dim(self, D: int, variant: str = "auto") -> str:
        """Compile the attention kernels for head size D (call once per model). `variant` (tests
        and benchmarks force it) picks the family: "lanes" (subgroups, D/16 lanes), "tiled"
        (portable, D a multiple of 4), "portable" (any D); "auto" takes the first of those the
        adapter and D allow, with "tiled" only up to TILED_MAX_HEAD_DIM. The portable kernels are
        always specialized too (their loops unrolled for D). Returns the family chosen."""
        if self.library is None:
            return "portable"
        d4 = -(-D // 4)
        if variant == "auto":
            variant = ("lanes" if self.tile_lanes(D) else
                       "tiled" if D % 4 == 0 and D <= TILED_MAX_HEAD_DIM else "portable")
        if variant not in ATTENTION_VARIANTS:
            raise UsageError(f"unknown attention kernels {variant!r} (one of {', '.join(ATTENTION_VARIANTS)})")
        if variant == "tiled" and (D % 4 or D > TILED_KERNELS_MAX_HEAD_DIM):
            raise UsageError(f"the tiled attention kernels need a head size that is a multiple of 4 and at most "
                             f"{TILED_KERNELS_MAX_HEAD_DIM} (got {D})")
        if variant == "lanes" and not self.tile_lanes(D):
            raise UsageError(f"the subgroup attention kernels need subgroups of D/16 lanes (D = {D})")
        for name in TILED_KERNELS + LANES_KERNELS:
            self._by_head_dim.pop((name, D), None)
        for name in HEAD_DIM_KERNELS:
            self._by_head_dim[(name, D)] = await self.library.get(name, constants={"HEAD_DIM4": d4})
        if variant == "portable":
            return variant
        lanes = self.tile_lanes(D) if variant == "lanes" else 0
        for name in (LANES_KERNELS if variant == "lanes" else TILED_KERNELS):
            src = await self.library.source(name)
            rows = min(src.constant("TILE") // d4, 64) // 4 * 4
            constants = {("QUERIES" if "dkv" in name else "KEYS"): rows}
            constants.update({"LANES": lanes, "WG": min(256, 64 * lanes)} if lanes else {"HEAD_DIM4": d4})
            self._by_head_dim[(name, D)] = await self.library.get(name, constants=constants)
        return variant

    def _head_dim_kernel(self, name: str, D: int) -> Kernel:
        return self._by_head_dim.get((name, D)) or self.k[name]

    def _elementwise(self, name: str, n: int, params: dict, kernel: Kernel | None = None, **buffers: Buffer) -> Dispatch:
        kernel = kernel or self.k[name]
        return kernel.dispatch(self.device, grid_1d(math.ceil(n / kernel.workgroup_size[0])), params, **buffers)

    def _rows(self, name: str, rows: int, params: dict, **buffers: Buffer) -> Dispatch:
        return self.k[name].dispatch(self.device, grid_1d(rows), params, **buffers)

    # -- linear algebra -----------------------------------------------------------------------
    def matmul(self, C: Buffer, A: Buffer, B: Buffer, M: int, N: int, K: int, *,
               trans_a: bool = False, trans_b: bool = False, alpha: float = 1.0, beta: float = 0.0,
               splits: int | None = None, plus: "Product | None" = None,
               slices: tuple[int, int] | None = None, c_in: Buffer | None = None,
               blocks: Blocks | None = None) -> list[Dispatch]:
        """C[M,N] = alpha · op(A)[M,K] · op(B)[N,K]ᵀ (+ plus.alpha · op(plus.A) · op(plus.B)ᵀ) + beta · C.
        A is stored [M,K] (or [K,M] with trans_a); B is stored [N,K] (or [K,N] with trans_b).
        Few output tiles and a long K are split along K (`splits` overrides the choice). `plus`,
        a second product over the same C (LoRA's up-projection), is summed in the same pass
        when the tiled kernel runs, else dispatched after.
        slices = (S, stride): K is split S ways and split z's product goes to its own slice,
        C + z·stride floats (alpha and beta applied there): one dispatch, no reduction; the
        caller sums the slices (LoRA's gradients: one sum for all of them, see sum_slices).
        c_in: the beta term reads c_in[M, N] instead of C (a residual added without a copy).
        blocks: a fused product's layout (see Blocks; the tiled kernel only)."""
        if slices is not None and (plus is not None or splits is not None):
            raise ValueError("matmul: slices go without a second product or a split count")
        a_sm, a_sk = (1, M) if trans_a else (K, 1)
        b_sn, b_sk = (1, N) if trans_b else (K, 1)
        c_in = c_in if beta != 0.0 else None
        route = self._route(M, N, K, a_sk, b_sn, A, B, slices)
        if blocks is not None and (route != "matmul" or alpha == 0.0 or trans_a):
            raise ValueError(f"matmul: blocks need the tiled kernel ({M}×{N}×{K} goes to {route})")
        if route != "matmul" or (plus is not None and alpha == 0.0):
            out = [Copy(c_in, 0, C, 0, M * N * 4)] if c_in is not None else []  # the others have no C_in
            if route == "matmul_rows":
                out.append(self._matmul_rows(C, A, B, M, N, K, (b_sn, b_sk), alpha, beta))
            elif route == "matmul_cols":
                out += self._matmul_cols(C, A, B, M, N, K, alpha, beta, splits, slices)
            elif route == "matmul_thin":
                out += self._matmul_thin(C, A, B, M, N, K, (a_sm, a_sk), (b_sn, b_sk), alpha, beta, splits, slices)
            else:
                out += self.matmul(C, A, B, M, N, K, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta,
                                   splits=splits, slices=slices)
            if plus is not None:
                out += self.matmul(C, plus.A, plus.B, M, N, plus.K, trans_a=plus.trans_a, trans_b=plus.trans_b,
                                   alpha=plus.alpha, beta=1.0)
            return out
        if A.dtype != "f32":
            raise ValueError(f"matmul: {A.label} is {A.dtype}; only the B operand may hold frozen weights")
        if blocks is not None:
            if B.dtype in QUANT_DTYPES:
                raise ValueError("matmul: quantized weights are not fused into blocks")
            kernel = self.blocks[B.dtype == "f16"]
        else:
            kernel = self._reader("matmul", B) or (self.f16[("matmul", "B_F16")] if B.dtype == "f16" else self.k["matmul"])
        if self.mixed:
            kernel = self.f16_math.get(kernel, kernel)
        src = kernel.source
        grid = (math.ceil(N / src.constant("TILE_N")), math.ceil(M / src.constant("TILE_M")))
        params = dict(M=M, N=N, K=K, a_sm=a_sm, a_sk=a_sk, b_sn=b_sn, b_sk=b_sk, alpha=alpha, beta=beta,
                      K2=0, a2_sm=0, a2_sk=0, b2_sn=0, b2_sk=0, rel2=0.0, c_in=int(c_in is not None),
                      seg_n1=N, seg_n2=N, seg_k1=K, seg_k2=K, r2=0, a2_blk=0, b2_off0=0, b2_off1=0, b2_off2=0,
                      b2_diag=0, **self._scales(B, "b_"))
        second = {"A2": A, "B2": B, "C_in": c_in if c_in is not None else A}  # bound but unread when unused
        if plus is not None:
            if plus.A.dtype != "f32" or plus.B.dtype != "f32":
                raise ValueError("matmul: the second product's operands must be float32")
            params.update(K2=plus.K, a2_sm=1 if plus.trans_a else plus.K, a2_sk=M if plus.trans_a else 1,
                          b2_sn=1 if plus.trans_b else plus.K, b2_sk=N if plus.trans_b else 1, rel2=plus.alpha / alpha)
            second.update(A2=plus.A, B2=plus.B)
        if blocks is not None:
            if blocks.n:
                params.update(seg_n1=blocks.n[0], seg_n2=blocks.n[1])
            if blocks.k:
                params.update(seg_k1=blocks.k[0], seg_k2=blocks.k[1])
            if blocks.r and plus is not None:
                params.update(r2=blocks.r, a2_blk=blocks.a2_block, a2_sm=blocks.r, a2_sk=1,
                              b2_off0=blocks.b2_offsets[0], b2_off1=blocks.b2_offsets[1], b2_off2=blocks.b2_offsets[2],
                              b2_sn=blocks.b2_strides[0], b2_sk=blocks.b2_strides[1], b2_diag=int(blocks.b2_diagonal))
        return self._split_k(kernel, grid, params, splits, A, B, C, slices, **second)

    def _split_k(self, kernel: Kernel, grid: tuple[int, int], params: dict, splits: int | None,
                 A: Buffer, B: Buffer, C: Buffer, slices: tuple[int, int] | None = None,
                 **more: Buffer) -> list[Dispatch]:
        """One dispatch of a matmul kernel over `grid`, or, when few tiles face a long K, one per
        K split into scratch and matmul_reduce to add them (with the caller's alpha and beta);
        or one into the caller's slices (see matmul)."""
        M, N, K = params["M"], params["N"], params["K"]
        tile_k = kernel.source.constant("TILE_K")
        if slices is not None:
            count, stride = slices
            k_split = -(-math.ceil(K / count) // tile_k) * tile_k if K else tile_k
            return [kernel.dispatch(self.device, grid + (count,), dict(params, k_split=k_split, c_sz=stride),
                                    A=A, B=B, C=C, **more)]
        if splits is None:
            splits = self._auto_splits(grid[0] * grid[1], K, thin=kernel.entry_point == "matmul_thin")
        k_split = -(-math.ceil(K / splits) // tile_k) * tile_k
        splits = math.ceil(K / k_split) if K else 1
        params = dict(params, k_split=k_split, c_sz=M * N)
        if splits == 1:
            return [kernel.dispatch(self.device, grid, params, A=A, B=B, C=C, **more)]
        scratch = self._scratch(splits * M * N)
        c_in = more.get("C_in") if params.get("c_in") else None
        return [
            kernel.dispatch(self.device, grid + (splits,), dict(params, alpha=1.0, beta=0.0), A=A, B=B, C=scratch,
                            **more),
            self._reduce(C, scratch, M * N, splits, params["alpha"], params["beta"], c_in),
        ]

    @staticmethod
    def _auto_splits(tiles: int, K: int, thin: bool) -> int:
        """How many ways to split K for a product of `tiles` workgroups (see SPLIT_* and THIN_*):
        the thin kernels (little work per tile) spread K over many workgroups."""
        if thin:
            if tiles >= THIN_SPLIT_BELOW_TILES:
                return 1
            return max(1, min(K // THIN_MIN_K_PER_SPLIT, THIN_TARGET_GROUPS // tiles))
        if tiles < SPLIT_BELOW_TILES and K >= SPLIT_MIN_K:
            return max(1, min(K // SPLIT_MIN_K_PER_SPLIT, SPLIT_TARGET_GROUPS // tiles))
        return 1

    def _reduce(self, C: Buffer, partial: Buffer, MN: int, splits: int, alpha: float, beta: float,
                c_in: Buffer | None = None) -> Dispatch:
        """matmul_reduce: C = alpha · Σ of `splits` partials + beta · (c_in or C)."""
        # Enough invocations to keep the partials' loads in flight: small products with many
        # splits give each element several (`ways`), summed in workgroup memory.
        ways = 1
        while ways * 2 <= min(splits, REDUCE_MAX_WAYS) and MN * ways * 2 <= REDUCE_TARGET_INVOCATIONS:
            ways *= 2
        if ways == 1 and MN % 4 == 0 and "matmul_reduce4" in self.k:  # large: four elements per invocation
            return self._elementwise("matmul_reduce4", MN // 4, dict(MN4=MN // 4, splits=splits, alpha=alpha, beta=beta,
                                                                      c_in=int(c_in is not None)),
                                     partial=partial, C_in=c_in if c_in is not None else partial, C=C)
        reduce = dict(MN=MN, splits=splits, ways=ways, alpha=alpha, beta=beta, c_in=int(c_in is not None))
        return self._elementwise("matmul_reduce", MN * ways, reduce, partial=partial,
                                 C_in=c_in if c_in is not None else partial, C=C)

    def _route(self, M: int, N: int, K: int, a_sk: int, b_sn: int, A: Buffer, B: Buffer, slices) -> str:
        """Which kernel computes a product: matmul_rows (≤ 16 columns of rows read along K),
        matmul_cols (≤ 16 rows or columns, both operands read across K: weight gradients),
        matmul_thin (≤ 16 rows or columns otherwise) or the tiled matmul."""
        thin = self.k.get("matmul_thin")  # absent only in the start-up self-check's Ops
        f32 = A.dtype == "f32" and B.dtype == "f32"
        if self._rv(N) and M > MAX_ROWS_OUTPUTS and a_sk == 1 and K % 4 == 0 and slices is None and f32:
            return "matmul_rows"
        if (a_sk == M and b_sn == 1 and M > 1 and f32
                and (self._rv(M) and N % 4 == 0 or self._rv(N) and M % 4 == 0)):
            return "matmul_cols"
        if thin and min(M, N) <= thin.source.constant("TILE_M"):
            return "matmul_thin"
        return "matmul"

    def _rv(self, R: int) -> int:
        """The prepared matmul_rows / matmul_cols pipeline for R ≤ 16 outputs: its RV (vec4s of
        outputs), the smallest compiled one that holds R; 0 if none."""
        return min((rv for rv in self.rows if 4 * rv >= R), default=0) if R <= MAX_ROWS_OUTPUTS else 0

    def _matmul_cols(self, C, A, B, M, N, K, alpha, beta, splits, slices) -> list[Dispatch]:
        """matmul_cols.wgsl for op(A)[M, K] · op(B)[N, K]ᵀ with A stored [K, M] and B [K, N]:
        the ≤ 16-wide one is U, the other Y (C written through strides as Uᵀ·Y or its transpose)."""
        if self._rv(M) and N % 4 == 0:  # C[j = m, n] = Σ_t A[t, m] · B[t, n]
            U, Y, R, cols, c_strides = A, B, M, N, (N, 1)
        else:  # C[m, j = n]: U = B, Y = A, written transposed
            U, Y, R, cols, c_strides = B, A, N, M, (1, N)
        kernel = self.cols[self._rv(R)]
        width = kernel.source.constant("COLS4") * 4
        grid = (math.ceil(cols / width), 1)
        params = dict(K=K, R=R, N=cols, u_st=R, u_sj=1, y_st=cols, c_sj=c_strides[0], c_sn=c_strides[1],
                      alpha=alpha, beta=beta)
        phases = kernel.source.constant("PHASES")
        if slices is not None:
            count, stride = slices
            return [kernel.dispatch(self.device, grid + (count,), dict(params, k_split=-(-K // count), c_sz=stride),
                                    U=U, Y=Y, C=C)]
        if splits is None:
            splits = self._auto_splits(grid[0], K, thin=True)
        k_split = -(-math.ceil(K / splits) // phases) * phases if K else phases
        splits = math.ceil(K / k_split) if K else 1
        if splits == 1:
            return [kernel.dispatch(self.device, grid, dict(params, k_split=max(K, 1), c_sz=0), U=U, Y=Y, C=C)]
        scratch = self._scratch(splits * M * N)
        return [kernel.dispatch(self.device, grid + (splits,), dict(params, alpha=1.0, beta=0.0, k_split=k_split,
                                                                     c_sz=M * N), U=U, Y=Y, C=scratch),
                self._reduce(C, scratch, M * N, splits, alpha, beta)]

    def _matmul_rows(self, C, X, W, T, R, K, w_strides, alpha, beta) -> Dispatch:
        """matmul_rows.wgsl: C[T, R ≤ 16] = alpha · X[T, K] · op(W)ᵀ + beta · C, X's rows contiguous."""
        kernel = self.rows[self._rv(R)]
        rows = kernel.source.constant("ROWS")
        params = dict(T=T, R=R, K=K, x_st=K, w_sj=w_strides[0], w_sk=w_strides[1], c_st=R, alpha=alpha, beta=beta)
        return kernel.dispatch(self.device, grid_1d(math.ceil(T / rows)), params, X=X, W=W, C=C)

    def sum_slices(self, out: Buffer, parts: Buffer, count: int, n: int) -> Dispatch:
        """out[n] = Σ_z parts[z·n … z·n + n) (the slices matmul(…, slices=(count, n)) filled)."""
        return self._reduce(out, parts, n, count, 1.0, 0.0)

    def _matmul_thin(self, C, A, B, M, N, K, a_strides, b_strides, alpha, beta, splits, slices=None) -> list[Dispatch]:
        """matmul_thin.wgsl for products with ≤ 16 rows, or ≤ 16 columns computed as Cᵀ = B·Aᵀ."""
        src = self.k["matmul_thin"].source
        c_strides = (N, 1)
        if M > src.constant("TILE_M"):  # few columns: swap the operands, write the transpose
            M, N, A, B, a_strides, b_strides, c_strides = N, M, B, A, b_strides, a_strides, (1, N)
        if A.dtype == "f16" and B.dtype == "f16":
            raise ValueError("matmul: at most one operand may hold float16 weights")
        if A.dtype in QUANT_DTYPES:
            raise ValueError(f"matmul: a quantized weight ({A.label}) is read as B only; {M}×{N}×{K} would need it as A")
        kernel = self._reader("matmul_thin", B) or (
            self.f16[("matmul_thin", "A_F16")] if A.dtype == "f16" else
            self.f16[("matmul_thin", "B_F16")] if B.dtype == "f16" else self.k["matmul_thin"])
        params = dict(M=M, N=N, K=K, a_sm=a_strides[0], a_sk=a_strides[1], b_sn=b_strides[0], b_sk=b_strides[1],
                      c_sm=c_strides[0], c_sn=c_strides[1], alpha=alpha, beta=beta, **self._scales(B, "b_"))
        return self._split_k(kernel, (math.ceil(N / src.constant("TILE_N")), 1), params, splits, A, B, C, slices)

    def _scratch(self, floats: int) -> Buffer:
        box = self._scratch_box
        if box[0] is None or box[0].size < floats * 4:
            # Grown, never shrunk; dispatches already recorded keep the smaller one alive.
            box[0] = self.device.create_buffer(max(floats * 4, 1 << 20), label="matmul.split_k")
        return box[0]

    def bias_add(self, y: Buffer, bias: Buffer, T: int, N: int) -> Dispatch:
        """y[T, N] += bias[N]."""
        return self._elementwise("bias_add", T * N, dict(T=T, N=N), bias=bias, y=y)

    # -- transformer layers -------------------------------------------------------------------
    def rmsnorm(self, y: Buffer, rstd: Buffer, x: Buffer, w: Buffer, T: int, C: int, eps: float,
                w_offset: float = 0.0, residual: Buffer | None = None, bias: Buffer | None = None) -> Dispatch:
        """y = norm(x) · (w + w_offset), or residual + that. With `bias`, LayerNorm: x centred
        on its mean first, the bias added."""
        params = dict(T=T, C=C, eps=eps, w_offset=w_offset, add_residual=int(residual is not None),
                      center=int(bias is not None))
        return self._rows("rmsnorm", T, params, x=x, w=w, b=bias if bias is not None else w, y=y, rstd=rstd,
                          residual=residual if residual is not None else x)

    def rmsnorm_backward(self, dx: Buffer, x: Buffer, w: Buffer, rstd: Buffer, dy: Buffer, T: int, C: int,
                         accumulate: bool = False, residual: Buffer | None = None, w_offset: float = 0.0,
                         center: bool = False) -> Dispatch:
        """dx (+)= the norm's input gradient; with `residual`, dx = residual + it (no copy first);
        `center`: of LayerNorm."""
        mode = 2 if residual is not None else int(accumulate)
        return self._rows("rmsnorm_backward", T, dict(T=T, C=C, accumulate=mode, w_offset=w_offset, center=int(center)),
                          x=x, w=w, rstd=rstd, dy=dy, residual=residual if residual is not None else dy, dx=dx)

    def rope(self, x: Buffer, pos: Buffer, inv_freq: Buffer, T: int, H: int, D: int, backward: bool = False,
             y: Buffer | None = None, H2: int = 0) -> Dispatch:
        """Rotate x [T, H, D] in place, and y [T, H2, D] in the same dispatch (queries and keys)."""
        if y is None:
            y, H2 = self._spare(), 0
        return self._elementwise("rope", T * (H + H2) * (D // 2), dict(T=T, H=H, H2=H2, D=D, sign=-1.0 if backward else 1.0),
                                 pos=pos, inv_freq=inv_freq, x=x, y=y)

    def _spare(self) -> Buffer:
        """A small buffer bound where a kernel's optional output is unused."""
        if self._spare_buffer is None:
            self._spare_buffer = self.device.create_buffer(256, label="spare")
        return self._spare_buffer

    def glu(self, h: Buffer, gate: Buffer, up: Buffer | None, N: int, act: str = "silu") -> Dispatch:
        """h = act(gate) · up, act one of GLU_ACTIVATIONS; without `up`, h = act(gate)."""
        params = dict(N=N, act=GLU_ACTIVATIONS.index(act), gated=int(up is not None))
        return self._elementwise("glu", N, params, gate=gate, up=up if up is not None else gate, h=h)

    def glu_backward(self, dgate: Buffer, dup: Buffer | None, gate: Buffer, up: Buffer | None, dh: Buffer, N: int,
                     act: str = "silu") -> Dispatch:
        """Without `up` (h = act(gate)), only dgate."""
        gated = up is not None
        params = dict(N=N, act=GLU_ACTIVATIONS.index(act), gated=int(gated))
        return self._elementwise("glu_backward", N, params, gate=gate, up=up if gated else gate, dh=dh, dgate=dgate,
                                 dup=dup if gated else self._spare())

    def embedding(self, out: Buffer, ids: Buffer, table: Buffer, T: int, C: int, V: int, scale: float = 1.0,
                  accumulate: bool = False) -> Dispatch:
        """out (+)= table[ids] · scale."""
        kernel = self._reader("embedding", table) or (self.f16[("embedding", "TABLE_F16")] if table.dtype == "f16" else None)
        params = dict(T=T, C=C, V=V, scale=scale, accumulate=int(accumulate), **self._scales(table))
        return self._elementwise("embedding", T * C, params, kernel, ids=ids, table=table, out=out)

    def transpose(self, out: Buffer, x: Buffer, R: int, K: int, first: int = 0, N: int | None = None) -> Dispatch:
        """out[N, R] = columns first…first+N−1 of x[R, K], transposed (all K by default)."""
        N = K - first if N is None else N
        return self._elementwise("transpose", N * R, dict(R=R, K=K, first=first, N=N), x=x, out=out)

    # -- quantized weights (QUANT_DTYPES) ----------------------------------------------------------
    def _reader(self, entry: str, weight: Buffer) -> Kernel | None:
        """The pipeline of `entry` that reads `weight`'s quantized dtype (None: not quantized)."""
        if weight.dtype not in QUANT_DTYPES:
            return None
        if (entry, weight.dtype) not in self.q:
            raise ValueError(f"{entry}: no pipeline for {weight.dtype} weights; call Ops.prepare(quant=...) first")
        return self.q[(entry, weight.dtype)]

    @staticmethod
    def _scales(weight: Buffer, prefix: str = "") -> dict:
        """The Params fields that locate a quantized weight's scales (zeros otherwise)."""
        if weight.dtype not in QUANT_DTYPES:
            return {f"{prefix}scales": 0, f"{prefix}groups": 0}
        codes, groups, _ = quant_layout(weight.dtype, weight.numel)
        return {f"{prefix}scales": codes, f"{prefix}groups": groups}

    def quantized_buffer(self, dtype: str, rows: int, cols: int, label: str) -> Buffer:
        """An empty buffer for a [rows, cols] weight quantized as `dtype`."""
        buffer = self.device.create_buffer(quant_layout(dtype, rows * cols)[2] * 4, label=label)
        buffer.dtype, buffer.numel = dtype, rows * cols
        return buffer

    def _quantize_params(self, out: Buffer, rows: int, cols: int, kind: int = 0, head_dim: int = 0) -> dict:
        codes, groups, _ = quant_layout(out.dtype, rows * cols)
        return dict(rows=rows, cols=cols, kind=kind, head_dim=head_dim, scales=codes, groups=groups)

    def repack(self, out: Buffer, src: Buffer, gguf_type: str, rows: int, cols: int, head_dim: int = 0) -> Dispatch:
        """out (quantized_buffer of GGUF_TYPES[gguf_type][1]) ← the [rows, cols] tensor's GGUF blocks,
        every value exact; head_dim undoes llama.cpp's q/k row permutation."""
        kind, dtype = GGUF_TYPES[gguf_type]
        unit = 256 if gguf_type.endswith("_K") else 32
        if out.dtype != dtype or out.numel != rows * cols or cols % unit:
            raise ValueError(f"repack: {gguf_type} [{rows}, {cols}] goes into a {dtype} buffer of {rows * cols} values")
        return self._elementwise("repack", rows * (cols // unit), self._quantize_params(out, rows, cols, kind, head_dim),
                                 src=src, out=out)

    def quantize(self, out: Buffer, x: Buffer, rows: int, cols: int) -> Dispatch:
        """out (quantized_buffer of "nf4" or "q8_0") ← x [rows, cols] float32: bitsandbytes NF4, or
        ggml's Q8_0 (cols a multiple of 32)."""
        if out.dtype == "nf4":
            return self._elementwise("quantize_nf4", -(-rows * cols // 64), self._quantize_params(out, rows, cols),
                                     src=x, out=out)
        if out.dtype != "q8_0" or cols % 32:
            raise ValueError(f"quantize: to nf4, or q8_0 with columns in 32s (got {out.dtype}, {cols} columns)")
        return self._elementwise("quantize_q8_0", rows * cols // 32, self._quantize_params(out, rows, cols),
                                 src=x, out=out)

    def to_ggml(self, out: Buffer, x: Buffer, gguf_type: str, rows: int, cols: int, head_dim: int = 0) -> Dispatch:
        """out ← x [rows, cols] float32 as a GGUF file's blocks of `gguf_type` (GGML_QUANTIZERS),
        ggml's reference quantizer, rows permuted as llama.cpp stores q/k when head_dim > 0. `out`
        holds ggml_bytes(...) rounded up to a whole pair of blocks."""
        if gguf_type not in GGML_QUANTIZERS or cols % 32:
            raise ValueError(f"to_ggml: {gguf_type} of [{rows}, {cols}]: choose {', '.join(GGML_QUANTIZERS)}, "
                             f"columns in 32s")
        params = dict(rows=rows, cols=cols, kind=GGML_QUANTIZERS[gguf_type], head_dim=head_dim, scales=0, groups=0)
        return self._elementwise("to_ggml", -(-rows * cols // 64), params, src=x, out=out)

    def random_quantized(self, out: Buffer, rows: int, cols: int, seed: int) -> Dispatch:
        """Random benchmark weights written straight in `out`'s quantized layout."""
        params = self._quantize_params(out, rows, cols, kind=seed)
        return self._elementwise("random_layout", quant_layout(out.dtype, rows * cols)[2], params,
                                 self._reader("random_layout", out), src=self._spare(), out=out)

    def dequantize(self, out: Buffer, src: Buffer, rows: int, cols: int) -> Dispatch:
        """out [rows, cols] float32 ← a quantized weight."""
        return self._elementwise("dequantize", rows * cols, self._quantize_params(src, rows, cols),
                                 self._reader("dequantize", src), src=src, out=out)

    def quantize_nbits(self, q: Buffer, scales: Buffer, zp: Buffer, w: Buffer, N: int, K: int) -> list[Dispatch]:
        """w [N, K] float32 as onnxruntime's MatMulNBits 4-bit blocks of 32: q [N, blocks, 16]
        bytes, scales [N · blocks] f32, zp one byte per u32 word [N · ceil(blocks / 2)] (keep
        each word's low byte)."""
        blocks = -(-K // 32)
        return [self._elementwise("quantize_nbits", N * -(-blocks // 2), dict(N=N, K=K), W=w, Q=q, scales=scales, zp=zp)]

    # -- DoRA (Liu et al. 2024, as PEFT's use_dora) ---------------------------------------------
    def dora_norm(self, n: Buffer, W: Buffer, A: Buffer | None, B: Buffer | None, N: int, K: int, r: int = 0,
                  s: float = 0.0) -> Dispatch:
        """n[N] = the rows' norms of W[N, K] + s · B[N, r] · A[r, K] (W float32 or float16; s = 0:
        of W alone, A and B unused)."""
        if W.dtype in QUANT_DTYPES:
            raise ValueError("dora_norm reads float32 or float16 weights: dequantize a quantized one first")
        kernel = self.f16[("dora_norm", "W_F16")] if W.dtype == "f16" else self.k["dora_norm"]
        if W.dtype == "f16" and ("dora_norm", "W_F16") not in self.f16:
            raise ValueError("dora_norm: no float16 pipeline; call Ops.prepare(f16_weights=True) first")
        spare = self._spare()
        return kernel.dispatch(self.device, grid_1d(N), dict(N=N, K=K, r=r, s=s if r else 0.0),
                               W=W, A=A if r else spare, B=B if r else spare, norms=n)

    def dora_scale(self, y: Buffer, x: Buffer, m: Buffer, n: Buffer, rows: int, cols: int, by_row: bool = False,
                   res: Buffer | None = None, bias: Buffer | None = None) -> Dispatch:
        """y = (m / n) · x per column of x[rows, cols] (+ res + bias), or with by_row per row."""
        spare = self._spare()
        params = dict(rows=rows, cols=cols, by_row=int(by_row), has_res=int(res is not None), has_bias=int(bias is not None))
        return self._elementwise("dora_scale", rows * cols, params, x=x, m=m, norms=n, res=res or spare,
                                 bias=bias or spare, y=y)

    def dora_grad(self, dm: Buffer, dy: Buffer, p: Buffer, n: Buffer, T: int, N: int, accumulate: bool = False) -> Dispatch:
        """dm[N] (+)= Σ_t dy[t, :] · p[t, :] / n (DoRA's magnitude gradient, n held constant)."""
        return self._rows("dora_grad", -(-N // 64), dict(T=T, N=N, beta=1.0 if accumulate else 0.0), dy=dy, p=p,
                          norms=n, dm=dm)

    # -- AdaLoRA (Zhang et al. 2023, as PEFT's AdaLoraModel and RankAllocator) ---------------------
    # Every kernel covers all M modules of the adapter through `table` (LoraState.adalora_table);
    # R is the largest module rank, the triplets (a singular value with its A row and B column)
    # are numbered module by module.
    def adalora_apply(self, eff: Buffer, lora: Buffer, table: Buffer, M: int, R: int) -> Dispatch:
        """eff's B regions ← B · diag(E) of every module (what the model multiplies by)."""
        return self.k["adalora_apply"].dispatch(self.device, (R, M), dict(M=M), adalora_table=table, lora=lora, eff=eff)

    def adalora_grad(self, grads: Buffer, lora: Buffer, table: Buffer, M: int, R: int) -> Dispatch:
        """The gradients of eff's B → those of B and E, in place (dE = colsum(dEff ∘ B), dB = dEff · E)."""
        return self.k["adalora_grad"].dispatch(self.device, (R, M), dict(M=M), adalora_table=table, lora=lora,
                                               grads=grads)

    def orth_reg(self, grads: Buffer, fro: Buffer, gram: Buffer, lora: Buffer, table: Buffer, step: Buffer, M: int,
                 R: int, max_rows: int, weight: float) -> list[Dispatch]:
        """The orthogonality regulariser weight · mean over every A and B of ‖AAᵀ − I‖_F, ‖BᵀB − I‖_F:
        its gradient added to `grads` (raw, divided by step's grad_scale), each norm in fro [M, 2]."""
        c = weight / (2 * M)
        return [self.k["orth_gram"].dispatch(self.device, (R * R, M, 2), dict(M=M, R=R), adalora_table=table,
                                             lora=lora, gram=gram),
                self.k["orth_grad"].dispatch(self.device, (max(R, -(-max_rows // 64)), M, 2), dict(M=M, R=R, c=c),
                                             adalora_table=table, lora=lora, gram=gram, step=step, grads=grads,
                                             fro=fro)]

    def orth_sum(self, history: Buffer, fro: Buffer, step: Buffer, M: int, weight: float) -> Dispatch:
        """history[step.slot] ← the regulariser's value, weight / (2M) · Σ fro."""
        return self.k["orth_sum"].dispatch(self.device, (1,), dict(count=2 * M, c=weight / (2 * M)), fro=fro,
                                           step=step, history=history)

    def ada_ipt(self, ema: Buffer, unc: Buffer, lora: Buffer, grads: Buffer, clip: Buffer, ctl: Buffer, N: int,
                beta1: float, beta2: float) -> Dispatch:
        """The importance's moving averages over the flat adapter, when ctl[0] says so."""
        params = dict(N=N, beta1=beta1, beta2=beta2, one_minus_beta1=1.0 - beta1, one_minus_beta2=1.0 - beta2)
        return self._elementwise("ada_ipt", N, params, lora=lora, grads=grads, clip=clip, ctl=ctl, ema=ema, unc=unc)

    def ada_prune(self, lora: Buffer, mask: Buffer, scores: Buffer, threshold: Buffer, ema: Buffer, unc: Buffer,
                  ctl: Buffer, table: Buffer, M: int, R: int, N: int) -> list[Dispatch]:
        """ctl[1] == 1: every triplet's score, the ctl[2]-th smallest as the threshold, the triplets
        at or below it pruned (E ← 0) and the mask stored; ctl[1] == 2: E ← 0 where the mask is 0."""
        return [self.k["ada_score"].dispatch(self.device, (R, M), dict(M=M), adalora_table=table, ema=ema, unc=unc,
                                             ctl=ctl, scores=scores),
                self.k["ada_kth"].dispatch(self.device, (-(-N // 64),), dict(N=N), scores=scores, ctl=ctl,
                                           threshold=threshold),
                self.k["ada_mask"].dispatch(self.device, (-(-R // 64), M), dict(M=M), adalora_table=table,
                                            scores=scores, threshold=threshold, ctl=ctl, mask=mask, lora=lora)]

    def to_f16(self, y: Buffer, x: Buffer, N: int) -> Dispatch:
        """y (u32 words) ← float16 pairs of x[N]."""
        return self._elementwise("to_f16", -(-N // 2), dict(N=N), x=x, y=y)

    def embedding_backward(self, d_table: Buffer, ids: Buffer, d_out: Buffer, T: int, C: int, V: int) -> Dispatch:
        """d_table[ids[t]] += d_out[t] (accumulates)."""
        return self._elementwise("embedding_backward", C, dict(T=T, C=C, V=V), ids=ids, d_out=d_out, d_table=d_table)

    def cross_entropy(self, loss: Buffer, logits: Buffer, targets: Buffer, R: int, V: int, scale: float) -> Dispatch:
        """Per-row loss into `loss`; `logits` is overwritten by scale · d(loss)/d(logits)."""
        return self._rows("cross_entropy", R, dict(R=R, V=V, scale=scale), targets=targets, logits=logits, loss=loss)

    def _attention_params(self, B: int, S: int, Hq: int, Hkv: int, D: int, scale: float | None = None) -> dict:
        """`scale` multiplies q·k (default 1/√D; Gemma: query_pre_attn_scalar^−½)."""
        if Hq % Hkv or D > MAX_HEAD_DIM:
            raise ValueError(f"attention needs Hq divisible by Hkv and head size ≤ {MAX_HEAD_DIM} (got Hq={Hq}, Hkv={Hkv}, D={D})")
        return dict(B=B, S=S, Hq=Hq, Hkv=Hkv, D=D, scale=1.0 / math.sqrt(D) if scale is None else scale)

    @staticmethod
    def _windowed(S: int, window: int) -> bool:
        """A sliding window that hides keys in a sequence of S (the portable kernels apply it; the
        tiled ones see every earlier key, so they serve windows of S or more)."""
        return 0 < window < S

    def attention(self, o: Buffer, lse: Buffer, q: Buffer, k: Buffer, v: Buffer,
                  B: int, S: int, Hq: int, Hkv: int, D: int, scale: float | None = None, window: int = 0) -> Dispatch:
        """Causal attention; `window` > 0: each query sees only the `window` latest keys (itself included)."""
        params = self._attention_params(B, S, Hq, Hkv, D, scale)
        tiled = self._by_head_dim.get(("attention_lanes", D)) or self._by_head_dim.get(("attention_tiled", D))
        if tiled and not self._windowed(S, window):
            return self._tiles(tiled, B * Hq, S, params, q=q, k=k, v=v, o=o, lse=lse)
        return self._elementwise("attention", B * Hq * S, {**params, "window": window},
                                 self._head_dim_kernel("attention", D), q=q, k=k, v=v, o=o, lse=lse)

    def _tiles(self, kernel: Kernel, heads: int, S: int, params: dict, **buffers: Buffer) -> Dispatch:
        """A tiled attention kernel's grid: per head, blocks of ROWS rows (workgroup size / LANES
        in the subgroup kernels)."""
        lanes = kernel.constants.get("LANES")
        rows = kernel.workgroup_size[0] // lanes if lanes else kernel.source.constant("ROWS")
        return kernel.dispatch(self.device, grid_1d(heads * -(-S // rows)), params, **buffers)

    def attention_cached(self, o: Buffer, q: Buffer, k_cache: Buffer, v_cache: Buffer, T: int, start: int,
                         Hq: int, Hkv: int, D: int, scale: float | None = None, window: int = 0) -> Dispatch:
        params = self._attention_params(1, 1, Hq, Hkv, D, scale)
        params = dict(T=T, start=start, Hq=Hq, Hkv=Hkv, D=D, scale=params["scale"], window=window)
        return self._elementwise("attention_cached", T * Hq, params, q=q, k_cache=k_cache, v_cache=v_cache, o=o)

    def attention_backward(self, dq: Buffer, dk: Buffer, dv: Buffer, delta: Buffer, dk_heads: Buffer, dv_heads: Buffer,
                           q: Buffer, k: Buffer, v: Buffer, o: Buffer, d_o: Buffer, lse: Buffer,
                           B: int, S: int, Hq: int, Hkv: int, D: int, scale: float | None = None,
                           window: int = 0) -> list[Dispatch]:
        """dq, dk, dv; dk_heads and dv_heads ([B·S, Hq·D]) hold each query head's share of dk and
        dv before a kv group's shares are added (unused when Hq == Hkv). `scale`, `window` as in
        attention."""
        params = self._attention_params(B, S, Hq, Hkv, D, scale)
        shared = Hq == Hkv
        dq_tiled = (self._by_head_dim.get(("attention_backward_dq_lanes", D))
                    or self._by_head_dim.get(("attention_backward_dq_tiled", D)))
        dkv_tiled = (self._by_head_dim.get(("attention_backward_dkv_lanes", D))
                     or self._by_head_dim.get(("attention_backward_dkv_tiled", D)))
        if dq_tiled and dkv_tiled and not self._windowed(S, window):
            cmds = [
                self._tiles(dq_tiled, B * Hq, S, params, q=q, k=k, v=v, o=o, d_o=d_o, lse=lse, dq=dq, delta=delta),
                self._tiles(dkv_tiled, B * Hq, S, params, q=q, k=k, v=v, d_o=d_o, lse=lse, delta=delta,
                            dk_heads=dk if shared else dk_heads, dv_heads=dv if shared else dv_heads),
            ]
        else:
            params = {**params, "window": window}
            cmds = [
                self._elementwise("attention_backward_dq", B * Hq * S, params, self._head_dim_kernel("attention_backward_dq", D),
                                  q=q, k=k, v=v, o=o, d_o=d_o, lse=lse, dq=dq, delta=delta),
                self._elementwise("attention_backward_dk", B * Hq * S, params, self._head_dim_kernel("attention_backward_dk", D),
                                  q=q, k=k, v=v, d_o=d_o, lse=lse, delta=delta, dk_heads=dk if shared else dk_heads),
                self._elementwise("attention_backward_dv", B * Hq * S, params, self._head_dim_kernel("attention_backward_dv", D),
                                  q=q, k=k, d_o=d_o, lse=lse, dv_heads=dv if shared else dv_heads),
            ]
        if not shared:
            sums = dict(T=B * S, Hq=Hq, Hkv=Hkv, D=D)
            cmds.append(self._elementwise("head_sum", 2 * B * S * Hkv * D, sums, x=dk_heads, x2=dv_heads, out=dk, out2=dv))
        return cmds

    # -- optimisation -------------------------------------------------------------------------
    def grad_norm(self, clip: Buffer, partial: Buffer, grad: Buffer, step: Buffer, history: Buffer, N: int,
                  max_norm: float) -> list[Dispatch]:
        """clip ← [norm, factor, halted] of the gradient grad · step.grad_scale, halted once the
        step's loss (history[step.slot]) or norm is not finite (see grad_clip.wgsl);
        `partial` holds sumsq_partials(N) floats."""
        P = self.sumsq_partials(N)
        return [
            self._rows("sumsq", P, dict(N=N), x=grad, partial=partial),
            self.k["grad_clip"].dispatch(self.device, (1, 1), dict(P=P, max_norm=max_norm),
                                         partial=partial, step=step, history=history, clip=clip),
        ]

    def loss_sum(self, history: Buffer, loss: Buffer, step: Buffer, T: int) -> Dispatch:
        """history[step[4]] += Σ loss[:T]."""
        return self.k["loss_sum"].dispatch(self.device, (1, 1), dict(T=T), loss=loss, step=step, history=history)

    def sumsq_partials(self, N: int) -> int:
        return max(1, math.ceil(N / self.k["sumsq"].source.constant("CHUNK")))

    def adamw(self, param: Buffer, m: Buffer, v: Buffer, grad: Buffer, step: Buffer, clip: Buffer, last_good: Buffer,
              N: int, *, beta1: float, beta2: float, eps: float, weight_decay: float) -> Dispatch:
        """One AdamW step of param, m, v; last_good ← param first (or, halted, param ← last_good)."""
        params = dict(N=N, beta1=beta1, beta2=beta2, one_minus_beta1=1 - beta1, one_minus_beta2=1 - beta2,
                      eps=eps, weight_decay=weight_decay)
        return self._elementwise("adamw", N, params,
                                 grad=grad, step=step, clip=clip, param=param, m=m, v=v, last_good=last_good)

    def sgd(self, param: Buffer, grad: Buffer, step: Buffer, clip: Buffer, last_good: Buffer, N: int, *,
            weight_decay: float) -> Dispatch:
        return self._elementwise("sgd", N, dict(N=N, weight_decay=weight_decay), grad=grad, step=step, clip=clip,
                                 param=param, last_good=last_good)

    def dropout(self, y: Buffer, x: Buffer, step: Buffer, N: int, p: float, stream: int, accumulate: bool = False) -> Dispatch:
        """y (+)= x · mask / (1 − p), the mask drawn from (step[5] seed, stream)."""
        return self._elementwise("dropout", N, dict(N=N, p=p, stream=stream, accumulate=int(accumulate)), x=x, step=step, y=y)

    def lora_init(self, A: Buffer, offset: int, N: int, fan_in: int, seed: int, std: float = 0.0) -> Dispatch:
        """A[offset : offset + N] seeded: U(±1/√fan_in), or with std > 0 N(0, std²)."""
        return self._elementwise("lora_init", N, dict(N=N, offset=offset, seed=seed, bound=1.0 / math.sqrt(fan_in),
                                                      sigma=std), A=A)


async def measure_subgroup_size(device: Device, library: KernelLibrary) -> int:
    """The narrowest subgroup one 64-invocation workgroup runs with (0 if it cannot be told)."""
    import struct

    try:
        kernel = await library.get("subgroup_size")
    except Exception:  # a driver without the subgroup built-ins: no subgroup kernels then
        return 0
    out = device.create_buffer(64 * 4, label="subgroup_size")
    device.submit([kernel.dispatch(device, (1, 1), {"N": 64}, out=out)])
    sizes = struct.unpack("<64I", await device.read_buffer(out))
    device.destroy_buffer(out)
    return min(sizes)
