"""The browser driver: `navigator.gpu` through Pyodide's JS FFI, inside the engine worker.

Only this module (with the worker entry and the UI) imports `js`/`pyodide`. JS errors are turned
into the device layer's exceptions here, at the boundary.
"""

from __future__ import annotations

import js  # type: ignore[import-not-found]
from pyodide.ffi import JsException, create_proxy, jsnull, to_js  # type: ignore[import-not-found]

from .device import (
    OPTIONAL_FEATURES,
    RAISED_LIMITS,
    REQUIRED_LIMITS,
    AdapterInfo,
    Buffer,
    BufferUsage,
    Copy,
    Device,
    GpuError,
    Recording,
    ShaderError,
    Timer,
    Timestamp,
    check_limits,
    requested_limits,
)

NO_WEBGPU = (
    "WebGPU is not available in this browser. LoRA Lab needs WebGPU: use Chrome or Edge 121 or newer "
    "(on Linux, enable it at chrome://flags/#enable-unsafe-webgpu and chrome://flags/#enable-vulkan, "
    "or start Chrome with --enable-unsafe-webgpu --enable-features=Vulkan)."
)
NO_ADAPTER = (
    "WebGPU is present but no GPU adapter is usable (it may be disabled or blocklisted). "
    "Check chrome://gpu; on Linux start Chrome with --enable-unsafe-webgpu --enable-features=Vulkan."
)


# Encodes and submits command lists kept as flat JS arrays (_encode): one call per submit, so a
# step's ~1,750 dispatches cost no FFI round trip each. Codes: 0 dispatch (pipeline, bind group,
# x, y, z), 1 copy (src, offset, dst, offset, size), 2 timestamp (query set, index).
_REPLAY = """
const encoder = device.createCommandEncoder();
let pass = null, pipeline = null;
for (const p of programs) {
  for (let i = 0; i < p.length;) {
    if (p[i] === 0) {
      if (pass === null) pass = encoder.beginComputePass();
      if (p[i + 1] !== pipeline) { pipeline = p[i + 1]; pass.setPipeline(pipeline); }
      pass.setBindGroup(0, p[i + 2]);
      pass.dispatchWorkgroups(p[i + 3], p[i + 4], p[i + 5]);
      i += 6;
      continue;
    }
    if (pass !== null) { pass.end(); pass = null; pipeline = null; }
    if (p[i] === 1) {
      encoder.copyBufferToBuffer(p[i + 1], p[i + 2], p[i + 3], p[i + 4], p[i + 5]);
      i += 6;
    } else {
      encoder.beginComputePass({timestampWrites: {querySet: p[i + 1], endOfPassWriteIndex: p[i + 2]}}).end();
      i += 3;
    }
  }
}
if (pass !== null) pass.end();
device.queue.submit([encoder.finish()]);
"""


def _absent(value) -> bool:
    """JS null and undefined (Pyodide maps them to jsnull and None)."""
    return value is None or value is jsnull


def _js(value):
    """A Python dict/list as a plain JS object/array (what WebGPU descriptors must be)."""
    return to_js(value, dict_converter=js.Object.fromEntries)


class BrowserDevice(Device):
    def __init__(self, adapter, device, info: AdapterInfo):
        super().__init__(info)
        self.adapter = adapter
        self.device = device
        self._on_lost = create_proxy(self._lost)  # kept alive as long as the device
        device.lost.then(self._on_lost)
        self._replay = None  # the JS function that encodes and submits (_REPLAY)

    def _lost(self, info) -> None:
        self.lost_reason = f"{info.reason}: {info.message}" if info.message else str(info.reason)

    @classmethod
    async def create(cls, power_preference: str = "high-performance") -> "BrowserDevice":
        gpu = getattr(js.navigator, "gpu", None)
        if _absent(gpu):
            raise GpuError(NO_WEBGPU)
        adapter = await gpu.requestAdapter(_js({"powerPreference": power_preference}))
        if _absent(adapter):
            raise GpuError(NO_ADAPTER)
        names = set(RAISED_LIMITS) | set(REQUIRED_LIMITS)
        limits = {name: int(getattr(adapter.limits, name)) for name in names if hasattr(adapter.limits, name)}
        check_limits(limits)
        features = frozenset(str(f) for f in js.Array.from_(adapter.features))
        wanted = [f for f in OPTIONAL_FEATURES if f in features]
        try:
            device = await adapter.requestDevice(
                _js({"label": "loralab", "requiredFeatures": wanted, "requiredLimits": requested_limits(limits)})
            )
        except JsException as exc:
            raise GpuError(f"The GPU refused a device with the limits LoRA Lab asked for: {exc}") from exc
        raw = adapter.info
        info = AdapterInfo(
            driver="browser",
            vendor=str(raw.vendor),
            architecture=str(raw.architecture),
            device=str(raw.device),
            description=str(raw.description),
            features=features,
            limits={name: int(getattr(device.limits, name)) for name in names if hasattr(device.limits, name)},
            subgroup_min_size=int(getattr(raw, "subgroupMinSize", 0) or 0),
        )
        return cls(adapter, device, info)

    def _create_buffer(self, size: int, usage: int, label: str):
        return self.device.createBuffer(_js({"size": size, "usage": usage, "label": label}))

    def _write_buffer(self, handle, offset: int, data) -> None:
        # bytes-like data is copied into JS once; JS ArrayBuffers/typed arrays go straight through.
        source = to_js(memoryview(data).cast("B")) if isinstance(data, (bytes, bytearray, memoryview)) else data
        self.device.queue.writeBuffer(handle, offset, source)

    async def _compile(self, code: str, entry_point: str, label: str, constants: dict[str, float]):
        self.device.pushErrorScope("validation")
        module = self.device.createShaderModule(_js({"code": code, "label": label}))
        compilation = await module.getCompilationInfo()
        errors = [
            f"line {m.lineNum}:{m.linePos}: {m.message}" for m in compilation.messages if str(m.type) == "error"
        ]
        pipeline = None
        if not errors:
            stage = {"module": module, "entryPoint": entry_point}
            if constants:
                stage["constants"] = constants
            pipeline = self.device.createComputePipeline(_js({"label": label, "layout": "auto", "compute": stage}))
        scope_error = await self.device.popErrorScope()
        if errors or not _absent(scope_error):
            detail = "; ".join(errors) if errors else str(scope_error.message)
            raise ShaderError(f"kernel {label} ({entry_point}) failed to compile: {detail}")
        return pipeline

    def _create_bind_group(self, pipeline, entries: list[tuple[int, Buffer]]):
        return self.device.createBindGroup(
            _js(
                {
                    "layout": pipeline.getBindGroupLayout(0),
                    "entries": [
                        {"binding": binding, "resource": {"buffer": buf.handle, "offset": buf.offset, "size": buf.size}}
                        for binding, buf in entries
                    ],
                }
            )
        )

    def _submit(self, commands) -> None:
        """One JS call: each Recording's encoded array (made on its first submit), the loose
        commands around them encoded now."""
        if self._replay is None:
            self._replay = js.Function.new("device", "programs", _REPLAY)
        programs, loose = [], []
        for command in commands:
            if isinstance(command, Recording):
                if loose:
                    programs.append(self._encode(loose))
                    loose = []
                if command.encoded is None:
                    command.encoded = self._encode(command.commands)
                programs.append(command.encoded)
            else:
                loose.append(command)
        if loose:
            programs.append(self._encode(loose))
        self._replay(self.device, to_js(programs))

    @staticmethod
    def _encode(commands):
        """Commands as one flat JS array in _REPLAY's codes."""
        flat: list = []
        for command in commands:
            if isinstance(command, Timestamp):
                flat += (2, command.timer.query_set, command.index)
            elif isinstance(command, Copy):
                flat += (1, command.src.handle, command.src.offset + command.src_offset,
                         command.dst.handle, command.dst.offset + command.dst_offset, command.size)
            else:
                flat += (0, command.pipeline, command.bind_group, *command.grid)
        return to_js(flat)

    async def _read_buffer(self, handle, offset: int, size: int, label: str) -> bytes:
        staging = self.device.createBuffer(_js({"size": size, "usage": BufferUsage.MAP_READ | BufferUsage.COPY_DST}))
        encoder = self.device.createCommandEncoder()
        encoder.copyBufferToBuffer(handle, offset, staging, 0, size)
        self.device.queue.submit(to_js([encoder.finish()]))
        try:
            await staging.mapAsync(js.GPUMapMode.READ)
        except JsException as exc:
            if self.lost_reason is None:  # the lost promise may settle just after the failed map
                import asyncio

                await asyncio.sleep(0.1)
            self._check_alive()
            raise GpuError(f"reading buffer {label!r} back failed: {exc}") from exc
        data = js.Uint8Array.new(staging.getMappedRange()).to_bytes()
        staging.unmap()
        staging.destroy()
        return data

    def _destroy_buffer(self, handle) -> None:
        handle.destroy()

    def _create_timer(self, count: int) -> Timer:
        query_set = self.device.createQuerySet(_js({"type": "timestamp", "count": count}))
        resolve = self.device.createBuffer(_js({"size": 8 * count,
                                                "usage": BufferUsage.QUERY_RESOLVE | BufferUsage.COPY_SRC}))
        return Timer(query_set, resolve, count)

    async def _read_timer(self, timer: Timer, count: int) -> list[float]:
        import struct

        encoder = self.device.createCommandEncoder()
        encoder.resolveQuerySet(timer.query_set, 0, count, timer.resolve, 0)
        self.device.queue.submit(to_js([encoder.finish()]))
        raw = await self._read_buffer(timer.resolve, 0, 8 * count, "timestamps")
        return [float(t) for t in struct.unpack(f"<{count}Q", raw)]  # WebGPU's are nanoseconds already
