"""The plan's estimates: GPU memory and time of a training run before it starts."""

from __future__ import annotations

from .config import LoraConfig, ModelConfig, TrainConfig, parse_duration
from .data.batches import Sequence
from .errors import UserError
from .gpu.device import AdapterInfo, Buffer
from .ops import Ops

# "auto" weights keep a float model in float32 while its weights take at most this share of the
# GPU budget (the rest is the run's: activations, logits, the adapter and its optimizer state).
AUTO_WEIGHTS_SHARE = 0.6


def memory_budget(info: AdapterInfo) -> int:
    """GPU bytes a run may plan on. WebGPU reports no memory size: the largest buffer the adapter
    grants stands for it, and at least 2 GiB (browsers give a tab a few GiB)."""
    return max(int(info.limits.get("maxBufferSize", 0)), 2 << 30)


def estimate_memory(ops: Ops, config: ModelConfig, weights: dict[str, Buffer], train: TrainConfig, lora: LoraConfig,
                    records: list[Sequence] | None = None, counting=None) -> dict:
    """GPU bytes a run needs, found by building it (adapter and AdamW state, the network for the
    batch shape, the trainer, the step's recorded commands) on a device that only counts bytes:
    the same code that training runs, so the estimate is what training allocates. `weights` are
    the model's, already on the GPU; `records` the training set (a one-record stand-in without);
    `counting`, a CountingDevice to use (tests read its counts)."""
    from .data.batches import IGNORE
    from .gpu.counting import CountingDevice
    from .lora import LoraState
    from .model.transformer import Transformer
    from .train import Trainer

    device = counting or CountingDevice(ops.device.info)
    recording = ops.on(device)
    adapter = LoraState(device, config, lora)
    after_adapter = device.allocated_bytes
    network = Transformer(device, recording, config, weights, adapter, train.batch_size, train.seq_len,
                          train.gradient_checkpointing)
    after_network = device.allocated_bytes
    records = records or [Sequence([0] * train.seq_len, [IGNORE] * train.seq_len)]
    trainer = Trainer(device, recording, network, adapter, train, records, [], 0)
    after_trainer = device.allocated_bytes
    trainer.record()
    weight_bytes = sum(b.size for b in weights.values())
    logits = device.by_label.get("logits", 0)
    return {"weights": weight_bytes, "activations": after_network - after_adapter - logits
            + device.peak_bytes - after_trainer, "logits": logits,
            "adapter_and_optimizer": after_adapter + after_trainer - after_network,
            "total": weight_bytes + device.peak_bytes}


def estimate_step_seconds(config: ModelConfig, train: TrainConfig, lora: LoraConfig, gflops: float) -> float:
    """Seconds per optimizer step from a measured matmul rate: the forward and the input-gradient
    products of every projection and the LM head (LoRA trains no base weight), plus attention."""
    T = train.batch_size * train.seq_len
    proj = sum(config.projection_shape(m)[0] * config.projection_shape(m)[1] for m in
               ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
    flops = 2 * 2 * T * (proj * config.num_layers + config.vocab_size * config.hidden_size)
    flops += 3 * 2 * 2 * train.batch_size * train.seq_len ** 2 / 2 * config.q_size * config.num_layers
    return flops * train.grad_accum / max(gflops * 1e9, 1.0)


# -- the "auto" rank schedule: the whole plan chosen for this GPU, data and time budget ----------------
AUTO_MEMORY_SHARE = 0.8  # a chosen plan leaves a fifth of the GPU budget free
AUTO_BATCHES = (16, 8, 4, 2, 1)
AUTO_SEQUENCES_PER_STEP = 16  # the effective batch it aims at (fewer for small datasets)
AUTO_MAX_SEQ = 4096


def auto_rank(tokens: int) -> int:
    """The rank for a dataset of `tokens` trained tokens: 8 for a few thousand examples' worth,
    16 from 100k tokens, 32 from 1M, 64 from 10M (more data can use more adapter capacity)."""
    return 8 if tokens < 100_000 else 16 if tokens < 1_000_000 else 32 if tokens < 10_000_000 else 64


def auto_plan(ops: Ops, config: ModelConfig, weights: dict[str, Buffer], records: list[Sequence], train: TrainConfig,
              lora: LoraConfig, budget: int, gflops: float, precisions: dict[str, int], weights_now: str) -> dict:
    """The whole plan for `records` on this GPU (`budget` bytes, `gflops` measured), within the
    time budget train.time_budget: rank, targets, sequence length, batch size, accumulation,
    gradient checkpointing and the frozen weights' precision, each with its reason.
    -> {"train", "lora" (the chosen configs), "weights", "reasons": {part: why}, "memory",
    "step_seconds", "steps", "total_seconds"}."""
    from dataclasses import replace

    reasons: dict[str, str] = {}
    room = int(budget * AUTO_MEMORY_SHARE)
    tokens = sum(sum(1 for label in r.labels if label != -100) for r in records)
    longest = max(len(r.input_ids) for r in records)
    seq_len = min(longest, AUTO_MAX_SEQ, config.max_positions or AUTO_MAX_SEQ)
    reasons["seq_len"] = (f"{seq_len}: the longest example has {longest} tokens" + ("" if seq_len == longest else
                          f", cut to {seq_len} (the most this plan trains on)"))
    r = auto_rank(tokens)
    reasons["rank"] = f"{r} for {tokens:,} trained tokens (8 below 100k, 16 below 1M, 32 below 10M, else 64)"
    targets = config.lora_modules()
    reasons["targets"] = "every linear projection (attention and MLP): the best quality per parameter (QLoRA)"
    chosen_lora = replace(lora, r=r, alpha=2.0 * r, targets=targets, rank_schedule="fixed", rank_steps="",
                          rank_pattern=(), alpha_pattern=())
    effective = max(1, min(AUTO_SEQUENCES_PER_STEP, len(records) // 25))
    now = sum(b.size for b in weights.values())
    # The first that fits, in this order: the weights as loaded before a smaller precision (no
    # quality lost), without gradient checkpointing before with it (a third less compute), the
    # largest micro-batch (accumulation keeps the same sequences per step).
    # Last of all, shorter sequences (the examples' ends cut), halving down to 128 tokens.
    lengths = [seq_len] + [n for n in (seq_len // 2, seq_len // 4, seq_len // 8) if n >= 128]

    def first_fit() -> tuple[str, TrainConfig, dict] | None:
        for length in lengths:
            for dtype in ("current", "f16", "q8", "q4"):
                if dtype != "current" and precisions.get(dtype, now) >= now:
                    continue  # (only a smaller precision can help)
                for ckpt in (False, True):
                    for batch in [b for b in AUTO_BATCHES if b <= effective]:
                        candidate = replace(train, seq_len=length, batch_size=batch,
                                            grad_accum=max(1, effective // batch), gradient_checkpointing=ckpt)
                        memory = estimate_memory(ops, config, weights, candidate, chosen_lora, records)
                        if dtype != "current":  # (estimated over the loaded weights, their bytes exchanged)
                            memory = {**memory, "weights": precisions[dtype],
                                      "total": memory["total"] - now + precisions[dtype]}
                        if memory["total"] <= room:
                            return dtype, candidate, memory
        return None

    choice = first_fit()
    if choice is None:
        raise UserError(f"no plan fits this GPU's {budget / 2**30:.1f} GiB: even 4-bit weights, one sequence of "
                        f"{lengths[-1]} tokens and gradient checkpointing need more; choose a smaller model")
    if choice[1].seq_len < seq_len:
        cut = sum(1 for r in records if len(r.input_ids) > choice[1].seq_len)
        reasons["seq_len"] = (f"{choice[1].seq_len}: the longest example has {longest} tokens, but only this "
                              f"length fits the GPU ({cut} of {len(records)} examples are cut)")
    dtype, chosen, memory = choice
    reasons["batch_size"] = (f"{chosen.batch_size} sequences of {chosen.seq_len} tokens per micro-batch: the largest that "
                             f"fits {AUTO_MEMORY_SHARE:.0%} of this GPU's {budget / 2**30:.1f} GiB "
                             f"({memory['total'] / 2**30:.2f} GiB planned)")
    reasons["grad_accum"] = (f"{chosen.grad_accum}: {chosen.batch_size * chosen.grad_accum} sequences per step "
                             f"({'16 at most' if effective == AUTO_SEQUENCES_PER_STEP else 'about 25 steps an epoch'})")
    reasons["gradient_checkpointing"] = ("on: without it the activations do not fit" if chosen.gradient_checkpointing
                                         else "off: the activations fit (it would cost a third more compute)")
    weights_choice = weights_now if dtype == "current" else dtype
    reasons["weights"] = (f"{weights_now} as loaded: they fit" if dtype == "current" else
                          f"{dtype}: the weights as loaded leave too little room for the run")
    step_s = estimate_step_seconds(config, chosen, chosen_lora, gflops) * (4 / 3 if chosen.gradient_checkpointing else 1)
    steps = chosen.total_steps(len(records))
    budget_s = parse_duration(train.time_budget)
    if budget_s is not None and steps * step_s > budget_s:
        fit = max(1, int(budget_s // max(step_s, 1e-9)))
        reasons["steps"] = (f"{fit} steps ({fit / steps * chosen.epochs:.2f} epochs): what {budget_s / 60:.1f} min "
                            f"allow at about {step_s:.2f} s per step (a whole {chosen.epochs:g} epochs would take "
                            f"{steps * step_s / 60:.1f} min)")
        chosen = replace(chosen, steps=fit)
        steps = fit
    else:
        reasons["steps"] = (f"{steps} steps ({chosen.epochs:g} epochs), about {steps * step_s / 60:.1f} min"
                            + ("" if budget_s is None else f", within the {budget_s / 60:.1f} min budget"))
    return {"train": chosen, "lora": chosen_lora, "weights": weights_choice, "reasons": reasons, "memory": memory,
            "step_seconds": step_s, "steps": steps, "total_seconds": steps * step_s}
