"""rank_schedule adaptive (AdaLoRA) against PEFT's AdaLoraModel and RankAllocator: the same start
(PEFT's initial adapter loaded), the same data order, no dropout; the per-step loss through the
warm-up, the budget's fall and the final phase, and the ranks left per module."""

from __future__ import annotations

import numpy as np
import pytest

from loralab.config import LoraConfig, TrainConfig
from loralab.lora import LoraState, adalora_control
from loralab.model.transformer import Transformer
from loralab.model.weights import HFFolder, upload_weights
from loralab.train import Trainer
from tests.model import hf
from tests.model.test_train_vs_peft import records

torch = pytest.importorskip("torch")

ADA = dict(init_r=6, target_r=3, tinit=4, tfinal=8, deltaT=2, beta1=0.85, beta2=0.85, orth_reg_weight=0.5)


def ours_key(peft_key: str) -> str:
    """PEFT AdaLoRA's saved key (…lora_A) as LoraState names it (…lora_A.weight)."""
    return peft_key + ".weight"


def ada_fields(ada: dict, steps: int, alpha: float) -> dict:
    return dict(r=ada["init_r"], alpha=alpha, rank_schedule="adaptive", target_r=ada["target_r"], tinit=ada["tinit"],
                tfinal=ada["tfinal"], delta_t=ada["deltaT"], ada_beta1=ada["beta1"], ada_beta2=ada["beta2"],
                orth_reg_weight=ada["orth_reg_weight"], total_step=steps)


def orth_reg(model, weight: float):
    """PEFT's AdaLoraModel.forward regulariser (the test computes the loss from logits, so the
    model's own forward does not add it): weight · mean over every A and B of ‖PPᵀ − I‖_F."""
    total, count = 0.0, 0
    for name, p in model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and p.requires_grad:
            cov = p @ p.T if "lora_A" in name else p.T @ p
            total = total + torch.norm(cov - torch.eye(*cov.shape), p="fro")
            count += 1
    return weight * total / count


def peft_adalora_run(path, data, config: TrainConfig, ada: dict, alpha: float, steps: int, targets=None):
    """PEFT's loop as its AdaLoRA example runs it: backward, clip, AdamW, the scheduler, then
    update_and_allocate(global step from 0), zero_grad."""
    import peft
    import transformers

    base = hf.load_hf(path)
    targets = targets or {"phi3": hf.PHI3_PROJECTIONS, "gpt2": hf.GPT2_PROJECTIONS}.get(base.config.model_type,
                                                                                      hf.PROJECTIONS)
    torch.manual_seed(3)
    model = peft.get_peft_model(base, peft.AdaLoraConfig(
        **ada, total_step=steps, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0,
        task_type="CAUSAL_LM", fan_in_fan_out=base.config.model_type == "gpt2"))
    start = {ours_key(k): v for k, v in hf.lora_state(model).items()}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps,
                            weight_decay=config.weight_decay)
    sched = transformers.get_scheduler(config.lr_schedule, opt, num_warmup_steps=config.warmup_steps,
                                       num_training_steps=steps)
    losses, regs, cursor, B, vocab = [], [], 0, config.batch_size, base.config.vocab_size
    for step in range(steps):
        micro = []
        for _ in range(config.grad_accum):
            micro.append([data[(cursor + j) % len(data)] for j in range(B)])
            cursor += B
        from loralab.data.batches import make_batch

        made = [make_batch(m, B, config.seq_len) for m in micro]
        n_total = sum(n for _, _, n in made)
        total = 0.0
        for ids, targets_, _ in made:
            logits = model(input_ids=torch.tensor(ids).reshape(B, -1)).logits.reshape(-1, vocab)
            loss = torch.nn.functional.cross_entropy(logits, torch.tensor(targets_), ignore_index=-100,
                                                     reduction="sum") / n_total
            loss.backward()
            total += loss.item()
        reg = orth_reg(model, ada["orth_reg_weight"])
        reg.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        opt.step()
        sched.step()
        model.base_model.update_and_allocate(step)
        opt.zero_grad()
        losses.append(total)
        regs.append(reg.item())
    pattern = model.peft_config["default"].rank_pattern
    ranks = {k.replace(".lora_E", "").replace(".default", ""): int(sum(v)) for k, v in pattern.items()}
    return start, losses, regs, ranks, model


def ours_adalora_run(gpu, ops, run, path, data, config: TrainConfig, start: dict, fields: dict):
    source = HFFolder(str(path))
    weights = run(upload_weights(gpu, source.config, source, ops))
    lora = LoraState(gpu, source.config, LoraConfig(**fields))
    lora.load_state({k: v.tobytes() for k, v in start.items()})
    model = Transformer(gpu, ops, source.config, weights, lora, config.batch_size, config.seq_len)
    trainer = Trainer(gpu, ops, model, lora, config, data)
    history = run(trainer.train())
    ranks = run(lora.ranks())
    return history, ranks, lora, trainer


def named(ranks: dict) -> dict:
    from loralab.config import module_name

    return {module_name(layer, module): r for (layer, module), r in ranks.items()}


@pytest.mark.parametrize("model, accum", [("llama", 1), ("qwen2", 2)])
def test_adaptive_follows_peft_adalora_over_30_steps(gpu, ops, run, tmp_path, model, accum, monkeypatch):
    from loralab.model import transformer

    if accum > 1:
        monkeypatch.setattr(transformer, "GRAD_SLICE_TOKENS", 8)
    path = hf.tiny_model(model, tmp_path / model, seed=5)
    steps = 30
    config = TrainConfig(steps=steps, batch_size=2, seq_len=12, grad_accum=accum, lr=2e-2, lr_schedule="linear",
                         warmup_steps=2, weight_decay=0.01, max_grad_norm=1.0, shuffle=False, report_every=7)
    data = records(9, 12, seed=2)
    start, ref_losses, ref_regs, ref_ranks, _ = peft_adalora_run(path, data, config, ADA, 8.0, steps)
    history, ranks, lora, _ = ours_adalora_run(gpu, ops, run, path, data, config, start, ada_fields(ADA, steps, 8.0))
    train = [h for h in history if h["kind"] == "train"]
    np.testing.assert_allclose([h["loss"] for h in train], ref_losses, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose([h["orth_reg"] for h in train], ref_regs, rtol=1e-3, atol=1e-5)
    assert named(ranks) == ref_ranks
    assert sum(ranks.values()) == ADA["target_r"] * len(ranks)  # the final budget, allocated unevenly
    assert len(set(ranks.values())) > 1
    assert train[-1]["rank"] == ADA["target_r"] and train[0]["rank"] == ADA["init_r"]


def test_budget_schedule_is_peft_s():
    """adalora_control's budget and masking steps equal PEFT's RankAllocator.budget_schedule."""
    from peft.tuners.adalora.layer import RankAllocator

    lora = LoraConfig(**ada_fields(ADA, 40, 8.0))
    allocator = RankAllocator.__new__(RankAllocator)
    allocator.peft_config = type("C", (), dict(tinit=ADA["tinit"], tfinal=ADA["tfinal"], total_step=40,
                                             deltaT=ADA["deltaT"]))
    allocator.init_bgt, allocator.target_bgt = 6 * 14, 3 * 14
    for step in range(40):
        update, mode, k, budget = adalora_control(lora, step, 40, 6 * 14, 14)
        assert update == (step < 40 - ADA["tfinal"])
        if step < 40 - ADA["tfinal"]:
            ref_budget, ref_mask = allocator.budget_schedule(step)
            assert mode == (1 if ref_mask else 0)
            if ref_mask:
                assert (k, budget) == (6 * 14 - ref_budget, ref_budget)
        else:
            assert mode == (1 if step == 40 - ADA["tfinal"] else 2)
            assert budget == 3 * 14


def test_the_plan_says_what_adaptive_will_do():
    from loralab.session import rank_schedule_words

    words = rank_schedule_words(LoraConfig(**ada_fields(ADA, 0, 8.0)), 30)
    assert "rank 6" in words and "average of 3" in words and "after step 4" in words and "by step 22" in words
    pruned = LoraConfig(**ada_fields(ADA, 30, 8.0), rank_pattern={"model.layers.0.self_attn.q_proj": 0})
    assert "no more pruning" in rank_schedule_words(pruned, 30)


def test_a_run_too_short_for_the_schedule_is_refused_before_its_buffers(gpu, ops, run, tmp_path):
    """Without total_step the schedule spans the run: tinit + tfinal covering it is refused by name
    before the trainer makes any buffer (nothing left allocated on the GPU by the refusal)."""
    from loralab.errors import UsageError

    path = hf.tiny_model("llama", tmp_path / "llama", seed=5)
    source = HFFolder(str(path))
    weights = run(upload_weights(gpu, source.config, source, ops))
    fields = ada_fields(ADA, 0, 8.0)
    lora = LoraState(gpu, source.config, LoraConfig(**fields))
    model = Transformer(gpu, ops, source.config, weights, lora, 2, 12)
    before = gpu.allocated_bytes
    with pytest.raises(UsageError, match="leave no steps of 10 for pruning"):
        Trainer(gpu, ops, model, lora, TrainConfig(steps=10, batch_size=2, seq_len=12), records(4, 12, seed=2))
    assert gpu.allocated_bytes == before
