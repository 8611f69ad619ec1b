"""GGUF in pure Python: header, metadata and tensor table; tensor bytes stay where they are.

Layout (version 2/3): "GGUF", u32 version, u64 tensor count, u64 metadata count, the metadata
(key, typed value), the tensor infos (name, dims innermost first, ggml type, offset), then the
data, aligned to `general.alignment` (32). Quantized tensors are dequantized on the GPU
(wgsl/quantize.wgsl). llama.cpp's converter permutes the rows of q and k for its RoPE layout;
`TensorInfo.permuted_heads` tells the loader to undo that, so adapters stay PEFT-compatible.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import UserError, short
from .safetensors import TensorInfo

# ggml type id -> (name, elements per block, bytes per block)
GGML_TYPES = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    30: ("BF16", 1, 2),
}
SUPPORTED = tuple(name for name, _, _ in GGML_TYPES.values())
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_INTEGERS = (0, 1, 2, 3, 4, 5, 10, 11)
MAX_COUNT = 1 << 28
MAX_DEPTH = 4  # arrays of arrays; llama.cpp's own reader takes none
MAX_DIMS = 4


class GGUFError(UserError):
    """A malformed or unsupported GGUF file; the message names the file and the problem."""


class NeedMore(Exception):
    """The header continues past the bytes given: read at least `size` bytes and parse again."""

    def __init__(self, size: int):
        super().__init__(size)
        self.size = size


@dataclass(frozen=True)
class GGUFFile:
    name: str
    version: int
    metadata: dict
    tensors: dict[str, TensorInfo]  # by GGUF name; start/end absolute in the file
    data_start: int
    metadata_span: tuple[int, int] = (0, 0)  # where the metadata's key/value records lie (copied as they are)
    alignment: int = 32


class _Cursor:
    def __init__(self, data: bytes, file_size: int, name: str):
        self.data, self.file_size, self.name, self.pos = data, file_size, name, 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > self.file_size:
            raise GGUFError(f"{self.name}: truncated: the header runs past the end of the file ({self.file_size:,} bytes)")
        if end > len(self.data):
            raise NeedMore(max(end, 2 * len(self.data)))
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def count(self, what: str, least_bytes: int) -> int:
        """A u64 count of items that each take at least `least_bytes` of the file: checked
        against what is left of the file before anything is allocated for them."""
        n = self.scalar("<Q")
        if n > MAX_COUNT or n * least_bytes > self.file_size - self.pos:
            raise GGUFError(f"{self.name}: {what} count {n:,} does not fit in the file ({self.file_size:,} bytes); "
                            f"the file is truncated or corrupt")
        return n

    def string(self) -> str:
        n = self.count("string length", 1)
        try:
            return bytes(self.take(n)).decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFError(f"{self.name}: a metadata string is not valid UTF-8") from None

    def value(self, kind: int, depth: int = 0):
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == 8:
            return self.string()
        if kind == 9:
            if depth >= MAX_DEPTH:
                raise GGUFError(f"{self.name}: metadata arrays nested more than {MAX_DEPTH} deep")
            item = self.scalar("<I")
            if item in _SCALARS:  # numeric arrays: the bytes first, then one unpack
                fmt = _SCALARS[item]
                size = struct.calcsize(fmt)
                n = self.count("array", size)
                return list(struct.unpack(f"<{n}{fmt[1]}", self.take(size * n)))
            if item not in (8, 9):
                raise GGUFError(f"{self.name}: unknown metadata value type {item}")
            n = self.count("array", 8 if item == 8 else 12)
            return [self.value(item, depth + 1) for _ in range(n)]
        raise GGUFError(f"{self.name}: unknown metadata value type {kind}")


def _alignment(metadata: dict, name: str) -> int:
    value = metadata.get("general.alignment", 32)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value > 1 << 16 or value & (value - 1):
        raise GGUFError(f"{name}: general.alignment must be a power of two up to 65,536, not {short(value)}")
    return value


def parse(head: bytes, file_size: int, name: str) -> GGUFFile:
    """Parse the header from the file's first bytes; raises NeedMore if `head` is too short.
    Counts are checked against the file's size before anything is allocated; keys and tensor
    names may not repeat; every tensor lies inside the file, aligned, without overlaps."""
    c = _Cursor(head, file_size, name)
    if file_size < 24:
        raise GGUFError(f"{name}: truncated file ({file_size} bytes), not a GGUF file")
    if bytes(c.take(4)) != b"GGUF":
        raise GGUFError(f"{name}: not a GGUF file (bad magic)")
    version = c.scalar("<I")
    if version not in (2, 3):
        raise GGUFError(f"{name}: GGUF version {version} is not supported (2 or 3)")
    n_tensors, n_kv = c.count("tensor", 24), c.count("metadata", 12)
    metadata, kv_start = {}, c.pos
    for _ in range(n_kv):
        key = c.string()
        if key in metadata:
            raise GGUFError(f"{name}: metadata key {short(key)} appears twice")
        metadata[key] = c.value(c.scalar("<I"))
    raw, kv_end = {}, c.pos
    for _ in range(n_tensors):
        tname = c.string()
        n_dims = c.scalar("<I")
        if not 1 <= n_dims <= MAX_DIMS:
            raise GGUFError(f"{name}: tensor {short(tname)} has {n_dims} dimensions (1 to {MAX_DIMS} are valid)")
        dims = [c.scalar("<Q") for _ in range(n_dims)]
        kind, offset = c.scalar("<I"), c.scalar("<Q")
        if tname in raw:
            raise GGUFError(f"{name}: tensor {short(tname)} appears twice")
        raw[tname] = (dims, kind, offset)
    alignment = _alignment(metadata, name)
    data_start = -(-c.pos // alignment) * alignment
    tensors, spans = {}, []
    for tname, (dims, kind, offset) in raw.items():
        if kind not in GGML_TYPES:
            raise GGUFError(f"{name}: tensor {short(tname)} has ggml type {kind}, which LoRA Lab does not read "
                            f"(supported: {', '.join(SUPPORTED)})")
        dtype, block, block_bytes = GGML_TYPES[kind]
        numel = 1
        for d in dims:
            numel *= d
        if dims[0] % block:
            raise GGUFError(f"{name}: tensor {short(tname)} ({dtype}) has rows of {dims[0]:,} values, not whole blocks of {block}")
        start = data_start + offset
        end = start + numel // block * block_bytes
        if offset % alignment or end > file_size:
            raise GGUFError(f"{name}: tensor {short(tname)} lies at bytes {start:,}–{end:,}, outside the file "
                            f"({file_size:,} bytes) or misaligned; the file is truncated or corrupt")
        tensors[tname] = TensorInfo(tname, dtype, tuple(reversed(dims)), start, end)
        spans.append((start, end, tname))
    spans.sort()
    for (s1, e1, n1), (s2, _, n2) in zip(spans, spans[1:]):
        if s2 < e1:
            raise GGUFError(f"{name}: tensors {short(n1)} and {short(n2)} overlap; the file is corrupt")
    return GGUFFile(name, version, metadata, tensors, data_start, (kv_start, kv_end), alignment)


def read(path: str) -> GGUFFile:
    """Parse a local file's header (CPython), reading only as much as it needs."""
    import os

    size = os.path.getsize(path)
    want = min(size, 4 << 20)
    with open(path, "rb") as f:
        while True:
            f.seek(0)
            try:
                return parse(f.read(want), size, os.path.basename(path))
            except NeedMore as more:
                want = min(size, more.size)


def _string(value: str) -> bytes:
    data = value.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def header(metadata: bytes, n_metadata: int, tensors: list[tuple[str, tuple[int, ...], int, int]],
           alignment: int = 32) -> bytes:
    """A GGUF v3 header around metadata records given as bytes (another file's, copied), for
    tensors given as (name, shape in PyTorch order, ggml type id, bytes), laid out in that order
    at `alignment`; the data follows, each tensor padded to the alignment."""
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), n_metadata))
    out += metadata
    offset = 0
    for name, shape, kind, size in tensors:
        out += _string(name) + struct.pack("<I", len(shape))
        out += b"".join(struct.pack("<Q", d) for d in reversed(shape)) + struct.pack("<IQ", kind, offset)
        offset += -(-size // alignment) * alignment
    return bytes(out + bytes(-len(out) % alignment))


def write(metadata: dict, tensors: list[tuple[str, tuple[int, ...], bytes]], alignment: int = 32) -> bytes:
    """A GGUF v3 file: metadata (str, int, float, bool values) and float32 tensors given as
    (name, shape in PyTorch order, bytes)."""
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata)))
    for key, value in metadata.items():
        out += _string(key)
        if isinstance(value, bool):
            out += struct.pack("<I?", 7, value)
        elif isinstance(value, int):
            out += struct.pack("<Iq", 11, value)
        elif isinstance(value, float):
            out += struct.pack("<If", 6, value)
        else:
            out += struct.pack("<I", 8) + _string(str(value))
    offset = 0
    for name, shape, data in tensors:
        out += _string(name) + struct.pack("<I", len(shape))
        out += b"".join(struct.pack("<Q", d) for d in reversed(shape)) + struct.pack("<IQ", 0, offset)
        offset += -(-len(data) // alignment) * alignment
    out += bytes(-len(out) % alignment)
    for _, _, data in tensors:
        out += data + bytes(-len(data) % alignment)
    return bytes(out)
