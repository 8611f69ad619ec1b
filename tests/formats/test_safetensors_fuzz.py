"""The safetensors header parser on hostile input: only SafetensorsError may escape."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loralab.formats.safetensors import SafetensorsError, parse_header, serialize


def test_round_trip():
    blob = serialize({"a": ("F32", (2, 2), bytes(16)), "b": ("F16", (3,), bytes(6))}, {"k": "v"})
    h = parse_header(blob, len(blob), "x.safetensors")
    assert h.metadata == {"k": "v"} and h.tensors["a"].shape == (2, 2) and h.tensors["b"].end == len(blob)


@pytest.mark.parametrize("blob, message", [
    (b"\x01\x02", "truncated"),
    (struct.pack("<Q", 10_000) + b"{}", "runs past the end"),
    (struct.pack("<Q", 5) + b"{nope", "invalid JSON"),
    (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
])
def test_bad_headers(blob, message):
    with pytest.raises(SafetensorsError, match=message):
        parse_header(blob, len(blob), "bad.safetensors")


def test_bad_tensor_entries():
    for entry, message in [({"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}, "unknown dtype"),
                           ({"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}, "needs 8 bytes"),
                           ({"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}, "past the end"),
                           ({"dtype": "F32"}, "malformed")]:
        text = json.dumps({"t": entry}).encode()
        blob = struct.pack("<Q", len(text)) + text + bytes(4)
        with pytest.raises(SafetensorsError, match=message):
            parse_header(blob, len(blob), "bad.safetensors")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzzed_files_raise_only_safetensors_errors(blob):
    base = serialize({"a": ("F32", (2,), bytes(8))})
    data = blob + base[len(blob):]
    try:
        parse_header(data, len(data), "fuzz.safetensors")
    except SafetensorsError:
        pass


def test_overlapping_tensors_are_refused():
    text = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                       "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode()
    blob = struct.pack("<Q", len(text)) + text + bytes(12)
    with pytest.raises(SafetensorsError, match="overlap"):
        parse_header(blob, len(blob), "bad.safetensors")

