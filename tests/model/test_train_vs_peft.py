"""Training runs against a PyTorch + PEFT loop with the same data, schedule and optimizer."""

from __future__ import annotations

import numpy as np
import pytest

from loralab.config import LoraConfig, TrainConfig
from loralab.data.batches import Sequence, make_batch
from loralab.lora import LoraState
from loralab.model.transformer import Transformer
from loralab.model.weights import HFFolder, upload_weights
from loralab.train import NonFiniteLoss, Trainer, evaluate, lr_at
from tests.model import hf

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return hf.tiny_model("llama", tmp_path_factory.mktemp("llama"), seed=5)


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return hf.tiny_model("qwen2", tmp_path_factory.mktemp("qwen2"), seed=6, tied=False)


def records(n: int, S: int, seed: int) -> list[Sequence]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.integers(S // 2, S + 3))  # some longer than S: truncated
        ids = rng.integers(0, 96, length).tolist()
        labels = [-100] * (i % 3) + ids[i % 3 :]
        out.append(Sequence(ids, labels))
    return out


def peft_run(path, data, config: TrainConfig, r, alpha, steps, **lora):
    """The reference: PEFT model, torch AdamW/SGD, transformers' scheduler, clip_grad_norm_."""
    import transformers

    model = hf.peft_model(path, r=r, alpha=alpha, seed=11, **lora)
    start = hf.lora_state(model)
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps,
                                weight_decay=config.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay)
    name = "constant_with_warmup" if config.lr_schedule == "constant" else config.lr_schedule
    sched = transformers.get_scheduler(name, opt, num_warmup_steps=config.warmup_steps, num_training_steps=steps)
    losses, cursor, B = [], 0, config.batch_size
    for _ in range(steps):
        micro = []
        for _ in range(config.grad_accum):
            micro.append([data[(cursor + j) % len(data)] for j in range(B)])
            cursor += B
        made = [make_batch(m, B, config.seq_len) for m in micro]
        n_total = sum(n for _, _, n in made)
        total = 0.0
        for ids, targets, _ in made:
            logits = model(input_ids=torch.tensor(ids).reshape(B, -1)).logits.reshape(-1, 96)
            loss = torch.nn.functional.cross_entropy(logits, torch.tensor(targets), ignore_index=-100, reduction="sum") / n_total
            loss.backward()
            total += loss.item()
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(total)
    return start, losses, hf.lora_state(model)


def ours_run(gpu, ops, run, path, data, config: TrainConfig, start, r, alpha, **lora_fields):
    source = HFFolder(str(path))
    weights = run(upload_weights(gpu, source.config, source, ops))
    lora = LoraState(gpu, source.config, LoraConfig(r=r, alpha=alpha, **lora_fields))
    lora.load_state({k: v.tobytes() for k, v in start.items()})
    model = Transformer(gpu, ops, source.config, weights, lora, config.batch_size, config.seq_len)
    trainer = Trainer(gpu, ops, model, lora, config, data)
    reports = []
    history = run(trainer.train(reports.append))
    state = run(lora.read_state())
    final = {k: np.frombuffer(b, np.float32).reshape(shape) for k, (shape, b) in state.items()}
    return [h["loss"] for h in history if h["kind"] == "train"], final, reports, weights


@pytest.mark.parametrize("schedule, accum, model", [("cosine", 1, "llama"), ("linear", 2, "qwen2"),
                                                    ("cosine", 1, "qwen3"), ("linear", 2, "gemma3"),
                                                    ("cosine", 2, "phi3"), ("linear", 2, "gpt2")])
def test_adamw_losses_follow_peft(gpu, ops, run, llama_dir, qwen_dir, tmp_path, schedule, accum, model, monkeypatch):
    from loralab.model import transformer

    if accum > 1:  # gradients accumulated in 3 token slices each (as 4096-token batches do in 32)
        monkeypatch.setattr(transformer, "GRAD_SLICE_TOKENS", 8)
    path = {"llama": llama_dir, "qwen2": qwen_dir}.get(model) or hf.tiny_model(model, tmp_path / model, seed=7)
    config = TrainConfig(steps=10, batch_size=2, seq_len=12, grad_accum=accum, lr=5e-3, lr_schedule=schedule,
                         warmup_steps=3, weight_decay=0.01, max_grad_norm=0.5, shuffle=False, report_every=4)
    data = records(9, 12, seed=2)
    start, ref_losses, ref_final = peft_run(path, data, config, 4, 8.0, 10)
    losses, final, reports, _ = ours_run(gpu, ops, run, path, data, config, start, 4, 8.0)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-3)
    assert [r["step"] for r in reports] == list(range(1, 11))
    assert all({"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s"} <= set(r) for r in reports)
    assert reports[0]["lr"] == 0.0 and reports[3]["lr"] == pytest.approx(lr_at(config, 3, 10))
    for key, ref in ref_final.items():
        np.testing.assert_allclose(final[key], ref, rtol=1e-2, atol=1e-4, err_msg=key)


@pytest.mark.parametrize("accum, model", [(1, "llama"), (2, "gemma3"), (2, "phi3"), (1, "gpt2")])
def test_dora_adamw_steps_follow_peft(gpu, ops, run, llama_dir, tmp_path, accum, model, monkeypatch):
    """10 AdamW steps of DoRA (magnitudes trained, weight decay and clipping over them too) as a
    PEFT use_dora loop takes them, from the same start."""
    from loralab.model import transformer

    if accum > 1:
        monkeypatch.setattr(transformer, "GRAD_SLICE_TOKENS", 8)
    path = llama_dir if model == "llama" else hf.tiny_model(model, tmp_path / model, seed=7)
    config = TrainConfig(steps=10, batch_size=2, seq_len=12, grad_accum=accum, lr=5e-3, lr_schedule="cosine",
                         warmup_steps=3, weight_decay=0.01, max_grad_norm=0.5, shuffle=False, report_every=5)
    data = records(9, 12, seed=2)
    start, ref_losses, ref_final = peft_run(path, data, config, 4, 8.0, 10, use_dora=True)
    assert any("magnitude" in k for k in start)
    losses, final, _, _ = ours_run(gpu, ops, run, path, data, config, start, 4, 8.0, use_dora=True)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-3)
    for key, ref in ref_final.items():
        np.testing.assert_allclose(final[key].reshape(ref.shape), ref, rtol=1e-2, atol=1e-4, err_msg=key)


def test_sgd_update_matches_peft(gpu, ops, run, llama_dir):
    config = TrainConfig(steps=3, batch_size=2, seq_len=10, lr=0.5, optimizer="sgd", max_grad_norm=0.0,
                         shuffle=False, report_every=10)
    data = records(5, 10, seed=3)
    start, _, ref_final = peft_run(llama_dir, data, config, 4, 8.0, 3)
    _, final, _, _ = ours_run(gpu, ops, run, llama_dir, data, config, start, 4, 8.0)
    ref_update = np.concatenate([(ref_final[k] - start[k]).ravel() for k in sorted(start)])
    our_update = np.concatenate([(final[k] - start[k]).ravel() for k in sorted(start)])
    assert np.linalg.norm(ref_update) > 0
    assert np.linalg.norm(our_update - ref_update) <= 1e-3 * np.linalg.norm(ref_update)


def test_only_lora_tensors_change(gpu, ops, run, llama_dir):
    config = TrainConfig(steps=2, batch_size=2, seq_len=8, lr=1e-2, shuffle=False)
    data = records(4, 8, seed=4)
    source = HFFolder(str(llama_dir))
    before = {name: run(gpu.read_buffer(buf)) for name, buf in run(upload_weights(gpu, source.config, source)).items()}
    start = hf.lora_state(hf.peft_model(llama_dir, r=4, alpha=8.0, b_std=0.02))
    _, final, _, weights = ours_run(gpu, ops, run, llama_dir, data, config, start, 4, 8.0)
    for name, buf in weights.items():
        assert run(gpu.read_buffer(buf)) == before[name], name
    assert any(not np.array_equal(final[k], start[k]) for k in start)


def test_nan_loss_stops_and_keeps_last_good_adapter(gpu, ops, run, llama_dir):
    config = TrainConfig(steps=6, batch_size=2, seq_len=8, lr=1e30, optimizer="sgd", max_grad_norm=0.0,
                         shuffle=False, report_every=1)
    data = records(4, 8, seed=5)
    start = hf.lora_state(hf.peft_model(llama_dir, r=4, alpha=8.0, b_std=0.02))
    source = HFFolder(str(llama_dir))
    lora = LoraState(gpu, source.config, LoraConfig(r=4, alpha=8.0))
    lora.load_state({k: v.tobytes() for k, v in start.items()})
    model = Transformer(gpu, ops, source.config, run(upload_weights(gpu, source.config, source)), lora, 2, 8)
    reports = []
    with pytest.raises(NonFiniteLoss) as info:
        run(Trainer(gpu, ops, model, lora, config, data).train(reports.append))
    assert 1 < info.value.step <= 6 and len(reports) == info.value.step - 1
    assert reports[-1]["step"] == info.value.step - 1 and np.isfinite(reports[-1]["loss"])
    kept = {k: np.frombuffer(b, np.float32) for k, (_, b) in run(lora.read_state()).items()}
    assert all(np.isfinite(v).all() for v in kept.values())
    trainer = Trainer(gpu, ops, model, lora, config, data)
    assert np.isfinite(run(evaluate(gpu, model, data, trainer.eval_hist, trainer.step_buf))["loss"])


def test_progressive_rank_switch_keeps_the_loss_and_the_new_entries_start_as_peft_would(gpu, ops, run, llama_dir):
    """rank_schedule progressive 2@0,4@3 (r = 4): before step 4 the adapter's rows 2-3 of A and
    columns 2-3 of B are zero with zero AdamW moments; at the switch the new rows of A get PEFT's
    init (within ±1/√in), B's new columns stay zero, so the loss just before and just after the
    switch is the same; after it, all four ranks train."""
    source = HFFolder(str(llama_dir))
    weights = run(upload_weights(gpu, source.config, source, ops))
    lora_config = LoraConfig(r=4, alpha=8.0, rank_schedule="progressive", rank_steps="2@0,4@3")
    lora = LoraState(gpu, source.config, lora_config)
    gpu.submit(lora.init_dispatches(ops, seed=5))
    config = TrainConfig(steps=6, batch_size=2, seq_len=12, lr=2e-2, shuffle=False, report_every=3)
    data = records(9, 12, seed=4)
    model = Transformer(gpu, ops, source.config, weights, lora, 2, 12)
    trainer = Trainer(gpu, ops, model, lora, config, data)
    history = run(trainer.train(stop_after=3))
    assert [h["rank"] for h in history] == [2, 2, 2]

    def tensors(buffer):
        raw = run(gpu.read_buffer(buffer))
        return {k: np.frombuffer(b, np.float32).reshape(s) for k, (s, b) in lora.peft_tensors(raw).items()}

    params, m, v = tensors(lora.params), tensors(lora.m), tensors(lora.v)
    a_key = next(k for k in params if k.endswith("q_proj.lora_A.weight"))
    b_key = a_key.replace("lora_A", "lora_B")
    assert np.abs(params[a_key][:2]).max() > 0 and np.abs(params[b_key][:, :2]).max() > 0
    for t in (params, m, v):
        assert not t[a_key][2:].any() and not t[b_key][:, 2:].any()
    before = run(evaluate(gpu, model, data[:4], trainer.eval_hist, trainer.step_buf))["loss"]
    trainer.grow_rank()
    after = run(evaluate(gpu, model, data[:4], trainer.eval_hist, trainer.step_buf))["loss"]
    assert after == pytest.approx(before, abs=1e-6)
    grown = tensors(lora.params)
    bound = 1 / np.sqrt(source.config.hidden_size)
    assert 0 < np.abs(grown[a_key][2:]).max() <= bound and not grown[b_key][:, 2:].any()
    np.testing.assert_array_equal(grown[a_key][:2], params[a_key][:2])
    history = run(trainer.train())
    assert [h["rank"] for h in history] == [2, 2, 2, 4, 4, 4]
    assert np.abs(tensors(lora.params)[b_key][:, 2:]).max() > 0, "the new ranks train after the switch"


def test_rank_schedule_is_checked():
    from loralab.errors import UsageError

    assert LoraConfig(r=16, rank_schedule="progressive", rank_steps="4@0,8@100,16@300").rank_switches == (
        (0, 4), (100, 8), (300, 16))
    assert LoraConfig(r=16, rank_schedule="progressive", rank_steps="4@0,8@100,16@300").rank_at(150) == 8
    assert LoraConfig(r=12, rank_schedule="adaptive").target_r == 8  # (PEFT's defaults: 12 → 8)
    for bad, message in (({"rank_schedule": "progressive"}, "needs rank_steps"),
                         ({"rank_schedule": "progressive", "rank_steps": "4@1,8@5"}, "start at step 0"),
                         ({"rank_schedule": "progressive", "rank_steps": "4@0,2@5"}, "must grow"),
                         ({"rank_schedule": "progressive", "rank_steps": "4@0,x@5"}, "not RANK@STEP"),
                         ({"rank_schedule": "progressive", "rank_steps": "4@0,16@5"}, "end at the rank r = 8"),
                         ({"rank_steps": "4@0,8@5"}, "goes with rank_schedule progressive"),
                         ({"rank_schedule": "adaptively"}, "rank_schedule is one of"),
                         ({"rank_schedule": "adaptive", "target_r": 8}, "must be below the starting rank"),
                         ({"rank_schedule": "adaptive", "use_dora": True}, "goes without DoRA"),
                         ({"rank_schedule": "adaptive", "total_step": 10, "tinit": 6, "tfinal": 4}, "leave no steps"),
                         ({"rank_schedule": "adaptive", "ada_beta1": 1.0}, r"must be in \(0, 1\)")):
        with pytest.raises(UsageError, match=message):
            LoraConfig(r=8, **bad)
