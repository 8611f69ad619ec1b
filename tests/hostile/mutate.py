"""Seeded mutations of valid safetensors and GGUF files: byte-level damage and structural edits
that put hostile values (wrong types, negative or huge numbers, NaN, deep nesting, duplicates,
counts that do not fit) into every field the readers look at. Each case is a pure function of
(seed, index), so a failure names the case that reproduces it."""

from __future__ import annotations

import copy
import json
import random
import struct

from . import files as F

HOSTILE_JSON = [-1, 0, 1, 3, 1.5, 4.0, True, False, None, "12", "", "F32", [], [1], [2, 2], [-1], [0, -4], [8, 0],
                [[1]], {}, {"a": 1}, 2**63, 2**64 + 1, 10**30, 1e308, float("inf"), float("-inf"), float("nan"), -0.0,
                "x" * 300]


def _hostile(rng: random.Random, extra: tuple = ()):
    """A hostile JSON value, copied: the table's lists and dicts are never shared between edits
    (an edit into a shared one could make a later header contain itself)."""
    return copy.deepcopy(rng.choice(HOSTILE_JSON + list(extra)))


def _deep(n: int, leaf="0") -> str:
    return "[" * n + leaf + "]" * n


def safetensors_case(rng: random.Random) -> bytes:
    """A mutated copy of files.model_safetensors()."""
    base = F.model_safetensors()
    (n,) = struct.unpack("<Q", base[:8])
    header = json.loads(base[8 : 8 + n])
    data = base[8 + n :]
    length = None
    text = None
    for _ in range(rng.randint(1, 3)):
        names = [k for k in header if k != "__metadata__"] if isinstance(header, dict) else []
        op = rng.randrange(16)
        if op <= 3 and names:  # a field of a tensor entry gets a hostile value
            entry = header[rng.choice(names)]
            if isinstance(entry, dict):
                entry[rng.choice(["dtype", "shape", "data_offsets"])] = _hostile(rng)
        elif op == 4 and names:  # a shape entry or an offset gets a hostile value
            entry = header[rng.choice(names)]
            if isinstance(entry, dict) and isinstance(entry.get("shape"), list) and entry["shape"]:
                field = rng.choice(["shape", "data_offsets"])
                if isinstance(entry.get(field), list) and entry[field]:
                    entry[field][rng.randrange(len(entry[field]))] = _hostile(rng)
        elif op == 5 and names:  # offsets reversed, or a negative dimension balancing them
            entry = header[rng.choice(names)]
            if isinstance(entry, dict) and isinstance(entry.get("data_offsets"), list):
                entry["data_offsets"] = list(reversed(entry["data_offsets"]))
                if rng.random() < 0.5:
                    entry["shape"] = [-1]
        elif op == 6 and names:  # a field removed or one added
            entry = header[rng.choice(names)]
            if isinstance(entry, dict):
                if rng.random() < 0.5 and entry:
                    entry.pop(rng.choice(list(entry)))
                else:
                    entry["extra"] = _hostile(rng)
        elif op == 7 and isinstance(header, dict):
            header["__metadata__"] = _hostile(rng, ({"k": 5}, {"k": None}, {"k": "v"}))
        elif op == 8 and names:  # a tensor's name repeated (text level: json.dumps cannot)
            name = rng.choice(names)
            body = json.dumps(header)
            text = body[:-1] + ", " + json.dumps(name) + ": " + json.dumps(header[name]) + "}"
        elif op == 9 and isinstance(header, dict):  # deep nesting where a value is expected
            text = json.dumps(header)[:-1] + ', "__metadata__": ' + _deep(rng.choice([50, 5000, 100_000])) + "}"
        elif op == 10:
            header = _hostile(rng)
        elif op == 11:  # the length prefix lies
            length = rng.choice([0, 1, n - 1, n + 1, n + 8, 2**63, 100_000_001, rng.randrange(1 << 20)])
        elif op == 12:  # the data is cut or extended
            data = data[: rng.randrange(len(data) + 1)] if rng.random() < 0.5 else data + bytes(rng.randrange(1, 64))
        elif op == 13 and names:  # a tensor renamed
            header[rng.choice(["", " ", "é" * 40, "model.layers.999.mlp.up_proj.weight", "a" * 10_000])] = header.pop(rng.choice(names))
        elif op == 14 and names:  # shapes in other spellings
            entry = header[rng.choice(names)]
            if isinstance(entry, dict):
                entry["shape"] = copy.deepcopy(rng.choice(["12", [1.0, 2.0], [True, 2], [2**40, 2**40], [0] * 9, {"0": 1}]))
        else:  # bytes of the header flipped
            body = bytearray((text or json.dumps(header)).encode())
            for _ in range(rng.randint(1, 4)):
                body[rng.randrange(len(body))] = rng.randrange(256)
            text = body.decode("latin-1")
    try:
        blob = (text if text is not None else json.dumps(header)).encode("latin-1" if text else "utf-8")
    except UnicodeEncodeError:
        blob = (text or json.dumps(header)).encode("utf-8", "surrogatepass")
    return F.safetensors_from_header(blob, data, length)


HOSTILE_VALUES = [
    (F.U32, 0), (F.U32, 2**32 - 1), (F.I32, -1), (F.I32, 0), (F.U64, 2**63), (F.I64, -(2**63)), (F.F32, float("inf")),
    (F.F32, float("nan")), (F.F32, 0.0), (F.F64, 1e308), (F.BOOL, True), (F.STRING, ""), (F.STRING, "12"),
    (F.STRING, "x" * 5000), (F.ARRAY, (F.U32, [1, 2])), (F.ARRAY, (F.STRING, ["a"])), (F.ARRAY, (F.ARRAY, [(F.U8, [1])])),
    (F.U8, 3), (F.I8, -5), (F.U16, 65535), (F.I16, -1),
]
SEMANTIC_KEYS = ["general.architecture", "general.alignment", "llama.block_count", "llama.embedding_length",
                 "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
                 "llama.rope.dimension_count", "llama.context_length", "llama.attention.layer_norm_rms_epsilon",
                 "llama.rope.freq_base", "llama.vocab_size", "tokenizer.ggml.model", "tokenizer.ggml.tokens",
                 "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id",
                 "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.chat_template",
                 "tokenizer.ggml.add_bos_token", "tokenizer.ggml.pre"]


def _raw_deep_array(depth: int) -> bytes:
    """An array of arrays nested `depth` deep, innermost a u8 array of one item (no recursion)."""
    return struct.pack("<IQ", F.ARRAY, 1) * (depth - 1) + struct.pack("<IQB", F.U8, 1, 7)


def gguf_case(rng: random.Random) -> bytes:
    """A mutated copy of files.tiny_gguf()."""
    kv, tensors, data = F.tiny_gguf_parts()
    kv = list(kv)
    tensors = [list(t) for t in tensors]
    counts, alignment, version, tail = None, 32, 3, None
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(14)
        if op <= 2:  # a meaningful key gets a value of the wrong type or range
            key = rng.choice(SEMANTIC_KEYS)
            kind, value = rng.choice(HOSTILE_VALUES)
            kv = [e for e in kv if e[0] != key] + [(key, kind, value)]
        elif op == 3:  # a key removed
            kv.pop(rng.randrange(len(kv)))
        elif op == 4:  # a key repeated
            kv.append(rng.choice(kv))
        elif op == 5:  # token arrays that disagree
            kv = [e for e in kv if e[0] != "tokenizer.ggml.token_type"]
            kv.append(("tokenizer.ggml.token_type", F.ARRAY, (F.I32, [1] * rng.choice([0, 15, 17, 1000]))))
        elif op == 6 and tensors:  # dimensions: none, too many, zero, huge
            t = rng.choice(tensors)
            t[1] = rng.choice([[], [8, 8, 1, 1, 1], [0], [2**63], [2**32, 2**32], [8, 2**40], [7]])
        elif op == 7 and tensors:  # unknown or mismatched ggml types
            rng.choice(tensors)[2] = rng.choice([1, 2, 3, 6, 8, 14, 30, 99, 2**32 - 1])
        elif op == 8 and tensors:  # offsets misaligned, overlapping, past the end
            rng.choice(tensors)[3] = rng.choice([1, 31, 0, 2**63, len(data), len(data) - 32, 64])
        elif op == 9 and tensors:  # a tensor repeated or renamed
            if rng.random() < 0.5:
                tensors.append(list(rng.choice(tensors)))
            else:
                rng.choice(tensors)[0] = rng.choice(["", "blk.999.attn_q.weight", "x" * 1000, "token_embd.weight"])
        elif op == 10:  # declared counts that do not match
            counts = (rng.choice([len(tensors) + 1, len(tensors) - 1, 2**28, 2**63, 0]),
                      rng.choice([len(kv) + 1, len(kv) - 1, 2**28, 2**64 - 1, 0]))
        elif op == 11:  # an array count far past the file, or arrays nested deep
            tail = ("general.hostile", struct.pack("<IIQ", F.ARRAY, F.U8, 2**28)) if rng.random() < 0.5 else \
                   ("general.hostile", struct.pack("<I", F.ARRAY) + _raw_deep_array(rng.choice([5, 100, 1000])))
        elif op == 12:
            version = rng.choice([1, 2, 4, 2**32 - 1])
        else:
            kv = [e for e in kv if e[0] != "general.alignment"]
            kind, value = rng.choice([(F.U32, 0), (F.U32, 3), (F.U32, 64), (F.U32, 2**31), (F.I32, -32),
                                      (F.F32, float("inf")), (F.STRING, "32"), (F.ARRAY, (F.U32, [32]))])
            kv.append(("general.alignment", kind, value))
            if kind == F.U32 and value and value & (value - 1) == 0 and value <= 1 << 16:
                alignment = value
    try:
        blob = bytearray(F.gguf_bytes(kv, [tuple(t) for t in tensors], data, alignment, version, counts))
    except (struct.error, OverflowError, ValueError):
        blob = bytearray(F.tiny_gguf())
    if tail is not None:  # one more key-value pair, raw, right after the header's counts
        key, raw = tail
        struct.pack_into("<Q", blob, 16, (struct.unpack_from("<Q", blob, 16)[0] + 1) % 2**64)
        blob[24:24] = F._string(key) + raw
    if rng.random() < 0.3:  # bytes flipped somewhere in the header
        end = min(len(blob), 2048)
        for _ in range(rng.randint(1, 8)):
            blob[rng.randrange(end)] = rng.randrange(256)
    if rng.random() < 0.1:
        blob = blob[: rng.randrange(len(blob))]
    return bytes(blob)
