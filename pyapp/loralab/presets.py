"""The plan's presets and its plain words: what a preset sets from the model, the dataset and the
measured GPU, the one-paragraph summary of a plan, and the warnings about risky choices. Pure
Python over plain numbers, so the page (app/plan.py) uses it without the engine."""

from __future__ import annotations

import math

# name -> (label, LoRA rank, targets ("attention" or "all"), epochs, learning rate, minutes aimed at)
PRESETS = {
    "quick": ("Quick try (about 2 min)", 8, "attention", 1.0, 3e-4, 2.0),
    "balanced": ("Balanced (about 15 min)", 16, "all", 2.0, 2e-4, 15.0),
    "thorough": ("Thorough (about 1 h)", 32, "all", 3.0, 1e-4, 60.0),
}
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
ALL = ATTENTION + ("gate_proj", "up_proj", "down_proj")
# A LoRA learning rate this much above the usual (1e-4 to 5e-4) tends to make the loss jump or diverge.
HIGH_LR = 2e-3


def step_seconds(parameters: int, tokens_per_step: int, gflops: float | None) -> float | None:
    """A rough step time: about 4 floating-point operations per weight and token (forward, and the
    backward pass's input gradients; the frozen weights get none) at the measured matmul rate."""
    if not gflops:
        return None
    return 4.0 * parameters * tokens_per_step / (gflops * 1e9)


def preset_values(name: str, records: int, longest: int, parameters: int, gflops: float | None) -> dict:
    """The plan fields a preset sets ({"steps", "epochs", "r", …} as the plan form names them) for
    `records` training examples whose longest is `longest` tokens, a model of `parameters`
    weights and a GPU measured at `gflops` (None: not measured, no time cap). The sequence length
    covers the longest example (in steps of 64, at most 1024); the steps are the preset's epochs,
    capped (to no fewer than 10) so the run takes about the preset's minutes on this GPU."""
    label, r, targets, epochs, lr, minutes = PRESETS[name]
    seq_len = min(1024, max(64, 64 * math.ceil(longest / 64)))
    batch, accum = 4, (1 if name == "quick" else 2)
    per_epoch = max(1, math.ceil(records / (batch * accum)))
    steps = max(1, math.ceil(per_epoch * epochs))
    seconds = step_seconds(parameters, batch * accum * seq_len, gflops)
    if seconds:
        steps = min(steps, max(10, int(minutes * 60 / seconds)))
    return {"steps": steps, "epochs": epochs, "batch_size": batch, "grad_accum": accum, "seq_len": seq_len,
            "lr": lr, "lr_schedule": "constant" if name == "quick" else "cosine",
            "warmup_steps": 0 if name == "quick" else max(1, steps // 20), "r": r, "alpha": 2.0 * r,
            "targets": ",".join(ATTENTION if targets == "attention" else ALL), "report_every": 1 if steps < 50 else 5}


def describe_targets(targets: list[str] | tuple[str, ...]) -> str:
    t = set(targets)
    if t >= set(ALL):
        return "all attention and MLP projections"
    if t >= set(ATTENTION) and not t & {"gate_proj", "up_proj", "down_proj"}:
        return "all attention projections"
    return ", ".join(targets)


def summary(train: dict, lora: dict, records: int, steps: int, seconds: float | None, memory: int | None) -> str:
    """One paragraph: what the plan trains, on what, for how long and in how much GPU memory."""
    rank = {"adaptive": f"AdaLoRA adapters (rank {lora['r']} pruned to {lora.get('target_r') or '?'} on average)",
            "progressive": f"r = {lora['r']} adapters (grown to it step by step)",
            "auto": "adapters of the rank auto chooses"}.get(lora.get("rank_schedule"), f"r = {lora['r']} adapters")
    dora = " with DoRA magnitudes" if lora.get("use_dora") else ""
    per_step = train["batch_size"] * train["grad_accum"]
    epochs = steps * per_step / max(1, records)
    text = (f"Trains {rank}{dora} on {describe_targets(lora['targets'])}: {steps:,} steps of {per_step} "
            f"sequences (up to {train['seq_len']} tokens), about {epochs:.1f} epochs over {records:,} examples")
    if seconds is not None and memory is not None:
        text += f", about {duration(seconds)} and {memory / 2**30:.2f} GB of GPU memory on this GPU"
    return text + "."


def duration(seconds: float) -> str:
    """A duration for people: 850 ms, 4.2 s, 12 min, 1.5 h."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def warnings(train: dict, records: int, steps: int, cuts_most: bool) -> list[str]:
    """Risky choices, each with its reason."""
    out = []
    if train["lr"] > HIGH_LR:
        out.append(f"The learning rate {train['lr']:g} is far above the usual 1e-4 to 5e-4 for LoRA: the loss may "
                   f"jump or diverge.")
    seen = steps * train["batch_size"] * train["grad_accum"]
    if records and seen < records:
        out.append(f"{steps:,} steps see {seen:,} of the {records:,} examples: not even one epoch.")
    if cuts_most:
        out.append(f"The sequence length ({train['seq_len']}) cuts most examples: their ends are not trained on; "
                   f"raise it if memory allows.")
    return out
