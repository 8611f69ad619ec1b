"""Every WGSL file follows the binding conventions the registry relies on."""

from __future__ import annotations

import pytest

from loralab.kernels import KernelSource, default_wgsl_dir

WGSL_FILES = sorted(default_wgsl_dir().glob("*.wgsl"))


@pytest.mark.parametrize("path", WGSL_FILES, ids=lambda p: p.stem)
def test_binding_conventions(path):
    source = KernelSource.parse(path.stem, path.read_text())
    first, *rest = source.bindings
    assert (first.index, first.name, first.space) == (0, "params", "uniform")
    assert [b.index for b in source.bindings] == list(range(len(source.bindings))), "bindings must be dense"
    accesses = [b.access for b in rest]
    assert all(a in ("read", "read_write") for a in accesses)
    assert accesses == sorted(accesses, key=lambda a: a == "read_write"), "inputs come before outputs"
    assert source.code.lstrip().startswith("//"), "each kernel file starts with a header comment"


@pytest.mark.parametrize("path", WGSL_FILES, ids=lambda p: p.stem)
def test_every_entry_point_compiles(path, kernels, run):
    source = run(kernels.source(path.stem))
    for entry in source.entry_points:
        run(kernels.get(path.stem, entry))


def test_params_are_packed_in_declared_order():
    source = KernelSource.parse(
        "t", "struct Params { a: u32, b: f32, c: i32 }\n@compute @workgroup_size(64) fn t() {}"
    )
    assert source.pack_params({"a": 1, "b": 0.5, "c": -1}) == bytes.fromhex("01000000 0000003f ffffffff 00000000")
    assert source.entry_points == {"t": (64, 1, 1)}
    with pytest.raises(TypeError, match=r"missing \['c'\]"):
        source.pack_params({"a": 1, "b": 0.5})
