"""Every hostile input found in the audit (issue 14), one row each, through the CLI's own entry
point: the CLI exits 2 with one line that names the file and the problem, never a traceback,
and refuses what used to be accepted wrongly."""

from __future__ import annotations

import io
import json
import struct
import time
import tracemalloc
import zipfile

import pytest

from loralab.cli import main
from loralab.formats.safetensors import serialize
from tests.rig import settle

from . import files as F

TOKENS_DATA = '{"input_ids": [1, 2, 3, 4], "labels": [1, 2, 3, 4]}\n'


def run_cli(capsys, *argv) -> str:
    """The CLI's stderr for argv; asserts exit code 2 and a single line without a traceback.
    main() runs on a thread of its own: it starts an event loop, and in the whole suite the
    browser tests' Playwright already runs one on the main thread."""
    from concurrent.futures import ThreadPoolExecutor

    capsys.readouterr()  # what the test itself printed before
    with ThreadPoolExecutor(1) as pool:
        code = pool.submit(main, [str(a) for a in argv]).result()
    err = capsys.readouterr().err.strip()
    assert code == 2, f"exit {code}: {err}"
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("loralab: ")
    return err


def weights_with(tensors_header: dict) -> bytes:
    """model.safetensors whose header is the valid one with entries replaced."""
    blob = F.model_safetensors()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    header.update(tensors_header)
    return F.safetensors_from_header(header, blob[8 + n :])


def header_text_with(extra: str) -> bytes:
    """model.safetensors with raw JSON text spliced into the header object."""
    blob = F.model_safetensors()
    (n,) = struct.unpack("<Q", blob[:8])
    text = blob[8 : 8 + n].decode().rstrip()
    return F.safetensors_from_header(text[:-1] + ", " + extra + "}", blob[8 + n :])


Q = "model.layers.0.self_attn.q_proj.weight"
ENTRY = {"dtype": "F32", "shape": [8, 8], "data_offsets": [0, 256]}

SAFETENSORS = [
    ("shape Infinity", header_text_with('"x": {"dtype": "F32", "shape": [Infinity], "data_offsets": [0, 0]}'), "Infinity"),
    ("metadata a number", weights_with({"__metadata__": 5}), "__metadata__"),
    ("metadata nested 5000 deep", header_text_with('"__metadata__": ' + "[" * 5000 + "]" * 5000), "nested too deeply|__metadata__"),
    ("dtype a list", weights_with({Q: {**ENTRY, "dtype": ["F32"]}}), "dtype"),
    ("offsets null", weights_with({Q: {**ENTRY, "data_offsets": None}}), "data_offsets"),
    ("offsets strings", weights_with({Q: {**ENTRY, "data_offsets": ["0", "256"]}}), "data_offsets"),
    ("negative shape, reversed offsets", weights_with({Q: {**ENTRY, "shape": [-1], "data_offsets": [4, 0]}}), "shape entry|between"),
    ("shape a string", weights_with({Q: {**ENTRY, "shape": "12"}}), "shape must be a list"),
    ("float shape", weights_with({Q: {**ENTRY, "shape": [8.0, 8.0]}}), "must be an integer"),
    ("bool shape", weights_with({Q: {**ENTRY, "shape": [True, 64]}}), "must be an integer"),
    ("duplicate tensor", header_text_with(json.dumps(Q) + ": " + json.dumps(ENTRY)), "appears twice"),
    ("header over 100,000,000 bytes", struct.pack("<Q", 100_000_001) + b"{}", "limit"),
]


@pytest.mark.parametrize("weights, message", [c[1:] for c in SAFETENSORS], ids=[c[0] for c in SAFETENSORS])
def test_hostile_safetensors(tmp_path, capsys, weights, message):
    folder = F.model_folder(tmp_path / "model", weights=weights)
    (tmp_path / "d.jsonl").write_text(TOKENS_DATA)
    err = run_cli(capsys, "eval", folder, tmp_path / "d.jsonl")
    assert "model.safetensors" in err
    assert pytest.importorskip("re").search(message, err), err


def gguf_with(replace: dict | None = None, drop: tuple = (), extra: list | None = None, tensors=None) -> bytes:
    kv, default_tensors, data = F.tiny_gguf_parts()
    kv = [e for e in kv if e[0] not in drop and e[0] not in (replace or {})]
    kv += [(k, kind, v) for k, (kind, v) in (replace or {}).items()] + (extra or [])
    return F.gguf_bytes(kv, default_tensors if tensors is None else tensors, data)


def nested_gguf(depth: int) -> bytes:
    kv, tensors, data = F.tiny_gguf_parts()
    blob = bytearray(F.gguf_bytes(kv, tensors, data))
    struct.pack_into("<Q", blob, 16, len(kv) + 1)
    deep = struct.pack("<I", F.ARRAY) + struct.pack("<IQ", F.ARRAY, 1) * (depth - 1) + struct.pack("<IQB", F.U8, 1, 1)
    blob[24:24] = F._string("general.deep") + deep
    return bytes(blob)


def tiny_array_claim() -> bytes:
    """A 117-byte GGUF whose one metadata array claims 2^28 elements."""
    blob = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + F._string("general.big") + struct.pack("<IIQ", F.ARRAY, F.U32, 2**28)
    return blob + bytes(117 - len(blob))


_, _TENSORS, _ = F.tiny_gguf_parts()
GGUF = [
    ("arrays nested 1000 deep", nested_gguf(1000), "nested"),
    ("a tensor with no dimensions", gguf_with(tensors=[("token_embd.weight", [], 0, 0)] + _TENSORS[1:]), "dimensions"),
    ("alignment inf", gguf_with({"general.alignment": (F.F32, float("inf"))}), "alignment"),
    ("alignment an array", gguf_with({"general.alignment": (F.ARRAY, (F.U32, [32]))}), "alignment"),
    ("alignment a string", gguf_with({"general.alignment": (F.STRING, "32")}), "alignment"),
    ("alignment negative", gguf_with({"general.alignment": (F.I32, -32)}), "alignment"),
    ("alignment not a power of two", gguf_with({"general.alignment": (F.U32, 24)}), "alignment"),
    ("head_count 0", gguf_with({"llama.attention.head_count": (F.U32, 0)}), "head_count"),
    ("token_type longer than tokens", gguf_with({"tokenizer.ggml.token_type": (F.ARRAY, (F.I32, [1] * 17))}), "token_type"),
    ("tokens not an array", gguf_with({"tokenizer.ggml.tokens": (F.STRING, "abc")}), "tokenizer.ggml.tokens"),
    ("eos id a string", gguf_with({"tokenizer.ggml.eos_token_id": (F.STRING, "3")}), "eos_token_id"),
    ("eos id out of range", gguf_with({"tokenizer.ggml.eos_token_id": (F.U32, 99)}), "eos_token_id"),
    ("tokens missing", gguf_with(drop=("tokenizer.ggml.tokens",)), "tokenizer.ggml.tokens"),
    ("duplicate key", gguf_with(extra=[("llama.block_count", F.U32, 1)]), "appears twice"),
    ("duplicate tensor", gguf_with(tensors=_TENSORS + [_TENSORS[0]]), "appears twice"),
    ("2^28-element array in 117 bytes", tiny_array_claim(), "does not fit"),
    ("a million layers", gguf_with({"llama.block_count": (F.U32, 1_000_000)}), "block_count"),
    ("layer count off by one", gguf_with({"llama.block_count": (F.U32, 2)}), "block_count is 2, but the weights hold 1 layers"),
]


@pytest.mark.parametrize("blob, message", [c[1:] for c in GGUF], ids=[c[0] for c in GGUF])
def test_hostile_gguf(tmp_path, capsys, blob, message):
    path = tmp_path / "model.gguf"
    path.write_bytes(blob)
    (tmp_path / "d.jsonl").write_text(TOKENS_DATA)
    tracemalloc.start()
    started = time.perf_counter()
    err = run_cli(capsys, "eval", path, tmp_path / "d.jsonl")
    elapsed, peak = time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "model.gguf" in err and message in err, err
    assert elapsed < 2 and peak < 64 * 2**20, (elapsed, peak)


CONFIGS = [
    ("no attention heads", {**F.CONFIG, "num_attention_heads": 0}, "num_attention_heads"),
    ("a list", [F.CONFIG], "expected a JSON object"),
    ("architectures a number", {**F.CONFIG, "architectures": 5}, "architectures"),
    ("hidden size Infinity", '{"architectures": ["LlamaForCausalLM"], "hidden_size": Infinity}', "Infinity"),
    ("rope_parameters a list", {**F.CONFIG, "rope_parameters": [1, 2]}, "rope_parameters"),
    ("a million layers", {**F.CONFIG, "num_hidden_layers": 1_000_000}, "num_hidden_layers"),
    ("more layers than weights", {**F.CONFIG, "num_hidden_layers": 3}, "num_hidden_layers is 3, but the weights hold 1 layers"),
    ("heads not dividing hidden", {**F.CONFIG, "num_attention_heads": 3, "head_dim": None}, "multiple"),
    ("kv heads not dividing heads", {**F.CONFIG, "num_key_value_heads": 3, "num_attention_heads": 2}, "multiple"),
    ("vocab a string", {**F.CONFIG, "vocab_size": "16"}, "vocab_size"),
]


@pytest.mark.parametrize("config, message", [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_hostile_config(tmp_path, capsys, config, message):
    folder = F.model_folder(tmp_path / "model")
    (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    (tmp_path / "d.jsonl").write_text(TOKENS_DATA)
    started = time.perf_counter()
    err = run_cli(capsys, "eval", folder, tmp_path / "d.jsonl")
    assert "config.json" in err and message in err, err
    assert time.perf_counter() - started < 2


# ---------------------------------------------------------------- adapters


def adapter_tensors(value: float = 0.01) -> bytes:
    tensors = {}
    for module, (out_f, in_f) in {"q_proj": (8, 8), "v_proj": (4, 8)}.items():
        base = f"base_model.model.model.layers.0.self_attn.{module}"
        tensors[f"{base}.lora_A.weight"] = ("F32", (2, in_f), struct.pack(f"<{2 * in_f}f", *[value] * (2 * in_f)))
        tensors[f"{base}.lora_B.weight"] = ("F32", (out_f, 2), struct.pack(f"<{2 * out_f}f", *[value] * (2 * out_f)))
    return serialize(tensors)


def adapter_config(**fields) -> bytes:
    return json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"],
                       **fields}).encode()


def adapter_zip(members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def good_zip() -> bytes:
    return adapter_zip({"adapter_model.safetensors": adapter_tensors(), "adapter_config.json": adapter_config()})


def central_entry_offset(blob: bytes) -> int:
    return blob.index(b"PK\x01\x02")


def zip_bad_crc() -> bytes:
    blob = bytearray(good_zip())
    blob[blob.index(b"base_model") + 200] ^= 0xFF  # inside the stored tensor data
    return bytes(blob)


def zip_patched(offset_in_entry: int, fmt: str, value) -> bytes:
    """good_zip() with one field of the first central-directory entry (and its local header) set."""
    blob = bytearray(good_zip())
    at = central_entry_offset(blob)
    struct.pack_into(fmt, blob, at + offset_in_entry, value)
    struct.pack_into(fmt, blob, offset_in_entry - 2, value)  # the local header has the same field 2 bytes earlier
    return bytes(blob)


def zip_overlapping() -> bytes:
    """Two directory entries pointing at the same local header (one stream counted twice)."""
    blob = bytearray(good_zip())
    first = central_entry_offset(blob)
    second = blob.index(b"PK\x01\x02", first + 4)
    struct.pack_into("<I", blob, second + 42, struct.unpack_from("<I", blob, first + 42)[0])
    return bytes(blob)


def zip_bomb() -> bytes:
    """A zip of about 1 MB whose adapter member unpacks to 1 GiB + 1 byte."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("adapter_config.json", adapter_config())
        with zf.open("adapter_model.safetensors", "w", force_zip64=True) as member:
            chunk = bytes(1 << 22)
            for _ in range(256):
                member.write(chunk)
            member.write(b"\0")
    return buf.getvalue()


ZIPS = [
    ("bad CRC", zip_bad_crc, "damaged"),
    ("unsupported compression", lambda: zip_patched(10, "<H", 99), "compression"),
    ("encrypted", lambda: zip_patched(8, "<H", 1), "cannot be read|encrypted|password"),
    ("truncated directory", lambda: good_zip()[:-30], "not a valid zip"),
    ("overlapping entries", zip_overlapping, "overlap"),
    ("1 GiB member", zip_bomb, "at most"),
]


@pytest.mark.parametrize("make, message", [c[1:] for c in ZIPS], ids=[c[0] for c in ZIPS])
def test_hostile_adapter_zips(tmp_path, capsys, make, message):
    import re

    folder = F.model_folder(tmp_path / "model")
    (tmp_path / "d.jsonl").write_text(TOKENS_DATA)
    (tmp_path / "adapter.zip").write_bytes(make())
    tracemalloc.start()
    started = time.perf_counter()
    err = run_cli(capsys, "eval", folder, tmp_path / "d.jsonl", "--adapter", tmp_path / "adapter.zip")
    elapsed, peak = time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "adapter.zip" in err and re.search(message, err), err
    assert elapsed < 2 and peak < 64 * 2**20, (elapsed, peak)


ADAPTERS = [
    ("alpha NaN", {"lora_alpha": float("nan")}, None, "NaN"),
    ("alpha Infinity", {"lora_alpha": float("inf")}, None, "Infinity"),
    ("r a string", {"r": "2"}, None, "r must be an integer"),
    ("r a fraction", {"r": 2.5}, None, "r must be an integer"),
    ("r zero", {"r": 0}, None, "r is 0"),
    ("dropout negative", {"lora_dropout": -0.5}, None, "lora_dropout"),
    ("backtracking rank_pattern", {"rank_pattern": {"(.|.)*z": 2}}, None, "could take a very long time"),
    ("rank_pattern rank a string", {"rank_pattern": {"q_proj": "2"}}, None, "must be an integer"),
    ("NaN tensors", {}, adapter_tensors(float("nan")), "NaN or infinite"),
    ("infinite tensors", {}, adapter_tensors(float("inf")), "NaN or infinite"),
]


@pytest.mark.parametrize("fields, tensors, message", [c[1:] for c in ADAPTERS], ids=[c[0] for c in ADAPTERS])
def test_hostile_adapters(tmp_path, capsys, fields, tensors, message):
    folder = F.model_folder(tmp_path / "model")
    (tmp_path / "d.jsonl").write_text(TOKENS_DATA)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_bytes(adapter_config(**fields))
    (adapter / "adapter_model.safetensors").write_bytes(tensors or adapter_tensors())
    started = time.perf_counter()
    err = run_cli(capsys, "eval", folder, tmp_path / "d.jsonl", "--adapter", adapter)
    assert "adapter" in err and message in err, err
    assert time.perf_counter() - started < 2


# ---------------------------------------------------------------- datasets and chat templates


def tiny_tokenizer(template: str | None = None):
    from loralab.data.tokenizer import HFTokenizer
    from loralab.formats.gguf import parse
    from loralab.model.gguf_model import tokenizer_files

    blob = F.tiny_gguf()
    tokenizer_json, config, default_template = tokenizer_files(parse(blob, len(blob), "tiny.gguf"))
    return HFTokenizer(tokenizer_json, config, template or default_template)


FAILING_SECOND_RENDER = ("{% if messages|length == 1 and add_generation_prompt %}{{ raise_exception('no') }}{% endif %}"
                         + F.TEMPLATE)
DATASETS = [
    ("JSON nested 100k deep", "d.json", "[" * 100_000 + "]" * 100_000, None, "nested too deeply"),
    ("JSONL line nested deep", "d.jsonl", '{"text": ' + "[" * 100_000 + "]" * 100_000 + "}\n", None, "line 1"),
    ("NaN in JSON", "d.jsonl", '{"input_ids": [1, NaN]}\n', None, "NaN"),
    ("label outside the vocabulary", "d.jsonl", '{"input_ids": [1, 2], "labels": [1, 99]}\n', None, "label 99"),
    ("negative label", "d.jsonl", '{"input_ids": [1, 2], "labels": [1, -7]}\n', None, "labels must be"),
    ("bool token ids", "d.jsonl", '{"input_ids": [true, 2]}\n', None, "input_ids"),
    ("template fails on the second render", "d.jsonl",
     '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ab"}]}\n',
     FAILING_SECOND_RENDER, "record 1"),
    ("template loops without end", "d.jsonl", '{"messages": [{"role": "user", "content": "hi"}]}\n',
     "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "loops more than"),
    ("template builds a huge string", "d.jsonl", '{"messages": [{"role": "user", "content": "hi"}]}\n',
     "{{ 'a' * 10000000000 }}", "too large"),
    ("template recurses", "d.jsonl", '{"messages": [{"role": "user", "content": "hi"}]}\n',
     "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "recursed"),
    ("template raises a huge power", "d.jsonl", '{"messages": [{"role": "user", "content": "hi"}]}\n',
     "{{ 10 ** 10 ** 10 ** 10 ** 10 }}", "too high a power"),
    ("template squares a number without end", "d.jsonl", '{"messages": [{"role": "user", "content": "hi"}]}\n',
     "{% set ns = namespace(x=3) %}{% for i in range(64) %}{% set ns.x = ns.x * ns.x %}{% endfor %}{{ ns.x }}",
     "too large"),
]


@pytest.mark.parametrize("name, text, template, message", [c[1:] for c in DATASETS], ids=[c[0] for c in DATASETS])
def test_hostile_datasets(name, text, template, message):
    from loralab.data.formats import DatasetError, load_dataset

    started = time.perf_counter()
    with pytest.raises(DatasetError) as err:
        load_dataset(name, text, "auto", tiny_tokenizer(template), 64, 16)
    assert name in str(err.value) and message in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert time.perf_counter() - started < 2


def test_dataset_errors_reach_the_cli_as_one_line(tmp_path, capsys):
    path = tmp_path / "model.gguf"
    path.write_bytes(F.tiny_gguf())
    (tmp_path / "d.json").write_text("[" * 100_000 + "]" * 100_000)
    err = run_cli(capsys, "eval", path, tmp_path / "d.json")
    assert "d.json" in err and "nested too deeply" in err


def test_a_csv_field_over_the_csv_modules_limit_loads():
    from loralab.data.formats import load_dataset

    long = "ab " * 60_000  # 180,000 characters in one field
    sequences, summary = load_dataset("d.csv", f'text\n"{long}"\n"hi"\n', "auto", tiny_tokenizer(), 32, 16)
    assert summary.records == 2 and summary.truncated == 1 and len(sequences) == 2


def test_long_examples_are_cut_before_tokenizing_with_the_same_tokens():
    from loralab.data.formats import load_dataset

    tok = tiny_tokenizer()
    text = ("hi ab c d\n" * 30_000)[:-1]  # 300,000 characters on few lines
    started = time.perf_counter()
    sequences, summary = load_dataset("d.jsonl", json.dumps({"text": text}) + "\n", "auto", tok, 64, 16)
    cut = time.perf_counter() - started
    whole = tok.encode(text)
    assert sequences[0].input_ids[:64] == whole[:64] and summary.truncated == 1
    assert len(sequences[0].input_ids) < 2_000 < len(whole), (len(sequences[0].input_ids), len(whole))
    assert cut < 2


# ---------------------------------------------------------------- file names from indexes


def test_a_local_index_cannot_name_files_outside_the_folder(tmp_path, capsys):
    folder = F.model_folder(tmp_path / "model")
    (tmp_path / "outside.safetensors").write_bytes(F.model_safetensors())
    (tmp_path / "d.jsonl").write_text(TOKENS_DATA)
    for shard in ("../outside.safetensors", str(tmp_path / "outside.safetensors"), "C:\\x.safetensors", "a/../../b"):
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": shard}}))
        err = run_cli(capsys, "eval", folder, tmp_path / "d.jsonl")
        assert "not a plain file name" in err, err


def test_a_hostile_hub_writes_nothing_outside_the_cache(tmp_path, capsys, monkeypatch):
    """A local hub whose shard index names ../../ paths and absolute paths: the CLI refuses the
    repo, and no file appears anywhere but in the cache."""
    from loralab.devserver import serve_in_background

    hub = tmp_path / "hub"
    repo = F.model_folder(hub / "evil" / "model" / "resolve" / "main")
    victim = tmp_path / "victim"
    victim.mkdir()
    cache = tmp_path / "cache"
    monkeypatch.setenv("LORALAB_CACHE", str(cache))
    (tmp_path / "d.jsonl").write_text(TOKENS_DATA)
    targets = ["../../../../victim/planted.pth", str(victim / "absolute.pth"), "..\\..\\victim\\bs.pth"]
    for target in targets:  # each served, in case a client fetched it
        (repo / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model.safetensors",
                                                                                      "b": target}}))
    server, url = serve_in_background(hub, cross_origin=True)
    try:
        for target in targets:
            (repo / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"b": target}}))
            for cached in cache.rglob("model.safetensors.index.json"):
                cached.unlink()
            err = run_cli(capsys, "eval", "evil/model", tmp_path / "d.jsonl", "--hub-endpoint", url.rstrip("/"))
            assert "not a plain file name" in err, err
    finally:
        server.shutdown()
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and cache not in p.parents and hub not in p.parents
               and p.name != "d.jsonl"]
    assert outside == [] and list(victim.iterdir()) == []


TOKENIZER_FILES = [
    ("tokenizer.json not JSON", {"tokenizer.json": "{nope"}, "tokenizer.json cannot be read"),
    ("tokenizer.json nested deep", {"tokenizer.json": "[" * 5000 + "]" * 5000}, "tokenizer.json"),
    ("special token a number", {"tokenizer_config.json": '{"eos_token": 5}'}, "eos_token must be a token"),
    ("tokenizer config a list", {"tokenizer_config.json": "[1]"}, "expected a JSON object"),
    ("named templates not objects", {"tokenizer_config.json": '{"chat_template": [1, 2]}'}, None),
]


@pytest.mark.parametrize("files, message", [c[1:] for c in TOKENIZER_FILES], ids=[c[0] for c in TOKENIZER_FILES])
def test_hostile_tokenizer_files(tmp_path, capsys, files, message):
    from tests.browser.test_app_flow import make_chat_model

    folder = make_chat_model(tmp_path / "model")
    for name, text in files.items():
        (folder / name).write_text(text)
    (tmp_path / "d.jsonl").write_text('{"text": "hi"}\n')
    if message is None:  # not an error: a list without a "default" entry means no template

        from loralab.cli import open_session

        assert settle(open_session(str(folder))).model.tokenizer.chat_template is None
        return
    err = run_cli(capsys, "eval", folder, tmp_path / "d.jsonl")
    assert str(folder) in err and message in err, err


def checkpoint(tmp_path, meta) -> str:
    folder = tmp_path / "ckpt"
    folder.mkdir(exist_ok=True)
    (folder / "state.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    (folder / "state.safetensors").write_bytes(serialize({"params": ("F32", (1,), bytes(4))}))
    return str(folder)


GOOD_META = {"lora": {"r": 2, "targets": ["q_proj"]}, "train": {"steps": 2}, "step": 1, "order": {"epoch": 0, "index": 1}}
CHECKPOINTS = [
    ("state a list", [1], "expected a JSON object|must be a JSON object"),
    ("state nested deep", "[" * 5000 + "]" * 5000, "nested too deeply"),
    ("step a string", {**GOOD_META, "step": "1"}, "step must be an integer"),
    ("order missing", {k: v for k, v in GOOD_META.items() if k != "order"}, "order must be a JSON object"),
    ("targets a string", {**GOOD_META, "lora": {"r": 2, "targets": "q_proj"}}, "lora.targets"),
    ("buffers missing", GOOD_META, "m, v missing"),
    ("unknown LoRA field", {**GOOD_META, "lora": {"r": 2, "targets": ["q_proj"], "colour": 1}}, None),
]


@pytest.mark.parametrize("meta, message", [c[1:] for c in CHECKPOINTS], ids=[c[0] for c in CHECKPOINTS])
def test_hostile_checkpoints(tmp_path, capsys, meta, message):
    import re

    folder = F.model_folder(tmp_path / "model")
    (tmp_path / "d.jsonl").write_text(TOKENS_DATA)
    ckpt = checkpoint(tmp_path, meta)
    if message is None:  # well formed, all buffers there, but a field this version does not know
        (tmp_path / "ckpt" / "state.safetensors").write_bytes(
            serialize({name: ("F32", (1,), bytes(4)) for name in ("params", "m", "v")}))
        message = "unknown field 'colour'"
    err = run_cli(capsys, "train", folder, tmp_path / "d.jsonl", "--out", tmp_path / "out", "--resume", ckpt)
    assert "ckpt" in err and re.search(message, err), err
