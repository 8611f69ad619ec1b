"""`loralab recipe`: the plan as TRL's SFTTrainer + PEFT on GPU servers. The generated LoraConfig and
SFTConfig carry the plan's values field by field; the recipe run in one process starts where LoRA
Lab's run starts (the first step's loss, the masks); run by accelerate in two processes it writes
an adapter that LoRA Lab evaluates as PEFT does."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from loralab.config import LoraConfig, TrainConfig
from loralab.data.batches import IGNORE, Sequence, make_batch
from loralab.recipe import recipe_files
from tests.browser.test_app_flow import chat_jsonl, make_chat_model
from tests.model import hf
from tests.test_cli_train import loralab

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

BIN = Path(sys.executable).parent


def train_script(folder: Path):
    """The recipe's train.py as a module (its functions build the trainer the script runs)."""
    spec = importlib.util.spec_from_file_location(f"recipe_train_{abs(hash(folder))}", folder / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(files: dict[str, bytes], folder: Path) -> Path:
    for path, data in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    return folder


def records(n: int = 10) -> list[Sequence]:
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        ids = rng.integers(0, 90, 8 + i).tolist()
        out.append(Sequence(ids, [IGNORE] * 3 + ids[3:]))
    return out


SOURCE = {"name": "d.jsonl", "text": "{}\n", "format": "chat", "valid_fraction": 0.0}
PLANS = {
    "defaults": (TrainConfig(steps=12), LoraConfig()),
    "cosine-dora": (TrainConfig(steps=30, batch_size=3, grad_accum=4, lr=3e-4, lr_schedule="cosine", warmup_steps=5,
                                weight_decay=0.01, max_grad_norm=0.5, seq_len=512, seed=7, gradient_checkpointing=True),
                    LoraConfig(r=16, alpha=32, targets=("q_proj", "v_proj"), use_rslora=True,
                               use_dora=True)),
    "sgd-epochs": (TrainConfig(epochs=2.0, optimizer="sgd", shuffle=False, eval_every=5, precision="mixed",
                               lr_schedule="linear"),
                   LoraConfig(r=4, alpha=4, dropout=0.05, rank_pattern={"q_proj": 8}, alpha_pattern={"q_proj": 16})),
    "adaptive": (TrainConfig(steps=40), LoraConfig(r=12, alpha=8, rank_schedule="adaptive", target_r=6, tinit=4,
                                                   tfinal=8, delta_t=2, orth_reg_weight=0.3)),
    "progressive": (TrainConfig(steps=40), LoraConfig(r=8, rank_schedule="progressive", rank_steps="4@0,8@20")),
}


@pytest.mark.parametrize("plan_name", sorted(PLANS))
def test_the_generated_lora_and_sft_configs_are_the_plan(tmp_path, plan_name):
    """Field by field: PEFT's config (LoraConfig or AdaLoraConfig) and TRL's SFTConfig as train.py
    builds them from loralab.json equal the plan's values; the global batch stays the plan's on
    1, 2 and 4 processes."""
    train, lora = PLANS[plan_name]
    valid = records(2) if train.eval_every else []
    folder = write(recipe_files("org/model", None, False, train, lora, SOURCE, records(), valid, [1, 2], "auto",
                                save_every=10), tmp_path)
    script, plan = train_script(folder), json.loads((folder / "loralab.json").read_text())
    peft_config = script.peft_config(plan)
    adaptive = lora.rank_schedule == "adaptive"
    lora_table = [("lora_alpha", lora.alpha), ("lora_dropout", lora.dropout),
                  ("target_modules", set(lora.targets)), ("bias", "none")]
    if adaptive:
        lora_table += [("peft_type", "ADALORA"), ("init_r", lora.r), ("target_r", lora.target_r), ("tinit", lora.tinit),
                       ("tfinal", lora.tfinal), ("deltaT", lora.delta_t), ("beta1", lora.ada_beta1),
                       ("beta2", lora.ada_beta2), ("orth_reg_weight", lora.orth_reg_weight),
                       ("total_step", train.steps)]
    else:
        lora_table += [("peft_type", "LORA"), ("r", lora.r), ("use_rslora", lora.use_rslora),
                       ("use_dora", lora.use_dora), ("rank_pattern", dict(lora.rank_pattern)),
                       ("alpha_pattern", dict(lora.alpha_pattern))]
    for name, want in lora_table:
        got = getattr(peft_config, name)
        got = got.value if hasattr(got, "value") else got
        assert (set(got) if isinstance(got, (set, list)) else got) == want, name

    schedule = {"constant": "constant", "linear": "linear", "cosine": "cosine"}[train.lr_schedule]
    if train.lr_schedule == "constant" and train.warmup_steps:
        schedule = "constant_with_warmup"
    sft_table = [("learning_rate", train.lr), ("lr_scheduler_type", schedule), ("warmup_steps", train.warmup_steps),
                 ("optim", "adamw_torch" if train.optimizer == "adamw" else "sgd"),
                 ("weight_decay", train.weight_decay), ("adam_beta1", train.beta1), ("adam_beta2", train.beta2),
                 ("adam_epsilon", train.eps), ("max_grad_norm", train.max_grad_norm), ("seed", train.seed),
                 ("gradient_checkpointing", train.gradient_checkpointing), ("max_length", train.seq_len),
                 ("packing", False), ("bf16", train.precision == "mixed"),
                 ("train_sampling_strategy", "random" if train.shuffle else "sequential"),
                 ("eval_strategy", "steps" if valid and train.eval_every else "no"), ("save_strategy", "steps"),
                 ("save_steps", 10)]
    sft_table += [("max_steps", train.steps)] if train.steps else [("num_train_epochs", train.epochs), ("max_steps", -1)]
    if valid:
        sft_table.append(("eval_steps", train.eval_every))
    for world in (1, 2, 4):
        if train.precision == "mixed":  # (bf16 needs a GPU that has it: the fields are compared as written)
            config = plan["sft_kwargs"]
            per_device, accum = script.global_batch(config["per_device_train_batch_size"],
                                                    config["gradient_accumulation_steps"], world)
            got = dict(config)
        else:
            sft = script.sft_config(plan, str(tmp_path / "out"), world=world)
            per_device, accum = sft.per_device_train_batch_size, sft.gradient_accumulation_steps
            got = {name: getattr(sft, name) for name, _ in sft_table}
        assert per_device * accum * world == train.batch_size * train.grad_accum
        for name, want in sft_table:
            value = got[name]
            value = value.value if hasattr(value, "value") else value
            assert value == want, name


def test_a_plan_trl_lacks_is_said_in_the_readme_and_by_the_cli(tmp_path):
    train, lora = PLANS["progressive"]
    folder = write(recipe_files("org/model", None, False, train, lora, SOURCE, records(), [], [1], "q4"), tmp_path)
    notes = json.loads((folder / "loralab.json").read_text())["notes"]
    readme = (folder / "README.md").read_text()
    assert any("progressive rank" in n and "final rank 8" in n for n in notes)
    assert any("bitsandbytes" in n for n in notes)
    assert all(n in readme for n in notes)
    for name in ("single_gpu", "multi_gpu", "fsdp", "deepspeed_zero2", "deepspeed_zero3"):
        assert (folder / "accelerate" / f"{name}.yaml").exists() and f"accelerate/{name}.yaml" in readme
    pins = (folder / "requirements.txt").read_text().splitlines()
    assert {line.split("==")[0] for line in pins if not line.startswith("#")} >= {"torch", "transformers", "peft",
                                                                                   "trl", "accelerate", "datasets"}
    assert all("==" in line for line in pins)


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("recipe")
    return make_chat_model(folder / "model"), chat_jsonl(folder / "chat.jsonl")


def test_one_process_starts_where_loralab_starts(tmp_path, chat_model):
    """The recipe for a chat dataset, no shuffling: the first batch TRL feeds the model has LoRA
    Lab's tokens and masks (the assistant turns and their end-of-turn tokens), and its first
    step's loss equals LoRA Lab's (≤ 1e-3); three steps run and write a PEFT adapter."""
    model, data = chat_model
    common = ["--steps", 3, "--batch-size", 2, "--seq-len", 48, "--no-shuffle", "--rank", 4, "--lr", 1e-2]
    loralab("train", model, data, "--out", tmp_path / "lab", "--metrics", tmp_path / "lab.jsonl", *common)
    ours = json.loads((tmp_path / "lab.jsonl").read_text().splitlines()[0])["loss"]
    folder = tmp_path / "recipe"
    made = loralab("recipe", data, "--model", model, "--out", folder, *common)
    assert '"event": "recipe"' in made.stderr
    plan, script = json.loads((folder / "loralab.json").read_text()), train_script(folder)
    trainer = script.build(plan, output=str(tmp_path / "out"), folder=folder)
    batch = next(iter(trainer.get_train_dataloader()))
    tokens = [json.loads(line) for line in (folder / "data" / "train.tokens.jsonl").read_text().splitlines()]
    assert sum(1 for t in tokens[0]["labels"] if t != IGNORE) < len(tokens[0]["labels"])  # prompts are masked
    ids, targets, _ = make_batch([Sequence(t["input_ids"], t["labels"]) for t in tokens[:2]], 2, 48)
    S = batch["input_ids"].shape[1]
    for row in range(2):
        n = len(tokens[row]["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == ids[row * 48 : row * 48 + n]
        theirs = batch["labels"][row, 1:n].tolist()  # (the model shifts the labels by one)
        assert theirs == targets[row * 48 : row * 48 + n - 1], "the loss masks differ"
        assert (batch["labels"][row, n:S] == IGNORE).all()
    trainer.train()
    first = next(e for e in trainer.state.log_history if e.get("step") == 1 and "loss" in e)
    assert first["loss"] == pytest.approx(ours, rel=1e-3)
    assert trainer.state.global_step == 3


def test_two_processes_write_an_adapter_loralab_evaluates_as_peft(tmp_path, chat_model):
    """`torchrun --nproc_per_node 2 train.py` (gloo on the CPU; accelerate launch --cpu starts one
    process) runs the recipe to its end, the global batch split over the two; the adapter imports
    into LoRA Lab, whose eval equals PEFT's."""
    import peft

    from tests.test_cli_train import peft_loss

    model, data = chat_model
    folder = tmp_path / "recipe"
    loralab("recipe", data, "--model", model, "--out", folder, "--steps", 4, "--batch-size", 2, "--grad-accum", 2,
            "--seq-len", 48, "--rank", 4, "--lr", 2e-2)
    out = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "train.py", "--output", str(tmp_path / "out")],
                         cwd=folder, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 process(es), each 2 sequences × 1 accumulation steps" in out.stderr
    adapter = tmp_path / "out" / "adapter"
    assert (adapter / "adapter_model.safetensors").exists()
    metrics = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert max(m.get("step", 0) for m in metrics) == 4

    tokens_file = tmp_path / "tokens.jsonl"  # (LoRA Lab's own records, so both evaluate the same tokens)
    tokens_file.write_text((folder / "data" / "train.tokens.jsonl").read_text())
    ours = json.loads(loralab("eval", model, tokens_file, "--adapter", adapter, "--seq-len", 48).stdout)
    reference = peft.PeftModel.from_pretrained(hf.load_hf(model), str(adapter)).eval()
    loss, count = peft_loss(reference, tokens_file, seq_len=48)
    assert ours["tokens"] == count and ours["loss"] == pytest.approx(loss, abs=1e-4)


@pytest.mark.parametrize("name, valid_name, want", [
    ("..", None, "data/dataset.jsonl"),
    ("../../outside.jsonl", None, "data/outside.jsonl"),
    ("C:\\Users\\me\\chats.jsonl", None, "data/chats.jsonl"),
    ("train.tokens.jsonl", None, "data/original-train.tokens.jsonl"),
    ("same.jsonl", "same.jsonl", "data/same.jsonl"),
    ("a\nb\x00.jsonl", None, "data/a_b_.jsonl"),
])
def test_the_copied_dataset_keeps_inside_data_and_overwrites_nothing(name, valid_name, want):
    """The dataset's own name picks its place in the recipe: never outside `data/`, never over the
    token files the recipe trains on, and a validation file of the same name gets its own."""
    source = {**SOURCE, "name": name, "text": "TRAIN\n"}
    if valid_name:
        source.update(valid_name=valid_name, valid_text="VALID\n")
    files = recipe_files("org/model", None, False, *PLANS["defaults"], source, records(), records(2), [1])
    assert files[want] == b"TRAIN\n"
    assert json.loads(files["loralab.json"])["dataset"]["file"] == want
    assert all(path.startswith(("data/", "accelerate/")) or "/" not in path for path in files)
    assert files["data/train.tokens.jsonl"].startswith(b"{")
    if valid_name:
        assert files["data/original-same.jsonl"] == b"VALID\n"
