"""LoRA Lab's recipe, run with TRL's SFTTrainer and PEFT (this file is copied into each recipe
folder as train.py and reads the plan from loralab.json beside it).

    python train.py                                        # one GPU (or the CPU)
    accelerate launch --config_file accelerate/X.yaml train.py   # DDP, FSDP, DeepSpeed: see README.md
    torchrun --nproc_per_node 2 train.py --max-steps 3     # two processes on the CPU (gloo)
    train.py [--model ID_OR_PATH] [--output DIR] [--max-steps N] [--retokenize]

The records are LoRA Lab's tokens and loss masks (data/train.tokens.jsonl): TRL takes a dataset
with input_ids and labels as it is, so the masks are the plan's. The global batch (per-device
batch × accumulation × processes) is the plan's on any number of processes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load_plan(folder: Path = HERE) -> dict:
    return json.loads((folder / "loralab.json").read_text())


def global_batch(per_device: int, accum: int, world: int) -> tuple[int, int]:
    """(per-device batch, accumulation) with per_device × accum sequences a step over `world`
    processes: the largest per-device batch up to the plan's that divides them evenly."""
    total = per_device * accum
    for p in range(per_device, 0, -1):
        if total % (p * world) == 0:
            return p, total // (p * world)
    print(f"train.py: a global batch of {total} cannot be split over {world} processes; each takes "
          f"{per_device} × {max(1, accum // world)}", file=sys.stderr)
    return per_device, max(1, accum // world)


def peft_config(plan: dict):
    import peft

    kwargs = dict(plan["peft_kwargs"])
    kind = kwargs.pop("peft_type")
    return (peft.AdaLoraConfig if kind == "ADALORA" else peft.LoraConfig)(**kwargs)


def sft_config(plan: dict, output: str, max_steps: int | None = None, world: int | None = None):
    from trl import SFTConfig

    kwargs = dict(plan["sft_kwargs"])
    world = world or int(os.environ.get("WORLD_SIZE", "1"))
    kwargs["per_device_train_batch_size"], kwargs["gradient_accumulation_steps"] = global_batch(
        kwargs["per_device_train_batch_size"], kwargs["gradient_accumulation_steps"], world)
    kwargs["output_dir"] = output
    import torch

    if not torch.cuda.is_available():  # (a CPU check: torchrun then makes a gloo process group)
        kwargs["use_cpu"] = True
    if os.environ.get("RANK", "0") == "0":
        print(f"train.py: {world} process(es), each {kwargs['per_device_train_batch_size']} sequences × "
              f"{kwargs['gradient_accumulation_steps']} accumulation steps", file=sys.stderr)
    if max_steps:
        kwargs["max_steps"] = max_steps
    return SFTConfig(**kwargs)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def same_tokens(plan: dict, tokenizer) -> bool:
    probe = plan["tokenizer_probe"]
    return tokenizer(probe["text"], add_special_tokens=False)["input_ids"] == probe["ids"]


def datasets(plan: dict, tokenizer, retokenize: bool, folder: Path = HERE):
    """(train, validation or None): LoRA Lab's tokenized records, or with `retokenize` the
    original file in TRL's own formats (text, prompt/completion, messages)."""
    from datasets import Dataset

    data = plan["dataset"]
    if not retokenize:
        if not same_tokens(plan, tokenizer):
            sys.exit("train.py: this model's tokenizer does not give the tokens LoRA Lab's records were made with; "
                     "export the recipe for this model from LoRA Lab, or pass --retokenize to let TRL format "
                     f"{data['file']} itself (its masking rules may differ)")
        train = Dataset.from_list(read_jsonl(folder / data["train_tokens"]))
        valid = Dataset.from_list(read_jsonl(folder / data["valid_tokens"])) if data.get("valid_tokens") else None
        return train, valid
    records = [trl_record(r, data["format"]) for r in read_jsonl(folder / data["file"])]
    split = len(records) - int(len(records) * data.get("valid_fraction", 0.0))
    train = Dataset.from_list(records[:split])
    return train, (Dataset.from_list(records[split:]) if split < len(records) else None)


def trl_record(record: dict, fmt: str) -> dict:
    """A record of LoRA Lab's formats in the form TRL formats itself."""
    if "input_ids" in record:
        return {"input_ids": record["input_ids"], "labels": record.get("labels", record["input_ids"])}
    if "messages" in record or "conversations" in record:
        turns = record.get("messages") or [{"role": {"human": "user", "gpt": "assistant"}.get(t["from"], t["from"]),
                                            "content": t["value"]} for t in record["conversations"]]
        return {"messages": turns}
    if "instruction" in record:
        user = record["instruction"] + ("\n\n" + record["input"] if record.get("input") else "")
        return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]}
    if "prompt" in record:
        return {"prompt": record["prompt"], "completion": record["completion"]}
    return {"text": record["text"]}


def load_model(plan: dict, model_id: str):
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {"revision": plan["model"].get("revision") or None, "dtype": torch.float32}
    weights = plan["model"].get("weights")
    if weights in ("q4", "q8"):
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
            if weights == "q4" else BitsAndBytesConfig(load_in_8bit=True))
    return AutoModelForCausalLM.from_pretrained(model_id, **kwargs)


def build(plan: dict, model_id: str | None = None, output: str = "output", max_steps: int | None = None,
          retokenize: bool = False, folder: Path = HERE, world: int | None = None):
    """The SFTTrainer for the plan (its model, tokenizer, PEFT adapter, data and arguments)."""
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTTrainer

    model_id = model_id or plan["model"]["id"]
    tokenizer = AutoTokenizer.from_pretrained(model_id, revision=plan["model"].get("revision") or None)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train, valid = datasets(plan, tokenizer, retokenize, folder)
    args = sft_config(plan, output, max_steps, world)
    if retokenize:
        args.completion_only_loss = plan["dataset"]["format"] in ("completion",)
        args.assistant_only_loss = plan["dataset"]["format"] in ("chat", "alpaca")
    callbacks = []
    if plan["peft_kwargs"]["peft_type"] == "ADALORA":
        class AdaLoraAllocation(TrainerCallback):
            """PEFT's update_and_allocate after each optimizer step, before the gradients are zeroed."""

            def on_optimizer_step(self, args, state, control, model=None, **kwargs):
                model.base_model.update_and_allocate(state.global_step)

        callbacks.append(AdaLoraAllocation())
    return SFTTrainer(model=load_model(plan, model_id), args=args, train_dataset=train, eval_dataset=valid,
                      processing_class=tokenizer, peft_config=peft_config(plan), callbacks=callbacks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="another model id or folder than the plan's")
    parser.add_argument("--output", default="output", help="where checkpoints and the adapter (output/adapter) go")
    parser.add_argument("--max-steps", type=int, help="stop after N optimizer steps (a quick check)")
    parser.add_argument("--retokenize", action="store_true", help="let TRL format the original dataset itself")
    args = parser.parse_args(argv)
    plan = load_plan()
    for note in plan.get("notes", []):
        print(f"train.py: note: {note}", file=sys.stderr)
    trainer = build(plan, args.model, args.output, args.max_steps, args.retokenize)
    trainer.train()
    if trainer.eval_dataset is not None and trainer.args.eval_strategy == "no":
        trainer.evaluate()
    adapter = os.path.join(args.output, "adapter")
    trainer.save_model(adapter)
    if trainer.is_world_process_zero():
        with open(os.path.join(args.output, "metrics.jsonl"), "w") as f:
            for entry in trainer.state.log_history:
                f.write(json.dumps(entry) + "\n")
        print(f"train.py: the adapter is in {adapter}; in LoRA Lab: loralab eval MODEL DATA --adapter {adapter}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
