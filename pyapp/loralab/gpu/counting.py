"""A device that allocates nothing and runs nothing: it counts the bytes asked of it.

The plan's memory estimate builds a run (adapter, network, trainer, the step's recorded commands)
with the same code as training, on this device, so the estimate cannot drift from what training
allocates. It reports the adapter's limits (a buffer over maxBufferSize fails here as it would on
the GPU) and keeps the bytes by buffer label for a breakdown.
"""

from __future__ import annotations

from .device import AdapterInfo, Buffer, Device, GpuError, Timer


class CountingDevice(Device):
    def __init__(self, info: AdapterInfo):
        super().__init__(info)
        self.by_label: dict[str, int] = {}  # bytes asked for under each label (destroyed or not)

    def _create_buffer(self, size: int, usage: int, label: str) -> object:
        self.by_label[label] = self.by_label.get(label, 0) + size
        return None

    def _write_buffer(self, handle: object, offset: int, data) -> None:
        pass

    async def _compile(self, code: str, entry_point: str, label: str, constants: dict[str, float]) -> object:
        raise GpuError("the counting device compiles nothing; record with pipelines from a real device")

    def _create_bind_group(self, pipeline: object, entries: list[tuple[int, Buffer]]) -> object:
        return None

    def _submit(self, commands) -> None:
        pass

    async def _read_buffer(self, handle: object, offset: int, size: int, label: str) -> bytes:
        return bytes(size)

    def _destroy_buffer(self, handle: object) -> None:
        pass

    def create_timer(self, count: int) -> Timer | None:
        return None  # (timestamps are a few bytes; runs without them behave the same)

    def _create_timer(self, count: int) -> Timer:
        raise AssertionError("unreachable: create_timer returns None")

    async def _read_timer(self, timer: Timer, count: int) -> list[float]:
        return [0.0] * count
