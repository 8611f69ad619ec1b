"""`loralab export --to onnx`: the merged model as an ONNX decoder, checked by onnx.checker, run by
onnxruntime against transformers + PEFT for every family, through its KV cache and a padded
batch, in its 4-bit variant, and loaded by transformers.js (Node) for greedy generation."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.model import hf
from tests.test_cli_train import loralab

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ["llama", "llama3", "qwen2", "qwen3", "gemma3", "phi3", "phi3_longrope", "gpt2", "mistral"]
IDS = [3, 14, 15, 92, 65, 35, 8, 9, 10, 11]  # longer than the tiny Gemma 3's window of 4


def export(tmp_path, kind: str, dtype: str = "fp32", tied: bool = True, seed: int = 3):
    """A tiny model of `kind`, a PEFT adapter on every projection with random B, and its ONNX export."""
    model = hf.tiny_model(kind, tmp_path / "model", seed=seed, tied=tied)
    peft_model = hf.peft_model(model, b_std=0.05)
    peft_model.save_pretrained(tmp_path / "adapter")
    loralab("export", tmp_path / "adapter", "--to", "onnx", "--model", model, "--out", tmp_path / "onnx",
            "--onnx-dtype", dtype)
    return peft_model, tmp_path / "onnx"


def session(path: Path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def ort_run(sess, ids: np.ndarray, mask: np.ndarray | None = None, positions: np.ndarray | None = None,
        past: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """logits, then present.N.key/value, for ids [B, S] after `past` (empty by default)."""
    B, S = ids.shape
    inputs = [i for i in sess.get_inputs() if i.name.startswith("past_key_values.")]
    past = past or [np.zeros((B, i.shape[1], 0, i.shape[3]), np.float32) for i in inputs]
    P = past[0].shape[2]
    mask = np.ones((B, P + S), np.int64) if mask is None else mask
    positions = np.broadcast_to(np.arange(P, P + S), (B, S)) if positions is None else positions
    feeds = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64),
             "position_ids": np.ascontiguousarray(positions, np.int64)}
    feeds.update({i.name: p for i, p in zip(inputs, past)})
    return sess.run(None, feeds)


@pytest.mark.parametrize("kind", FAMILIES)
def test_onnx_export_runs_in_onnxruntime_like_peft(tmp_path, kind):
    """onnx.checker passes; logits equal PEFT's (≤ 1e-4), all at once and token by token through
    the KV cache; a left-padded batch row equals the same tokens alone."""
    import onnx

    peft_model, out = export(tmp_path, kind, tied=kind not in ("llama", "qwen2"))
    path = out / "onnx" / "model.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == peft_model.base_model.model.config.model_type
    ids = np.array([IDS])
    with torch.no_grad():
        reference = peft_model(input_ids=torch.tensor(ids)).logits.numpy()
    sess = session(path)
    names = [o.name for o in sess.get_outputs()]
    layers = peft_model.base_model.model.config.num_hidden_layers
    assert names == ["logits"] + [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    whole = ort_run(sess, ids)
    assert np.abs(whole[0] - reference).max() <= 1e-4

    step = ort_run(sess, ids[:, :6])  # then one token at a time through the cache
    for t in range(6, len(IDS)):
        step = ort_run(sess, ids[:, t:t + 1], past=step[1:])
        assert np.abs(step[0][0, -1] - reference[0, t]).max() <= 1e-4, t

    pad = 3  # a batch of two: the second row left-padded (mask 0, positions from its first token)
    short = ids[:, pad:]
    batch = np.stack([ids[0], np.concatenate([np.zeros(pad, np.int64), short[0]])])
    mask = np.stack([np.ones(len(IDS)), np.concatenate([np.zeros(pad), np.ones(len(IDS) - pad)])])
    positions = np.stack([np.arange(len(IDS)), np.concatenate([np.ones(pad), np.arange(len(IDS) - pad)])])
    padded = ort_run(sess, batch, mask, positions)[0]
    with torch.no_grad():
        alone = peft_model(input_ids=torch.tensor(short)).logits.numpy()
    assert np.abs(padded[0] - reference[0]).max() <= 1e-4
    assert np.abs(padded[1, pad:] - alone[0]).max() <= 1e-4


def test_onnx_q4_variant_is_matmulnbits_of_the_merged_weights(tmp_path):
    """model_q4.onnx: every projection a MatMulNBits whose 4-bit blocks are ref.quantize_nbits of
    the merged float32 weights (model.onnx's), and whose logits equal transformers' over those
    dequantized weights (≤ 1e-4). Its error against the float32 export is printed."""
    import onnx
    from onnx import numpy_helper

    from loralab import ref

    peft_model, out = export(tmp_path, "qwen2", "both", tied=False)
    f32 = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out / "onnx" / "model.onnx")).graph.initializer}
    q4 = onnx.load(str(out / "onnx" / "model_q4.onnx"))
    onnx.checker.check_model(q4, full_check=True)
    inits = {t.name: numpy_helper.to_array(t) for t in q4.graph.initializer}
    nodes = [n for n in q4.graph.node if n.op_type == "MatMulNBits"]
    assert len(nodes) == 2 * 7 + 1 and all(n.domain == "com.microsoft" for n in nodes)  # + lm_head
    merged = peft_model.merge_and_unload()
    params = dict(merged.named_parameters())
    for node in nodes:
        name = node.input[1].removesuffix("_q4")
        w = f32[name]
        N, K = w.shape
        blocks = -(-K // 32)
        codes = inits[node.input[1]]
        unpacked = np.stack([codes & 15, codes >> 4], -1).reshape(N, blocks, 32)
        zp = inits[node.input[3]].reshape(N, -1)
        zp = np.stack([zp & 15, zp >> 4], -1).reshape(N, -1)[:, :blocks]
        scales = inits[node.input[2]].reshape(N, blocks)
        q_ref, s_ref, z_ref = ref.quantize_nbits(w)
        np.testing.assert_allclose(scales, s_ref, rtol=1e-6, err_msg=name)
        tie = np.abs(np.abs(w.reshape(N, -1, 32) / s_ref[..., None] % 1) - 0.5) < 1e-3  # rounding ties may differ
        assert (unpacked == q_ref)[~tie].all() and (zp == z_ref).all(), name
        value = (unpacked.astype(np.float32) - zp[..., None]) * scales[..., None]
        with torch.no_grad():
            params[name].copy_(torch.tensor(value.reshape(N, -1)[:, :K]))
    table = inits["model.embed_tokens.weight"]
    assert table.dtype == np.float16
    with torch.no_grad():
        params["model.embed_tokens.weight"].copy_(torch.tensor(table.astype(np.float32)))
        reference = merged(input_ids=torch.tensor([IDS])).logits.numpy()
    logits = ort_run(session(out / "onnx" / "model_q4.onnx"), np.array([IDS]))[0]
    assert np.abs(logits - reference).max() <= 1e-4
    full = ort_run(session(out / "onnx" / "model.onnx"), np.array([IDS]))[0]
    print(f"q4 vs float32 export: max |Δlogit| {np.abs(logits - full).max():.4f} of max |logit| {np.abs(full).max():.4f}")


def test_onnx_export_from_a_gguf_kept_quantized(tmp_path):
    """A GGUF base (no config.json: it is rebuilt from the metadata) kept as Q8_0 on the GPU
    (--weights q8): the float32 export is the dequantized base plus the adapter, as PEFT computes
    over that same base (≤ 1e-4)."""
    import gguf
    import peft

    from tests.model import gguf_from_hf

    model = hf.tiny_model("llama", tmp_path / "model", seed=5, tied=True)
    gguf_from_hf.write(model, tmp_path / "tiny.gguf")
    peft_model = hf.peft_model(model, b_std=0.05)
    peft_model.save_pretrained(tmp_path / "adapter")
    loralab("export", tmp_path / "adapter", "--to", "onnx", "--model", tmp_path / "tiny.gguf", "--out", tmp_path / "onnx",
            "--onnx-dtype", "fp32", "--weights", "q8")
    config = json.loads((tmp_path / "onnx" / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    base = hf.load_hf(model)
    with torch.no_grad():
        for name, p in base.named_parameters():
            if p.ndim == 2 and ".layers." in name:
                q8 = gguf.quants.quantize(p.numpy(), gguf.GGMLQuantizationType.Q8_0)
                p.copy_(torch.tensor(gguf.quants.dequantize(q8, gguf.GGMLQuantizationType.Q8_0)))
        reference = peft.PeftModel.from_pretrained(base, str(tmp_path / "adapter"))(input_ids=torch.tensor([IDS])).logits
    logits = ort_run(session(tmp_path / "onnx" / "onnx" / "model.onnx"), np.array([IDS]))[0]
    assert np.abs(logits - reference.numpy()).max() <= 1e-4


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node (python3 build.py test sets it up)")
@pytest.mark.parametrize("dtype", ["fp32", "q4"])
def test_transformers_js_generates_like_loralab(tmp_path, dtype):
    """transformers.js (Node, onnxruntime-node) loads the exported folder as it is, and its greedy
    20 tokens equal `loralab generate` with the adapter (float32; the 4-bit variant against
    transformers.js's own float32 run is only printed)."""
    from tests.browser.test_app_flow import make_chat_model

    model = make_chat_model(tmp_path / "model", "qwen3")
    peft_model = hf.peft_model(model, b_std=0.05)
    peft_model.save_pretrained(tmp_path / "adapter")
    out = tmp_path / "exported"
    loralab("export", tmp_path / "adapter", "--to", "onnx", "--model", model, "--out", out, "--onnx-dtype", dtype)
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()}
    prompt = "Where is the key?"
    done = subprocess.run(["node", str(ROOT / "tests" / "node" / "transformers_generate.mjs"), str(out), prompt, "20",
                           dtype], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    ours = loralab("generate", model, "--adapter", tmp_path / "adapter", "--prompt", prompt, "--max-new-tokens", 20)
    if dtype == "fp32":
        assert result["text"] == ours.stdout.rstrip("\n")
    else:
        print(f"q4: transformers.js {result['text']!r}; loralab (float32) {ours.stdout.rstrip()!r}")
        assert len(result["new_ids"]) >= 1


@pytest.mark.parametrize("kind", ["llama", "qwen3", "gemma3"])
def test_gguf_read_in_place_runs_in_onnxruntime(tmp_path, run, kind):
    """Chat without WebGPU reads a GGUF file in place (onnx_export.gguf_graph: the file is the
    model's external data): Q8_0, Q4_0, Q4_1 and F16 matrices, llama.cpp's q/k row order (Llama)
    and Gemma's 1 + w norms give transformers' logits over the same dequantized weights (≤ 1e-4)."""
    import gguf
    import onnx

    from loralab.formats import onnx as writer
    from loralab.model.gguf_model import GGUFModel
    from loralab.onnx_export import GGUF_LOCATION, gguf_graph
    from tests.model import gguf_from_hf

    Q = gguf.GGMLQuantizationType
    types = (Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.F16)
    extra = {}
    if kind == "gemma3":  # llama.cpp's Gemma 3: a global layer every sixth, q·k / √head_dim
        extra = dict(num_hidden_layers=6, layer_types=["sliding_attention"] * 5 + ["full_attention"],
                     query_pre_attn_scalar=16)
    model = hf.tiny_model(kind, tmp_path / "model", seed=6, tied=kind != "llama", **extra)
    gguf_from_hf.write(model, tmp_path / GGUF_LOCATION, types)
    with open(tmp_path / "model.onnx", "wb") as f:
        run(writer.write_model(f.write, gguf_graph(GGUFModel.from_path(str(tmp_path / GGUF_LOCATION)))))
    assert (tmp_path / "model.onnx").stat().st_size < 200_000  # the graph only: the weights stay in the GGUF
    onnx.checker.check_model(str(tmp_path / "model.onnx"))
    reference = hf.load_hf(model)
    reader = gguf.GGUFReader(str(tmp_path / GGUF_LOCATION))
    stored = {t.name: t for t in reader.tensors}
    with torch.no_grad():  # the weights as the file holds them
        for name, p in reference.named_parameters():
            if p.ndim != 2 or (name == "lm_head.weight" and reference.config.tie_word_embeddings):
                continue
            t = stored[gguf_from_hf.gguf_name(name, kind)]
            value = gguf.quants.dequantize(t.data, t.tensor_type).reshape(p.shape)
            if kind == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
                heads = reference.config.num_attention_heads if "q_proj" in name else reference.config.num_key_value_heads
                value = value.reshape(heads, -1, 2, value.shape[1]).swapaxes(1, 2).reshape(p.shape)
            p.copy_(torch.tensor(np.asarray(value, np.float32)))
        expected = reference(input_ids=torch.tensor([IDS])).logits.numpy()
    logits = ort_run(session(tmp_path / "model.onnx"), np.array([IDS]))[0]
    assert np.abs(logits - expected).max() <= 1e-4


def test_gguf_read_in_place_refuses_what_it_cannot_decode(tmp_path):
    """A block type it does not decode (Q5_0, as K-quants) gets a message naming the file, the tensor
    and what runs without WebGPU."""
    import gguf

    from loralab.errors import UsageError
    from loralab.model.gguf_model import GGUFModel
    from loralab.onnx_export import gguf_graph
    from tests.model import gguf_from_hf

    model = hf.tiny_model("qwen2", tmp_path / "model", seed=6)
    gguf_from_hf.write(model, tmp_path / "k.gguf", (gguf.GGMLQuantizationType.Q5_0,))
    with pytest.raises(UsageError, match=r"k\.gguf: tensor .* is Q5_0; without WebGPU"):
        gguf_graph(GGUFModel.from_path(str(tmp_path / "k.gguf")))


def test_a_model_over_the_protobuf_limit_keeps_its_weights_in_onnx_data(tmp_path, monkeypatch):
    """Over protobuf's 2 GB (the limit lowered here so a tiny model crosses it) the weights go to
    onnx/model.onnx_data, config.json names it for transformers.js, and onnxruntime runs the pair."""
    from loralab import cli
    from loralab.formats import onnx as writer

    model = hf.tiny_model("qwen2", tmp_path / "model", seed=3, tied=False)
    peft_model = hf.peft_model(model, b_std=0.05)
    peft_model.save_pretrained(tmp_path / "adapter")
    monkeypatch.setattr(writer, "PROTOBUF_LIMIT", 50_000)
    out = tmp_path / "onnx"
    from concurrent.futures import ThreadPoolExecutor

    args = ["export", str(tmp_path / "adapter"), "--to", "onnx", "--model", str(model), "--out", str(out),
            "--onnx-dtype", "fp32"]
    with ThreadPoolExecutor(1) as pool:  # (its own thread: Playwright's event loop may run on this one)
        assert pool.submit(cli.main, args).result() == 0
    assert (out / "onnx" / "model.onnx").stat().st_size < 50_000 < (out / "onnx" / "model.onnx_data").stat().st_size
    config = json.loads((out / "config.json").read_text())
    assert config["transformers.js_config"]["use_external_data_format"] == {"model.onnx": 1}
    with torch.no_grad():
        reference = peft_model(input_ids=torch.tensor([IDS])).logits.numpy()
    logits = ort_run(session(out / "onnx" / "model.onnx"), np.array([IDS]))[0]
    assert np.abs(logits - reference).max() <= 1e-4


def test_decoder_shape_from_any_decoders_config():
    """Chat through an ONNX folder reads the cache shape the way transformers.js does, for families
    the engine may not train too; a config without it gets a message naming the field."""
    from loralab.config import ModelConfigError
    from loralab.onnx_decode import DecoderShape

    assert DecoderShape.from_config({"n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 1024}) == \
        DecoderShape(12, 12, 64, 1024)
    assert DecoderShape.from_config({"num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
                                     "head_dim": 128, "hidden_size": 1024, "max_position_embeddings": 40960}) == \
        DecoderShape(28, 8, 128, 40960)
    assert DecoderShape.from_config({"model_type": "gemma3", "text_config": {
        "num_hidden_layers": 26, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
        "max_position_embeddings": 32768}}) == DecoderShape(26, 1, 256, 32768)
    with pytest.raises(ModelConfigError, match="num_hidden_layers or n_layer or num_layers is missing"):
        DecoderShape.from_config({"hidden_size": 64})
    with pytest.raises(ModelConfigError, match="head_dim"):
        DecoderShape.from_config({"num_hidden_layers": 2, "num_attention_heads": 4, "head_dim": "x"})
