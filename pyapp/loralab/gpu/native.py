"""The native driver: wgpu-native through wgpu-py (CPython: tests, CLI, benchmarks)."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import struct
import tempfile

import wgpu
from wgpu.backends.wgpu_native import _api

from .device import (
    OPTIONAL_FEATURES,
    AdapterInfo,
    Buffer,
    BufferUsage,
    Copy,
    Device,
    GpuError,
    ShaderError,
    Timer,
    Timestamp,
    check_limits,
    expand,
    requested_limits,
)

# What Naga adds to every kernel: nothing. Its forced loop bounding (a 64-bit counter and exit
# test in every loop) keeps NVIDIA's compiler from unrolling, and its clamps of workgroup-array
# indices cost ~3% more (H100, SmolLM2 8 × 512: 183 → 162 → 157 ms per step). Both guard
# against kernels we do not write: every loop in wgsl/ ends by its own bound, every
# workgroup-array index is in range by construction (each kernel is checked against numpy), and
# storage-buffer accesses stay bounded by Vulkan's robustBufferAccess, which wgpu enables.
RUNTIME_CHECKS = _api.lib.WGPUShaderRuntimeChecks_None

# wgpu-py spells a few feature names differently from the WebGPU spec.
_FEATURE_ALIASES = {"subgroup": "subgroups"}


def _runtime_dir() -> None:
    """Give the Vulkan drivers a valid XDG_RUNTIME_DIR (a private temporary folder) where the
    environment has none: Mesa's window-system code otherwise prints "XDG_RUNTIME_DIR is invalid"
    on every start, a warning about displays a compute-only program never opens."""
    current = os.environ.get("XDG_RUNTIME_DIR")
    if not current or not os.path.isdir(current):
        folder = tempfile.mkdtemp(prefix="loralab-runtime-")  # created mode 0700
        os.environ["XDG_RUNTIME_DIR"] = folder
        atexit.register(shutil.rmtree, folder, True)


def _camel(name: str) -> str:
    head, *rest = name.split("-")
    return head + "".join(part.capitalize() for part in rest)


def _kebab(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "-" + m.group(1).lower(), name)


class NativeDevice(Device):
    def __init__(self, adapter, device, info: AdapterInfo):
        super().__init__(info)
        self.adapter = adapter
        self.device = device

    @classmethod
    async def create(cls, power_preference: str = "high-performance") -> "NativeDevice":
        _runtime_dir()
        adapter = await wgpu.gpu.request_adapter_async(power_preference=power_preference)
        if adapter is None:
            raise GpuError("No WebGPU adapter found (wgpu-native): install a Vulkan driver (Debian: mesa-vulkan-drivers).")
        limits = {_camel(k): v for k, v in adapter.limits.items()}
        check_limits(limits)
        native_features = {f for f in adapter.features}
        features = {_FEATURE_ALIASES.get(f, f) for f in native_features}
        wanted = [f for f in native_features if _FEATURE_ALIASES.get(f, f) in OPTIONAL_FEATURES]
        device = await adapter.request_device_async(
            label="loralab",
            required_features=wanted,
            required_limits={_kebab(k): v for k, v in requested_limits(limits).items()},
        )
        raw = adapter.info
        info = AdapterInfo(
            driver="native",
            vendor=raw.get("vendor", ""),
            architecture=raw.get("architecture", ""),
            device=raw.get("device", ""),
            description=f"{raw.get('description', '')} ({raw.get('backend_type', '')}, {raw.get('adapter_type', '')})",
            features=frozenset(features),
            limits={_camel(k): v for k, v in device.limits.items()},
            # wgpu-py 0.32 spells it "stackgroup_min_size"
            subgroup_min_size=int(raw.get("subgroup_min_size", raw.get("stackgroup_min_size", 0)) or 0),
        )
        return cls(adapter, device, info)

    def _create_buffer(self, size: int, usage: int, label: str):
        return self.device.create_buffer(size=size, usage=usage, label=label)

    def _write_buffer(self, handle, offset: int, data) -> None:
        self.device.queue.write_buffer(handle, offset, data)

    async def _compile(self, code: str, entry_point: str, label: str, constants: dict[str, float]):
        # Naga (wgpu 0.32) has the subgroup built-ins once the device feature is on, but rejects
        # the WGSL `enable subgroups;` directive that Chrome's compiler requires.
        code = code.replace("enable subgroups;", "")
        try:
            module = self._shader_module(code, label)
            stage = {"module": module, "entry_point": entry_point}
            if constants:
                stage["constants"] = constants
            return self.device.create_compute_pipeline(layout="auto", compute=stage, label=label)
        except wgpu.GPUError as exc:
            raise ShaderError(f"kernel {label} ({entry_point}) failed to compile: {exc}") from exc

    def _shader_module(self, code: str, label: str):
        """A WGSL module compiled through wgpu-native's trusted entry point, with RUNTIME_CHECKS."""
        create = getattr(_api.libf, "wgpuDeviceCreateShaderModuleTrusted", None)
        if create is None:  # a wgpu-native without it
            return self.device.create_shader_module(code=code, label=label)
        source = _api.new_struct_p("WGPUShaderSourceWGSL *", code=_api.to_c_string_view(code))
        source[0].chain.next = _api.ffi.NULL
        source[0].chain.sType = _api.lib.WGPUSType_ShaderSourceWGSL
        descriptor = _api.new_struct_p("WGPUShaderModuleDescriptor *",
                                       nextInChain=_api.ffi.cast("WGPUChainedStruct *", source),
                                       label=_api.to_c_string_view(label))
        handle = create(self.device._internal, descriptor, RUNTIME_CHECKS)
        if handle == _api.ffi.NULL:
            raise wgpu.GPUError("shader module creation failed")
        return _api.GPUShaderModule(label, handle, self.device)

    def _create_bind_group(self, pipeline, entries: list[tuple[int, Buffer]]):
        return self.device.create_bind_group(
            layout=pipeline.get_bind_group_layout(0),
            entries=[
                {"binding": binding, "resource": {"buffer": buf.handle, "offset": buf.offset, "size": buf.size}}
                for binding, buf in entries
            ],
        )

    def _submit(self, commands) -> None:
        encoder = self.device.create_command_encoder()
        compute_pass, pipeline = None, None
        for command in expand(commands):
            if isinstance(command, Timestamp):
                if compute_pass is not None:
                    compute_pass.end()
                    compute_pass, pipeline = None, None
                writes = {"query_set": command.timer.query_set, "end_of_pass_write_index": command.index}
                encoder.begin_compute_pass(timestamp_writes=writes).end()
            elif isinstance(command, Copy):
                if compute_pass is not None:
                    compute_pass.end()
                    compute_pass, pipeline = None, None
                encoder.copy_buffer_to_buffer(
                    command.src.handle, command.src.offset + command.src_offset,
                    command.dst.handle, command.dst.offset + command.dst_offset, command.size,
                )
            else:
                if compute_pass is None:
                    compute_pass = encoder.begin_compute_pass()
                if command.pipeline is not pipeline:
                    compute_pass.set_pipeline(command.pipeline)
                    pipeline = command.pipeline
                compute_pass.set_bind_group(0, command.bind_group)
                compute_pass.dispatch_workgroups(*command.grid)
        if compute_pass is not None:
            compute_pass.end()
        self.device.queue.submit([encoder.finish()])

    async def _read_buffer(self, handle, offset: int, size: int, label: str) -> bytes:
        staging = self.device.create_buffer(size=size, usage=BufferUsage.MAP_READ | BufferUsage.COPY_DST)
        encoder = self.device.create_command_encoder()
        encoder.copy_buffer_to_buffer(handle, offset, staging, 0, size)
        self.device.queue.submit([encoder.finish()])
        await staging.map_async("READ")
        data = bytes(staging.read_mapped())
        staging.unmap()
        staging.destroy()
        return data

    def _destroy_buffer(self, handle) -> None:
        handle.destroy()

    def _create_timer(self, count: int) -> Timer:
        query_set = self.device.create_query_set(type="timestamp", count=count)
        resolve = self.device.create_buffer(size=8 * count, usage=BufferUsage.QUERY_RESOLVE | BufferUsage.COPY_SRC)
        return Timer(query_set, resolve, count)

    async def _read_timer(self, timer: Timer, count: int) -> list[float]:
        encoder = self.device.create_command_encoder()
        encoder.resolve_query_set(timer.query_set, 0, count, timer.resolve, 0)
        self.device.queue.submit([encoder.finish()])
        raw = await self._read_buffer(timer.resolve, 0, 8 * count, "timestamps")
        period = _api.lib.wgpuQueueGetTimestampPeriod(self.device.queue._internal)  # ns per tick
        return [tick * period for tick in struct.unpack(f"<{count}Q", raw)]
