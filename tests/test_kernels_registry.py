"""Every WGSL file follows the binding conventions the registry relies on."""

from __future__ import annotations

import struct

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


def test_shared_declarations_live_in_one_include_each():
    """The Step struct and the PCG hash are declared only in wgsl/include/ and pulled in by the
    kernels that use them; the Step layout Python packs is the one the WGSL declares."""
    import re

    from loralab.kernels import StructLayout

    include = default_wgsl_dir() / "include"
    for name in ("step", "pcg"):
        assert (include / f"{name}.wgsl").is_file()
    for path in WGSL_FILES:
        code = path.read_text()
        assert not re.search(r"struct\s+Step\b|fn\s+pcg\b", code), f"{path.name} declares a shared helper again"
        assert re.search(r"var<storage, read> step: array", code) is None, f"{path.name}: bind step as Step"
        if re.search(r"\bstep\.\w+", code):
            assert "//! include step" in code, path.name
    layout = StructLayout.parse("Step", (include / "step.wgsl").read_text(), "step.wgsl")
    assert [n for n, _ in layout.fields] == ["lr", "bc1", "bc2", "grad_scale", "slot", "seed"]
    assert layout.pack(lr=0.5, bc1=1, bc2=1, grad_scale=0.25, slot=3, seed=7) == struct.pack("<6f", 0.5, 1, 1, 0.25, 3, 7)
    with pytest.raises(TypeError, match="fields are"):
        layout.pack(lr=1.0)


def test_no_helper_is_copied_between_kernels():
    """A function written identically in two kernel files belongs in wgsl/include/."""
    import re

    seen: dict[str, str] = {}
    for path in WGSL_FILES:
        for body in re.findall(r"^fn \w+\(.*?^}\n", path.read_text(), re.S | re.M):
            assert body not in seen, f"{path.name} repeats a function of {seen[body]}: move it to wgsl/include/"
            seen[body] = path.name


def test_includes_expand_once(kernels, run):
    code = run(kernels.expand("t", "// t\n//! include pcg\nfn main() {}\n"))
    assert code.count("fn pcg(") == 1 and "//! include" not in code
    with pytest.raises(ValueError, match="includes pcg twice"):
        run(kernels.expand("t", "//! include pcg\n//! include pcg\n"))
