"""The plan's presets and plain words (presets.py): what each preset sets from the data, the model
and the measured GPU; the summary paragraph; the warnings about risky choices."""

from __future__ import annotations

from loralab.config import LoraConfig, TrainConfig
from loralab.presets import ALL, ATTENTION, PRESETS, preset_values, step_seconds, summary, warnings


def test_presets_follow_the_data_and_the_gpu():
    quick = preset_values("quick", 1000, 200, 135_000_000, None)
    assert quick["targets"].split(",") == list(ATTENTION) and quick["r"] == 8 and quick["seq_len"] == 256
    assert quick["steps"] == 250  # one epoch of 1000 examples, 4 a step (no time cap without a measured GPU)
    thorough = preset_values("thorough", 1000, 2000, 135_000_000, None)
    assert thorough["targets"].split(",") == list(ALL) and thorough["seq_len"] == 1024  # (capped)
    assert thorough["steps"] == 375 and thorough["warmup_steps"] == 18 and thorough["lr_schedule"] == "cosine"
    slow = preset_values("balanced", 100_000, 200, 135_000_000, 50.0)  # a slow GPU: the time caps the steps
    per_step = step_seconds(135_000_000, 4 * 2 * 256, 50.0)
    assert slow["steps"] == int(PRESETS["balanced"][5] * 60 / per_step) < 25_000
    assert preset_values("quick", 5000, 10, 10**12, 1.0)["steps"] == 10  # the time cap leaves at least 10
    for name in PRESETS:  # every preset is a valid plan
        v = preset_values(name, 500, 300, 10**8, 1000.0)
        TrainConfig(steps=v["steps"], batch_size=v["batch_size"], grad_accum=v["grad_accum"], seq_len=v["seq_len"],
                    lr=v["lr"], lr_schedule=v["lr_schedule"], warmup_steps=v["warmup_steps"])
        LoraConfig(r=v["r"], alpha=v["alpha"], targets=tuple(v["targets"].split(",")))


def test_the_summary_and_the_warnings_say_what_matters():
    train = {"batch_size": 4, "grad_accum": 2, "seq_len": 512, "lr": 2e-4}
    lora = {"r": 16, "targets": list(ALL), "rank_schedule": "fixed", "use_dora": False}
    text = summary(train, lora, 1240, 310, 360.0, int(1.2 * 2**30))
    assert text == ("Trains r = 16 adapters on all attention and MLP projections: 310 steps of 8 sequences (up to 512 "
                    "tokens), about 2.0 epochs over 1,240 examples, about 6 min and 1.20 GB of GPU memory on this GPU.")
    assert warnings(train, 1240, 310, False) == []
    risky = warnings({**train, "lr": 0.05}, 1240, 20, True)
    assert len(risky) == 3 and "far above" in risky[0] and "not even one epoch" in risky[1] and "cuts most" in risky[2]
    ada = summary(train, {**lora, "rank_schedule": "adaptive", "r": 12, "target_r": 8}, 100, 10, None, None)
    assert ada.startswith("Trains AdaLoRA adapters (rank 12 pruned to 8 on average)")
