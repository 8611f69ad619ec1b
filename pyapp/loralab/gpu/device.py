"""The one GPU API that LoRA Lab's engine uses, implemented by two drivers.

`native.py` drives wgpu-native through wgpu-py on CPython; `browser.py` drives `navigator.gpu`
through Pyodide's JS FFI inside the engine worker. Both mirror WebGPU, so this layer stays thin:
buffers, compiled compute pipelines, recorded command lists submitted at once, and readback.
Nothing here knows about models; nothing here imports numpy or js.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

from ..errors import UserError


class GpuError(UserError):
    """A GPU operation failed; the message says what and, where known, why."""


class DeviceLostError(GpuError):
    """The GPU device went away (driver reset, tab backgrounded too long, out of memory)."""


class MissingCapabilityError(GpuError):
    """The adapter cannot provide a limit or feature LoRA Lab needs."""


class ShaderError(GpuError):
    """A WGSL module failed to compile or its pipeline failed validation."""


class BufferUsage:
    """WebGPU's GPUBufferUsage flags (identical values in both drivers)."""

    MAP_READ = 0x0001
    MAP_WRITE = 0x0002
    COPY_SRC = 0x0004
    COPY_DST = 0x0008
    UNIFORM = 0x0040
    STORAGE = 0x0080
    QUERY_RESOLVE = 0x0200


STORAGE_RW = BufferUsage.STORAGE | BufferUsage.COPY_SRC | BufferUsage.COPY_DST

# Limits (WebGPU's camelCase names) that every kernel may rely on: the WebGPU defaults that
# SwiftShader, lavapipe and every browser GPU provide. Devices ask for the adapter's maximum.
REQUIRED_LIMITS = {
    "maxStorageBufferBindingSize": 128 * 2**20,
    "maxBufferSize": 256 * 2**20,
    "maxComputeWorkgroupStorageSize": 16384,
    "maxComputeInvocationsPerWorkgroup": 256,
    "maxStorageBuffersPerShaderStage": 8,
    "maxComputeWorkgroupsPerDimension": 65535,
}
# Limits requested at the adapter's maximum rather than the default.
RAISED_LIMITS = (
    "maxStorageBufferBindingSize",
    "maxBufferSize",
    "maxComputeWorkgroupStorageSize",
    "maxComputeInvocationsPerWorkgroup",
    "maxComputeWorkgroupSizeX",
    "maxComputeWorkgroupSizeY",
    "maxStorageBuffersPerShaderStage",
)
# Optional features used when present (kernels keep a fallback without them).
OPTIONAL_FEATURES = ("shader-f16", "subgroups", "timestamp-query")


@dataclass(frozen=True)
class AdapterInfo:
    driver: str  # "native" (wgpu-native) or "browser" (navigator.gpu)
    vendor: str
    architecture: str
    device: str
    description: str
    features: frozenset[str]
    limits: dict[str, int] = field(hash=False)
    subgroup_min_size: int = 0  # 0: unknown

    @property
    def has_f16(self) -> bool:
        return "shader-f16" in self.features

    @property
    def has_subgroups(self) -> bool:
        return "subgroups" in self.features

    def summary(self) -> dict:
        """A plain dict for display and for the worker protocol."""
        return {
            "driver": self.driver,
            "vendor": self.vendor,
            "architecture": self.architecture,
            "device": self.device,
            "description": self.description,
            "f16": self.has_f16,
            "subgroups": self.has_subgroups,
            "subgroup_min_size": self.subgroup_min_size,
            "features": sorted(self.features),
            "limits": {name: self.limits.get(name) for name in RAISED_LIMITS + ("maxComputeWorkgroupsPerDimension",)},
        }


def check_limits(limits: dict[str, int]) -> None:
    """Raise MissingCapabilityError naming every limit below what LoRA Lab needs."""
    short = [
        f"{name} is {limits.get(name, 0):,} (LoRA Lab needs at least {need:,})"
        for name, need in REQUIRED_LIMITS.items()
        if limits.get(name, 0) < need
    ]
    if short:
        raise MissingCapabilityError("This GPU cannot run LoRA Lab: " + "; ".join(short) + ".")


def requested_limits(adapter_limits: dict[str, int]) -> dict[str, int]:
    return {name: adapter_limits[name] for name in RAISED_LIMITS if name in adapter_limits}


# Offsets of buffer views are multiples of this: the largest minStorageBufferOffsetAlignment
# WebGPU allows, so views made once work on every adapter.
VIEW_ALIGNMENT = 256


@dataclass(eq=False)
class Buffer:
    """A GPU buffer, or a view of `size` bytes at `offset` into one (bound and copied as if it
    were a buffer of its own). Hashes by identity: make views once, not per dispatch."""

    handle: object
    size: int
    usage: int
    label: str
    offset: int = 0
    dtype: str = "f32"  # "f16": float16 pairs packed in u32 words; ops.QUANT_DTYPES: quantized (frozen weights)
    numel: int = 0  # the values a quantized weight holds

    def view(self, offset: int, size: int, label: str | None = None) -> "Buffer":
        if offset % VIEW_ALIGNMENT or offset < 0 or offset + size > self.size:
            raise GpuError(
                f"view [{offset}, {offset + size}) of {self.label!r} ({self.size} bytes) must lie inside it "
                f"and start at a multiple of {VIEW_ALIGNMENT}"
            )
        return Buffer(self.handle, size, self.usage, label or f"{self.label}[{offset}:{offset + size}]", self.offset + offset,
                      self.dtype)


@dataclass(frozen=True)
class Dispatch:
    pipeline: object
    bind_group: object
    grid: tuple[int, int, int]
    kernel: str = ""  # entry point name, for profiles


class Recording:
    """Commands submitted many times unchanged (a training micro-batch, the optimizer's step):
    a submit may hold recordings among its commands. A driver may keep each one encoded its own
    way, once: the browser's keeps it as one JS array, so that replaying it costs a single JS call
    instead of several FFI calls per dispatch."""

    def __init__(self, commands):
        self.commands = tuple(expand(commands))
        self.dispatches = sum(1 for c in self.commands if isinstance(c, Dispatch))
        self.encoded = None  # the driver's form, made on the first submit


def expand(commands):
    """The commands with every Recording among them replaced by its own."""
    for command in commands:
        if isinstance(command, Recording):
            yield from command.commands
        else:
            yield command


@dataclass(frozen=True)
class Copy:
    src: Buffer
    src_offset: int
    dst: Buffer
    dst_offset: int
    size: int


@dataclass(eq=False)
class Timer:
    """`count` GPU timestamp slots and the buffer they are resolved into (driver handles)."""
    query_set: object
    resolve: object
    count: int


@dataclass(frozen=True)
class Timestamp:
    """In a command list: writes into slot `index` of `timer` the GPU time at which all work
    submitted before it has finished (the end of an empty compute pass)."""
    timer: Timer
    index: int


class Device(abc.ABC):
    """A WebGPU device. Subclasses implement the driver primitives (the `_` methods)."""

    info: AdapterInfo

    def __init__(self, info: AdapterInfo):
        self.info = info
        self.lost_reason: str | None = None
        self._uniforms: dict[bytes, Buffer] = {}
        self.allocated_bytes = 0  # live buffers created through this layer
        self.peak_bytes = 0
        self.submits = 0  # counters for benchmarks
        self.dispatches = 0
        self._bind_groups: dict[tuple, object] = {}

    # -- driver primitives ------------------------------------------------------------------
    @abc.abstractmethod
    def _create_buffer(self, size: int, usage: int, label: str) -> object: ...

    @abc.abstractmethod
    def _write_buffer(self, handle: object, offset: int, data) -> None: ...

    @abc.abstractmethod
    async def _compile(self, code: str, entry_point: str, label: str, constants: dict[str, float]) -> object: ...

    @abc.abstractmethod
    def _create_bind_group(self, pipeline: object, entries: list[tuple[int, Buffer]]) -> object: ...

    @abc.abstractmethod
    def _submit(self, commands: list[Dispatch | Copy]) -> None: ...

    @abc.abstractmethod
    async def _read_buffer(self, handle: object, offset: int, size: int, label: str) -> bytes: ...

    @abc.abstractmethod
    def _destroy_buffer(self, handle: object) -> None: ...

    @abc.abstractmethod
    def _create_timer(self, count: int) -> Timer: ...

    @abc.abstractmethod
    async def _read_timer(self, timer: Timer, count: int) -> list[float]: ...  # nanoseconds

    # -- the API the engine uses ------------------------------------------------------------
    def _check_alive(self) -> None:
        if self.lost_reason is not None:
            raise DeviceLostError(f"The GPU device was lost ({self.lost_reason}); work on it stopped, and a new device must be started.")

    def create_buffer(self, size: int, *, label: str, usage: int = STORAGE_RW) -> Buffer:
        self._check_alive()
        size = max(4, (size + 3) // 4 * 4)  # WebGPU wants sizes in multiples of 4
        max_size = self.info.limits.get("maxBufferSize", 0)
        if size > max_size:
            raise GpuError(f"buffer {label!r} needs {size:,} bytes; this GPU allows at most {max_size:,} per buffer")
        buffer = Buffer(self._create_buffer(size, usage, label), size, usage, label)
        self.allocated_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.allocated_bytes)
        return buffer

    def write_buffer(self, buffer: Buffer, data, offset: int = 0) -> None:
        """Upload bytes (or, in the browser, a JS ArrayBuffer/typed array) at `offset`."""
        self._check_alive()
        self._write_buffer(buffer.handle, buffer.offset + offset, data)

    def create_buffer_with_data(self, data, *, label: str, usage: int = STORAGE_RW) -> Buffer:
        buffer = self.create_buffer(len(data), label=label, usage=usage)
        self.write_buffer(buffer, data)
        return buffer

    def destroy_buffer(self, buffer: Buffer) -> None:
        """Free a whole buffer (not a view) and the bind groups cached for it."""
        self.forget_bind_groups(buffer)
        self._destroy_buffer(buffer.handle)
        self.allocated_bytes -= buffer.size

    async def read_buffer(self, buffer: Buffer, offset: int = 0, size: int | None = None) -> bytes:
        """Copy a range back to the host. Costs a round trip: never inside a training step."""
        self._check_alive()
        size = buffer.size - offset if size is None else size
        if offset % 4 or offset + size > buffer.size:
            raise GpuError(f"cannot read {size} bytes at offset {offset} of buffer {buffer.label!r} ({buffer.size} bytes)")
        data = await self._read_buffer(buffer.handle, buffer.offset + offset, (size + 3) // 4 * 4, buffer.label)
        return data[:size]

    async def compile(self, code: str, entry_point: str, *, label: str, constants: dict[str, float] | None = None) -> object:
        """A compute pipeline; `constants` set the WGSL `override` values (specialisation)."""
        self._check_alive()
        return await self._compile(code, entry_point, label, dict(constants or {}))

    def uniform(self, data: bytes) -> Buffer:
        """An immutable uniform buffer holding `data`, shared by every dispatch that uses the same bytes."""
        buffer = self._uniforms.get(data)
        if buffer is None:
            buffer = self.create_buffer_with_data(data, label="params", usage=BufferUsage.UNIFORM | BufferUsage.COPY_DST)
            self._uniforms[data] = buffer
        return buffer

    def bind_group(self, pipeline: object, entries: list[tuple[int, Buffer]]) -> object:
        # Buffers hash by identity and the key holds them, so a key never outlives its buffers.
        key = (id(pipeline), tuple(entries))
        group = self._bind_groups.get(key)
        if group is None:
            group = self._create_bind_group(pipeline, entries)
            self._bind_groups[key] = group
        return group

    def forget_bind_groups(self, buffer: Buffer) -> None:
        """Drop cached bind groups that reference `buffer` (call before destroying it)."""
        for key in [k for k in self._bind_groups if any(buf.handle is buffer.handle for _, buf in k[1])]:
            del self._bind_groups[key]

    def create_timer(self, count: int) -> Timer | None:
        """Slots for GPU timestamps (Timestamp commands), or None where the adapter lacks the
        timestamp-query feature (callers then time on the host)."""
        self._check_alive()
        return self._create_timer(count) if "timestamp-query" in self.info.features else None

    def destroy_timer(self, timer: Timer) -> None:
        timer.query_set.destroy()
        self._destroy_buffer(timer.resolve)

    async def read_timer(self, timer: Timer, count: int) -> list[float]:
        """The first `count` timestamps of `timer`, in nanoseconds on the GPU's clock."""
        self._check_alive()
        return await self._read_timer(timer, count)

    def submit(self, commands: list) -> None:
        """Encode `commands` (Dispatch, Copy, Timestamp, Recording) into one command buffer and
        submit it."""
        self._check_alive()
        if commands:
            self._submit(commands)
            self.submits += 1
            self.dispatches += sum(c.dispatches if isinstance(c, Recording) else isinstance(c, Dispatch)
                                   for c in commands)
