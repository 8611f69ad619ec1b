"""ONNX models written as protobuf bytes, in pure Python (it runs under Pyodide, which has no
`onnx` or `protobuf` wheel here).

ONNX's messages are protobuf; only the writer's side of the wire format is needed, and only the
fields a model with a graph, typed inputs and outputs, attributes and initializers uses (the field
numbers are onnx.proto's). The initializers' bytes are streamed: a model's size is known before
its weights are computed, so the header (every length included) is written first and each
initializer's raw bytes follow in turn, at most one of them on the host at a time. Models over
protobuf's 2 GB keep their initializers in one external data file beside the model, as ONNX's
external-data convention has it (`location`, `offset`, `length` per tensor).
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from ..errors import UsageError

# TensorProto.DataType
FLOAT, UINT8, INT8, INT32, INT64, BOOL, FLOAT16, BFLOAT16 = 1, 2, 3, 6, 7, 9, 10, 16
ITEM_BYTES = {FLOAT: 4, UINT8: 1, INT8: 1, INT32: 4, INT64: 8, BOOL: 1, FLOAT16: 2, BFLOAT16: 2}

IR_VERSION = 8  # opset 17's
PROTOBUF_LIMIT = 2 ** 31 - 1


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64 fields: two's complement, ten bytes
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _int(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _len(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _str(number: int, text: str) -> bytes:
    return _len(number, text.encode())


def _packed_ints(number: int, values) -> bytes:
    return _len(number, b"".join(_varint(v) for v in values))


@dataclass(frozen=True)
class Tensor:
    """An initializer: name, element type, dims, and its bytes (raw, little-endian) now or, with
    data None, streamed later (write_model's `data`); or, with `at` (file, offset), bytes that
    already lie in another file beside the model (ONNX external data nobody writes: e.g. a GGUF
    file's tensor blocks, read in place)."""

    name: str
    dtype: int
    dims: tuple[int, ...]
    data: bytes | None = None
    at: tuple[str, int] | None = None

    @property
    def nbytes(self) -> int:
        n = ITEM_BYTES[self.dtype]
        for d in self.dims:
            n *= d
        return n


def floats(name: str, values, dims: tuple[int, ...] | None = None) -> Tensor:
    values = list(values)
    return Tensor(name, FLOAT, (len(values),) if dims is None else dims, struct.pack(f"<{len(values)}f", *values))


def ints(name: str, values, dims: tuple[int, ...] | None = None) -> Tensor:
    values = list(values)
    return Tensor(name, INT64, (len(values),) if dims is None else dims, struct.pack(f"<{len(values)}q", *values))


def _tensor_head(t: Tensor, external: tuple[str, int] | None = None) -> bytes:
    """TensorProto without its data (raw_data's bytes come last, when streamed)."""
    out = b"".join(_int(1, d) for d in t.dims) + _int(2, t.dtype) + _str(8, t.name)
    if external is not None:  # external_data entries, then data_location = EXTERNAL
        location, offset = external
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(t.nbytes))):
            out += _len(13, _str(1, key) + _str(2, value))
        out += _int(14, 1)
    return out


def _attribute(name: str, value) -> bytes:
    """AttributeProto: an int, a float, a string, a tensor, or a list of ints or of floats."""
    out = _str(1, name)
    if isinstance(value, bool) or isinstance(value, int):
        return out + _int(3, int(value)) + _int(20, 2)
    if isinstance(value, float):
        return out + _varint(2 << 3 | 5) + struct.pack("<f", value) + _int(20, 1)
    if isinstance(value, str):
        return out + _len(4, value.encode()) + _int(20, 3)
    if isinstance(value, Tensor):
        return out + _len(5, _tensor_head(value) + _len(9, value.data or b"")) + _int(20, 4)
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
        return out + b"".join(_int(8, v) for v in value) + _int(20, 7)
    if isinstance(value, (list, tuple)) and all(isinstance(v, float) for v in value):
        return out + b"".join(_varint(7 << 3 | 5) + struct.pack("<f", v) for v in value) + _int(20, 6)
    raise TypeError(f"attribute {name}: {value!r}")


@dataclass
class Node:
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)
    domain: str = ""
    name: str = ""

    def encode(self) -> bytes:
        out = b"".join(_str(1, i) for i in self.inputs) + b"".join(_str(2, o) for o in self.outputs)
        if self.name:
            out += _str(3, self.name)
        out += _str(4, self.op)
        out += b"".join(_len(5, _attribute(k, v)) for k, v in self.attrs.items())
        if self.domain:
            out += _str(7, self.domain)
        return out


@dataclass(frozen=True)
class Value:
    """A graph input or output: name, element type, dims (ints, or names for dynamic ones)."""

    name: str
    dtype: int
    dims: tuple[int | str, ...]

    def encode(self) -> bytes:
        dims = b"".join(_len(1, _int(1, d) if isinstance(d, int) else _str(2, d)) for d in self.dims)
        tensor_type = _int(1, self.dtype) + _len(2, dims)
        return _str(1, self.name) + _len(2, _len(1, tensor_type))


@dataclass
class Graph:
    name: str
    nodes: list[Node]
    inputs: list[Value]
    outputs: list[Value]
    initializers: list[Tensor]
    opsets: dict[str, int]  # domain ("" for ONNX's own) → version
    producer: str = "loralab"
    metadata: dict[str, str] = field(default_factory=dict)


def _sizes(graph: Graph, external: str | None) -> tuple[list[bytes], int]:
    """Each initializer's TensorProto head (its raw_data key and length included, when inline)
    and the GraphProto's total length."""
    heads, offset = [], 0
    body = _str(2, graph.name) + b"".join(_len(1, n.encode()) for n in graph.nodes)
    body += b"".join(_len(11, v.encode()) for v in graph.inputs)
    body += b"".join(_len(12, v.encode()) for v in graph.outputs)
    total = len(body)
    for t in graph.initializers:
        if t.at is not None:
            head = _tensor_head(t, t.at)
            length = len(head)
        elif external is not None and t.data is None:
            head = _tensor_head(t, (external, offset))
            offset += t.nbytes
            length = len(head)
        else:
            head = _tensor_head(t) + _varint(9 << 3 | 2) + _varint(t.nbytes)
            length = len(head) + t.nbytes
        heads.append(head)
        total += len(_varint(5 << 3 | 2)) + len(_varint(length)) + length
    return [body] + heads, total


def _model_head(graph: Graph) -> bytes:
    out = _int(1, IR_VERSION) + _str(2, graph.producer)
    for domain, version in graph.opsets.items():
        out += _len(8, (_str(1, domain) if domain else b"") + _int(2, version))
    for key, value in graph.metadata.items():
        out += _len(14, _str(1, key) + _str(2, value))
    return out


def model_size(graph: Graph) -> int:
    """Bytes of the model written inline (over PROTOBUF_LIMIT: external data is needed)."""
    _, total = _sizes(graph, None)
    return len(_model_head(graph)) + len(_varint(7 << 3 | 2)) + len(_varint(total)) + total


async def write_model(write: Callable[[bytes], object], graph: Graph,
                      data: AsyncIterator[tuple[str, bytes]] | None = None,
                      external: tuple[str, Callable[[bytes], object]] | None = None) -> None:
    """The ModelProto through `write`. Initializers without data get theirs from `data`, which
    yields (name, bytes) in the order the graph lists them. With `external` (the data file's
    name beside the model, and its writer) those bytes go to that file instead."""
    location = external[0] if external else None
    parts, total = _sizes(graph, location)
    if external is None and total > PROTOBUF_LIMIT:
        raise UsageError(f"the ONNX model's {total:,} bytes are over protobuf's 2 GB: write its weights as external data")
    write(_model_head(graph) + _varint(7 << 3 | 2) + _varint(total) + parts[0])
    pending = data.__aiter__() if data is not None else None
    for t, head in zip(graph.initializers, parts[1:]):
        if t.at is not None:  # (its bytes are in their own file already)
            write(_varint(5 << 3 | 2) + _varint(len(head)) + head)
            continue
        if t.data is not None:  # (small constants: always inline)
            if len(t.data) != t.nbytes:
                raise ValueError(f"initializer {t.name}: {len(t.data)} bytes for {t.nbytes}")
            write(_varint(5 << 3 | 2) + _varint(len(head) + t.nbytes) + head + t.data)
            continue
        if pending is None:
            raise ValueError(f"initializer {t.name} has no data")
        name, chunk = await pending.__anext__()
        if name != t.name or len(chunk) != t.nbytes:
            raise ValueError(f"initializer {t.name} ({t.nbytes} bytes): got {name} ({len(chunk)} bytes)")
        if external:
            write(_varint(5 << 3 | 2) + _varint(len(head)) + head)
            external[1](chunk)
        else:
            write(_varint(5 << 3 | 2) + _varint(len(head) + t.nbytes) + head)
            write(chunk)
