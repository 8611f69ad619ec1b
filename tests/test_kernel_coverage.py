"""Every WGSL kernel is accounted for: the Ops call that dispatches it, its numpy twin in ref.py
(or the reason it has none) and the test that checks it against that reference. A new kernel
fails here until it is added to the table, with all three."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from loralab import ref
from loralab.ops import Ops

ROOT = Path(__file__).resolve().parents[1]
ATTENTION = ("attention", "ref.attention", "tests/test_ops.py::test_attention_forward_and_backward")
ATTENTION_BACKWARD = ("attention_backward", "ref.attention_backward", "tests/test_ops.py::test_attention_forward_and_backward")
MATMUL = "ref.matmul"
ADALORA = "tests/test_ops.py::test_adalora_kernels_like_numpy"
# kernel file: (Ops method, numpy twin or "-- why none", the test that checks it)
KERNELS = {
    "adamw": ("adamw", "ref.adamw", "tests/test_ops.py::test_adamw_steps"),
    "attention": ATTENTION,
    "attention_lanes": ATTENTION,
    "attention_tiled": ATTENTION,
    "attention_backward_dq": ATTENTION_BACKWARD,
    "attention_backward_dk": ATTENTION_BACKWARD,
    "attention_backward_dv": ATTENTION_BACKWARD,
    "attention_backward_dq_lanes": ATTENTION_BACKWARD,
    "attention_backward_dkv_lanes": ATTENTION_BACKWARD,
    "attention_backward_dq_tiled": ATTENTION_BACKWARD,
    "attention_backward_dkv_tiled": ATTENTION_BACKWARD,
    "head_sum": ATTENTION_BACKWARD,
    "attention_cached": ("attention_cached", "ref.attention_cached", "tests/test_ops.py::test_attention_with_kv_cache"),
    "bias_add": ("bias_add", "ref.bias_add", "tests/test_ops.py::test_bias_add"),
    "cross_entropy": ("cross_entropy", "ref.cross_entropy", "tests/test_ops.py::test_cross_entropy_loss_and_gradient"),
    "quantize": ("repack", "-- gguf-py's dequantizers and ref.nf4_quantize are the references",
                 "tests/formats/test_gguf.py::test_repacked_blocks_dequantize_exactly_as_gguf_py"),
    "dropout": ("dropout", "ref.dropout", "tests/test_ops.py::test_dropout_mask_scaling_and_accumulate"),
    "embedding": ("embedding", "ref.embedding", "tests/test_ops.py::test_embedding_lookup"),
    "embedding_backward": ("embedding_backward", "ref.embedding_backward",
                           "tests/test_ops.py::test_embedding_backward_sums_repeated_ids"),
    "grad_clip": ("grad_norm", "ref.grad_clip", "tests/test_ops.py::test_grad_norm_and_clip"),
    "sumsq": ("grad_norm", "ref.grad_clip", "tests/test_ops.py::test_grad_norm_and_clip"),
    "lora_init": ("lora_init", "ref.lora_init", "tests/test_ops.py::test_lora_init_is_seeded_uniform"),
    "loss_sum": ("loss_sum", "-- a sum into one slot: numpy's sum in the test",
                 "tests/test_ops.py::test_loss_sum_accumulates_into_the_step_slot"),
    "matmul": ("matmul", MATMUL, "tests/test_ops.py::test_matmul_transposes"),
    "matmul_cols": ("matmul", MATMUL, "tests/test_ops.py::test_matmul_cols"),
    "matmul_f16": ("matmul", MATMUL, "tests/test_ops.py::test_matmul_in_float16_arithmetic"),
    "matmul_rows": ("matmul", MATMUL, "tests/test_ops.py::test_matmul_rows"),
    "matmul_thin": ("matmul", MATMUL, "tests/test_ops.py::test_matmul_thin_products"),
    "matmul_reduce": ("matmul", MATMUL, "tests/test_ops.py::test_matmul_split_k"),
    "matmul_reduce4": ("matmul", MATMUL, "tests/test_ops.py::test_matmul_with_a_residual"),
    "dora_norm": ("dora_norm", "ref.dora_norm", "tests/test_ops.py::test_dora_kernels_like_numpy"),
    "dora_scale": ("dora_scale", "ref.dora_scale", "tests/test_ops.py::test_dora_kernels_like_numpy"),
    "dora_grad": ("dora_grad", "ref.dora_grad", "tests/test_ops.py::test_dora_kernels_like_numpy"),
    "quantize_nbits": ("quantize_nbits", "ref.quantize_nbits", "tests/test_ops.py::test_quantize_nbits_like_numpy"),
    "rmsnorm": ("rmsnorm", "ref.rmsnorm", "tests/test_ops.py::test_rmsnorm_forward_and_backward"),
    "rmsnorm_backward": ("rmsnorm_backward", "ref.rmsnorm_backward", "tests/test_ops.py::test_rmsnorm_forward_and_backward"),
    "rope": ("rope", "ref.rope", "tests/test_ops.py::test_rope_forward_and_inverse"),
    "transpose": ("transpose", "ref.transpose", "tests/test_ops.py::test_transpose_of_a_column_range"),
    "sgd": ("sgd", "ref.sgd", "tests/test_ops.py::test_sgd_step"),
    "subgroup_size": ("load", "-- a probe that measures the subgroup width, no maths",
                      "tests/gpu/test_device.py::test_the_subgroup_probe_measures_a_power_of_two"),
    "glu": ("glu", "ref.glu", "tests/test_ops.py::test_glu_forward_and_backward"),
    "glu_backward": ("glu_backward", "ref.glu_backward", "tests/test_ops.py::test_glu_forward_and_backward"),
    "adalora_apply": ("adalora_apply", "ref.adalora_apply", ADALORA),
    "adalora_grad": ("adalora_grad", "ref.adalora_grad", ADALORA),
    "orth_gram": ("orth_reg", "ref.orth_reg", ADALORA),
    "orth_grad": ("orth_reg", "ref.orth_reg", ADALORA),
    "orth_sum": ("orth_sum", "ref.orth_reg", ADALORA),
    "ada_ipt": ("ada_ipt", "ref.ada_ipt", ADALORA),
    "ada_score": ("ada_prune", "ref.ada_prune", ADALORA),
    "ada_kth": ("ada_prune", "ref.ada_prune", ADALORA),
    "ada_mask": ("ada_prune", "ref.ada_prune", ADALORA),
    "to_f16": ("to_f16", "-- numpy's float16 cast is the reference", "tests/test_ops.py::test_to_f16_rounds_like_numpy"),
}


def test_every_kernel_file_is_in_the_table():
    files = {p.stem for p in (ROOT / "wgsl").glob("*.wgsl")}
    assert files - set(KERNELS) == set(), "kernels without an entry"
    assert set(KERNELS) - files == set(), "entries without a kernel"


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_each_kernel_has_its_call_twin_and_test(kernel):
    method, twin, test = KERNELS[kernel]
    ops_source = inspect.getsource(inspect.getmodule(Ops))
    assert f'"{kernel}"' in ops_source, f"ops.py never names {kernel}"
    assert callable(getattr(Ops, method, None)), f"Ops has no {method}"
    if not twin.startswith("-- "):
        assert callable(getattr(ref, twin.removeprefix("ref."), None)), f"ref.py has no {twin}"
    path, name = test.split("::")
    tree = ast.parse((ROOT / path).read_text())
    functions = {f.name: ast.unparse(f) for f in tree.body if isinstance(f, ast.FunctionDef)}
    assert name in functions, f"{test} does not exist"
    body = functions[name]  # with the module's helpers it calls
    body += "".join(source for helper, source in functions.items() if helper != name and f"{helper}(" in body)
    if method != "load":  # the test drives the Ops call (and so the kernel)
        assert f".{method}(" in body, f"{test} never calls ops.{method}"
    if not twin.startswith("-- "):
        assert f"{twin}(" in body or f"ref.{twin.removeprefix('ref.')}" in body, f"{test} never compares with {twin}"
