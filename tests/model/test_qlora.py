"""QLoRA: the whole model with its frozen weights kept quantized on the GPU, for every GGUF block
type and for NF4 and Q8_0 quantized at load, against the float32 path and transformers + PEFT
over the dequantized weights; a GGUF file of mixed k-quants loaded as it is; and the default
model's evaluation loss quantized against float32."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from loralab.config import PROJECTIONS, LoraConfig, module_name
from loralab.data.batches import Sequence, make_batch
from loralab.lora import LoraState
from loralab.model.transformer import Transformer
from loralab.model.weights import HFFolder, upload_weights, weight_types
from loralab.ops import GGUF_TYPES, QUANTIZE_TO
from loralab.train import step_scalars
from tests.model import hf

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")

KINDS = [*GGUF_TYPES, "q4", "q8"]
BLOCK = {"Q8_0": (32, 34), "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24),
         "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210)}
SCALES = {"Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}  # float16 fields of the k-quant blocks


def k_quant_blocks(kind: str, rows: int, cols: int, seed: int) -> bytes:
    """Valid random k-quant blocks (gguf-py cannot quantize these): random quants and sub-block
    scales, and small float16 super-block scales so the values stay those of a trained matrix."""
    per, size = BLOCK[kind]
    rng = np.random.default_rng(seed)
    raw = bytearray(rng.integers(0, 256, rows * cols // per * size, dtype=np.uint8).tobytes())
    for b in range(rows * cols // per):
        for at in SCALES[kind]:
            struct.pack_into("<e", raw, b * size + at, float(rng.uniform(1e-5, 6e-5) * rng.choice([-1, 1])))
    return bytes(raw)


def quantized_weights(gpu, ops, run, arrays, weights: dict, config, kind: str):
    """The float32 weights with the matrices quantized as `kind` (GGUF types: the projections and
    the embedding, as llama.cpp files have them; q4/q8: the projections, as QLoRA does), and the
    dequantized values of each quantized matrix."""
    projections = [f"{module_name(i, m)}.weight" for i in range(config.num_layers) for m in PROJECTIONS]
    names = projections + (["model.embed_tokens.weight"] if kind in GGUF_TYPES else [])
    out, values = dict(weights), {}
    for i, name in enumerate(names):
        rows, cols = config.projection_shape(name.split(".")[-2]) if name in projections else (
            config.vocab_size, config.hidden_size)
        w = np.frombuffer(run(gpu.read_buffer(weights[name])), np.float32).reshape(rows, cols)
        if kind in GGUF_TYPES:
            qtype = getattr(gguf.GGMLQuantizationType, kind)
            raw = (gguf.quants.quantize(w, qtype).tobytes() if kind not in BLOCK or BLOCK[kind][0] == 32
                   else k_quant_blocks(kind, rows, cols, seed=i))
            packed = ops.quantized_buffer(GGUF_TYPES[kind][1], rows, cols, name)
            src = arrays.up(np.frombuffer(raw + bytes(-len(raw) % 4), np.uint8))
            gpu.submit([ops.repack(packed, src, kind, rows, cols)])
            want = gguf.quants.dequantize(np.frombuffer(raw, np.uint8).reshape(rows, -1), qtype)
        else:
            packed = ops.quantized_buffer(QUANTIZE_TO[kind], rows, cols, name)
            gpu.submit([ops.quantize(packed, weights[name], rows, cols)])
            want = None
        deq = arrays.empty(rows * cols)
        gpu.submit([ops.dequantize(deq, packed, rows, cols)])
        values[name] = arrays.down(deq, (rows, cols))
        if want is not None:
            np.testing.assert_array_equal(values[name], want, err_msg=name)
        out[name] = packed
    return out, values


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny Llama whose matrices are whole k-quant super-blocks wide (256 and 512 columns)."""
    return hf.tiny_model("llama", tmp_path_factory.mktemp("qlora"), seed=9, tied=True, hidden_size=256,
                         intermediate_size=512, num_attention_heads=4, num_key_value_heads=2)


@pytest.mark.parametrize("path", ["codes", "dequantized"])
@pytest.mark.parametrize("kind", KINDS)
def test_quantized_weights_train_like_peft_on_the_dequantized_model(gpu, ops, run, arrays, base_dir, tmp_path, kind,
                                                                    path, monkeypatch):
    """path: the matmuls read the codes (few rows), or each projection is dequantized into a
    scratch buffer first (many rows; DEQUANT_ROWS lowered so the tiny batch takes it)."""
    from loralab.model import transformer

    monkeypatch.setattr(transformer, "DEQUANT_ROWS", 10**9 if path == "codes" else 1)
    source = HFFolder(str(base_dir))
    config = source.config
    f32 = run(upload_weights(gpu, config, source, ops, "f32"))
    weights, values = quantized_weights(gpu, ops, run, arrays, f32, config, kind)
    assert f32["model.layers.0.mlp.down_proj.weight"].size / weights["model.layers.0.mlp.down_proj.weight"].size > (
        3.0 if kind in ("Q4_0", "Q4_1", "Q4_K", "q4") else 1.5)
    # The reference: the same model with the dequantized values, in transformers (and our float32 path).
    ref_model = hf.load_hf(base_dir)
    with torch.no_grad():
        params = dict(ref_model.named_parameters())
        for name, v in values.items():
            params[name].copy_(torch.tensor(v))
    ref_model.save_pretrained(tmp_path / "dequantized", safe_serialization=True)
    (tmp_path / "dequantized" / "config.json").write_text((base_dir / "config.json").read_text())

    B, S, r, alpha = 2, 9, 4, 8.0
    ids, labels = hf.batch(5, B, S, ignore_prefix=2)
    flat_ids, targets, n = make_batch([Sequence(list(i), list(l)) for i, l in zip(ids.tolist(), labels.tolist())], B, S)

    # Logits with B = 0 equal the float32 path over the dequantized weights.
    logits = {}
    for label, w in (("quantized", weights), ("float32", None)):
        if w is None:
            ref_source = HFFolder(str(tmp_path / "dequantized"))
            w = run(upload_weights(gpu, config, ref_source, ops, "f32"))
        lora = LoraState(gpu, config, LoraConfig(r=r, alpha=alpha))
        gpu.submit(lora.init_dispatches(ops, seed=7))
        model = Transformer(gpu, ops, config, w, lora, B, S)
        model.write_batch(flat_ids, targets)
        out = arrays.empty(B * S * config.vocab_size)
        gpu.submit(model.forward() + model.logits_into(out))
        logits[label] = arrays.down(out, (B * S, config.vocab_size))
        model.release()
        lora.release()
    scale = np.abs(logits["float32"]).max()
    np.testing.assert_allclose(logits["quantized"], logits["float32"], rtol=1e-4, atol=1e-4 * scale)

    # The loss and every LoRA gradient equal PEFT's on the dequantized model.
    pm = hf.peft_model(tmp_path / "dequantized", r=r, alpha=alpha, b_std=0.05)
    result = pm(input_ids=torch.tensor(ids), labels=torch.tensor(labels))
    result.loss.backward()
    ref_grads = hf.lora_grads(pm)
    lora = LoraState(gpu, config, LoraConfig(r=r, alpha=alpha))
    lora.load_state({k: v.tobytes() for k, v in hf.lora_state(pm).items()})
    model = Transformer(gpu, ops, config, weights, lora, B, S)
    model.write_batch(flat_ids, targets)
    history = arrays.up(np.zeros(1, np.float32))
    step = arrays.up(np.frombuffer(step_scalars(ops), np.float32))
    gpu.submit(model.forward() + model.loss(history, step, backward=True) + model.backward(accumulate_grads=False))
    assert arrays.down(history, (1,))[0] / n == pytest.approx(result.loss.item(), rel=1e-3)
    grads = np.frombuffer(run(gpu.read_buffer(lora.grads)), np.float32) / n
    assert set(ref_grads) == set(lora.by_key)
    for key, want in ref_grads.items():
        t = lora.by_key[key]
        ours = grads[t.offset // 4 : t.offset // 4 + t.numel].reshape(t.shape)
        np.testing.assert_allclose(ours, want, rtol=1e-3, atol=1e-3 * np.abs(want).max(), err_msg=key)
    model.release()
    lora.release()
    for name in values:
        gpu.destroy_buffer(weights[name])


HIDDEN, INTER = 256, 512


def k_quant_gguf(path) -> None:
    """A llama.cpp-style one-layer file at `path`: Q4_K projections, Q6_K v/down, a Q8_0
    embedding, q/k rows permuted for llama.cpp's RoPE, and a tokenizer."""
    from tests.hostile import files as F

    hidden, inter, heads, kv_heads, vocab = HIDDEN, INTER, 4, 2, 16
    kv = [("general.architecture", F.STRING, "llama"), ("general.alignment", F.U32, 32),
          ("llama.block_count", F.U32, 1), ("llama.embedding_length", F.U32, hidden),
          ("llama.feed_forward_length", F.U32, inter), ("llama.attention.head_count", F.U32, heads),
          ("llama.attention.head_count_kv", F.U32, kv_heads), ("llama.rope.dimension_count", F.U32, hidden // heads),
          ("llama.context_length", F.U32, 64), ("llama.attention.layer_norm_rms_epsilon", F.F32, 1e-5),
          ("llama.rope.freq_base", F.F32, 10000.0), *F.tiny_gguf_parts()[0][11:]]  # (+ its tokenizer)
    head = hidden // heads
    shapes = {"token_embd.weight": (vocab, hidden), "output_norm.weight": (hidden,),
              "blk.0.attn_norm.weight": (hidden,), "blk.0.ffn_norm.weight": (hidden,),
              "blk.0.attn_q.weight": (hidden, hidden), "blk.0.attn_k.weight": (kv_heads * head, hidden),
              "blk.0.attn_v.weight": (kv_heads * head, hidden), "blk.0.attn_output.weight": (hidden, hidden),
              "blk.0.ffn_gate.weight": (inter, hidden), "blk.0.ffn_up.weight": (inter, hidden),
              "blk.0.ffn_down.weight": (hidden, inter)}
    ids = {"Q8_0": 8, "Q4_K": 12, "Q6_K": 14}
    tensors, data = [], b""
    for i, (name, shape) in enumerate(shapes.items()):
        if len(shape) == 1:
            kind, blob = 0, struct.pack(f"<{shape[0]}f", *([1.0] * shape[0]))
        else:
            kind = ids["Q8_0" if "embd" in name else "Q6_K" if ("attn_v" in name or "ffn_down" in name) else "Q4_K"]
            name_kind = {8: "Q8_0", 12: "Q4_K", 14: "Q6_K"}[kind]
            blob = (gguf.quants.quantize(np.random.default_rng(i).standard_normal(shape).astype(np.float32) * 0.05,
                                         gguf.GGMLQuantizationType.Q8_0).tobytes()
                    if name_kind == "Q8_0" else k_quant_blocks(name_kind, *shape, seed=i))
        tensors.append((name, list(reversed(shape)), kind, len(data)))
        data += blob + bytes(-len(blob) % 32)
    path.write_bytes(F.gguf_bytes(kv, tensors, data))


def test_a_k_quant_gguf_stays_quantized_and_equals_its_float32_load(gpu, ops, run, tmp_path):
    """A llama.cpp-style file (Q4_K projections, Q6_K v/down, Q8_0 embedding; q/k rows permuted
    for llama.cpp's RoPE) loads quantized by default; its values equal the float32 load's."""
    from loralab.model.gguf_model import GGUFModel

    hidden = HIDDEN
    k_quant_gguf(tmp_path / "mix.gguf")
    source = GGUFModel.from_path(str(tmp_path / "mix.gguf"))
    kept = run(upload_weights(gpu, source.config, source, ops))  # "auto"
    assert set(weight_types(kept)) == {"f32", "q4_k", "q6_k", "q8_0"}
    floats = run(upload_weights(gpu, source.config, source, ops, "f32"))
    for name, buffer in kept.items():
        if buffer.dtype == "f32":
            continue
        rows, cols = (source.config.vocab_size, hidden) if "embed" in name else source.config.projection_shape(
            name.split(".")[-2])
        out = gpu.create_buffer(rows * cols * 4, label="deq")
        gpu.submit([ops.dequantize(out, buffer, rows, cols)])
        assert run(gpu.read_buffer(out)) == run(gpu.read_buffer(floats[name])), name
        gpu.destroy_buffer(out)


def test_the_default_model_quantized_evaluates_like_float32(run):
    """SmolLM2-135M-Instruct (Q4_1/Q8_0) kept quantized: the loss equals the float32 path's."""
    from loralab.cli import open_session
    from loralab.gpu.native import NativeDevice
    from loralab.kernels import directory_reader

    text = "".join(json.dumps({"text": t}) + "\n" for t in ("The cat sat on the mat.", "Quantized weights stay small."))
    losses = {}
    for dtype in ("auto", "f32"):
        session = run(open_session("default"))
        run(session.start(run(NativeDevice.create()), directory_reader()))
        model = run(session.upload(dtype))
        session.use_dataset("t.jsonl", text, seq_len=32)
        losses[dtype] = run(session.evaluate(None))
        losses[dtype + "_types"] = weight_types(model.weights)
        session.close_model()
    assert set(losses["auto_types"]) == {"f32", "q4_1", "q8_0"} and set(losses["f32_types"]) == {"f32"}
    assert losses["auto"]["tokens"] == losses["f32"]["tokens"] > 10
    assert losses["auto"]["loss"] == pytest.approx(losses["f32"]["loss"], abs=1e-5)


@pytest.mark.parametrize("quant", ["Q8_0", "Q4_0"])
def test_a_merged_export_re_quantized_is_the_gguf_with_its_merged_matrices_requantized(tmp_path, quant):
    """`export --to merged --quantize`: the base GGUF's metadata and untouched tensors byte for
    byte; each adapted matrix is W + scaling · B · A in llama.cpp's row order (q/k permuted),
    quantized as ggml's reference quantizer does (gguf-py's quantize of the same values, within
    float32 rounding of the product: at most one step of a block's scale). HF-folder bases are
    refused with a message."""
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.numpy import save_file

    from loralab.model.weights import permute_rows

    k_quant_gguf(tmp_path / "mix.gguf")
    rng = np.random.default_rng(3)
    r, alpha, head = 2, 8, HIDDEN // 4
    shapes = {"q_proj": (HIDDEN, HIDDEN), "v_proj": (2 * head, HIDDEN), "down_proj": (HIDDEN, INTER)}
    tensors = {}
    for module, (out_f, in_f) in shapes.items():
        block = "mlp" if module == "down_proj" else "self_attn"
        base = f"base_model.model.model.layers.0.{block}.{module}"
        tensors[f"{base}.lora_A.weight"] = (rng.standard_normal((r, in_f)) * 0.05).astype(np.float32)
        tensors[f"{base}.lora_B.weight"] = (rng.standard_normal((out_f, r)) * 0.05).astype(np.float32)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": list(shapes)}))
    loralab = str(Path(sys.executable).with_name("loralab"))
    out = subprocess.run([loralab, "export", str(adapter), "--to", "merged", "--quantize", quant, "--model",
                          str(tmp_path / "mix.gguf"), "--out", str(tmp_path / "merged.gguf")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr

    base, merged = gguf.GGUFReader(tmp_path / "mix.gguf"), gguf.GGUFReader(tmp_path / "merged.gguf")
    assert [(f.name, f.types, [bytes(p) for p in f.parts]) for f in merged.fields.values()][3:] == \
           [(f.name, f.types, [bytes(p) for p in f.parts]) for f in base.fields.values()][3:]  # (after the counts)
    before = {t.name: t for t in base.tensors}
    gguf_name = {"q_proj": "blk.0.attn_q.weight", "v_proj": "blk.0.attn_v.weight",
                 "down_proj": "blk.0.ffn_down.weight"}
    assert [t.name for t in merged.tensors] == list(before)
    for t in merged.tensors:
        module = next((m for m, g in gguf_name.items() if g == t.name), None)
        if module is None:
            assert t.tensor_type == before[t.name].tensor_type and bytes(t.data) == bytes(before[t.name].data), t.name
            continue
        assert t.tensor_type.name == quant, t.name
        block = "mlp" if module == "down_proj" else "self_attn"
        key = f"base_model.model.model.layers.0.{block}.{module}"
        delta = (alpha / r) * tensors[f"{key}.lora_B.weight"] @ tensors[f"{key}.lora_A.weight"]
        rows, cols = shapes[module]
        if module == "q_proj":  # into llama.cpp's row order, as the base tensor has it
            delta = np.frombuffer(permute_rows(delta.astype(np.float32).tobytes(), rows, cols * 4, head),
                                  np.float32).reshape(rows, cols)
        want = gguf.quants.dequantize(before[t.name].data, before[t.name].tensor_type) + delta
        got = gguf.quants.dequantize(t.data, t.tensor_type)
        step = np.abs(want).reshape(rows, cols // 32, 32).max(axis=2, keepdims=True) / (127 if quant == "Q8_0" else 8)
        # Half a step (d is rounded to f16), or for Q4_0 a whole one: the code range is −8…7, so a value
        # of the opposite sign to the block's extreme reaches only 7 steps.
        bound = (0.6 if quant == "Q8_0" else 1.1) * step + 1e-7
        assert (np.abs(got - want).reshape(rows, cols // 32, 32) <= bound).all(), t.name
        requantized = gguf.quants.quantize(want.astype(np.float32), t.tensor_type)
        assert (requantized.reshape(-1) != np.asarray(t.data).reshape(-1)).mean() < 0.01, t.name

    folder = tmp_path / "folder"
    hf.tiny_model("llama", folder, seed=1, hidden_size=HIDDEN, intermediate_size=INTER, num_attention_heads=4,
                  num_key_value_heads=2)
    refused = subprocess.run([loralab, "export", str(adapter), "--to", "merged", "--quantize", quant, "--model",
                              str(folder), "--out", str(tmp_path / "x.gguf")], capture_output=True, text=True,
                             timeout=600)
    assert refused.returncode != 0 and "GGUF base" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.parametrize("kind", ["phi3", "gpt2"])
def test_a_re_quantized_merged_gguf_covers_fused_matrices(tmp_path, kind):
    """Phi-3's attn_qkv and ffn_up (gate and up) and GPT-2's attn_qkv hold several projections:
    merged, each is its parts' merged rows in turn, quantized as one matrix (against PEFT's
    merge_and_unload, within a Q8_0 step); the rest of the file stays byte for byte."""
    import subprocess
    import sys
    from pathlib import Path

    from tests.model import gguf_from_hf

    folder = hf.tiny_model(kind, tmp_path / kind, seed=4)
    base_path = gguf_from_hf.write(folder, tmp_path / "base.gguf")
    pm = hf.peft_model(folder, r=4, alpha=8.0, b_std=0.05)
    pm.save_pretrained(tmp_path / "adapter")
    loralab = str(Path(sys.executable).with_name("loralab"))
    out = subprocess.run([loralab, "export", str(tmp_path / "adapter"), "--to", "merged", "--quantize", "Q8_0",
                          "--model", str(base_path), "--out", str(tmp_path / "merged.gguf")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    reference = {k: v.detach().numpy() for k, v in pm.merge_and_unload().state_dict().items()}
    if kind == "gpt2":  # (Conv1D weights: [in, out] in the folder, [out, in] in the GGUF)
        fused = {f"blk.{i}.{g}.weight": reference[f"transformer.h.{i}.{hfname}.weight"].T
                 for i in range(2) for g, hfname in (("attn_qkv", "attn.c_attn"), ("ffn_up", "mlp.c_fc"))}
    else:
        fused = {f"blk.{i}.{g}.weight": reference[f"model.layers.{i}.{hfname}.weight"]
                 for i in range(2) for g, hfname in (("attn_qkv", "self_attn.qkv_proj"), ("ffn_up", "mlp.gate_up_proj"))}
    base, merged = gguf.GGUFReader(base_path), gguf.GGUFReader(tmp_path / "merged.gguf")
    before = {t.name: t for t in base.tensors}
    changed = 0
    for t in merged.tensors:
        if t.tensor_type.name != "Q8_0":
            assert t.tensor_type == before[t.name].tensor_type and bytes(t.data) == bytes(before[t.name].data), t.name
            continue
        changed += 1
        if t.name not in fused:
            continue
        want = fused[t.name]
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(want.shape)
        step = np.abs(want).reshape(want.shape[0], -1, 32).max(axis=2, keepdims=True) / 127
        assert (np.abs(got - want).reshape(want.shape[0], -1, 32) <= 0.6 * step + 1e-7).all(), t.name
    assert changed == 8  # every projection matrix of the two layers
