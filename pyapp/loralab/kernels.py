"""Kernel registry: WGSL files in `wgsl/` -> compiled, cached compute pipelines.

A kernel's interface is declared once, in its WGSL: the bindings of group 0 (by variable name)
and the `Params` uniform struct. This module reads both from the source, so Python never
restates them: callers pass buffers by their WGSL names and params by field name.

Conventions every `wgsl/*.wgsl` file follows (tests/test_kernels_registry.py checks them):
binding 0 is `var<uniform> params: Params` (scalar u32/i32/f32 fields), then read-only storage
inputs, then read_write outputs.

Declarations several kernels share live once in `wgsl/include/NAME.wgsl`, pulled in by a line
`//! include NAME` (each at most once per kernel): the per-step scalars (`struct Step`, which
Python packs by field name like Params: `step_layout`) and the PCG hash.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from .gpu.device import Buffer, Device, Dispatch

_BINDING = re.compile(
    r"@group\((\d+)\)\s*@binding\((\d+)\)\s*var<(\w+)(?:\s*,\s*(\w+))?>\s*(\w+)\s*:\s*([^;]+);"
)
_STRUCT = re.compile(r"struct\s+Params\s*\{([^}]*)\}")
_INCLUDE = re.compile(r"^//!\s*include\s+(\w+)\s*$", re.M)
_FIELD = re.compile(r"(\w+)\s*:\s*(\w+)")
_ENTRY = re.compile(r"@compute\s+@workgroup_size\(([^)]*)\)\s*fn\s+(\w+)")
_COMMENT = re.compile(r"//[^\n]*")
_PARAM_FORMATS = {"u32": "I", "i32": "i", "f32": "f"}


@dataclass(frozen=True)
class Binding:
    index: int
    name: str
    space: str  # "uniform" or "storage"
    access: str  # "read", "read_write" (storage) or "" (uniform)
    type: str


@dataclass(frozen=True)
class KernelSource:
    """What a WGSL file declares: entry points, bindings and the Params layout."""

    name: str
    code: str
    bindings: tuple[Binding, ...]
    params: tuple[tuple[str, str], ...]
    entry_points: dict[str, tuple[int, int, int]]
    # each entry point's @workgroup_size as written (names of consts or overrides, or literals)
    workgroup_tokens: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def parse(cls, name: str, code: str) -> "KernelSource":
        bare = _COMMENT.sub("", code)
        bindings = []
        for group, index, space, access, var, typ in _BINDING.findall(bare):
            if group != "0":
                raise ValueError(f"wgsl/{name}.wgsl: only bind group 0 is supported, found @group({group})")
            bindings.append(Binding(int(index), var, space, access or "", typ.strip()))
        bindings.sort(key=lambda b: b.index)
        struct_match = _STRUCT.search(bare)
        params = tuple(_FIELD.findall(struct_match.group(1))) if struct_match else ()
        for field_name, typ in params:
            if typ not in _PARAM_FORMATS:
                raise ValueError(f"wgsl/{name}.wgsl: Params.{field_name} has type {typ}; only u32, i32, f32 are allowed")
        entries, tokens = {}, {}
        for size, entry in _ENTRY.findall(bare):
            tokens[entry] = tuple(d.strip() for d in size.split(","))
            dims = [int(eval_const(d, bare)) for d in tokens[entry]]
            entries[entry] = tuple(dims + [1] * (3 - len(dims)))
        if not entries:
            raise ValueError(f"wgsl/{name}.wgsl declares no @compute entry point")
        return cls(name, code, tuple(bindings), params, entries, tokens)

    def constant(self, name: str) -> int:
        """The value of an integer `const` of the WGSL (tile sizes that decide the dispatch grid)."""
        return eval_const(name, _COMMENT.sub("", self.code))

    def pack_params(self, values: dict[str, float | int]) -> bytes:
        """The Params struct as bytes (padded to 16), every field given exactly once."""
        names = [n for n, _ in self.params]
        missing = [n for n in names if n not in values]
        extra = [n for n in values if n not in names]
        if missing or extra:
            raise TypeError(f"kernel {self.name}: params missing {missing}, unknown {extra}")
        fmt = "<" + "".join(_PARAM_FORMATS[t] for _, t in self.params)
        data = struct.pack(fmt, *(values[n] for n in names))
        return data.ljust(max(16, -(-len(data) // 16) * 16), b"\0")


@dataclass(frozen=True)
class StructLayout:
    """A WGSL struct of scalar fields (u32/i32/f32, 4 bytes each, in declared order), packed by
    field name: the host side of a storage buffer the kernels read as that struct."""

    name: str
    fields: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, struct_name: str, code: str, where: str) -> "StructLayout":
        match = re.search(rf"struct\s+{struct_name}\s*\{{([^}}]*)\}}", _COMMENT.sub("", code))
        if match is None:
            raise ValueError(f"{where} declares no struct {struct_name}")
        fields = tuple(_FIELD.findall(match.group(1)))
        bad = [f"{n}: {t}" for n, t in fields if t not in _PARAM_FORMATS]
        if bad:
            raise ValueError(f"{where}: {struct_name} fields must be u32, i32 or f32 ({', '.join(bad)})")
        return cls(struct_name, fields)

    @property
    def size(self) -> int:
        return 4 * len(self.fields)

    def pack(self, **values: float) -> bytes:
        names = [n for n, _ in self.fields]
        if sorted(values) != sorted(names):
            raise TypeError(f"{self.name}: fields are {names}, got {sorted(values)}")
        return struct.pack("<" + "".join(_PARAM_FORMATS[t] for _, t in self.fields), *(values[n] for n in names))


def eval_const(token: str, code: str) -> int:
    """A workgroup size: an integer literal, a `const NAME = <int>u;` in the same file, or an
    `override NAME: u32 = <int>u;`'s default."""
    token = token.rstrip("u")
    if token.isdigit():
        return int(token)
    match = re.search(rf"(?:const|override)\s+{re.escape(token)}\s*(?::\s*\w+)?\s*=\s*(\d+)u?\s*;", code)
    if not match:
        raise ValueError(f"cannot resolve workgroup size {token!r}")
    return int(match.group(1))


class Kernel:
    """One entry point of one WGSL file, compiled on a device."""

    def __init__(self, source: KernelSource, entry_point: str, pipeline: object, constants: dict | None = None):
        self.source = source
        self.entry_point = entry_point
        self.constants = dict(constants or {})  # the override values it was compiled with
        sizes = source.entry_points[entry_point]
        tokens = source.workgroup_tokens.get(entry_point, ())
        self.workgroup_size = tuple(int(self.constants.get(t, n)) for t, n in zip(tokens, sizes)) + sizes[len(tokens):]
        self.pipeline = pipeline

    def dispatch(self, device: Device, grid: tuple[int, ...], params: dict | None = None, **buffers: Buffer) -> Dispatch:
        """A recorded dispatch of `grid` workgroups with buffers bound by their WGSL names."""
        entries = []
        given = dict(buffers)
        for binding in self.source.bindings:
            if binding.space == "uniform":
                entries.append((binding.index, device.uniform(self.source.pack_params(params or {}))))
            elif binding.name in given:
                entries.append((binding.index, given.pop(binding.name)))
            else:
                raise TypeError(f"kernel {self.entry_point}: buffer {binding.name!r} not given")
        if given:
            raise TypeError(f"kernel {self.entry_point}: unknown buffers {sorted(given)}")
        grid3 = tuple(grid) + (1,) * (3 - len(grid))
        limit = device.info.limits.get("maxComputeWorkgroupsPerDimension", 65535)
        if any(g > limit for g in grid3):
            raise ValueError(f"kernel {self.entry_point}: grid {grid3} exceeds {limit} workgroups per dimension")
        return Dispatch(self.pipeline, device.bind_group(self.pipeline, entries), grid3, self.entry_point)


SourceReader = Callable[[str], Awaitable[str]]


class KernelLibrary:
    """Loads WGSL through `read_source(name)` and compiles each entry point once per device."""

    def __init__(self, device: Device, read_source: SourceReader):
        self.device = device
        self.read_source = read_source
        self._sources: dict[str, KernelSource] = {}
        self._kernels: dict[tuple[str, str], Kernel] = {}

    async def source(self, name: str) -> KernelSource:
        if name not in self._sources:
            self._sources[name] = KernelSource.parse(name, await self.expand(name, await self.read_source(name)))
        return self._sources[name]

    async def expand(self, name: str, code: str) -> str:
        """`code` with each `//! include NAME` line replaced by wgsl/include/NAME.wgsl."""
        seen: set[str] = set()

        async def text(match: re.Match) -> str:
            include = match.group(1)
            if include in seen:
                raise ValueError(f"wgsl/{name}.wgsl includes {include} twice")
            seen.add(include)
            return await self.read_source(f"include/{include}")

        parts, last = [], 0
        for match in _INCLUDE.finditer(code):
            parts += [code[last:match.start()], await text(match)]
            last = match.end()
        return "".join(parts) + code[last:]

    async def step_layout(self) -> StructLayout:
        """The per-step scalars' layout, read from wgsl/include/step.wgsl."""
        return StructLayout.parse("Step", await self.read_source("include/step"), "wgsl/include/step.wgsl")

    async def get(self, name: str, entry_point: str | None = None, constants: dict[str, float] | None = None) -> Kernel:
        """The compiled kernel `entry_point` (default: the file's name) of `wgsl/<name>.wgsl`,
        specialised by `constants` (values of its `override` declarations)."""
        entry_point = entry_point or name
        key = (name, entry_point, tuple(sorted((constants or {}).items())))
        if key not in self._kernels:
            source = await self.source(name)
            if entry_point not in source.entry_points:
                raise KeyError(f"wgsl/{name}.wgsl has no entry point {entry_point!r} (has {sorted(source.entry_points)})")
            pipeline = await self.device.compile(source.code, entry_point, label=f"{name}.{entry_point}", constants=constants)
            self._kernels[key] = Kernel(source, entry_point, pipeline, constants)
        return self._kernels[key]


def default_wgsl_dir():
    """`wgsl/` beside `pyapp/` in a checkout (LORALAB_WGSL_DIR overrides)."""
    import os
    from pathlib import Path

    return Path(os.environ.get("LORALAB_WGSL_DIR") or Path(__file__).resolve().parents[2] / "wgsl")


def directory_reader(directory=None) -> SourceReader:
    """A SourceReader over a local folder of `.wgsl` files (CPython)."""
    directory = directory or default_wgsl_dir()

    async def read(name: str) -> str:
        path = directory / f"{name}.wgsl"
        if not path.exists():
            raise FileNotFoundError(f"kernel source {path} is missing")
        return path.read_text(encoding="utf-8")

    return read
