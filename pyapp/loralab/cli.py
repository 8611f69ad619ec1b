"""`loralab`: the native command line (CPython, wgpu-native).

    loralab info
    loralab train MODEL DATA --out DIR [options]
    loralab eval MODEL DATA [--adapter DIR]
    loralab generate MODEL --prompt TEXT [--adapter DIR]

User errors (bad files, unsupported models, GPU limits) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from .config import (
    CHOICES,
    DATASET_FORMATS,
    MERGED_GGUF_TYPES,
    NAMED_CONFIGS,
    PRECISIONS,
    LoraConfig,
    TrainConfig,
    option_fields,
)
from .data.formats import DatasetError
from .data.tokenizer import TokenizerError
from .errors import UsageError, UserError, one_line
from .model.weights import WEIGHT_DTYPES
from .ops import ATTENTION_VARIANTS
from .session import ONNX_DTYPES, Dataset, Session, check_sampling, checkpoint_configs


def open_source(spec: str, hub_endpoint: str | None = None):
    """(weight source, base model reference) for MODEL: `default`, a .gguf file, a model folder,
    or a Hugging Face repo id (fetched into the cache from `hub_endpoint`)."""
    from .formats.hub import DEFAULT_HUB_ENDPOINT, fetch_repo, is_repo_id
    from .model.gguf_model import GGUFModel, default_model_path
    from .model.identity import base_model_reference
    from .model.weights import HFFolder

    path = default_model_path() if spec == "default" else spec
    kind = "default" if spec == "default" and not os.environ.get("LORALAB_DEFAULT_MODEL") else "folder"
    if is_repo_id(path):
        path, kind = fetch_repo(path, hub_endpoint or DEFAULT_HUB_ENDPOINT), "repo"
    if path.lower().endswith(".gguf"):
        source = GGUFModel.from_path(path)
        kind = "gguf" if kind == "folder" else kind
    else:
        if not os.path.exists(path):
            raise UsageError(f"{path}: no such model folder or GGUF file")
        source = HFFolder(path)
    # What adapters trained on it name as their base (adapter_config.json's base_model_name_or_path).
    gguf = getattr(source, "gguf", None)
    return source, base_model_reference(kind, spec if kind == "repo" else path, gguf.metadata if gguf else None)


async def open_session(spec: str, hub_endpoint: str | None = None) -> Session:
    """A Session with MODEL opened (files read and checked, no GPU yet)."""
    from .data.tokenizer import HFTokenizer

    source, reference = open_source(spec, hub_endpoint)

    async def make_tokenizer(tokenizer_json: str, config: dict, template: str | None):
        try:
            return HFTokenizer(tokenizer_json, config, template)
        except TokenizerError as exc:
            raise TokenizerError(f"{spec}: {exc}") from None

    session = Session()
    await session.open_model(source, reference, make_tokenizer)
    return session


async def start_gpu(session: Session) -> None:
    """The native device, with every kernel compiled, for `session`."""
    from .gpu.native import NativeDevice
    from .kernels import directory_reader

    await session.start(await NativeDevice.create(), directory_reader())


def read_text(path: str) -> str:
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: no such dataset file")
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            return f.read()
        except UnicodeDecodeError:
            raise DatasetError(f"{path}: not a UTF-8 text file") from None


def use_dataset(session: Session, args, valid_fraction: float = 0.0) -> Dataset:
    """DATA (and --valid) as the session's dataset; what a person should know goes to stderr."""
    valid = (os.path.basename(args.valid), read_text(args.valid)) if getattr(args, "valid", None) else None
    dataset = session.use_dataset(os.path.basename(args.data), read_text(args.data), args.format, args.seq_len,
                                  valid_fraction, getattr(args, "train_on_prompt", False), valid,
                                  getattr(args, "packing", False))
    for note in dataset.summary.notes():
        print(f"loralab: {args.data}: {note}", file=sys.stderr)
    if dataset.summary.cuts_most():
        print(f"loralab: warning: --seq-len {args.seq_len} cuts most examples of {args.data}; their ends are not "
              f"trained on", file=sys.stderr)
    return dataset


def output_folder(path: str, flag: str) -> None:
    """Checked before any work starts (and nothing made yet): a folder there, or one that can be
    made in the nearest folder that exists. A run that ends with nowhere to save its adapter
    would lose it."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag} {path}: a file is there; give a folder")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UsageError(f"{flag} {path}: {existing} is a file, so the folder cannot be made")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: {existing} is not writable")


def output_file(path: str, flag: str) -> None:
    """A file to be written: not a folder, in a folder that exists."""
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path}: a folder is there; give a file name")
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        raise UsageError(f"{flag} {path}: no folder {parent}")


def import_adapter(session: Session, path: str) -> None:
    from .formats.peft import files_from_path

    session.import_adapter(files_from_path(path), path)


async def cmd_info(args) -> int:
    from .gpu.native import NativeDevice
    from .kernels import KernelLibrary, directory_reader
    from .ops import measure_subgroup_size
    from .selftest import matmul_check

    device = await NativeDevice.create()
    library = KernelLibrary(device, directory_reader())
    check = await matmul_check(device, library)
    check.pop("output")
    summary = device.info.summary()
    if device.info.has_subgroups:
        summary["measured_subgroup_size"] = await measure_subgroup_size(device, library)
    print(json.dumps({"adapter": summary, "check": check}, indent=1))
    return 0 if check["ok"] else 1


async def cmd_train(args) -> int:
    from .formats.peft import save_adapter

    output_folder(args.out, "--out")
    if args.checkpoint_dir:
        output_folder(args.checkpoint_dir, "--checkpoint-dir")
    if args.metrics:
        output_file(args.metrics, "--metrics")
    s = await open_session(args.model, args.hub_endpoint)
    dataset = use_dataset(s, args, args.valid_fraction if not args.valid else 0.0)
    restore = None
    if args.resume:
        from .formats.checkpoint import load as load_checkpoint

        restore = load_checkpoint(args.resume)
        config, lora_config = checkpoint_configs(restore[0], args.resume, args.steps, args.report_every)
    else:
        lora_config = None
        if args.adapter:
            import_adapter(s, args.adapter)
        else:
            lora_config = config_from_args(LoraConfig, args)
        config = config_from_args(TrainConfig, args)
    await start_gpu(s)
    run = await s.start_run(config, lora_config, restore, args.weights)
    if s.auto is not None:  # rank_schedule auto: what was chosen, and why
        print(json.dumps({"event": "auto_plan", "weights": s.auto["weights"], "reasons": s.auto["reasons"],
                          "estimated_seconds": s.auto["total_seconds"]}), file=sys.stderr)
    print(json.dumps({"event": "start", "dataset": dataset.summary.as_dict(), "steps": run.trainer.total_steps,
                      "trainable_parameters": run.lora.trainable_parameters,
                      "seq_len": run.trainer.config.seq_len}), file=sys.stderr)
    metrics = open(args.metrics, "a" if restore else "w", encoding="utf-8") if args.metrics else None

    def report(record: dict) -> None:
        if metrics and record["kind"] == "train":
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
        print(json.dumps(record), file=sys.stderr)

    on_checkpoint = None
    if args.checkpoint_dir:
        from .formats.checkpoint import save as save_checkpoint

        async def on_checkpoint(t) -> None:
            save_checkpoint(args.checkpoint_dir, *await t.state())
            print(json.dumps({"event": "checkpoint", "dir": args.checkpoint_dir, "step": t.step}), file=sys.stderr)

    try:
        failure = await run.train(report, stop_after=args.stop_after,
                                  save_every=args.save_every if args.checkpoint_dir else 0, on_checkpoint=on_checkpoint)
    finally:
        if metrics:
            metrics.close()
    files = await s.peft_files()
    try:
        save_adapter(args.out, files)
    except OSError as exc:  # (the folder was checked at the start; a full disk or a vanished mount)
        import tempfile

        rescue = tempfile.mkdtemp(prefix="loralab-adapter-")
        save_adapter(rescue, files)
        raise UserError(f"--out {args.out}: cannot save the adapter ({exc.strerror or exc}); it was saved to "
                        f"{rescue} instead") from None
    ranks = await s.rank_map()
    if ranks is not None:  # rank_schedule adaptive: the ranks the pruning left per module
        print(json.dumps({"event": "rank_map", "ranks": ranks}), file=sys.stderr)
    if failure:
        print(f"loralab: {failure}; the adapter in {args.out} is that last good one", file=sys.stderr)
        return 3
    print(json.dumps({"event": "saved", "out": args.out, "steps": run.step}), file=sys.stderr)
    return 0


async def cmd_eval(args) -> int:
    s = await open_session(args.model, args.hub_endpoint)
    use_dataset(s, args)
    if args.adapter:
        import_adapter(s, args.adapter)
    await start_gpu(s)
    await s.upload(args.weights)
    result = await s.evaluate(s.adapter(), args.batch_size, args.precision)
    print(json.dumps({"loss": result["loss"], "tokens": result["tokens"]}))
    return 0


async def cmd_generate(args) -> int:
    check_sampling(args.max_new_tokens, args.temperature, args.top_p)
    s = await open_session(args.model, args.hub_endpoint)
    s.need_tokenizer("generate")
    if args.adapter:
        import_adapter(s, args.adapter)
    chat = args.chat is not None
    s.prompt_ids(args.chat if chat else args.prompt, chat)  # (a missing chat template is told before GPU work)
    await start_gpu(s)
    out = await s.generate(args.chat if chat else args.prompt, s.adapter(), args.max_new_tokens, chat,
                           args.temperature, args.top_p, args.seed, weights_dtype=args.weights)
    print(out.text)
    print(json.dumps({"prompt_tokens": out.prompt_tokens, "new_tokens": len(out.ids),
                      "tokens_per_s": out.tokens_per_s}), file=sys.stderr)
    return 0


TIMELINE_TOP = 12  # kernels `bench --timeline` prints


async def cmd_bench(args) -> int:
    from .bench import (
        bench_attention,
        bench_cross_entropy,
        bench_matmul,
        bench_training,
        check_bench_sizes,
        profile_step,
        timeline_step,
    )
    from .config import ModelConfig

    check_bench_sizes(args.batch_size, args.seq_len, args.steps, args.rank)
    s = await open_session(args.model, args.hub_endpoint) if args.model else Session()
    await start_gpu(s)
    if args.model:
        if args.weights not in WEIGHT_DTYPES:
            raise UsageError(f"--weights {args.weights} makes random weights; with --model choose {', '.join(WEIGHT_DTYPES)}")
        model = await s.upload(args.weights)
        config, config_dict, weights = model.config, model.config_dict, model.weights
    else:
        config_dict = NAMED_CONFIGS[args.config]
        config = ModelConfig.from_dict(config_dict, args.config)
        weights = None
    ops = s.ops
    results = []
    if not args.kernels_only:
        ours = await bench_training(ops, config, args.batch_size, args.seq_len, args.steps, args.rank, weights,
                                    checkpointing=args.gradient_checkpointing, weights_dtype=args.weights,
                                    attention=args.attention, precision=args.precision)
        ours["config"] = args.model or args.config
        results.append(ours)
        print(json.dumps(ours), flush=True)
    if args.profile:
        for row in await profile_step(ops, config, args.batch_size, args.seq_len, args.rank, weights,
                                      attention=args.attention):
            print(json.dumps(row), flush=True)
    if args.timeline:
        rows, trace = await timeline_step(ops, config, args.batch_size, args.seq_len, args.rank, weights,
                                          attention=args.attention)
        with open(args.timeline, "w") as f:
            json.dump(trace, f)
        for row in rows[:TIMELINE_TOP]:
            print(json.dumps({"timeline": args.timeline, **row}), flush=True)
    if args.kernels or args.kernels_only:
        T, C, I = args.batch_size * args.seq_len, config.hidden_size, config.intermediate_size
        shapes = [(T, I, C, False), (T, C, I, False), (T, C, C, False), (T, C, I, True), (T, args.rank, C, False)]
        for M, N, K, trans_b in shapes:
            row = await bench_matmul(ops, M, N, K, trans_b=trans_b)
            if args.compare_torch:
                from .bench_torch import bench_torch_matmul

                ref = bench_torch_matmul(M, N, K, tf32=False)
                row.update(torch_fp32_gflops=ref["gflops"], fraction_of_torch_fp32=row["gflops"] / ref["gflops"])
            print(json.dumps(row), flush=True)
        att = await bench_attention(ops, args.batch_size, args.seq_len, config.num_heads, config.num_kv_heads,
                                    config.head_dim, attention=args.attention)
        R = min(T, 1024)
        ce = await bench_cross_entropy(ops, R, config.vocab_size)
        if args.compare_torch:
            from .bench_torch import (
                bench_torch_attention,
                bench_torch_copy,
                bench_torch_cross_entropy,
            )

            ref = bench_torch_attention(args.batch_size, args.seq_len, config.num_heads, config.num_kv_heads,
                                        config.head_dim)
            att.update(torch_forward_ms=ref["forward_ms"], torch_backward_ms=ref["backward_ms"],
                       fraction_of_torch_sdpa=(ref["forward_ms"] + ref["backward_ms"])
                       / (att["forward_ms"] + att["backward_ms"]))
            ref = bench_torch_cross_entropy(R, config.vocab_size)
            peak = bench_torch_copy(1 << 30)["gbps"]
            ce.update(torch_gbps=ref["gbps"], copy_gbps=peak, fraction_of_copy_bandwidth=ce["gbps"] / peak)
        print(json.dumps(att), flush=True)
        print(json.dumps(ce), flush=True)
    if args.compare_torch and not args.kernels_only:
        from .bench_torch import bench_torch_training

        for precision in args.torch_precisions.split(","):
            ref = bench_torch_training(config_dict, args.batch_size, args.seq_len, args.steps, args.rank, precision)
            print(json.dumps(ref), flush=True)
            print(json.dumps({"compare": f"loralab / torch {precision}", "tokens_per_s_ratio": ours["tokens_per_s"] / ref["tokens_per_s"],
                              "peak_bytes_ratio": ours["peak_gpu_bytes"] / ref["peak_gpu_bytes"] if ref["peak_gpu_bytes"] else None}),
                  flush=True)
    return 0


async def cmd_recipe(args) -> int:
    """The plan as a folder that TRL's SFTTrainer + PEFT run on GPU servers (recipe.py)."""
    output_folder(args.out, "--out")
    s = await open_session(args.model, args.hub_endpoint)
    use_dataset(s, args, args.valid_fraction if not args.valid else 0.0)
    train, lora = config_from_args(TrainConfig, args), config_from_args(LoraConfig, args)
    if lora.rank_schedule == "auto":
        await start_gpu(s)
    files = await s.recipe_files(train, lora, args.weights, args.save_every)
    for path, data in files.items():
        target = os.path.join(args.out, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(data)
    notes = json.loads(files["loralab.json"])["notes"]
    for note in notes:
        print(f"loralab: recipe: {note}", file=sys.stderr)
    print(json.dumps({"event": "recipe", "out": args.out, "files": sorted(files), "notes": len(notes)}),
          file=sys.stderr)
    return 0


async def cmd_export(args) -> int:
    """An adapter as llama.cpp GGUF-LoRA, merged into the base model as a Hugging Face folder (or,
    with --quantize, as a GGUF file re-quantized) or ONNX, or as plain PEFT LoRA."""
    if args.to == "gguf" or args.to == "merged" and args.quantize:
        output_file(args.out, "--out")
    else:
        output_folder(args.out, "--out")
    s = await open_session(args.model, args.hub_endpoint)
    if args.quantize:
        if args.to != "merged":
            raise UsageError("--quantize goes with --to merged")
        s.gguf_base()
    import_adapter(s, args.adapter_dir)
    if args.to == "lora":
        from .formats.peft import save_adapter

        save_adapter(args.out, await s.peft_files(plain=True))
        print(json.dumps({"event": "exported", "to": "lora", "out": args.out}), file=sys.stderr)
        return 0
    if args.to == "gguf":
        data = await s.gguf_adapter()
        with open(args.out, "wb") as f:
            f.write(data)
        print(json.dumps({"event": "exported", "to": "gguf", "out": args.out, "bytes": len(data)}), file=sys.stderr)
        return 0
    await start_gpu(s)
    await s.upload(args.weights)
    if args.to == "onnx":
        return await export_onnx(s, args.out, args.onnx_dtype)
    if args.quantize:
        with open(args.out, "wb") as f:
            await s.write_merged_gguf(f.write, args.quantize)
        print(json.dumps({"event": "exported", "to": "merged", "quantize": args.quantize, "out": args.out,
                          "bytes": os.path.getsize(args.out)}), file=sys.stderr)
        return 0
    os.makedirs(args.out, exist_ok=True)
    for name, data in s.merged_folder_files().items():
        with open(os.path.join(args.out, name), "wb") as f:
            f.write(data)
    with open(os.path.join(args.out, "model.safetensors"), "wb") as f:
        await s.write_merged(f.write)
    print(json.dumps({"event": "exported", "to": "merged", "out": args.out}), file=sys.stderr)
    return 0


async def export_onnx(s, out: str, dtype: str) -> int:
    """The ONNX folder transformers.js loads: config, tokenizer, onnx/model.onnx (float32) and/or
    onnx/model_q4.onnx (MatMulNBits), each with an .onnx_data file when over 2 GB."""
    files = s.onnx_files(dtype)
    os.makedirs(os.path.join(out, "onnx"), exist_ok=True)
    for name, data in s.onnx_folder_files({path: bool(data) for path, _, data in files}).items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    for path, q4, data_path in files:
        with open(os.path.join(out, path), "wb") as f:
            if data_path:
                with open(os.path.join(out, data_path), "wb") as data:
                    await s.write_onnx(f.write, q4, data.write)
            else:
                await s.write_onnx(f.write, q4)
    print(json.dumps({"event": "exported", "to": "onnx", "out": out,
                      "files": [p for path, _, data in files for p in (path, data) if p]}), file=sys.stderr)
    return 0


FLAG_NAMES = {"r": "rank", "use_rslora": "rslora", "use_dora": "dora", "shuffle": "no-shuffle"}  # the flags' names, where not the field's


def add_config_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per field of TrainConfig or LoraConfig (config.option_fields), with the field's
    type, default, help and choices: `--batch-size`, `--lr-schedule`, …; a boolean that is on by
    default is turned off by `--no-…`, projections are a comma-separated list, and LoRA's alpha
    defaults to 2 × rank."""
    from dataclasses import MISSING

    for f in option_fields(cls):
        flag = "--" + FLAG_NAMES.get(f.name, f.name).replace("_", "-")
        help_text = f.metadata.get("help", "")
        kind = {"int": int, "float": float, "bool": bool, "str": str}.get(str(f.type), str)
        default = f.default if f.default is not MISSING else f.default_factory()
        if kind is bool:
            if default:
                parser.add_argument(flag, dest=f.name, action="store_false", help=f"do not {help_text}")
            else:
                parser.add_argument(flag, dest=f.name, action="store_true", help=help_text)
        elif f.name == "targets":
            parser.add_argument(flag, dest=f.name, default=",".join(default), help=help_text + " (comma-separated)")
        elif f.name == "alpha":
            parser.add_argument(flag, dest=f.name, type=float, default=None, help=help_text + " (default 2 × rank)")
        else:
            parser.add_argument(flag, dest=f.name, type=kind, default=default, choices=CHOICES.get(f.name),
                                metavar=None if f.name in CHOICES else flag[2:].upper().replace("-", "_"),
                                help=help_text)


def add_run_arguments(parser: argparse.ArgumentParser, formats: list[str]) -> None:
    """The flags of a training run (`train`, `recipe`): every TrainConfig and LoraConfig field and
    how the dataset is read."""
    add_config_arguments(parser, TrainConfig)
    add_config_arguments(parser, LoraConfig)
    parser.add_argument("--format", choices=formats, default="auto")
    parser.add_argument("--valid", help="a separate validation file")
    parser.add_argument("--packing", action="store_true", help="concatenate short examples up to --seq-len")
    parser.add_argument("--train-on-prompt", action="store_true", help="take the loss on every token, prompts included")
    parser.add_argument("--valid-fraction", type=float, default=0.0, help="hold out this fraction of the records")


def config_from_args(cls, args):
    """TrainConfig or LoraConfig from the flags add_config_arguments made."""
    values = {f.name: getattr(args, f.name) for f in option_fields(cls)}
    if cls is LoraConfig:
        values["targets"] = tuple(t.strip() for t in values["targets"].split(",") if t.strip())
        if values["alpha"] is None:
            values["alpha"] = 2.0 * values["r"]
    return cls(**values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loralab", description="LoRA fine-tuning on WebGPU (native driver).")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="describe the GPU adapter and run the kernel self-check; prints JSON")

    formats = ["auto", *DATASET_FORMATS]
    t = sub.add_parser("train", help="train a LoRA adapter; writes a PEFT adapter folder")
    t.add_argument("model", help="`default` (SmolLM2-135M-Instruct), a .gguf file, or a Hugging Face model folder")
    t.add_argument("data", help="dataset file: .jsonl, .json, .csv or .txt")
    t.add_argument("--out", required=True, help="folder for adapter_model.safetensors + adapter_config.json")
    t.add_argument("--adapter", help="start from this PEFT adapter (folder or .zip); its r/alpha/targets win")
    add_run_arguments(t, formats)
    t.add_argument("--metrics", help="write one JSON line per optimizer step to this file")
    t.add_argument("--checkpoint-dir", help="save the full training state here (every --save-every steps and at the end)")
    t.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (with --checkpoint-dir)")
    t.add_argument("--stop-after", type=int, default=None, help="stop cleanly after step K (checkpoint written)")
    t.add_argument("--resume", help="continue the run saved in this checkpoint folder, to --steps in total")

    r = sub.add_parser("recipe", help="the same job for GPU servers: TRL + PEFT + accelerate (DDP, FSDP, DeepSpeed), "
                                      "as a folder")
    r.add_argument("data", help="dataset file: .jsonl, .json, .csv or .txt")
    r.add_argument("--model", required=True, help="`default`, a .gguf file, a Hugging Face model folder or repo id")
    r.add_argument("--out", required=True, help="the recipe folder (train.py, loralab.json, data/, accelerate/, …)")
    add_run_arguments(r, formats)
    r.add_argument("--save-every", type=int, default=0, help="save a checkpoint every N steps on the server")

    e = sub.add_parser("eval", help="mean loss over every target token of a dataset; prints JSON")
    e.add_argument("model")
    e.add_argument("data")
    e.add_argument("--adapter")
    e.add_argument("--format", choices=formats, default="auto")
    e.add_argument("--seq-len", type=int, default=256)
    e.add_argument("--batch-size", type=int, default=4)
    e.add_argument("--precision", choices=PRECISIONS, default="f32",
                   help="the large matmuls' arithmetic (as train's --precision)")

    g = sub.add_parser("generate", help="continue a prompt, or answer a chat message")
    g.add_argument("model")
    g.add_argument("--adapter")
    prompt = g.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="text to continue as it is")
    prompt.add_argument("--chat", help="one user message, put through the model's chat template")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)

    b = sub.add_parser("bench", help="time the training step (random weights for named configs); prints JSON lines")
    from .bench import BENCH_WEIGHTS

    b.add_argument("--config", choices=list(NAMED_CONFIGS), default="tiny")
    b.add_argument("--model", help="a model folder instead of a named config")
    b.add_argument("--batch-size", type=int, default=8)
    b.add_argument("--seq-len", type=int, default=512)
    b.add_argument("--steps", type=int, default=10)
    b.add_argument("--rank", type=int, default=8)
    b.add_argument("--gradient-checkpointing", action="store_true")
    b.add_argument("--attention", choices=ATTENTION_VARIANTS, default="auto",
                   help="which attention kernels (auto: the fastest this GPU and head size allow)")
    b.add_argument("--kernels", action="store_true",
                   help="also time the matmuls, attention and the loss kernel at the model's shapes")
    b.add_argument("--kernels-only", action="store_true")
    b.add_argument("--profile", action="store_true", help="time each kernel's share of a step")
    b.add_argument("--precision", choices=PRECISIONS, default="f32",
                   help="the large matmuls' arithmetic: f32, or mixed (float16 products, float32 sums; shader-f16)")
    b.add_argument("--timeline", nargs="?", const="timeline.json", metavar="PATH",
                   help="a GPU timestamp around every dispatch of one step: the top kernels printed, a Chrome "
                        "trace (chrome://tracing, ui.perfetto.dev) written to PATH (default timeline.json)")
    b.add_argument("--compare-torch", action="store_true", help="run the same configuration in PyTorch + PEFT too")
    b.add_argument("--torch-precisions", default="fp32,bf16", help="comma-separated: fp32 (TF32 off), tf32, bf16, bf16-compile (torch.compile), "
                                                            "nf4 (bitsandbytes QLoRA)")
    x = sub.add_parser("export", help="an adapter as llama.cpp GGUF-LoRA, or merged into the base model (a folder, "
                                      "a re-quantized GGUF or ONNX)")
    x.add_argument("adapter_dir", help="a PEFT adapter folder or .zip")
    x.add_argument("--to", choices=["gguf", "merged", "onnx", "lora"], required=True,
                   help="gguf: a llama.cpp GGUF-LoRA file; merged: a Hugging Face folder with the adapter merged "
                        "in; onnx: a folder for transformers.js / onnxruntime (onnx/model.onnx, onnx/model_q4.onnx); "
                        "lora: a plain PEFT LoRA folder (an AdaLoRA adapter's ranks as its rank_pattern)")
    x.add_argument("--onnx-dtype", choices=list(ONNX_DTYPES), default="both",
                   help="with --to onnx: float32 (model.onnx), 4-bit MatMulNBits (model_q4.onnx) or both")
    x.add_argument("--model", required=True, help="the base model the adapter was trained on")
    x.add_argument("--out", required=True, help="the .gguf file, or the folder for the merged model")
    x.add_argument("--quantize", choices=MERGED_GGUF_TYPES,
                   help="with --to merged over a GGUF model: write a GGUF file (--out) whose merged matrices are "
                        "re-quantized to this type, every other tensor and the metadata as the base has them")

    for command in (t, e, g, b, x, r):
        command.add_argument("--hub-endpoint", help="where repo ids are fetched from (default: the public hub)")
    for command in (t, e, g, x, r):
        command.add_argument("--weights", choices=WEIGHT_DTYPES, default="auto",
                             help="the frozen weight matrices on the GPU: auto (a quantized GGUF stays quantized, "
                                  "float weights stay float32), f32, f16 (half the memory), q8 (Q8_0) or q4 "
                                  "(NF4, as QLoRA) for the linear projections")
    b.add_argument("--weights", choices=BENCH_WEIGHTS, default="f32",
                   help="the random weights' format: f32, f16, q8 (Q8_0), q4 (NF4), a GGUF block type, or Q4_K_M "
                        "(llama.cpp's mix: Q4_K, with Q6_K for the embeddings, v and down projections)")
    return parser


COMMANDS = {"info": cmd_info, "train": cmd_train, "eval": cmd_eval, "generate": cmd_generate, "bench": cmd_bench,
            "export": cmd_export, "recipe": cmd_recipe}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(COMMANDS[args.command](args))
    except UserError as exc:
        print(f"loralab: {one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the person gave: unreadable, a folder, a full disk
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"loralab: {where}{exc.strerror or one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
