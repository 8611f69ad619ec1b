"""The whole model against transformers + PEFT on CPU: logits, loss and every LoRA gradient."""

from __future__ import annotations

import numpy as np
import pytest

from loralab.config import LoraConfig
from loralab.data.batches import Sequence, make_batch
from loralab.lora import LoraState
from loralab.model.transformer import Transformer
from loralab.model.weights import HFFolder, upload_weights
from loralab.train import step_scalars
from tests.model import hf

torch = pytest.importorskip("torch")

KINDS = [("llama", True), ("qwen2", False), ("mistral", True), ("llama3", False), ("qwen3", True), ("gemma3", True),
         ("phi3", False), ("phi3_longrope", False), ("gpt2", True), ("gpt2", False)]


@pytest.fixture(scope="module", params=KINDS, ids=[f"{k}-{'tied' if t else 'untied'}" for k, t in KINDS])
def model_dir(request, tmp_path_factory):
    kind, tied = request.param
    return hf.tiny_model(kind, tmp_path_factory.mktemp(kind), seed=3, tied=tied)


def build(gpu, ops, run, path, lora_config, B, S, checkpointing=False, dtype="f32"):
    source = HFFolder(str(path))
    weights = run(upload_weights(gpu, source.config, source, ops, dtype))
    lora = LoraState(gpu, source.config, lora_config) if lora_config else None
    return source.config, lora, Transformer(gpu, ops, source.config, weights, lora, B, S, checkpointing)


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_logits_equal_base_model_when_b_is_zero(gpu, ops, run, arrays, model_dir, dtype):
    """With float16 weights, against the reference model with its matrices rounded to float16."""
    B, S = 2, 11
    config, lora, model = build(gpu, ops, run, model_dir, LoraConfig(r=4, alpha=8), B, S, dtype=dtype)
    gpu.submit(lora.init_dispatches(ops, seed=7))
    ids, _ = hf.batch(0, B, S)
    model.write_batch(ids.reshape(-1).tolist(), [-100] * (B * S))
    logits = arrays.empty(B * S * config.vocab_size)
    gpu.submit(model.forward() + model.logits_into(logits))
    ours = arrays.down(logits, (B, S, config.vocab_size))
    reference = hf.load_hf(model_dir)
    with torch.no_grad():
        if dtype == "f16":
            for name, p in reference.named_parameters():
                if p.dim() == 2:
                    p.copy_(p.half().float())
        ref = reference(torch.tensor(ids)).logits.numpy()
    assert np.abs(ours - ref).max() <= 1e-4


def test_logits_in_row_chunks_give_the_same_loss_and_gradients(gpu, ops, run, arrays, model_dir, monkeypatch):
    """The [T, V] logits are computed LOGITS_CHUNK_BYTES at a time: two 64-row chunks must give
    what one 128-row block gives."""
    from loralab.model import transformer

    B, S = 2, 64
    ids, labels = hf.batch(5, B, S, ignore_prefix=2)
    results, vocab = [], HFFolder(str(model_dir)).config.vocab_size
    for chunk_rows in (None, 64):
        if chunk_rows:
            monkeypatch.setattr(transformer, "LOGITS_CHUNK_BYTES", chunk_rows * vocab * 4)
        config, lora, model = build(gpu, ops, run, model_dir, LoraConfig(r=4, alpha=8), B, S)
        assert len(model.chunks) == (B * S // chunk_rows if chunk_rows else 1)
        gpu.submit(lora.init_dispatches(ops, seed=3))
        flat_ids, targets, n = make_batch([Sequence(list(i), list(l)) for i, l in zip(ids.tolist(), labels.tolist())], B, S)
        model.write_batch(flat_ids, targets)
        history = arrays.up(np.zeros(1, np.float32))
        step = arrays.up(np.frombuffer(step_scalars(ops), np.float32))
        gpu.submit(model.forward() + model.loss(history, step, backward=True) + model.backward(accumulate_grads=False))
        results.append((arrays.down(history, (1,))[0], np.frombuffer(run(gpu.read_buffer(lora.grads)), np.float32)))
    (loss1, grads1), (loss2, grads2) = results
    assert loss2 == pytest.approx(loss1, rel=1e-5)
    np.testing.assert_allclose(grads2, grads1, rtol=1e-4, atol=1e-6 * np.abs(grads1).max())


PATTERNS = {"rank_pattern": {"q_proj": 2, "layers.1.mlp.down_proj": 6}, "alpha_pattern": {"v_proj": 3.0, "up_proj": 20.0}}
# Phi-3's modules are fused: its patterns name qkv_proj and gate_up_proj (q, k, v keep one rank).
PHI3_PATTERNS = {"rank_pattern": {"qkv_proj": 2, "layers.1.mlp.down_proj": 6},
                 "alpha_pattern": {"o_proj": 3.0, "gate_up_proj": 20.0}}
GPT2_PATTERNS = {"rank_pattern": {"c_attn": 2, "h.1.mlp.c_proj": 6}, "alpha_pattern": {"attn.c_proj": 3.0, "c_fc": 20.0}}


def grads_by_key(run, gpu, lora, n: int) -> dict:
    """The adapter's gradients by PEFT key, divided by the target count n."""
    raw = run(gpu.read_buffer(lora.grads))
    return {k: np.frombuffer(b, np.float32).reshape(shape) / n for k, (shape, b) in lora.peft_tensors(raw).items()}


@pytest.mark.parametrize("rslora, checkpointing, patterns, slices",
                         [(False, False, {}, 1), (True, False, {}, 1), (False, True, {}, 1), (False, False, PATTERNS, 1),
                          (False, False, PATTERNS, 4)],
                         ids=["lora", "rslora", "checkpointing", "rank-alpha-patterns", "gradient-slices"])
def test_loss_and_every_lora_gradient_match_peft(gpu, ops, run, arrays, model_dir, rslora, checkpointing, patterns,
                                                 slices, monkeypatch):
    """slices: the gradient products split the 18 tokens 4 ways into slices summed at the end
    (what 4096-token batches do 32 ways)."""
    from loralab.model import transformer

    monkeypatch.setattr(transformer, "GRAD_SLICE_TOKENS", 18 // slices)
    B, S, r, alpha = 2, 9, 4, 8.0
    config = HFFolder(str(model_dir)).config
    fused = config.site("q_proj") != "q_proj"  # (Phi-3's qkv_proj, GPT-2's c_attn: q, k, v share an adapter)
    if patterns and fused:
        patterns = GPT2_PATTERNS if config.family == "gpt2" else PHI3_PATTERNS
    pm = hf.peft_model(model_dir, r=r, alpha=alpha, b_std=0.05, use_rslora=rslora, **patterns)
    ids, labels = hf.batch(1, B, S, ignore_prefix=3)
    labels[1, 6:] = -100
    out = pm(input_ids=torch.tensor(ids), labels=torch.tensor(labels))
    out.loss.backward()
    ref_grads = hf.lora_grads(pm)

    lora_config = LoraConfig(r=r, alpha=alpha, use_rslora=rslora, rank_pattern=patterns.get("rank_pattern", {}),
                             alpha_pattern=patterns.get("alpha_pattern", {}))
    config, lora, model = build(gpu, ops, run, model_dir, lora_config, B, S, checkpointing)
    assert model.grad_slices == slices
    # q, k and v run as one product unless their adapters differ (rank_pattern gives q rank 2)
    assert (model._qkv_fusable(0, B * S) is None) == (bool(patterns) and not fused)
    lora.load_state({k: v.tobytes() for k, v in hf.lora_state(pm).items()})
    flat_ids, targets, n = make_batch([Sequence(list(i), list(l)) for i, l in zip(ids.tolist(), labels.tolist())], B, S)
    model.write_batch(flat_ids, targets)
    history = arrays.up(np.zeros(1, np.float32))
    step = arrays.up(np.frombuffer(step_scalars(ops), np.float32))
    gpu.submit(model.forward() + model.loss(history, step, backward=True) + model.backward(accumulate_grads=False))
    loss = arrays.down(history, (1,))[0] / n
    assert loss == pytest.approx(out.loss.item(), rel=1e-4)
    grads = grads_by_key(run, gpu, lora, n)
    assert set(ref_grads) == set(grads)
    for key, ref in ref_grads.items():
        ours = grads[key]
        scale = np.abs(ref).max()
        assert scale > 0, key
        np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-3 * scale, err_msg=key)


def dora_peft_model(model_dir, r: int = 4, alpha: float = 8.0):
    """PEFT's DoRA over the model: B random and the magnitudes moved off their initial norms, so
    that m / ‖W + s·B·A‖ differs from 1 in every row."""
    pm = hf.peft_model(model_dir, r=r, alpha=alpha, b_std=0.05, use_dora=True)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(1 + 0.1 * torch.randn(p.shape, generator=gen))
    return pm


@pytest.mark.parametrize("checkpointing", [False, True], ids=["dora", "dora-checkpointing"])
def test_dora_logits_loss_and_every_gradient_match_peft(gpu, ops, run, arrays, model_dir, checkpointing):
    """DoRA (use_dora): the logits, the loss and every gradient, the magnitudes' included, as PEFT
    computes them (its weight norm held constant in the backward pass)."""
    B, S, r, alpha = 2, 9, 4, 8.0
    pm = dora_peft_model(model_dir, r, alpha)
    ids, labels = hf.batch(1, B, S, ignore_prefix=3)
    out = pm(input_ids=torch.tensor(ids), labels=torch.tensor(labels))
    out.loss.backward()
    ref_grads = {k.replace("lora_magnitude_vector.weight", "lora_magnitude_vector"): v
                 for k, v in hf.lora_grads(pm).items()}
    assert any("magnitude" in k for k in ref_grads)

    config, lora, model = build(gpu, ops, run, model_dir, LoraConfig(r=r, alpha=alpha, use_dora=True), B, S,
                                checkpointing)
    lora.load_state({k: v.tobytes() for k, v in hf.lora_state(pm).items()})
    flat_ids, targets, n = make_batch([Sequence(list(i), list(l)) for i, l in zip(ids.tolist(), labels.tolist())], B, S)
    model.write_batch(flat_ids, targets)
    logits = arrays.empty(B * S * config.vocab_size)
    gpu.submit(model.forward() + model.logits_into(logits))
    assert np.abs(arrays.down(logits, (B, S, config.vocab_size)) - out.logits.detach().numpy()).max() <= 1e-4
    history = arrays.up(np.zeros(1, np.float32))
    step = arrays.up(np.frombuffer(step_scalars(ops), np.float32))
    gpu.submit(model.forward() + model.loss(history, step, backward=True) + model.backward(accumulate_grads=False))
    assert arrays.down(history, (1,))[0] / n == pytest.approx(out.loss.item(), rel=1e-4)
    grads = grads_by_key(run, gpu, lora, n)
    assert set(ref_grads) == set(grads)
    for key, ref in ref_grads.items():
        scale = np.abs(ref).max()
        assert scale > 0, key
        np.testing.assert_allclose(grads[key].reshape(ref.shape), ref, rtol=1e-3, atol=1e-3 * scale, err_msg=key)


def test_lora_dropout_matches_peft_with_the_same_masks(gpu, ops, run, arrays, model_dir):
    """PEFT's nn.Dropout replaced by our kernel's masks: loss and gradients must then agree."""
    import re

    from loralab import ref
    from loralab.config import PROJECTIONS

    B, S, r, alpha, p, seed = 2, 7, 4, 8.0, 0.3, 4242
    sites = HFFolder(str(model_dir)).config.sites()
    pm = hf.peft_model(model_dir, r=r, alpha=alpha, b_std=0.05)

    class FixedMask(torch.nn.Module):
        def __init__(self, keep):
            super().__init__()
            self.keep = torch.tensor(keep)

        def forward(self, x):
            return x * self.keep.reshape(x.shape) / (1 - p)

    for name, module in pm.named_modules():
        if hasattr(module, "lora_dropout") and "default" in module.lora_dropout:
            layer = int(re.search(r"\.(?:layers|h)\.(\d+)\.", name).group(1))
            block, proj = name.rsplit(".", 2)[1:]
            in_f = module.in_features
            site = f"{block}.{proj}" if proj == "c_proj" else proj  # (GPT-2's two c_proj)
            first = sites[site][0]  # (a fused module: its first part's stream)
            keep = ref.dropout_mask(B * S * in_f, p, seed, layer * len(PROJECTIONS) + PROJECTIONS.index(first))
            module.lora_dropout["default"] = FixedMask(keep)
    ids, labels = hf.batch(3, B, S)
    out = pm(input_ids=torch.tensor(ids), labels=torch.tensor(labels))
    out.loss.backward()
    ref_grads = hf.lora_grads(pm)

    config, lora, model = build(gpu, ops, run, model_dir, LoraConfig(r=r, alpha=alpha, dropout=p), B, S)
    lora.load_state({k: v.tobytes() for k, v in hf.lora_state(pm).items()})
    flat_ids, targets, n = make_batch([Sequence(list(i), list(l)) for i, l in zip(ids.tolist(), labels.tolist())], B, S)
    model.write_batch(flat_ids, targets)
    history = arrays.up(np.zeros(1, np.float32))
    step = arrays.up(np.frombuffer(step_scalars(ops, seed=seed), np.float32))
    gpu.submit(model.forward(step=step) + model.loss(history, step, backward=True) + model.backward(False, step=step))
    assert arrays.down(history, (1,))[0] / n == pytest.approx(out.loss.item(), rel=1e-4)
    grads = grads_by_key(run, gpu, lora, n)
    for key, want in ref_grads.items():
        got = grads[key]
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max(), err_msg=key)


def test_the_gguf_llama_cpp_writes_gives_the_folders_logits(gpu, ops, run, arrays, model_dir, tmp_path):
    """The folder written as a GGUF file the way llama.cpp's converter writes it (its names and
    keys for the architecture, q/k rows permuted for Llama) loads to the same logits."""
    from loralab.model.gguf_model import GGUFModel
    from tests.model import gguf_from_hf

    config = HFFolder(str(model_dir)).config
    if config.architecture == "MistralForCausalLM":
        pytest.skip("llama.cpp converts Mistral as llama")
    if config.architecture == "Gemma3ForCausalLM":  # llama.cpp's Gemma 3: a global layer every sixth,
        model_dir = hf.tiny_model("gemma3", tmp_path / "gemma3", seed=3, num_hidden_layers=6,  # q·k / √head_dim
                                  layer_types=["sliding_attention"] * 5 + ["full_attention"], query_pre_attn_scalar=16)
        config = HFFolder(str(model_dir)).config
    path = gguf_from_hf.write(model_dir, tmp_path / "model.gguf")
    B, S = 1, 9
    ids, _ = hf.batch(2, B, S)
    logits = []
    for source in (HFFolder(str(model_dir)), GGUFModel.from_path(str(path))):
        assert source.config.architecture == config.architecture and source.config.head_dim == config.head_dim
        weights = run(upload_weights(gpu, source.config, source, ops))
        model = Transformer(gpu, ops, source.config, weights, None, B, S)
        model.write_batch(ids.reshape(-1).tolist(), [-100] * S)
        out = arrays.empty(S * config.vocab_size)
        gpu.submit(model.forward() + model.logits_into(out))
        logits.append(arrays.down(out, (S, config.vocab_size)))
    if config.rope_scaling or config.max_positions:  # llama.cpp's factors: HF's rounded to float32
        np.testing.assert_allclose(logits[1], logits[0], atol=1e-5)
    else:
        np.testing.assert_array_equal(logits[1], logits[0])
