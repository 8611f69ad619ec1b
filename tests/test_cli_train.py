"""`loralab train / eval / generate` end to end on tiny models, and their error messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.model import hf

torch = pytest.importorskip("torch")
LORALAB = str(Path(sys.executable).with_name("loralab"))


def loralab(*args, ok=True):
    out = subprocess.run([LORALAB, *map(str, args)], capture_output=True, text=True, timeout=600)
    if ok:
        assert out.returncode == 0, out.stderr
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = hf.tiny_model("qwen2", tmp_path_factory.mktemp("m") / "tiny-qwen2", seed=4, tied=False)
    return path


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("d") / "train.jsonl"
    with open(path, "w") as f:
        for i in range(12):
            ids = rng.integers(0, 96, int(rng.integers(5, 20))).tolist()
            record = {"input_ids": ids}
            if i % 2:
                record["labels"] = [-100] * 3 + ids[3:]
            f.write(json.dumps(record) + "\n")
    return path


def test_train_writes_a_peft_adapter_that_reproduces_our_eval_loss(tmp_path, model_dir, tokens_file):
    out, metrics = tmp_path / "adapter", tmp_path / "metrics.jsonl"
    loralab("train", model_dir, tokens_file, "--out", out, "--steps", 6, "--batch-size", 3, "--seq-len", 16,
            "--lr", 1e-2, "--lr-schedule", "cosine", "--warmup-steps", 2, "--rank", 4, "--alpha", 8, "--metrics", metrics,
            "--report-every", 4)
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3, 4, 5, 6]
    assert all({"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s"} <= set(m) for m in lines)
    assert sorted(os.listdir(out)) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    # Each line is its own step's: the epoch position (12 records, 3 a step) and the throughput.
    assert [m["epoch"] for m in lines] == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5]
    assert len({m["tokens_per_s"] for m in lines[:4]}) == 4, "steps of one read-back window share a throughput"
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(model_dir) and config["revision"] is None

    ours = json.loads(loralab("eval", model_dir, tokens_file, "--adapter", out, "--seq-len", 16).stdout)
    import peft

    model = peft.PeftModel.from_pretrained(hf.load_hf(model_dir), str(out))
    missing = [k for k in model.state_dict() if "lora_" in k and k.endswith(".weight")]
    assert missing, "PEFT loaded no LoRA weights"
    losses, count = 0.0, 0
    for line in tokens_file.read_text().splitlines():
        rec = json.loads(line)
        ids = rec["input_ids"][:16]
        labels = rec.get("labels", rec["input_ids"])[:16]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        targets = torch.tensor(labels[1:])
        losses += torch.nn.functional.cross_entropy(logits[:-1], targets, ignore_index=-100, reduction="sum").item()
        count += int((targets != -100).sum())
    assert ours["tokens"] == count
    assert ours["loss"] == pytest.approx(losses / count, abs=1e-4)
    base = json.loads(loralab("eval", model_dir, tokens_file, "--seq-len", 16).stdout)
    assert base["loss"] > ours["loss"], "training should lower the loss on its own data"

    # The way people load an adapter: the base from the path adapter_config.json names.
    auto = peft.AutoPeftModelForCausalLM.from_pretrained(str(out))
    ids = torch.tensor([json.loads(tokens_file.read_text().splitlines()[0])["input_ids"][:16]])
    with torch.no_grad():
        assert torch.allclose(auto(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)


def test_adapter_loads_in_peft_with_no_missing_or_unexpected_keys(tmp_path, model_dir, tokens_file):
    import peft
    from safetensors.torch import load_file

    out = tmp_path / "a"
    loralab("train", model_dir, tokens_file, "--out", out, "--steps", 1, "--rank", 2, "--targets", "q_proj,v_proj,down_proj")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 2 and config["lora_alpha"] == 4
    assert sorted(config["target_modules"]) == ["down_proj", "q_proj", "v_proj"]
    model = peft.get_peft_model(hf.load_hf(model_dir), peft.LoraConfig(r=2, lora_alpha=4, target_modules=config["target_modules"]))
    result = peft.set_peft_model_state_dict(model, load_file(out / "adapter_model.safetensors"))
    assert not result.unexpected_keys
    assert not [k for k in result.missing_keys if "lora_" in k]


def test_generate_prints_text(model_dir, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(96)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = tmp_path / "with-tokenizer"
    folder.mkdir()
    for f in model_dir.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    tok.save(str(folder / "tokenizer.json"))
    out = loralab("generate", folder, "--prompt", "w1 w2 w3", "--max-new-tokens", 5)
    assert len(out.stdout.split()) == 5
    assert json.loads(out.stderr.strip().splitlines()[-1])["new_tokens"] == 5


@pytest.mark.parametrize("flags, expect", [
    (["--max-new-tokens", "0"], "max_new_tokens is 0; it must lie between 1"),
    (["--max-new-tokens", "-3"], "max_new_tokens is -3"),
    (["--temperature", "-1"], "temperature is -1"),
    (["--top-p", "0"], "top_p is 0; it must be greater than 0 and at most 1"),
    (["--temperature", "nan"], "temperature must be a finite number"),
])
def test_generate_refuses_sampling_settings_by_name(model_dir, flags, expect):
    out = loralab("generate", model_dir, "--prompt", "w1 w2", *flags, ok=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("loralab: ") and expect in last, last


@pytest.mark.parametrize("command, expect", [
    (["bench", "--config", "tiny", "--batch-size", "0", "--steps", "1"], "the benchmark needs a batch size"),
    (["bench", "--config", "tiny", "--seq-len", "1", "--steps", "1"], "a sequence length of at least 2"),
    (["bench", "--config", "tiny", "--steps", "0"], "steps of at least 1"),
    (["eval", "MODEL", "DATA", "--seq-len", "0"], "seq_len is 0; it must lie between 2"),
    (["eval", "MODEL", "DATA", "--batch-size", "0"], "batch_size is 0; it must lie between 1"),
])
def test_sizes_are_refused_by_name_before_any_work(model_dir, tokens_file, command, expect):
    """Sizes that were tracebacks (a zero-sized buffer, a division by zero) or a silent 0.0 loss."""
    command = [model_dir if c == "MODEL" else tokens_file if c == "DATA" else c for c in command]
    out = loralab(*command, ok=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("loralab: ") and expect in last, last


@pytest.mark.parametrize("case", ["bad_json", "empty", "missing_model", "unsupported_arch", "bad_shape", "foreign_adapter",
                                  "pickle_adapter", "vocab", "unknown_format", "missing_field", "no_tokenizer",
                                  "out_is_a_file", "out_under_a_file", "metrics_without_folder", "nan_lr", "beta_one"])
def test_user_errors_are_one_clear_line(tmp_path, model_dir, tokens_file, case):
    data, model, extra, out_dir = tokens_file, model_dir, [], tmp_path / "o"
    expect = ""
    if case == "bad_json":
        data = tmp_path / "bad.jsonl"
        data.write_text('{"input_ids": [1, 2]}\n{"input_ids": [1, 2\n')
        expect = "bad.jsonl line 2: invalid JSON"
    elif case == "empty":
        data = tmp_path / "empty.jsonl"
        data.write_text("\n")
        expect = "empty"
    elif case == "missing_model":
        model, expect = tmp_path / "nope", "no such model folder or GGUF file"
    elif case in ("unsupported_arch", "bad_shape"):
        model = tmp_path / "m"
        model.mkdir()
        cfg = json.loads((model_dir / "config.json").read_text())
        if case == "unsupported_arch":
            cfg["architectures"] = ["BloomForCausalLM"]
            expect = "BloomForCausalLM is not supported"
        else:
            cfg["intermediate_size"] = 100
            expect = "implies [100, 64]"
        (model / "config.json").write_text(json.dumps(cfg))
        (model / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes())
    elif case == "foreign_adapter":
        other = hf.tiny_model("llama", tmp_path / "other", seed=1, intermediate_size=96)
        adapter = tmp_path / "foreign"
        loralab("train", other, tokens_file, "--out", adapter, "--steps", 1, "--rank", 2)
        cfg = json.loads((adapter / "adapter_config.json").read_text())
        extra, expect = ["--adapter", adapter], "made for another model"
        assert cfg["r"] == 2
    elif case == "pickle_adapter":
        adapter = tmp_path / "pickled"
        adapter.mkdir()
        (adapter / "adapter_model.bin").write_bytes(b"\x80\x04not really")
        (adapter / "adapter_config.json").write_text("{}")
        extra, expect = ["--adapter", adapter], "pickle"
    elif case == "vocab":
        data = tmp_path / "big.jsonl"
        data.write_text('{"input_ids": [1, 2, 500]}\n')
        expect = "token id 500 is outside the model's vocabulary"
    elif case == "unknown_format":
        data = tmp_path / "odd.jsonl"
        data.write_text('{"foo": 1}\n')
        expect = "cannot tell the format of the first record"
    elif case == "missing_field":
        data = tmp_path / "pc.jsonl"
        data.write_text('{"prompt": "only a prompt"}\n{"prompt": "a", "completion": "b"}\n')
        extra, expect = ["--format", "completion"], "pc.jsonl record 1: 'prompt' and 'completion' must be strings"
    elif case == "no_tokenizer":
        data = tmp_path / "text.jsonl"
        data.write_text('{"text": "hello"}\n')
        expect = "needs the model's tokenizer (tokenizer.json)"
    elif case in ("out_is_a_file", "out_under_a_file"):
        (tmp_path / "o").write_text("a file the run must not end on")
        out_dir = tmp_path / "o" if case == "out_is_a_file" else tmp_path / "o" / "adapter"
        expect = "a file is there; give a folder" if case == "out_is_a_file" else "is a file, so the folder cannot be made"
    elif case == "metrics_without_folder":
        extra, expect = ["--metrics", tmp_path / "nope" / "m.jsonl"], "--metrics"
    elif case == "nan_lr":
        extra, expect = ["--lr", "nan"], "lr must be a finite number, not nan"
    elif case == "beta_one":
        extra, expect = ["--beta2", "1"], "beta2 is 1; it must be below 1"
    out = loralab("train", model, data, "--out", out_dir, "--steps", 1, *extra, ok=False)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("loralab: ") and expect in last, last


def test_repo_id_from_a_mock_hub_gives_the_same_loss_as_the_folder(tmp_path, model_dir, tokens_file):
    """A local server with the hub's URL layout ({repo}/resolve/main/{file}); nothing leaves 127.0.0.1."""
    from loralab.devserver import serve_in_background

    hub = tmp_path / "hub"
    repo = hub / "acme" / "tiny-qwen" / "resolve" / "main"
    repo.mkdir(parents=True)
    for f in model_dir.iterdir():
        (repo / f.name).write_bytes(f.read_bytes())
    server, url = serve_in_background(hub)
    try:
        env = {**os.environ, "LORALAB_CACHE": str(tmp_path / "cache")}
        run = lambda *a: subprocess.run([LORALAB, *map(str, a)], capture_output=True, text=True, timeout=600, env=env)
        via_hub = run("eval", "acme/tiny-qwen", tokens_file, "--hub-endpoint", url.rstrip("/"))
        assert via_hub.returncode == 0, via_hub.stderr
        direct = loralab("eval", model_dir, tokens_file)
        assert json.loads(via_hub.stdout) == json.loads(direct.stdout)
        assert (tmp_path / "cache" / "hub").exists()
        missing = run("eval", "acme/nothing-here", tokens_file, "--hub-endpoint", url.rstrip("/"))
        assert missing.returncode == 2 and "HTTP 404" in missing.stderr and "Traceback" not in missing.stderr
    finally:
        server.shutdown()


def test_checkpoint_and_resume_give_the_same_run(tmp_path, model_dir, tokens_file):
    """10 steps straight vs 5 steps + checkpoint + resume to 10: same losses and the same adapter."""
    from safetensors.numpy import load_file

    common = ["--steps", 10, "--batch-size", 3, "--seq-len", 16, "--lr", 1e-2, "--lr-schedule", "cosine",
              "--warmup-steps", 3, "--rank", 4, "--report-every", 3, "--dropout", 0.1]
    loralab("train", model_dir, tokens_file, "--out", tmp_path / "straight", "--metrics", tmp_path / "straight.jsonl", *common)
    ckpt = tmp_path / "ckpt"
    loralab("train", model_dir, tokens_file, "--out", tmp_path / "half", "--metrics", tmp_path / "split.jsonl",
            "--checkpoint-dir", ckpt, "--save-every", 2, "--stop-after", 5, *common)
    first = [json.loads(line) for line in (tmp_path / "split.jsonl").read_text().splitlines()]
    assert [m["step"] for m in first] == [1, 2, 3, 4, 5]
    assert json.loads((ckpt / "state.json").read_text())["step"] == 5
    loralab("train", model_dir, tokens_file, "--out", tmp_path / "resumed", "--metrics", tmp_path / "split.jsonl",
            "--resume", ckpt, *common)
    straight = [json.loads(line) for line in (tmp_path / "straight.jsonl").read_text().splitlines()]
    split = [json.loads(line) for line in (tmp_path / "split.jsonl").read_text().splitlines()]
    assert [m["step"] for m in split] == list(range(1, 11))
    np.testing.assert_allclose([m["loss"] for m in split], [m["loss"] for m in straight], rtol=1e-5)
    a = load_file(tmp_path / "straight" / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-7, err_msg=key)


@pytest.fixture(scope="module")
def llama_with_adapter(tmp_path_factory, tokens_file):
    """A tiny Llama (q/k get llama.cpp's row order in GGUF) and an adapter trained on it."""
    root = tmp_path_factory.mktemp("llama-export")
    model = hf.tiny_model("llama", root / "model", seed=8, tied=False)
    loralab("train", model, tokens_file, "--out", root / "adapter", "--steps", 3, "--lr", 5e-2, "--rank", 4, "--alpha", 8)
    return model, root / "adapter"


def test_export_gguf_lora_reads_back_as_llama_cpp_expects(tmp_path, llama_with_adapter):
    import gguf
    from safetensors.numpy import load_file

    from loralab.model.weights import unpermute_rows

    model, adapter = llama_with_adapter
    out = tmp_path / "adapter.gguf"
    loralab("export", adapter, "--to", "gguf", "--model", model, "--out", out)
    reader = gguf.GGUFReader(out)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == 8.0 and fields["general.architecture"] == "llama"
    tensors = {t.name: t for t in reader.tensors}
    peft = load_file(adapter / "adapter_model.safetensors")
    assert len(tensors) == len(peft) == 2 * 7 * 2
    a = tensors["blk.1.ffn_down.weight.lora_a"]
    assert list(a.shape) == [128, 4]  # ggml order: in_features first
    np.testing.assert_array_equal(a.data.reshape(4, 128),
                                  peft["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"])
    qb = tensors["blk.0.attn_q.weight.lora_b"]
    assert list(qb.shape) == [4, 64]
    back = np.frombuffer(unpermute_rows(qb.data.astype(np.float32).tobytes(), 64, 16, 16), np.float32).reshape(64, 4)
    np.testing.assert_array_equal(back, peft["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"])


def test_export_merged_from_a_gguf_loads_with_auto_classes(tmp_path):
    """A GGUF base has no config.json: the merged folder's config must still say what
    AutoModelForCausalLM needs (model_type, dtype, token ids, generation config)."""
    from tests.hostile import files as F
    from tests.hostile.test_reproducers import adapter_config, adapter_tensors

    (tmp_path / "tiny.gguf").write_bytes(F.tiny_gguf())
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(adapter_tensors(0.1))
    (adapter / "adapter_config.json").write_bytes(adapter_config())
    loralab("export", adapter, "--to", "merged", "--model", tmp_path / "tiny.gguf", "--out", tmp_path / "merged")
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert config["torch_dtype"] == config["dtype"] == "float32" and config["tie_word_embeddings"] is True
    assert (config["bos_token_id"], config["eos_token_id"]) == (0, 3)
    assert json.loads((tmp_path / "merged" / "generation_config.json").read_text())["eos_token_id"] == 3
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    q = model.model.layers[0].self_attn.q_proj.weight.detach().numpy()
    np.testing.assert_allclose(q, 0.25 + (4 / 2) * (0.1 * 0.1 * 2), rtol=1e-6)  # W + (alpha/r)·B·A
    generation = transformers.GenerationConfig.from_pretrained(tmp_path / "merged")
    assert generation.eos_token_id == 3


def test_adapters_name_the_base_model_people_load():
    from loralab.cli import open_source
    from loralab.model.identity import DEFAULT_MODEL_ID, base_model_reference, gguf_hub_id

    _, reference = open_source("default")
    assert reference == (DEFAULT_MODEL_ID, None) == ("HuggingFaceTB/SmolLM2-135M-Instruct", None)
    assert base_model_reference("repo", "Qwen/Qwen2.5-0.5B-Instruct") == ("Qwen/Qwen2.5-0.5B-Instruct", "main")
    assert gguf_hub_id({"general.source.huggingface.repository": "Qwen/Qwen3-0.6B"}) == "Qwen/Qwen3-0.6B"
    assert gguf_hub_id({"general.source.url": "https://huggingface.co/google/gemma-3-1b-it"}) == "google/gemma-3-1b-it"
    assert gguf_hub_id({"general.source.url": "https://example.com/x/y"}) is None
    assert gguf_hub_id({"general.name": "SmolLM2"}) is None
    assert base_model_reference("gguf", "/models/x.gguf", {}) == ("/models/x.gguf", None)


def test_export_merged_equals_base_plus_adapter_in_peft(tmp_path, llama_with_adapter):
    import peft

    model, adapter = llama_with_adapter
    out = tmp_path / "merged"
    loralab("export", adapter, "--to", "merged", "--model", model, "--out", out)
    ids = torch.tensor([[3, 14, 15, 92, 65, 35]])
    with torch.no_grad():
        merged = hf.load_hf(out)(ids).logits
        reference = peft.PeftModel.from_pretrained(hf.load_hf(model), str(adapter))(input_ids=ids).logits
    assert float((merged - reference).abs().max()) <= 1e-4


def test_export_merged_over_a_quantized_base_is_float16_and_equals_peft(tmp_path, llama_with_adapter):
    """With the base kept as Q8_0 (--weights q8), the merged folder holds float16 matrices: the
    dequantized base plus the delta, as PEFT computes over that same base."""
    import gguf
    import peft
    from safetensors import safe_open

    model, adapter = llama_with_adapter
    out = tmp_path / "merged"
    loralab("export", adapter, "--to", "merged", "--model", model, "--out", out, "--weights", "q8")
    with safe_open(str(out / "model.safetensors"), "np") as f:
        assert str(f.get_tensor("model.layers.0.self_attn.q_proj.weight").dtype) == "float16"
        assert str(f.get_tensor("model.norm.weight").dtype) == "float32"
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float16"
    base = hf.load_hf(model)
    with torch.no_grad():  # the base as Q8_0 holds it (embeddings and head stay float32)
        for name, p in base.named_parameters():
            if p.ndim == 2 and ".layers." in name:
                q8 = gguf.quants.quantize(p.numpy(), gguf.GGMLQuantizationType.Q8_0)
                p.copy_(torch.tensor(gguf.quants.dequantize(q8, gguf.GGMLQuantizationType.Q8_0)))
    ids = torch.tensor([[3, 14, 15, 92, 65, 35]])
    with torch.no_grad():
        merged = hf.load_hf(out)(ids).logits
        reference = peft.PeftModel.from_pretrained(base, str(adapter))(input_ids=ids).logits
    assert float((merged - reference).abs().max()) <= 2e-3 * float(reference.abs().max())


@pytest.mark.parametrize("patterns", [{}, {"rank_pattern": {"k_proj": 2, "layers.0.mlp.gate_proj": 6},
                                          "alpha_pattern": {"o_proj": 2.0}},
                                      {"layers_to_transform": [1]},
                                      {"exclude_modules": ["layers.0.self_attn.q_proj", "down_proj"]},
                                      {"exclude_modules": r".*\.0\.mlp\..*"}],
                         ids=["uniform", "rank-alpha-patterns", "layers-to-transform", "exclude-list", "exclude-regex"])
def test_a_peft_made_adapter_evaluates_like_peft(tmp_path, model_dir, tokens_file, patterns):
    pm = hf.peft_model(model_dir, r=4, alpha=8.0, b_std=0.1, seed=5, **patterns)
    pm.save_pretrained(tmp_path / "peft-adapter")
    ours = json.loads(loralab("eval", model_dir, tokens_file, "--adapter", tmp_path / "peft-adapter", "--seq-len", 16).stdout)
    total, count = 0.0, 0
    with torch.no_grad():
        for line in tokens_file.read_text().splitlines():
            rec = json.loads(line)
            ids, labels = rec["input_ids"][:16], rec.get("labels", rec["input_ids"])[:16]
            logits = pm(input_ids=torch.tensor([ids])).logits[0, :-1]
            targets = torch.tensor(labels[1:])
            total += torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="sum").item()
            count += int((targets != -100).sum())
    assert ours["loss"] == pytest.approx(total / count, abs=1e-4)


def test_the_cli_says_how_the_data_was_used(tmp_path, model_dir, tokens_file):
    out = loralab("eval", model_dir, tokens_file, "--seq-len", 4)
    notes = [line for line in out.stderr.splitlines() if line.startswith("loralab: ")]
    assert f"loralab: {tokens_file}: 12 of 12 truncated" in notes
    assert any("--seq-len 4 cuts most examples" in line for line in notes)
    assert "XDG_RUNTIME_DIR" not in out.stderr


@pytest.mark.parametrize("kind", ["qwen3", "gemma3", "phi3", "gpt2"])
def test_each_family_trains_and_exports_what_peft_and_llama_cpp_load(tmp_path, tokens_file, kind):
    """A few steps on a tiny model of the family; the PEFT adapter (the family's own target names:
    Phi-3's fused ones) reproduces `loralab eval` in PEFT; the merged folder equals base + adapter;
    the GGUF-LoRA names llama.cpp's tensors of that architecture."""
    import gguf
    import peft

    model = hf.tiny_model(kind, tmp_path / kind, seed=11, tied=False)
    out = tmp_path / "adapter"
    loralab("train", model, tokens_file, "--out", out, "--steps", 3, "--batch-size", 3, "--seq-len", 16,
            "--lr", 2e-2, "--rank", 4, "--alpha", 8)
    config = json.loads((out / "adapter_config.json").read_text())
    want = {"phi3": hf.PHI3_PROJECTIONS, "gpt2": hf.GPT2_PROJECTIONS}.get(kind, hf.PROJECTIONS)
    assert sorted(config["target_modules"]) == sorted(want)
    assert config["fan_in_fan_out"] == (kind == "gpt2")  # (GPT-2's Conv1D weights)
    ours = json.loads(loralab("eval", model, tokens_file, "--adapter", out, "--seq-len", 16).stdout)
    with_adapter = peft.PeftModel.from_pretrained(hf.load_hf(model), str(out)).eval()
    total, count = 0.0, 0
    for line in tokens_file.read_text().splitlines():
        rec = json.loads(line)
        ids, labels = rec["input_ids"][:16], rec.get("labels", rec["input_ids"])[:16]
        with torch.no_grad():
            logits = with_adapter(input_ids=torch.tensor([ids])).logits[0]
        targets = torch.tensor(labels[1:])
        total += torch.nn.functional.cross_entropy(logits[:-1], targets, ignore_index=-100, reduction="sum").item()
        count += int((targets != -100).sum())
    assert ours["tokens"] == count and ours["loss"] == pytest.approx(total / count, abs=1e-4)

    loralab("export", out, "--to", "merged", "--model", model, "--out", tmp_path / "merged")
    ids = torch.tensor([[3, 14, 15, 92, 65, 35, 8, 9, 10, 11]])
    with torch.no_grad():
        merged = hf.load_hf(tmp_path / "merged")(ids).logits
        assert float((merged - with_adapter(input_ids=ids).logits).abs().max()) <= 1e-4

    loralab("export", out, "--to", "gguf", "--model", model, "--out", tmp_path / "adapter.gguf")
    reader = gguf.GGUFReader(tmp_path / "adapter.gguf")
    names = {t.name.split(".")[2] for t in reader.tensors}
    assert names == ({"attn_qkv", "attn_output", "ffn_up", "ffn_down"} if kind in ("phi3", "gpt2") else
                     {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"})
    arch = kind
    assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == arch


def peft_loss(model, tokens_file, seq_len: int = 16) -> tuple[float, int]:
    """Mean loss per target token of a (PEFT) model over the tokens file, as `loralab eval` counts."""
    total, count = 0.0, 0
    for line in tokens_file.read_text().splitlines():
        rec = json.loads(line)
        ids, labels = rec["input_ids"][:seq_len], rec.get("labels", rec["input_ids"])[:seq_len]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        targets = torch.tensor(labels[1:])
        total += torch.nn.functional.cross_entropy(logits[:-1], targets, ignore_index=-100, reduction="sum").item()
        count += int((targets != -100).sum())
    return total / count, count


@pytest.mark.parametrize("kind", ["qwen2", "phi3"])
def test_dora_trains_and_exports_what_peft_loads(tmp_path, tokens_file, kind):
    """`train --dora`: the adapter says use_dora and holds every magnitude; PEFT loads it and
    reproduces `loralab eval` (≤ 1e-4); it continues training from itself (--adapter); the merged
    folder and the ONNX export equal PEFT's base + adapter; GGUF-LoRA, which has no magnitudes, is
    refused with a message."""
    import peft

    model = hf.tiny_model(kind, tmp_path / kind, seed=12, tied=False)
    out = tmp_path / "adapter"
    loralab("train", model, tokens_file, "--out", out, "--steps", 4, "--batch-size", 3, "--seq-len", 16,
            "--lr", 2e-2, "--rank", 4, "--alpha", 8, "--dora")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["use_dora"] is True
    from safetensors.numpy import load_file

    magnitudes = {k: v for k, v in load_file(out / "adapter_model.safetensors").items() if "magnitude" in k}
    assert len(magnitudes) == 2 * len(config["target_modules"]) and all(v.ndim == 1 for v in magnitudes.values())
    ours = json.loads(loralab("eval", model, tokens_file, "--adapter", out, "--seq-len", 16).stdout)
    with_adapter = peft.PeftModel.from_pretrained(hf.load_hf(model), str(out)).eval()
    loss, count = peft_loss(with_adapter, tokens_file)
    assert ours["tokens"] == count and ours["loss"] == pytest.approx(loss, abs=1e-4)
    again = tmp_path / "again"
    loralab("train", model, tokens_file, "--out", again, "--steps", 2, "--batch-size", 3, "--seq-len", 16,
            "--lr", 2e-2, "--adapter", out)
    assert json.loads((again / "adapter_config.json").read_text())["use_dora"] is True

    ids = torch.tensor([[3, 14, 15, 92, 65, 35, 8]])
    with torch.no_grad():
        reference = with_adapter(input_ids=ids).logits.numpy()
    loralab("export", out, "--to", "merged", "--model", model, "--out", tmp_path / "merged")
    with torch.no_grad():
        merged = hf.load_hf(tmp_path / "merged")(ids).logits.numpy()
    assert np.abs(merged - reference).max() <= 1e-4
    loralab("export", out, "--to", "onnx", "--model", model, "--out", tmp_path / "onnx", "--onnx-dtype", "fp32")
    from tests.test_onnx_export import ort_run, session

    logits = ort_run(session(tmp_path / "onnx" / "onnx" / "model.onnx"), ids.numpy())[0]
    assert np.abs(logits - reference).max() <= 1e-4
    refused = loralab("export", out, "--to", "gguf", "--model", model, "--out", tmp_path / "x.gguf", ok=False)
    assert refused.returncode == 2 and "DoRA" in refused.stderr and "Traceback" not in refused.stderr


def test_dora_over_a_quantized_base_matches_peft_over_the_same_values(tmp_path, tokens_file):
    """DoRA with the frozen weights kept as Q8_0 (QLoRA's way): the weight norms come from the
    dequantized values, so `eval` equals PEFT's DoRA over the base as Q8_0 holds it."""
    import gguf
    import peft

    model = hf.tiny_model("llama", tmp_path / "llama", seed=13, tied=False)
    out = tmp_path / "adapter"
    loralab("train", model, tokens_file, "--out", out, "--steps", 3, "--batch-size", 3, "--seq-len", 16,
            "--lr", 2e-2, "--rank", 4, "--dora", "--weights", "q8")
    ours = json.loads(loralab("eval", model, tokens_file, "--adapter", out, "--seq-len", 16, "--weights", "q8").stdout)
    base = hf.load_hf(model)
    with torch.no_grad():
        for name, p in base.named_parameters():
            if p.ndim == 2 and ".layers." in name:
                q8 = gguf.quants.quantize(p.numpy(), gguf.GGMLQuantizationType.Q8_0)
                p.copy_(torch.tensor(gguf.quants.dequantize(q8, gguf.GGMLQuantizationType.Q8_0)))
    loss, _ = peft_loss(peft.PeftModel.from_pretrained(base, str(out)).eval(), tokens_file)
    assert ours["loss"] == pytest.approx(loss, abs=1e-4)


def test_progressive_rank_resumes_across_a_switch_like_a_straight_run(tmp_path, model_dir, tokens_file):
    """--rank-schedule progressive: the metrics name each step's rank; stopped at step 3 (the switch
    is before step 4) and resumed, the run gives the straight run's losses and adapter; the
    exported adapter has the final rank, which PEFT loads."""
    from safetensors.numpy import load_file

    common = ["--steps", 6, "--batch-size", 3, "--seq-len", 16, "--lr", 2e-2, "--rank", 4,
              "--rank-schedule", "progressive", "--rank-steps", "2@0,4@3", "--report-every", 2]
    loralab("train", model_dir, tokens_file, "--out", tmp_path / "straight", "--metrics", tmp_path / "straight.jsonl",
            *common)
    ckpt = tmp_path / "ckpt"
    loralab("train", model_dir, tokens_file, "--out", tmp_path / "half", "--metrics", tmp_path / "split.jsonl",
            "--checkpoint-dir", ckpt, "--save-every", 3, "--stop-after", 3, *common)
    loralab("train", model_dir, tokens_file, "--out", tmp_path / "resumed", "--metrics", tmp_path / "split.jsonl",
            "--resume", ckpt, *common)
    straight = [json.loads(line) for line in (tmp_path / "straight.jsonl").read_text().splitlines()]
    split = [json.loads(line) for line in (tmp_path / "split.jsonl").read_text().splitlines()]
    assert [m["rank"] for m in straight] == [2, 2, 2, 4, 4, 4]
    assert [m["step"] for m in split] == list(range(1, 7))
    np.testing.assert_allclose([m["loss"] for m in split], [m["loss"] for m in straight], rtol=1e-5)
    a = load_file(tmp_path / "straight" / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed" / "adapter_model.safetensors")
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-7, err_msg=key)
    assert json.loads((tmp_path / "straight" / "adapter_config.json").read_text())["r"] == 4
    assert all(v.shape[0 if "lora_A" in k else 1] == 4 for k, v in a.items())
    import peft

    peft.PeftModel.from_pretrained(hf.load_hf(model_dir), str(tmp_path / "straight"))


def test_auto_rank_schedule_chooses_the_run_and_it_trains(tmp_path, model_dir, tokens_file):
    """--rank-schedule auto: the CLI says what it chose and why (rank, targets, sequence length,
    batch, accumulation, checkpointing, weights, steps), and that plan runs on this machine: the
    adapter has the chosen rank on every projection and loads in PEFT."""
    import peft

    out = tmp_path / "adapter"
    done = loralab("train", model_dir, tokens_file, "--out", out, "--rank-schedule", "auto", "--time-budget", "2m")
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    auto = next(e for e in events if e.get("event") == "auto_plan")
    assert set(auto["reasons"]) == {"seq_len", "rank", "targets", "batch_size", "grad_accum", "gradient_checkpointing",
                                    "weights", "steps"}
    assert auto["estimated_seconds"] <= 120
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8 and sorted(config["target_modules"]) == sorted(hf.PROJECTIONS)
    peft.PeftModel.from_pretrained(hf.load_hf(model_dir), str(out))
    bad = loralab("train", model_dir, tokens_file, "--out", out, "--rank-schedule", "auto", "--time-budget", "soon",
                  ok=False)
    assert bad.returncode == 2 and "time_budget 'soon' is not a duration" in bad.stderr


def test_adaptive_rank_trains_exports_peft_adalora_and_plain_lora(tmp_path, model_dir, tokens_file):
    """--rank-schedule adaptive: the metrics carry each step's mean rank and orth_reg; the CLI ends
    with the rank map; the adapter is PEFT's AdaLoRA (pruned tensors, rank_pattern) and PEFT's
    evaluation of it equals `loralab eval` (≤ 1e-4), as does the plain-LoRA export's (rank_pattern);
    a run stopped and resumed equals the straight run; training continues from the pruned adapter."""
    import peft
    from safetensors.numpy import load_file

    common = ["--steps", 10, "--batch-size", 3, "--seq-len", 16, "--lr", 3e-2, "--rank", 6, "--alpha", 8,
              "--rank-schedule", "adaptive", "--target-r", 3, "--tinit", 2, "--tfinal", 3, "--report-every", 3]
    out = tmp_path / "ada"
    done = loralab("train", model_dir, tokens_file, "--out", out, "--metrics", tmp_path / "m.jsonl", *common)
    metrics = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [m["rank"] for m in metrics][:3] == [6, 6, 6] and metrics[-1]["rank"] == 3
    assert all(m["orth_reg"] > 0 for m in metrics)
    rank_map = next(json.loads(line) for line in done.stderr.splitlines() if '"rank_map"' in line)["ranks"]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "ADALORA" and (config["init_r"], config["target_r"], config["total_step"]) == (6, 3, 10)
    assert {k.removesuffix(".lora_E"): sum(v) for k, v in config["rank_pattern"].items()} == rank_map
    assert sum(rank_map.values()) == 3 * len(rank_map)
    tensors = load_file(out / "adapter_model.safetensors")
    for name, k in rank_map.items():
        assert tensors[f"base_model.model.{name}.lora_E"].shape == (k, 1)
        assert tensors[f"base_model.model.{name}.lora_B"].shape[1] == k

    ours = json.loads(loralab("eval", model_dir, tokens_file, "--adapter", out, "--seq-len", 16).stdout)
    with_adapter = peft.PeftModel.from_pretrained(hf.load_hf(model_dir), str(out)).eval()
    loss, count = peft_loss(with_adapter, tokens_file)
    assert ours["tokens"] == count and ours["loss"] == pytest.approx(loss, abs=1e-4)
    plain = tmp_path / "plain"
    loralab("export", out, "--to", "lora", "--model", model_dir, "--out", plain)
    plain_config = json.loads((plain / "adapter_config.json").read_text())
    assert plain_config["peft_type"] == "LORA"
    assert plain_config["rank_pattern"] == {name: max(1, k) for name, k in rank_map.items()}
    as_lora = peft.PeftModel.from_pretrained(hf.load_hf(model_dir), str(plain)).eval()
    assert peft_loss(as_lora, tokens_file)[0] == pytest.approx(loss, abs=1e-4)

    ckpt = tmp_path / "ckpt"
    loralab("train", model_dir, tokens_file, "--out", tmp_path / "half", "--metrics", tmp_path / "split.jsonl",
            "--checkpoint-dir", ckpt, "--save-every", 4, "--stop-after", 4, *common)
    loralab("train", model_dir, tokens_file, "--out", tmp_path / "resumed", "--metrics", tmp_path / "split.jsonl",
            "--resume", ckpt, *common)
    split = [json.loads(line) for line in (tmp_path / "split.jsonl").read_text().splitlines()]
    np.testing.assert_allclose([m["loss"] for m in split], [m["loss"] for m in metrics], rtol=1e-5)
    resumed = load_file(tmp_path / "resumed" / "adapter_model.safetensors")
    for key, value in tensors.items():
        np.testing.assert_allclose(resumed[key], value, rtol=1e-4, atol=1e-6, err_msg=key)

    again = tmp_path / "again"
    loralab("train", model_dir, tokens_file, "--out", again, "--steps", 2, "--batch-size", 3, "--seq-len", 16,
            "--lr", 1e-2, "--adapter", out)
    continued = json.loads((again / "adapter_config.json").read_text())
    assert continued["peft_type"] == "ADALORA" and continued["rank_pattern"] == config["rank_pattern"]
    peft.PeftModel.from_pretrained(hf.load_hf(model_dir), str(again))


def test_a_peft_made_adalora_adapter_evaluates_like_peft(tmp_path, model_dir, tokens_file):
    """An AdaLoRA adapter trained and pruned by PEFT itself (some modules down to rank 0) imports
    and evaluates as PEFT evaluates it; one whose tensors say LoRA while its config says AdaLoRA is
    refused, naming the tensor."""
    import peft
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    model = peft.get_peft_model(hf.load_hf(model_dir), peft.AdaLoraConfig(
        init_r=4, target_r=1, tinit=1, tfinal=2, deltaT=1, total_step=8, lora_alpha=8,
        target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    ids = torch.randint(0, 96, (2, 12))
    for step in range(8):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        model.base_model.update_and_allocate(step)
        opt.zero_grad()
    out = tmp_path / "peft-ada"
    model.save_pretrained(out)
    pattern = json.loads((out / "adapter_config.json").read_text())["rank_pattern"]
    assert any(sum(v) == 0 for v in pattern.values()) and any(sum(v) > 1 for v in pattern.values())
    reference = peft.PeftModel.from_pretrained(hf.load_hf(model_dir), str(out)).eval()
    loss, count = peft_loss(reference, tokens_file)
    ours = json.loads(loralab("eval", model_dir, tokens_file, "--adapter", out, "--seq-len", 16).stdout)
    assert ours["tokens"] == count and ours["loss"] == pytest.approx(loss, abs=1e-4)

    tensors = load_file(out / "adapter_model.safetensors")
    save_file({(k + ".weight" if "lora_A" in k else k): v for k, v in tensors.items()},
              out / "adapter_model.safetensors")
    refused = loralab("eval", model_dir, tokens_file, "--adapter", out, ok=False)
    assert refused.returncode == 2 and "a LoRA tensor in an AdaLoRA adapter" in refused.stderr
    assert "lora_A.weight" in refused.stderr and "Traceback" not in refused.stderr
