"""Small valid model files, written without torch, and the hostile variants the tests make of them.

`model_folder`: a one-layer Llama folder (config.json + model.safetensors) that loads as it is.
`gguf_bytes`: a GGUF writer for any typed metadata (arrays and nested arrays included) and any
tensor table, including ones no honest writer would produce; `tiny_gguf_parts` gives the pieces
of a valid tiny GGUF model (metadata and tensors) for the fuzzer to mutate.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from loralab.formats.safetensors import serialize

CONFIG = {"architectures": ["LlamaForCausalLM"], "vocab_size": 16, "hidden_size": 8, "intermediate_size": 16,
          "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
          "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True, "max_position_embeddings": 64}
SHAPES = {"model.embed_tokens.weight": (16, 8), "model.norm.weight": (8,),
          "model.layers.0.input_layernorm.weight": (8,), "model.layers.0.post_attention_layernorm.weight": (8,),
          "model.layers.0.self_attn.q_proj.weight": (8, 8), "model.layers.0.self_attn.k_proj.weight": (4, 8),
          "model.layers.0.self_attn.v_proj.weight": (4, 8), "model.layers.0.self_attn.o_proj.weight": (8, 8),
          "model.layers.0.mlp.gate_proj.weight": (16, 8), "model.layers.0.mlp.up_proj.weight": (16, 8),
          "model.layers.0.mlp.down_proj.weight": (8, 16)}


def numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def model_safetensors() -> bytes:
    return serialize({name: ("F32", shape, struct.pack(f"<{numel(shape)}f", *([0.5] * numel(shape))))
                      for name, shape in SHAPES.items()})


def model_folder(path: Path, config: dict | None = None, weights: bytes | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(CONFIG if config is None else config))
    (path / "model.safetensors").write_bytes(model_safetensors() if weights is None else weights)
    return path


def safetensors_from_header(header, data: bytes = b"", length: int | None = None) -> bytes:
    """A file from a header given as a dict (serialized as JSON) or as raw text/bytes."""
    blob = header if isinstance(header, bytes) else (header if isinstance(header, str) else json.dumps(header)).encode()
    return struct.pack("<Q", len(blob) if length is None else length) + blob + data


# ---------------------------------------------------------------- GGUF

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?", U64: "<Q",
        I64: "<q", F64: "<d"}


def _string(value: str) -> bytes:
    data = value.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def gguf_value(kind: int, value) -> bytes:
    """One typed value; ARRAY values are (item kind, [items]) and may nest."""
    if kind in _FMT:
        return struct.pack(_FMT[kind], value)
    if kind == STRING:
        return _string(value)
    if kind == ARRAY:
        item, items = value
        return struct.pack("<IQ", item, len(items)) + b"".join(gguf_value(item, v) for v in items)
    raise ValueError(kind)


def gguf_bytes(kv: list[tuple[str, int, object]], tensors: list[tuple[str, list[int], int, int]], data: bytes = b"",
               alignment: int = 32, version: int = 3, counts: tuple[int, int] | None = None) -> bytes:
    """A GGUF file: kv = [(key, kind, value)], tensors = [(name, dims innermost first, ggml type,
    offset)], then `data` from the aligned data start. `counts` overrides the declared counts."""
    n_tensors, n_kv = counts if counts is not None else (len(tensors), len(kv))
    out = bytearray(b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv))
    for key, kind, value in kv:
        out += _string(key) + struct.pack("<I", kind) + gguf_value(kind, value)
    for name, dims, kind, offset in tensors:
        out += _string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", kind, offset)
    out += bytes(-len(out) % alignment)
    return bytes(out) + data


TOKENS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>", "a", "b", "c", "ab", "Ġ", "Ġa", "h", "i", "hi", "Ċ", "d", "e"]
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
GGUF_NAMES = {"token_embd.weight": (16, 8), "output_norm.weight": (8,), "blk.0.attn_norm.weight": (8,),
              "blk.0.ffn_norm.weight": (8,), "blk.0.attn_q.weight": (8, 8), "blk.0.attn_k.weight": (4, 8),
              "blk.0.attn_v.weight": (4, 8), "blk.0.attn_output.weight": (8, 8), "blk.0.ffn_gate.weight": (16, 8),
              "blk.0.ffn_up.weight": (16, 8), "blk.0.ffn_down.weight": (8, 16)}


def tiny_gguf_parts() -> tuple[list, list, bytes]:
    """(kv, tensors, data) of a valid one-layer llama GGUF with a byte-level BPE tokenizer."""
    kv = [("general.architecture", STRING, "llama"), ("general.alignment", U32, 32),
          ("llama.block_count", U32, 1), ("llama.embedding_length", U32, 8), ("llama.feed_forward_length", U32, 16),
          ("llama.attention.head_count", U32, 2), ("llama.attention.head_count_kv", U32, 1),
          ("llama.rope.dimension_count", U32, 4), ("llama.context_length", U32, 64),
          ("llama.attention.layer_norm_rms_epsilon", F32, 1e-5), ("llama.rope.freq_base", F32, 10000.0),
          ("tokenizer.ggml.model", STRING, "gpt2"), ("tokenizer.ggml.tokens", ARRAY, (STRING, TOKENS)),
          ("tokenizer.ggml.token_type", ARRAY, (I32, [3, 3, 3, 3] + [1] * 12)),
          ("tokenizer.ggml.merges", ARRAY, (STRING, ["a b", "Ġ a", "h i"])),
          ("tokenizer.ggml.bos_token_id", U32, 0), ("tokenizer.ggml.eos_token_id", U32, 3),
          ("tokenizer.chat_template", STRING, TEMPLATE)]
    tensors, data = [], b""
    for name, shape in GGUF_NAMES.items():
        tensors.append((name, list(reversed(shape)), 0, len(data)))
        blob = struct.pack(f"<{numel(shape)}f", *([0.25] * numel(shape)))
        data += blob + bytes(-len(blob) % 32)
    return kv, tensors, data


def tiny_gguf() -> bytes:
    kv, tensors, data = tiny_gguf_parts()
    return gguf_bytes(kv, tensors, data)
