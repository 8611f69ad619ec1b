"""safetensors in pure Python: the header is parsed here, tensor bytes stay where they are.

Layout: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape,
data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the data (offsets are relative
to the end of the header). Used in the browser (bytes in JS ArrayBuffers, ranges uploaded
straight to the GPU) and on CPython alike; never imports numpy.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from ..checks import integer, loads
from ..errors import UserError, short

DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
MAX_HEADER = 100_000_000  # bytes; the official library's limit
MAX_RANK = 8  # dimensions of one tensor


class SafetensorsError(UserError):
    """A malformed safetensors file; the message names the file and the problem."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class SafetensorsHeader:
    filename: str
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int


def header_length(prefix: bytes, file_size: int, filename: str) -> int:
    """The JSON header's length from the file's first 8 bytes, checked against the file size."""
    if len(prefix) < 8 or file_size < 8:
        raise SafetensorsError(f"{filename}: truncated file ({file_size} bytes), not a safetensors file")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > MAX_HEADER:
        raise SafetensorsError(f"{filename}: header length {n:,} is over the {MAX_HEADER:,}-byte limit; "
                               f"the file is corrupt or not safetensors")
    if 8 + n > file_size:
        raise SafetensorsError(f"{filename}: header length {n:,} runs past the end of the file ({file_size:,} bytes); the file is truncated or corrupt")
    return n


def _entry(name: str, entry, data_size: int, where: str) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry, each field checked for type and range."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise SafetensorsError(f"{where}: tensor {short(name)} has a malformed header entry "
                               f"(it needs exactly dtype, shape and data_offsets)")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise SafetensorsError(f"{where}: tensor {short(name)} has unknown dtype {short(dtype)} "
                               f"(LoRA Lab reads {', '.join(DTYPE_SIZES)})")
    if not isinstance(shape, list) or len(shape) > MAX_RANK:
        raise SafetensorsError(f"{where}: tensor {short(name)}: shape must be a list of at most {MAX_RANK} sizes, "
                               f"not {short(shape)}")
    dims = tuple(integer(d, f"{where}: tensor {short(name)}: a shape entry", SafetensorsError) for d in shape)
    if not isinstance(offsets, list) or len(offsets) != 2:
        raise SafetensorsError(f"{where}: tensor {short(name)}: data_offsets must be [begin, end], not {short(offsets)}")
    begin, end = (integer(o, f"{where}: tensor {short(name)}: data_offsets", SafetensorsError) for o in offsets)
    if end > data_size:
        raise SafetensorsError(f"{where}: tensor {short(name)} ends at data byte {end:,}, past the end of the file "
                               f"({data_size:,} data bytes); the file is truncated")
    numel = 1
    for d in dims:
        numel *= d
    if end < begin or end - begin != numel * DTYPE_SIZES[dtype]:
        raise SafetensorsError(f"{where}: tensor {short(name)} {dtype}{list(dims)} has data_offsets [{begin}, {end}], "
                               f"but its shape needs {numel * DTYPE_SIZES[dtype]:,} bytes")
    return dtype, dims, begin, end


def parse_header(header: bytes, file_size: int, filename: str) -> SafetensorsHeader:
    """Parse and validate the header (`header` = the file's first 8 + N bytes). As the official
    library does, the tensors' data must tile the rest of the file exactly: no gaps, overlaps or
    trailing bytes. Keys may not repeat, and __metadata__ maps strings to strings."""
    n = header_length(header, file_size, filename)
    raw = loads(bytes(header[8 : 8 + n]), f"{filename}: the header", SafetensorsError, unique=True)
    if not isinstance(raw, dict):
        raise SafetensorsError(f"{filename}: the header is not a JSON object")
    data_start = 8 + n
    data_size = file_size - data_start
    metadata = raw.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SafetensorsError(f"{filename}: __metadata__ must map strings to strings")
    tensors = {}
    for name, entry in raw.items():
        dtype, shape, begin, end = _entry(name, entry, data_size, filename)
        tensors[name] = TensorInfo(name, dtype, shape, data_start + begin, data_start + end)
    at = data_start
    for info in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if info.start != at:
            problem = "overlaps the tensor before it" if info.start < at else f"leaves a gap of {info.start - at:,} bytes before it"
            raise SafetensorsError(f"{filename}: tensor {short(info.name)} {problem}; the file is corrupt")
        at = info.end
    if at != file_size:
        raise SafetensorsError(f"{filename}: the tensors cover {at - data_start:,} of the {data_size:,} data bytes; "
                               f"the file is truncated or corrupt")
    return SafetensorsHeader(filename, tensors, dict(metadata), data_start)


def read_header(path) -> SafetensorsHeader:
    """Parse the header of a local file (CPython)."""
    import os

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        n = header_length(prefix, size, os.path.basename(str(path)))
        return parse_header(prefix + f.read(n), size, os.path.basename(str(path)))


def header_bytes(entries: dict[str, tuple[str, tuple[int, ...], int]], metadata: dict[str, str] | None = None) -> bytes:
    """The length prefix and JSON header of a safetensors file whose tensors {name: (dtype,
    shape, byte count)} follow it in sorted name order (so a writer can stream the data)."""
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name in sorted(entries):
        dtype, shape, nbytes = entries[name]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(blob)) + blob


def serialize(tensors: dict[str, tuple[str, tuple[int, ...], bytes]], metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file from {name: (dtype, shape, raw little-endian bytes)}, names sorted."""
    head = header_bytes({name: (dtype, shape, len(data)) for name, (dtype, shape, data) in tensors.items()}, metadata)
    return head + b"".join(bytes(tensors[name][2]) for name in sorted(tensors))


def to_f32_bytes(dtype: str, data: bytes) -> bytes:
    """Float tensor bytes as little-endian float32 (F32 unchanged)."""
    if dtype == "F32":
        return bytes(data)
    try:  # CPython: numpy converts at memory speed; Pyodide has no numpy and takes the loops below
        import numpy as np

        if dtype == "BF16":
            return (np.frombuffer(data, np.uint16).astype(np.uint32) << 16).tobytes()
        if dtype in ("F16", "F64"):
            return np.frombuffer(data, np.float16 if dtype == "F16" else np.float64).astype(np.float32).tobytes()
    except ImportError:
        pass
    if dtype == "BF16":
        halves = struct.unpack(f"<{len(data) // 2}H", data)
        return struct.pack(f"<{len(halves)}I", *(h << 16 for h in halves))
    if dtype == "F16":
        values = struct.unpack(f"<{len(data) // 2}e", data)
        return struct.pack(f"<{len(values)}f", *values)
    if dtype == "F64":
        values = struct.unpack(f"<{len(data) // 8}d", data)
        return struct.pack(f"<{len(values)}f", *values)
    raise SafetensorsError(f"dtype {dtype} is not a float type")


# Byte maps for first_nonfinite: a little-endian float32 is NaN or infinite when its exponent
# bits are all ones, i.e. its last byte is 0x7F or 0xFF and its third byte has the top bit set.
_HIGH_BYTE = bytes(1 if b & 0x7F == 0x7F else 0 for b in range(256))
_THIRD_BYTE = bytes(1 if b & 0x80 else 0 for b in range(256))


def first_nonfinite(data: bytes) -> int | None:
    """Index of the first NaN or infinite value in little-endian float32 bytes, else None.
    Slicing, translate and one big-integer AND run at C speed in both runtimes (Pyodide has
    no numpy), so a multi-megabyte adapter is checked in milliseconds."""
    data = bytes(data)
    high = data[3::4].translate(_HIGH_BYTE)
    third = data[2::4].translate(_THIRD_BYTE)
    both = int.from_bytes(high, "little") & int.from_bytes(third, "little")
    if not both:
        return None
    return ((both & -both).bit_length() - 1) // 8
