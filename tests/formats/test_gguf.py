"""The GGUF reader: the real default model, GPU dequantization against gguf-py, bad files, fuzzing."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loralab.formats.gguf import GGUFError, NeedMore, parse, read
from loralab.model.gguf_model import GGUFModel, default_model_path

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def default_path():
    return default_model_path()


def test_default_model_header(default_path):
    f = read(default_path)
    assert f.metadata["general.architecture"] == "llama"
    assert len(f.tensors) == 272
    emb = f.tensors["token_embd.weight"]
    assert emb.dtype == "Q8_0" and emb.shape == (49152, 576)
    ref = gguf.GGUFReader(default_path)
    for t in ref.tensors:
        ours = f.tensors[t.name]
        assert ours.start == int(t.data_offset) and ours.end - ours.start == int(t.n_bytes), t.name


def test_default_model_config_and_names(default_path):
    m = GGUFModel.from_path(default_path)
    c = m.config
    assert (c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim) == (576, 30, 9, 3, 64)
    assert c.tie_word_embeddings and c.vocab_size == 49152 and c.rope_theta == 100000.0
    assert m.tensors()["model.layers.3.self_attn.q_proj.weight"].shape == (576, 576)
    assert m.row_permutation("model.layers.3.self_attn.k_proj.weight") == 64
    assert m.row_permutation("model.layers.3.self_attn.v_proj.weight") == 0


# GGUF block types: (values, bytes, byte offsets of the float16 scales) per block.
BLOCKS = {"Q8_0": (32, 34, (0,)), "Q4_0": (32, 18, (0,)), "Q4_1": (32, 20, (0, 2)), "Q5_0": (32, 22, (0,)),
          "Q5_1": (32, 24, (0, 2)), "Q4_K": (256, 144, (0, 2)), "Q5_K": (256, 176, (0, 2)), "Q6_K": (256, 210, (208,))}


def random_blocks(kind: str, blocks: int, seed: int) -> bytes:
    """Random but valid blocks: finite float16 scales, random quants and sub-block scales."""
    rng = np.random.default_rng(seed)
    _, size, scales = BLOCKS[kind]
    raw = bytearray(rng.integers(0, 256, blocks * size, dtype=np.uint8).tobytes())
    for b in range(blocks):
        for at in scales:
            struct.pack_into("<e", raw, b * size + at, float(rng.uniform(-0.1, 0.1)))
    return bytes(raw)


@pytest.mark.parametrize("kind", sorted(BLOCKS))
@pytest.mark.parametrize("rows, head_dim", [(3, 0), (8, 4)])
def test_repacked_blocks_dequantize_exactly_as_gguf_py(ops, arrays, kind, rows, head_dim):
    """Each GGUF type kept quantized on the GPU: the values its readers see (the dequantize
    kernel shares their decoding) equal gguf-py's dequantize bit for bit, rows un-permuted."""
    from loralab.ops import GGUF_TYPES

    per_block = BLOCKS[kind][0]
    cols = 2 * per_block
    raw = random_blocks(kind, rows * cols // per_block, seed=rows + cols + len(kind))
    src = arrays.up(np.frombuffer(raw + bytes(-len(raw) % 4), np.uint8))
    packed = ops.quantized_buffer(GGUF_TYPES[kind][1], rows, cols, "packed")
    out = arrays.empty(rows * cols)
    arrays.submit(ops.repack(packed, src, kind, rows, cols, head_dim), ops.dequantize(out, packed, rows, cols))
    want = gguf.quants.dequantize(np.frombuffer(raw, np.uint8).reshape(rows, -1), getattr(gguf.GGMLQuantizationType, kind))
    if head_dim:  # llama.cpp's permutation undone: HF row h·D + s·D/2 + j is GGUF row h·D + 2j + s
        want = want.reshape(rows // head_dim, head_dim // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)
    np.testing.assert_array_equal(arrays.down(out, (rows, cols)), want.astype(np.float32))


def header(tensors=((b"t", [32], 0, 0),), kv=(), version=3, magic=b"GGUF") -> bytes:
    out = magic + struct.pack("<IQQ", version, len(tensors), len(kv))
    for key, kind, payload in kv:
        out += struct.pack("<Q", len(key)) + key + struct.pack("<I", kind) + payload
    for name, dims, kind, offset in tensors:
        out += struct.pack("<Q", len(name)) + name + struct.pack("<I", len(dims))
        out += b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", kind, offset)
    return out + bytes(-len(out) % 32)


def test_a_valid_handmade_file_parses():
    data = header() + bytes(128)
    f = parse(data, len(data), "ok.gguf")
    assert f.tensors["t"].dtype == "F32" and f.tensors["t"].shape == (32,)


@pytest.mark.parametrize("make, message", [
    (lambda: b"GG", "truncated"),
    (lambda: b"GGML" + bytes(60), "not a GGUF file"),
    (lambda: header(version=7) + bytes(128), "version 7"),
    (lambda: header(), "outside the file"),  # data missing: truncated
    (lambda: header(tensors=((b"t", [32], 10, 0),)) + bytes(128), "ggml type 10"),
    (lambda: header(tensors=((b"a", [32], 0, 0), (b"b", [32], 0, 64))) + bytes(256), "overlap"),
    (lambda: header(tensors=((b"q", [20], 8, 0),)) + bytes(128), "not whole blocks"),
    (lambda: header()[:30], "truncated"),
])
def test_bad_files_get_a_clear_error(make, message):
    data = make()
    with pytest.raises(GGUFError, match=message):
        parse(data, len(data), "bad.gguf")


def test_a_short_read_asks_for_more():
    data = header() + bytes(128)
    with pytest.raises(NeedMore):
        parse(data[:20], len(data), "x.gguf")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=399))
def test_fuzzed_headers_raise_only_gguf_errors(blob, flip):
    data = bytearray(header(kv=((b"k", 8, struct.pack("<Q", 3) + b"abc"),)) + bytes(64))
    data[: len(blob)] = blob[: len(data)]
    try:
        parse(bytes(data), len(data), "fuzz.gguf")
    except (GGUFError, NeedMore):
        pass


@pytest.mark.parametrize("pre, pieces", [("qwen2", ["1", "2", "3", "4"]), ("llama-bpe", ["123", "4"]),
                                         ("gpt2", ["1234"])])
def test_the_tokenizer_splits_digits_as_its_family_does(tmp_path, pre, pieces):
    """tokenizer.ggml.pre picks the pre-tokenizer split: Qwen2/Qwen3 digit by digit, Llama 3 in
    runs of up to three, GPT-2 whole runs (the merges would join all four digits)."""
    from tokenizers import Tokenizer, pre_tokenizers

    from loralab.model.gguf_model import tokenizer_files

    tokens = sorted(pre_tokenizers.ByteLevel.alphabet()) + ["12", "123", "1234"]
    path = tmp_path / "tok.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    for add, value in ((writer.add_block_count, 1), (writer.add_embedding_length, 8), (writer.add_head_count, 2),
                       (writer.add_feed_forward_length, 16)):
        add(value)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_merges(["1 2", "12 3", "123 4"])
    writer.add_tensor("x", np.zeros(32, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tokenizer_json, _, _ = tokenizer_files(read(str(path)))
    encoding = Tokenizer.from_str(tokenizer_json).encode("1234")
    assert encoding.tokens == pieces


SPM_PIECES = ["\u2581", "\u2581t", "he", "\u2581the", "\u2581a", "an", "\u2581an", "in", "\u2581in", "er", "\u2581w",
              "or", "\u2581wor", "ld", "\u2581world", "\u2581he", "ll", "llo", "\u2581hello", "\u2581\u2581", "é", "ö",
              "\u2581there", "\u2581th", "ere", "\u2581hi", "hi", "\u2581H", "ello", "H"]


def spm_gguf(path, arch: str, spaces: bool = False):
    """A tiny SentencePiece BPE vocabulary as llama.cpp writes one (tokenizer.ggml.model "llama":
    scores, token types, byte tokens, no merges); Gemma's multi-space tokens as real spaces."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces = SPM_PIECES + letters + (["  ", "   "] if spaces else [])
    tokens = ["<unk>", "<s>", "</s>", "<start_of_turn>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = [2, 3, 3, 4] + [6] * 256 + [1] * len(pieces)
    scores = [0.0] * 260 + [-float(i) for i in range(len(pieces))]
    writer = gguf.GGUFWriter(str(path), arch)
    for add, value in ((writer.add_block_count, 1), (writer.add_embedding_length, 8), (writer.add_head_count, 2),
                       (writer.add_feed_forward_length, 16), (writer.add_context_length, 64)):
        add(value)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_tensor("x", np.zeros(32, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("arch", ["llama", "gemma3", "phi3"])
def test_a_sentencepiece_vocabulary_tokenizes_as_transformers_rebuilds_it(tmp_path, arch):
    """Gemma 3, Phi-3 and Llama 2 GGUFs carry SentencePiece BPE vocabularies without merges: the
    tokenizer rebuilt from the metadata (merges recovered from the scores, or Gemma's order;
    spaces as ▁; byte fallback; BOS first) gives transformers' ids for the same file, and
    decodes them back as it does."""
    transformers = pytest.importorskip("transformers")
    from loralab.data.tokenizer import HFTokenizer
    from loralab.model.gguf_model import tokenizer_files

    path = spm_gguf(tmp_path / f"{arch}.gguf", arch, spaces=arch == "gemma3")
    tokenizer_json, config, _ = tokenizer_files(read(str(path)))
    ours = HFTokenizer(tokenizer_json, config)
    reference = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for text in ("the world", "Hello world", "hi  there   in", " the", "héllo wörld 😀", "an\nin",
                 "<start_of_turn>the"):
        want = reference.encode(text)
        assert ours.encode(text) == want, text
        assert ours.decode(want) == reference.decode(want, skip_special_tokens=True), text
    assert ours.encode("the")[0] == 1  # (BOS, as the file's add_bos_token says)
