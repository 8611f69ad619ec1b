"""The server recipe: the same job for TRL's SFTTrainer + PEFT on GPU servers (accelerate: one
GPU, DDP, FSDP, DeepSpeed ZeRO-2/3), as a folder of files (`loralab recipe`, the app's "Run on a
GPU server" zip).

The folder holds `train.py` (recipe_train.py, unchanged: everything the run needs it reads from
`loralab.json`), the dataset as the person gave it (and the validation file), the records exactly
as LoRA Lab tokenized and masked them for the plan's model (`data/train.tokens.jsonl`: input_ids
and labels, -100 where the loss skips a token; packed when the plan packs), accelerate configs,
pinned requirements and a README with the launch commands. Training on the tokenized records
makes the server's masks LoRA Lab's by construction; train.py checks that another model's
tokenizer would give the same tokens before it reuses them (--retokenize hands the original file
to TRL's own formatting instead, and says what may differ).

`loralab.json` keeps the plan (LoRA Lab's TrainConfig and LoraConfig), the PEFT and SFTConfig
keyword arguments derived from it field by field (peft_kwargs, sft_kwargs: the tests compare them
with the plan), and the notes on anything TRL/PEFT does differently. Pure Python: the browser
builds the same files.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from .config import GPT2_SITES, LoraConfig, TrainConfig
from .data.batches import IGNORE, Sequence

# The versions the recipe was written and tested against (requirements.txt pins them).
REQUIREMENTS = {"torch": "2.13.0", "transformers": "5.24.0", "peft": "0.21.2", "trl": "1.16.0",
                "accelerate": "1.15.0", "datasets": "5.2.0"}
EXTRA_REQUIREMENTS = {"deepspeed": "0.19.8", "bitsandbytes": "0.50.2"}
ACCELERATE_CONFIGS = ("single_gpu", "multi_gpu", "fsdp", "deepspeed_zero2", "deepspeed_zero3")
TRAIN_SCRIPT = Path(__file__).with_name("recipe_train.py")
PROBE_TEXT = "LoRA Lab checks the tokenizer: Hello, world! 123 — ünïcødé ✓"


def peft_kwargs(lora: LoraConfig, total_steps: int) -> dict:
    """PEFT's LoraConfig (or AdaLoraConfig) keyword arguments for the plan's adapter: targets by
    PEFT's module names, the ranks and alphas (per module too), dropout, rsLoRA, DoRA; AdaLoRA's
    schedule with total_step the run's. A progressive schedule trains at its final rank."""
    from .formats.peft import adapter_config

    named = adapter_config(lora, "")
    kwargs = {"peft_type": "ADALORA" if lora.adaptive else "LORA", "task_type": "CAUSAL_LM",
              "target_modules": named["target_modules"], "lora_alpha": lora.alpha, "lora_dropout": lora.dropout,
              "bias": "none", "fan_in_fan_out": any(t in GPT2_SITES for t in lora.targets)}
    if lora.adaptive:
        kwargs.update(init_r=lora.r, target_r=lora.target_r, tinit=lora.tinit, tfinal=lora.tfinal,
                      deltaT=lora.delta_t, beta1=lora.ada_beta1, beta2=lora.ada_beta2,
                      orth_reg_weight=lora.orth_reg_weight, total_step=lora.total_step or total_steps)
        return kwargs
    kwargs.update(r=lora.r, use_rslora=lora.use_rslora, use_dora=lora.use_dora, rank_pattern=dict(lora.rank_pattern),
                  alpha_pattern=dict(lora.alpha_pattern), init_lora_weights=True)
    return kwargs


def sft_kwargs(train: TrainConfig, total_steps: int, has_valid: bool, save_every: int = 0) -> dict:
    """TRL's SFTConfig keyword arguments for the plan's run on one GPU (train.py splits the
    global batch, per-device batch × accumulation × GPUs, over the GPUs it is launched on)."""
    schedule = {"constant": "constant_with_warmup" if train.warmup_steps else "constant",
                "linear": "linear", "cosine": "cosine"}[train.lr_schedule]
    kwargs = {
        "output_dir": "output", "per_device_train_batch_size": train.batch_size,
        "gradient_accumulation_steps": train.grad_accum, "learning_rate": train.lr, "lr_scheduler_type": schedule,
        "warmup_steps": train.warmup_steps, "optim": "adamw_torch" if train.optimizer == "adamw" else "sgd",
        "weight_decay": train.weight_decay, "adam_beta1": train.beta1, "adam_beta2": train.beta2,
        "adam_epsilon": train.eps, "max_grad_norm": train.max_grad_norm,
        "gradient_checkpointing": train.gradient_checkpointing, "seed": train.seed, "data_seed": train.seed,
        "train_sampling_strategy": "random" if train.shuffle else "sequential",
        "max_length": train.seq_len, "packing": False, "bf16": train.precision == "mixed",
        "logging_steps": train.report_every, "logging_first_step": True, "report_to": "none",
        "per_device_eval_batch_size": train.batch_size,
        "eval_strategy": "steps" if has_valid and train.eval_every else "no",
        "save_strategy": "steps" if save_every else "no",
    }
    if train.steps:
        kwargs["max_steps"] = train.steps
    else:
        kwargs.update(num_train_epochs=train.epochs, max_steps=-1)
    if has_valid and train.eval_every:
        kwargs["eval_steps"] = train.eval_every
    if save_every:
        kwargs["save_steps"] = save_every
    return kwargs


def notes(train: TrainConfig, lora: LoraConfig, dataset_source: dict, weights: str, gguf: bool,
          labels_differ: bool) -> list[str]:
    """Where the server run differs from LoRA Lab's, in words (the README and the app show
    them). Nothing is changed silently: each difference is listed."""
    out = []
    if lora.rank_schedule == "progressive":
        out.append(f"progressive rank ({lora.rank_steps}) has no TRL/PEFT equivalent: the server run trains at "
                   f"the final rank {lora.r} from the first step")
    if lora.rank_schedule == "auto":
        out.append("rank_schedule auto: the recipe holds the plan LoRA Lab chose for this GPU; on a server GPU a "
                   "larger batch or longer sequences may fit, edit loralab.json to use them")
    if train.precision == "mixed":
        out.append("mixed precision here multiplies in float16 with float32 sums and float32 adapter and optimizer; "
                   "the recipe uses bf16 autocast (bf16=True), the server GPUs' usual mixed precision")
    if weights in ("q4", "q8"):
        out.append(f"the frozen weights as {weights}: the recipe loads them with bitsandbytes "
                   f"({'NF4' if weights == 'q4' else 'LLM.int8'}, needs a CUDA GPU and bitsandbytes), not LoRA "
                   f"Lab's own block formats")
    if gguf:
        out.append("the model was a GGUF file: transformers loads the Hugging Face repo named in loralab.json; "
                   "check it is the same model before launching (or pass --model)")
    if train.shuffle:
        out.append("shuffling: the server shuffles with torch's sampler (seeded by the plan's seed), not LoRA Lab's "
                   "permutation, so the order of examples differs; --no-shuffle plans run in the same order")
    if labels_differ:
        out.append("some records' labels differ from their input_ids (tokens format): they are kept as given, "
                   "which TRL's own formatting (--retokenize) cannot express")
    if dataset_source.get("packing"):
        out.append("packing: the records are packed as LoRA Lab packs them (in order, into sequences of the plan's "
                   "length) before TRL sees them; TRL's own packing is off")
    if lora.adaptive:
        out.append("AdaLoRA: train.py calls PEFT's update_and_allocate after every optimizer step (a callback); "
                   "PEFT adds the orthogonality regulariser to each micro-batch's loss")
    return out


def tokens_jsonl(records: list[Sequence]) -> bytes:
    return "".join(json.dumps({"input_ids": s.input_ids, "labels": s.labels}) + "\n" for s in records).encode()


def accelerate_config(kind: str, mixed: bool) -> str:
    """An accelerate config (YAML) for one GPU, DDP over the GPUs of a machine, FSDP, or
    DeepSpeed ZeRO-2 / ZeRO-3; num_processes is overridden by --num_processes at launch."""
    precision = "bf16" if mixed else "no"
    head = (f"# accelerate launch --config_file accelerate/{kind}.yaml train.py\ncompute_environment: LOCAL_MACHINE\n"
            f"machine_rank: 0\nnum_machines: 1\nmixed_precision: {precision}\nuse_cpu: false\n")
    if kind == "single_gpu":
        return head + "distributed_type: 'NO'\nnum_processes: 1\n"
    if kind == "multi_gpu":
        return head + "distributed_type: MULTI_GPU\nnum_processes: 8\n"
    if kind == "fsdp":
        return head + ("distributed_type: FSDP\nnum_processes: 8\nfsdp_config:\n  fsdp_version: 2\n"
                       "  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP\n  fsdp_cpu_ram_efficient_loading: true\n"
                       "  fsdp_offload_params: false\n  fsdp_reshard_after_forward: true\n"
                       "  fsdp_state_dict_type: FULL_STATE_DICT\n")
    stage = 2 if kind == "deepspeed_zero2" else 3
    zero3 = "  zero3_init_flag: true\n  zero3_save_16bit_model: true\n" if stage == 3 else "  zero3_init_flag: false\n"
    return head + (f"distributed_type: DEEPSPEED\nnum_processes: 8\ndeepspeed_config:\n  zero_stage: {stage}\n"
                   f"  offload_optimizer_device: none\n  offload_param_device: none\n{zero3}")


def readme(model_id: str, data_file: str, plan_notes: list[str], total_steps: int, train: TrainConfig,
           lora: LoraConfig) -> str:
    lines = [
        f"# LoRA Lab recipe: {model_id}", "",
        "The run planned in LoRA Lab, for TRL's `SFTTrainer` + PEFT on GPU servers. Everything the run needs is in",
        "`loralab.json` (the plan, and the PEFT `LoraConfig` / TRL `SFTConfig` arguments made from it);",
        "`train.py` reads it. The records are LoRA Lab's own tokens and loss masks (`data/train.tokens.jsonl`), so",
        "the server trains on exactly what LoRA Lab would; the dataset as you gave it is beside them.", "",
        "## Set up", "", "```sh", "python -m venv .venv && . .venv/bin/activate", "pip install -r requirements.txt",
        "# for the DeepSpeed configs: pip install " + " ".join(f"{k}=={v}" for k, v in EXTRA_REQUIREMENTS.items()
                                                               if k == "deepspeed"),
        "```", "", "## Launch", "",
        "The global batch (per-device batch × accumulation × GPUs) stays the plan's "
        f"{train.batch_size * train.grad_accum} sequences on any number of GPUs: train.py splits it.", "",
        "```sh",
        "# one GPU",
        "accelerate launch --config_file accelerate/single_gpu.yaml train.py",
        "# all GPUs of one machine (DDP); set --num_processes to the GPU count",
        "accelerate launch --config_file accelerate/multi_gpu.yaml --num_processes 8 train.py",
        "# FSDP (shards the frozen model too: for models that do not fit one GPU)",
        "accelerate launch --config_file accelerate/fsdp.yaml --num_processes 8 train.py",
        "# DeepSpeed ZeRO-2 / ZeRO-3",
        "accelerate launch --config_file accelerate/deepspeed_zero2.yaml --num_processes 8 train.py",
        "accelerate launch --config_file accelerate/deepspeed_zero3.yaml --num_processes 8 train.py",
        "# a quick check on the CPU, two processes (gloo)",
        "torchrun --nproc_per_node 2 train.py --max-steps 3",
        "```", "",
        f"`train.py --model ID_OR_PATH` trains another model instead of `{model_id}`: when its tokenizer gives the",
        "same tokens the records are reused as they are; otherwise pass `--retokenize`, and TRL formats",
        f"`{data_file}` itself (its masking rules may differ from LoRA Lab's). `--output DIR` (default `output`),",
        f"`--max-steps N` (the plan: {total_steps}).", "",
        "## Bring the adapter back", "",
        "The adapter lands in `output/adapter` (PEFT's files). In LoRA Lab: `loralab eval MODEL DATA --adapter",
        "output/adapter`, `loralab train ... --adapter output/adapter` to continue, or the app's adapter import to",
        "chat with it and compare it.", "",
        "## What the server does differently", "",
    ]
    lines += [f"- {n}" for n in plan_notes] or ["- nothing: every part of the plan has its TRL/PEFT equivalent."]
    lines += ["", "## The plan", "", "| LoRA Lab | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in {**asdict(train), "lora": f"r {lora.r}, alpha {lora.alpha}, targets "
                                            f"{', '.join(lora.targets)}, schedule {lora.rank_schedule}"}.items()]
    return "\n".join(lines) + "\n"


TOKEN_FILES = ("data/train.tokens.jsonl", "data/valid.tokens.jsonl")


def data_path(name: str | None, default: str, taken) -> str:
    """Where a copied dataset goes in the recipe: `data/` and the file's own base name (any
    folders in it dropped, control characters as "_", at most 200 characters, "." / ".." / empty
    replaced by `default`), never a path the recipe already uses (the token files, the other
    copy): "original-" goes before a name taken."""
    base = str(name or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    base = "".join("_" if ord(ch) < 32 or ch == "\x7f" else ch for ch in base)[:200]
    if base in ("", ".", ".."):
        base = default
    while f"data/{base}" in taken:
        base = f"original-{base}"
    return f"data/{base}"


def recipe_files(model_id: str, revision: str | None, gguf: bool, train: TrainConfig, lora: LoraConfig,
                 source: dict, train_records: list[Sequence], valid_records: list[Sequence], probe_ids: list[int],
                 weights: str = "auto", save_every: int = 0) -> dict[str, bytes]:
    """{path: bytes} of the recipe folder for a plan over a tokenized dataset (`source` as
    session.Dataset keeps it: the file's name and text, its format and options)."""
    total = train.total_steps(len(train_records))
    data_file = data_path(source.get("name"), "dataset.jsonl", TOKEN_FILES)
    labels_differ = any(any(lab not in (IGNORE, i) for i, lab in zip(s.input_ids, s.labels)) for s in train_records)
    plan_notes = notes(train, lora, source, weights, gguf, labels_differ)
    plan = {
        "loralab": "recipe 1",
        "model": {"id": model_id, "revision": revision, "weights": weights, "from_gguf": gguf},
        "dataset": {"file": data_file, "format": source.get("format", "auto"),
                    "train_on_prompt": bool(source.get("train_on_prompt")), "packing": bool(source.get("packing")),
                    "valid_fraction": source.get("valid_fraction", 0.0), "seq_len": train.seq_len,
                    "train_tokens": "data/train.tokens.jsonl",
                    "valid_tokens": "data/valid.tokens.jsonl" if valid_records else None,
                    "records": len(train_records), "valid_records": len(valid_records)},
        "tokenizer_probe": {"text": PROBE_TEXT, "ids": probe_ids},
        "total_steps": total,
        "train": asdict(train),
        "lora": {**asdict(lora), "targets": list(lora.targets)},
        "peft_kwargs": peft_kwargs(lora, total),
        "sft_kwargs": sft_kwargs(train, total, bool(valid_records), save_every),
        "notes": plan_notes,
    }
    files = {
        "train.py": TRAIN_SCRIPT.read_bytes(),
        "loralab.json": (json.dumps(plan, indent=2) + "\n").encode(),
        data_file: str(source.get("text", "")).encode(),
        "data/train.tokens.jsonl": tokens_jsonl(train_records),
        "requirements.txt": ("".join(f"{k}=={v}\n" for k, v in REQUIREMENTS.items())
                             + "".join(f"# {k}=={v}\n" for k, v in EXTRA_REQUIREMENTS.items())).encode(),
        "README.md": readme(model_id, data_file, plan_notes, total, train, lora).encode(),
    }
    if valid_records:
        files["data/valid.tokens.jsonl"] = tokens_jsonl(valid_records)
    if source.get("valid_name"):
        files[data_path(source["valid_name"], "valid.jsonl", files)] = str(source.get("valid_text", "")).encode()
    for kind in ACCELERATE_CONFIGS:
        files[f"accelerate/{kind}.yaml"] = accelerate_config(kind, train.precision == "mixed").encode()
    return files

