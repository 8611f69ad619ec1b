"""The engine's one API. A `Session` holds a GPU (kernels compiled), one base model with its
tokenizer, the training and validation sets, an adapter (imported, or the last run's) and a
training run, and does what a person asks of them: plan, train (pause, resume, stop,
checkpoints), evaluate, generate and export.

The CLI (cli.py) and the app's engine worker (browser/worker.py) are thin adapters over it: they
find the files (paths, or URLs through the browser cache), choose the tokenizer implementation
and the storage for checkpoints, and pass those in. Everything the two share happens here once:
the validation split, the sequence length a run is built for, the chat prompt, the evaluation
set, the adapter files and their history.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

from .checks import build, integer, loads, number
from .config import LoraConfig, ModelConfig, TrainConfig
from .data.batches import Sequence, pack
from .data.formats import DatasetError, DatasetSummary, Tokenizer, load_dataset
from .data.tokenizer import TokenizerError
from .errors import UsageError, UserError
from .gpu.device import Buffer, Device, GpuError
from .kernels import KernelLibrary, SourceReader
from .lora import LoraState
from .model.weights import WeightSource, upload_weights
from .ops import Ops

HISTORY_KEPT = 1000  # per-step records an exported adapter carries in its metadata
EVAL_BATCH = 8  # sequences per evaluation batch unless the caller says otherwise

TokenizerFactory = Callable[[str, dict, "str | None"], Awaitable[Tokenizer]]


async def read_tokenizer_files(source: WeightSource) -> tuple[str | None, dict, str | None, dict | None]:
    """(tokenizer.json text or None, tokenizer_config, chat template or None, generation_config
    or None) of a model: from a GGUF file's metadata, or a folder's files."""
    gguf = getattr(source, "gguf", None)
    if gguf is not None:
        from .model.gguf_model import tokenizer_files

        return (*tokenizer_files(gguf), None)
    name = getattr(source, "path", None) or source.name  # (a folder on disk by its path)

    async def text(file: str) -> str | None:
        raw = await source.read_file(file)
        try:
            return None if raw is None else bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise TokenizerError(f"{name}/{file}: not valid UTF-8 text") from None

    tokenizer_json = await text("tokenizer.json")
    raw = await source.read_file("tokenizer_config.json")
    config = {} if raw is None else loads(raw, f"{name}/tokenizer_config.json", TokenizerError)
    if not isinstance(config, dict):
        raise TokenizerError(f"{name}/tokenizer_config.json: expected a JSON object")
    template = await text("chat_template.jinja")
    raw = await source.read_file("generation_config.json")
    generation = None if raw is None else loads(raw, f"{name}/generation_config.json", UsageError)
    return tokenizer_json, config, template, generation if isinstance(generation, dict) else None


ONNX_DTYPES = {"fp32": (False,), "q4": (True,), "both": (False, True)}  # the ONNX export's variants (q4 or not)


@dataclass
class Model:
    """A base model as the session holds it: the weight source, its configuration, tokenizer
    and tokenizer files, the name adapters give as their base, and (once uploaded) the weights."""

    name: str
    source: WeightSource
    tokenizer: Tokenizer | None
    tokenizer_files: tuple[str | None, dict, str | None]
    generation: dict | None
    reference: tuple[str, str | None]
    weights: dict[str, Buffer] | None = None
    dtype: str = "auto"  # how the weights went to the GPU (upload_weights)

    @property
    def config(self) -> ModelConfig:
        return self.source.config

    @property
    def config_dict(self) -> dict:
        return dict(getattr(self.source, "config_dict", {}))

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id if self.tokenizer is not None else 0

    def card(self) -> dict:
        from .model.weights import weight_types

        config, weights = self.config, self.weights or {}
        parameters = sum(b.numel or b.size // (2 if b.dtype == "f16" else 4) for b in weights.values())
        return {"name": self.name, "architecture": config.architecture, "parameters": parameters,
                "layers": config.num_layers, "hidden_size": config.hidden_size, "vocab_size": config.vocab_size,
                "heads": config.num_heads, "kv_heads": config.num_kv_heads,
                "weights_bytes": sum(b.size for b in weights.values()), "weight_types": weight_types(weights),
                "features": config.features(),
                "chat_template": getattr(self.tokenizer, "chat_template", None)}


@dataclass
class Dataset:
    """The training set and validation set a person gave, tokenized for the loaded model; `source`
    is what rebuilds it (a saved run keeps it)."""

    source: dict
    summary: DatasetSummary
    train: list[Sequence]
    valid: list[Sequence]

    def info(self) -> dict:
        return {**self.summary.as_dict(), "validation_records": len(self.valid)}

    def card(self) -> dict:
        """What an exported adapter's model card says about its data."""
        s = self.summary
        return {"name": self.source["name"], "records": s.records, "tokens": s.tokens, "format": s.format,
                "validation_records": len(self.valid)}


def validation_split(records: list[Sequence], fraction: float, name: str) -> tuple[list[Sequence], list[Sequence]]:
    """The last `fraction` of the records held out for validation: at least one record when the
    fraction is above 0, and never all of them."""
    if not 0.0 <= fraction < 1.0:
        raise UsageError(f"the validation fraction must be at least 0 and below 1 (got {fraction})")
    if fraction == 0.0:
        return records, []
    held = max(1, int(len(records) * fraction))
    if held >= len(records):
        raise DatasetError(f"{name}: too few records ({len(records)}) to hold some out for validation")
    return records[:-held], records[-held:]


def fit_seq_len(records: list[Sequence], limit: int) -> int:
    """A run is built for its longest record (right padding changes no loss), capped at `limit`."""
    return max(1, min(limit, max(len(r.input_ids) for r in records)))


def make_lora(ops: Ops, config: ModelConfig, lora_config: LoraConfig, state: dict | None = None,
              seed: int = 0, weights: dict[str, Buffer] | None = None) -> LoraState:
    """An adapter on the GPU: from `state` ({peft_key: (shape, f32 bytes)}) or PEFT's init with
    `seed` (DoRA's magnitudes from the model's `weights`)."""
    lora = LoraState(ops.device, config, lora_config)
    if state is not None:
        lora.load_state({key: data for key, (_, data) in state.items()})
    else:
        ops.device.submit(lora.init_dispatches(ops, seed))
        if lora_config.use_dora:
            lora.init_magnitudes(ops, weights)
    return lora


def checkpoint_configs(meta: dict, where: str, steps: int | None = None,
                       report_every: int | None = None) -> tuple[TrainConfig, LoraConfig]:
    """The training and LoRA configurations a checkpoint saved, read as untrusted JSON; `steps`
    (the total a resumed run goes to) and `report_every` replace the saved ones when given."""
    from .formats.checkpoint import CheckpointError

    train = dict(meta.get("train") or {})
    if steps:
        train["steps"] = steps
    if report_every:
        train["report_every"] = report_every
    try:
        return (build(TrainConfig, train, f"{where}: the saved training configuration", CheckpointError),
                build(LoraConfig, meta.get("lora"), f"{where}: the saved LoRA configuration", CheckpointError))
    except UsageError as exc:  # a value the configuration refuses
        raise CheckpointError(f"{where}: the saved configuration does not fit ({exc})") from None


class Run:
    """One training run: the network built for its batch shape, the trainer and the adapter it
    trains. `state` is "running", "paused", "stopped", "done" or "error"."""

    def __init__(self, trainer, network, lora: LoraState):
        from .train import TrainControl

        self.trainer, self.network, self.lora = trainer, network, lora
        self.control = TrainControl()
        self.state = "running"
        self.task: asyncio.Task | None = None  # when it trains in the background (run_in_background)

    @property
    def going(self) -> bool:
        return self.state in ("running", "paused")

    @property
    def step(self) -> int:
        return self.trainer.step

    @property
    def history(self) -> list[dict]:
        return self.trainer.history

    def pause(self) -> None:
        self._need_going()
        self.control.pause()
        self.state = "paused"

    def resume(self) -> None:
        self._need_going()
        self.control.resume()
        self.state = "running"

    def stop(self) -> None:
        self._need_going()
        self.control.stop()

    def _need_going(self) -> None:
        if not self.going:
            raise UsageError("no training run is going")

    def checkpoint_state(self) -> str:
        """What a checkpoint taken now records the run as."""
        if self.control.paused and not self.control.stopped:
            return "paused"
        return "stopped" if self.control.stopped or self.step < self.trainer.total_steps else "done"

    async def train(self, report: Callable[[dict], None] | None = None, stop_after: int | None = None,
                    save_every: int = 0, on_checkpoint: Callable[[object], Awaitable[None]] | None = None):
        """Train to the end (or `stop_after`, or until stopped). A loss that is not finite ends
        the run with the last good adapter in place: it is returned (NonFiniteLoss), not raised."""
        from .train import NonFiniteLoss

        failure = None
        try:
            await self.trainer.train(report, self.control, stop_after=stop_after, save_every=save_every,
                                     on_checkpoint=on_checkpoint)
        except NonFiniteLoss as exc:
            failure = exc
        except BaseException:
            self.state = "error"
            raise
        self.state = "error" if failure else (
            "stopped" if self.control.stopped or self.step < self.trainer.total_steps else "done")
        return failure

    def release(self) -> None:
        """Free the run's GPU memory: activations, trainer buffers and its adapter."""
        self.network.release()
        self.trainer.release()
        self.lora.release()


@dataclass
class Generation:
    text: str
    ids: list[int]
    prompt_tokens: int
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return len(self.ids) / self.seconds if self.seconds else 0.0


def check_sampling(max_new_tokens: int, temperature: float, top_p: float) -> None:
    """Generation's settings, refused by name before any GPU work."""
    integer(max_new_tokens, "max_new_tokens", UsageError, 1, 1 << 20)
    number(temperature, "temperature", UsageError, 0.0, 100.0)
    number(top_p, "top_p", UsageError, 0.0, 1.0, open_lo=True)


@dataclass
class Session:
    """See the module docstring. Methods that touch the GPU need `start` first; the others
    (opening files, datasets, adapters read from files) run without one, so a bad input is
    reported before any GPU work."""

    ops: Ops | None = None
    model: Model | None = None
    dataset: Dataset | None = None
    run: Run | None = None
    imported: tuple[LoraConfig, dict] | None = None  # an adapter read from files, on the CPU
    _imported_gpu: LoraState | None = None
    gflops: float | None = None  # the measured matmul rate the plan's time estimate uses
    gflops_mixed: float | None = None  # the same product in float16 arithmetic (shader-f16 only)
    auto: dict | None = None  # the last run's rank_schedule auto choice (plan.auto_plan), if it had one
    # Long operations report here: on_progress(what, fraction from 0 to 1) (the app's progress bar).
    on_progress: Callable[[str, float], None] | None = None

    # -- the GPU ---------------------------------------------------------------------------------
    async def start(self, device: Device, read_source: SourceReader) -> None:
        """Every kernel compiled for `device`. A new device replaces a lost one: what lived on
        the old one (weights, adapters, the run) is forgotten, and the model's weights go up again
        from its source at the next use."""
        if self.ops is not None:
            self.run, self._imported_gpu = None, None
            if self.model is not None:
                self.model.weights = None
        self.ops = await Ops.load(device, KernelLibrary(device, read_source), self.on_progress)

    @property
    def device(self) -> Device:
        if self.ops is None:
            raise GpuError("the engine has no GPU device yet")
        return self.ops.device

    # -- the model ---------------------------------------------------------------------------------
    async def open_model(self, source: WeightSource, reference: tuple[str, str | None],
                         make_tokenizer: TokenizerFactory, need_tokenizer: bool = False) -> Model:
        """Read a model's tokenizer files and make it the session's model (its weights are not on
        the GPU yet: `upload`). The previous model, its adapter and run are freed only once the
        new one has been read, so a bad file leaves the session as it was."""
        self.need_idle("loading another model")
        tokenizer_json, tok_config, template, generation = await read_tokenizer_files(source)
        if tokenizer_json is None:
            if need_tokenizer:
                raise TokenizerError(f"{source.name}: tokenizer.json is missing; LoRA Lab needs the model's tokenizer")
            tokenizer = None
        else:
            tokenizer = await make_tokenizer(tokenizer_json, tok_config, template)
        self.close_model()
        self.model = Model(source.name, source, tokenizer, (tokenizer_json, tok_config, template), generation,
                           reference)
        return self.model

    async def upload(self, dtype: str | None = None) -> Model:
        """The model's weights to the GPU (kernels specialised for its head size), as `dtype`
        (model.weights.WEIGHT_DTYPES; "auto": weights_for), or as they were last (after a lost
        device). Weights already there stay as they are."""
        model = self.need_model()
        dtype = self.weights_for(dtype or model.dtype)
        if model.weights is None:
            device = self.device  # (GpuError before any GPU work when there is none)
            await self.ops.specialize_head_dim(model.config.head_dim)
            progress = None
            if self.on_progress is not None:
                def progress(done: int, total: int) -> None:
                    self.on_progress("Reading the weights onto the GPU", done / max(1, total))
            model.weights = await upload_weights(device, model.config, model.source, self.ops, dtype, progress)
            model.dtype = dtype
        return model

    async def set_weights(self, dtype: str) -> Model:
        """The model's weights again, as `dtype` (model.weights.WEIGHT_DTYPES), from the source the
        session still holds; the run and the adapters' GPU copies go with the old weights (an
        imported adapter stays, and the next run starts from it)."""
        from .model.weights import WEIGHT_DTYPES

        if dtype not in WEIGHT_DTYPES:
            raise UsageError(f"weights {dtype!r}: choose one of {', '.join(WEIGHT_DTYPES)}")
        model = self.need_model()
        self.need_idle("changing the weights")
        dtype = self.weights_for(dtype)
        if model.weights is not None and model.dtype == dtype:
            return model
        self.free_run()
        if self._imported_gpu is not None:
            self._imported_gpu.release()
            self._imported_gpu = None
        self._free_weights(model)
        return await self.upload(dtype)

    def _free_weights(self, model: Model) -> None:
        """Destroy the weights' buffers (the views of a fused q/k/v buffer each account for their
        part of it; destroying a buffer twice is allowed)."""
        weights, model.weights = model.weights, None
        for buffer in (weights or {}).values():
            self.device.destroy_buffer(buffer)

    def weights_for(self, dtype: str) -> str:
        """`dtype` with "auto" made concrete for this model and GPU: a GGUF's block-quantized
        matrices stay as they are ("auto"), and so do float weights while they take at most
        plan.AUTO_WEIGHTS_SHARE of the GPU's budget; past it, the first of f16, q8 and q4 that
        does (q4 when none does)."""
        from .model.weights import weight_bytes
        from .plan import AUTO_WEIGHTS_SHARE, memory_budget

        if dtype != "auto":
            return dtype
        model = self.need_model()
        room = AUTO_WEIGHTS_SHARE * memory_budget(self.device.info)
        for choice in ("auto", "f16", "q8"):
            if weight_bytes(model.config, model.source, choice) <= room:
                return choice
        return "q4"

    def precisions(self) -> dict[str, int]:
        """{weights choice: GPU bytes of the weights} for this model (the plan shows them)."""
        from .model.weights import WEIGHT_DTYPES, weight_bytes

        model = self.need_model()
        return {dtype: weight_bytes(model.config, model.source, dtype) for dtype in WEIGHT_DTYPES}

    def close_model(self) -> None:
        """Free the model, its adapter and run (GPU memory included); datasets go too, as they
        were tokenized for it."""
        self.free_run()
        self.drop_imported()
        model, self.model, self.dataset = self.model, None, None
        if model is not None and model.weights:
            self._free_weights(model)

    def need_model(self) -> Model:
        if self.model is None:
            raise UsageError("load a model first")
        return self.model

    def need_tokenizer(self, what: str) -> Tokenizer:
        model = self.need_model()
        if model.tokenizer is None:
            raise TokenizerError(f"{model.name}: tokenizer.json is missing; {what} needs the model's tokenizer")
        return model.tokenizer

    # -- datasets ------------------------------------------------------------------------------------
    def use_dataset(self, name: str, text: str, fmt: str = "auto", seq_len: int = 256, valid_fraction: float = 0.0,
                    train_on_prompt: bool = False, valid: tuple[str, str] | None = None,
                    packing: bool = False) -> Dataset:
        """Tokenize a dataset for the model and make it the training set, holding out
        `valid_fraction` of it for validation, or using the separate `valid` (name, text)."""
        integer(seq_len, "seq_len", UsageError, 2, 1 << 20)  # (one token has nothing after it to predict)
        model = self.need_model()
        source = {"name": name, "text": text, "format": fmt, "seq_len": seq_len, "valid_fraction": valid_fraction,
                  "train_on_prompt": train_on_prompt, "packing": packing}
        if valid is not None:
            source.update(valid_name=valid[0], valid_text=valid[1])
        progress = self.on_progress
        records, summary = load_dataset(name, text, fmt, model.tokenizer, seq_len, model.config.vocab_size,
                                        train_on_prompt, (lambda f: progress(f"Tokenizing {name}", f)) if progress else None)
        if progress is not None:
            progress(f"Tokenizing {name}", 1.0)
        if valid is not None:
            held, _ = load_dataset(valid[0], valid[1], fmt, model.tokenizer, seq_len, model.config.vocab_size,
                                   train_on_prompt)
            train = records
        else:
            train, held = validation_split(records, valid_fraction, name)
        if packing:
            train = pack(train, seq_len)
        self.dataset = Dataset(source, summary, train, held)
        return self.dataset

    def need_dataset(self) -> Dataset:
        if self.dataset is None or not self.dataset.train:
            raise DatasetError("add a dataset first")
        return self.dataset

    # -- adapters ----------------------------------------------------------------------------------
    def import_adapter(self, files: dict[str, bytes], where: str) -> LoraConfig:
        """A PEFT adapter (adapter_config.json + adapter_model.safetensors) checked against the
        model: it answers in generation and evaluation, and the next run starts from it."""
        from .formats.peft import check_fits, parse_adapter

        model = self.need_model()
        lora_config, state, raw = parse_adapter(files, where)
        check_fits(lora_config, state, model.config, where, raw)
        self.free_run()
        self.drop_imported()
        self.imported = (lora_config, state)
        return lora_config

    def drop_imported(self) -> None:
        self.imported = None
        if self._imported_gpu is not None:
            self._imported_gpu.release()
            self._imported_gpu = None

    def adapter(self) -> LoraState | None:
        """The adapter generation and evaluation use: the last run's, else the imported one."""
        if self.run is not None:
            return self.run.lora
        if self.imported is not None and self._imported_gpu is None:
            self._imported_gpu = make_lora(self.ops, self.need_model().config, *self.imported)
        return self._imported_gpu

    async def adapter_state(self) -> tuple[LoraConfig, dict, list[dict]]:
        """(config, {peft key: (shape, f32 bytes)}, history) of the current adapter."""
        if self.run is not None:
            return (*await self.run.lora.read_pruned(), self.run.history)
        if self.imported is not None:
            return (*self.imported, [])
        raise UsageError("train or import an adapter first")

    # -- the plan ----------------------------------------------------------------------------------------
    async def plan(self, train: TrainConfig, lora: LoraConfig, budget: int | None = None) -> dict:
        """GPU memory and time for a run against this GPU (its matmul rate is measured once), and
        whether it fits in `budget` bytes (default: plan.memory_budget), with a concrete fix when
        it does not."""
        from dataclasses import replace

        from .plan import estimate_memory, estimate_step_seconds, memory_budget

        budget = budget if budget is not None else memory_budget(self.device.info)
        auto = None
        if lora.rank_schedule == "auto" and self.dataset is not None and self.dataset.train:
            auto = await self.auto_plan(train, lora, budget)
            train, lora = auto["train"], auto["lora"]
        model = await self.upload()
        if self.dataset is not None and self.dataset.train:  # the shape start_run builds
            train = replace(train, seq_len=fit_seq_len(self.dataset.train + self.dataset.valid, train.seq_len))
        if self.gflops is None:
            await self.measure_arithmetic()
        records = self.dataset.train if self.dataset and self.dataset.train else None
        memory = estimate_memory(self.ops, model.config, model.weights, train, lora, records)
        fits = memory["total"] <= budget
        advice = None
        if not fits:
            advice = ("turn on gradient checkpointing" if not train.gradient_checkpointing else
                      f"lower the batch size to {max(1, train.batch_size // 2)} or the sequence length to "
                      f"{max(32, train.seq_len // 2)}")
        steps = train.total_steps(len(self.dataset.train)) if self.dataset and self.dataset.train else train.steps
        rate = self.gflops_mixed if train.precision == "mixed" and self.gflops_mixed else self.gflops
        step_s = estimate_step_seconds(model.config, train, lora, rate)
        precisions = self.precisions()
        if not fits:  # a smaller precision that would fit comes first
            rest = memory["total"] - memory["weights"]
            smaller = [d for d in ("q4", "q8", "f16") if precisions[d] < memory["weights"] and rest + precisions[d] <= budget]
            if smaller:
                advice = f"keep the weights as {smaller[-1]} ({precisions[smaller[-1]] / 2**20:,.0f} MiB)"
        return {"memory": memory, "budget": budget, "fits": fits, "advice": advice, "gflops": rate,
                "step_seconds": step_s, "steps": steps, "total_seconds": step_s * steps,
                "rank_schedule": rank_schedule_words(lora, steps) if auto is None else "auto: " + "; ".join(
                    f"{part.replace('_', ' ')} {why}" for part, why in auto["reasons"].items()),
                "auto": None if auto is None else {"train": asdict(auto["train"]), "lora": asdict(auto["lora"]),
                                                   "weights": auto["weights"], "reasons": auto["reasons"]},
                "weights": {"current": model.dtype, "choices": precisions},
                "precision": {"f32_gflops": self.gflops, "mixed_gflops": self.gflops_mixed,
                              "faster": self.faster_precision()}}

    async def auto_plan(self, train: TrainConfig, lora: LoraConfig, budget: int | None = None) -> dict:
        """rank_schedule auto: the run chosen for this GPU, the dataset and train.time_budget
        (plan.auto_plan: the configs, the weights' precision and a reason for each choice)."""
        from .plan import auto_plan, memory_budget

        dataset = self.need_dataset()
        model = await self.upload()
        if self.gflops is None:
            await self.measure_arithmetic()
        rate = self.gflops_mixed if train.precision == "mixed" and self.gflops_mixed else self.gflops
        return auto_plan(self.ops, model.config, model.weights, dataset.train, train, lora,
                         budget if budget is not None else memory_budget(self.device.info), rate, self.precisions(),
                         model.dtype)

    async def measure_arithmetic(self) -> None:
        """The tiled matmul's rate on this GPU, in float32 and (with shader-f16) in float16
        arithmetic: the plan's time estimate, and which precision it suggests."""
        from .bench import bench_matmul

        if "shader-f16" not in self.device.info.features:
            self.gflops = (await bench_matmul(self.ops, 256, 256, 256, repeats=4))["gflops"]
            return
        await self.ops.prepare(mixed=True)
        self.gflops = (await bench_matmul(self.ops, 512, 512, 512, repeats=3))["gflops"]
        self.gflops_mixed = (await bench_matmul(self.ops.with_precision("mixed"), 512, 512, 512, repeats=3))["gflops"]

    def faster_precision(self) -> str:
        """"mixed" where float16 arithmetic measured at least 5% faster than float32, else "f32"
        (on an H200 it measured 4% slower: the kernels are not bound by the multiplies there)."""
        if self.gflops_mixed and self.gflops and self.gflops_mixed >= 1.05 * self.gflops:
            return "mixed"
        return "f32"

    # -- training ------------------------------------------------------------------------------------------
    async def start_run(self, train: TrainConfig, lora: LoraConfig | None = None,
                        restore: tuple[dict, dict[str, bytes]] | None = None, weights_dtype: str | None = None) -> Run:
        """A run over the session's dataset, ready to `train`: from a checkpoint's state
        (`restore`), else from the imported adapter (its r/alpha/targets win), else a new adapter
        with `lora` (PEFT's init). Its shape is the longest record, capped at `train.seq_len`."""
        from dataclasses import replace

        from .model.transformer import Transformer
        from .train import Trainer

        if self.run is not None and self.run.going:
            raise UsageError("a training run is already going; stop it first")
        dataset = self.need_dataset()
        self.auto = None
        if lora is not None and lora.rank_schedule == "auto" and restore is None and self.imported is None:
            self.free_run()
            self.auto = await self.auto_plan(train, lora)  # the run as chosen (the weights too)
            train, lora = self.auto["train"], self.auto["lora"]
            weights_dtype = self.auto["weights"]
        model = await self.upload(weights_dtype)
        self.free_run()
        train = replace(train, seq_len=fit_seq_len(dataset.train + dataset.valid, train.seq_len))
        if restore is None and self.imported is not None:
            adapter = make_lora(self.ops, model.config, *self.imported, train.seed)
        else:
            adapter = make_lora(self.ops, model.config, lora or LoraConfig(), None, train.seed, model.weights)
        try:
            if train.precision == "mixed":
                await self.ops.prepare(mixed=True)
            network = Transformer(self.device, self.ops, model.config, model.weights, adapter, train.batch_size,
                                  train.seq_len, train.gradient_checkpointing, train.precision)
            trainer = Trainer(self.device, self.ops, network, adapter, train, dataset.train, dataset.valid,
                              model.pad_id)
        except BaseException:
            adapter.release()
            raise
        if restore is not None:
            trainer.restore(*restore)
        self.drop_imported()
        self.run = Run(trainer, network, adapter)
        return self.run

    def free_run(self) -> None:
        run, self.run = self.run, None
        if run is not None:
            run.release()

    def need_idle(self, what: str) -> None:
        if self.run is not None and self.run.going:
            raise UsageError(f"{what} waits until training is stopped or done")

    # -- evaluation ------------------------------------------------------------------------------------------
    async def evaluate(self, lora: LoraState | None, batch_size: int = EVAL_BATCH, precision: str = "f32") -> dict:
        """Mean loss per target token of the model with `lora` (None: the base model alone) over
        the validation set, or the training set when nothing is held out: {"loss", "tokens",
        "records", "set"}. `precision`: the large matmuls' arithmetic (config.PRECISIONS)."""
        from .model.transformer import Transformer
        from .train import evaluate, step_bytes

        integer(batch_size, "batch_size", UsageError, 1, 1 << 16)
        self.need_idle("evaluation")
        dataset = self.need_dataset()
        model = await self.upload()
        records, which = (dataset.valid, "validation") if dataset.valid else (dataset.train, "training")
        batch = max(1, min(batch_size, len(records)))
        step_buf = self.device.create_buffer(step_bytes(self.ops), label="eval.step")
        history = self.device.create_buffer(4, label="eval.loss")
        network = None
        try:
            if precision == "mixed":
                await self.ops.prepare(mixed=True)
            network = Transformer(self.device, self.ops, model.config, model.weights, lora, batch,
                                  fit_seq_len(records, dataset.source["seq_len"]), precision=precision)
            result = await evaluate(self.device, network, records, history, step_buf, model.pad_id)
        finally:
            if network is not None:
                network.release()
            self.device.destroy_buffer(step_buf)
            self.device.destroy_buffer(history)
        return {**result, "records": len(records), "set": which}

    # -- generation ----------------------------------------------------------------------------------------
    def prompt_ids(self, text: str | list[dict], chat: bool | None = None) -> list[int]:
        """Token ids of a prompt (see prompt_tokens)."""
        return prompt_tokens(self.need_tokenizer("generation"), text, chat, self.need_model().name)

    async def next_logits(self, prompt: str | list[dict], lora: LoraState | None) -> list[float]:
        """Our engine's logits after the prompt (as generate reads it), with `lora` or without."""
        from .generate import Generator

        ids = self.prompt_ids(prompt)
        model = await self.upload()
        gen = Generator(self.device, self.ops, model.config, model.weights, lora, len(ids) + 1)
        try:
            return await gen.step(ids, 0)
        finally:
            gen.release()

    async def generate(self, prompt: str | list[dict], lora: LoraState | None, max_new_tokens: int = 64,
                       chat: bool | None = None,
                       temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                       on_text: Callable[[str], None] | None = None, weights_dtype: str | None = None,
                       stop: Callable[[], bool] | None = None) -> Generation:
        """The model's continuation of `prompt` (see prompt_ids) with `lora` (None: the base
        model); `on_text` gets the answer so far after every token; the answer ends early once
        `stop()` is true."""
        from .generate import Generator

        check_sampling(max_new_tokens, temperature, top_p)
        tok = self.need_tokenizer("generation")
        ids = self.prompt_ids(prompt, chat)
        model = await self.upload(weights_dtype)
        out: list[int] = []

        def on_token(token: int) -> bool:
            out.append(token)
            if on_text is not None:
                on_text(tok.decode(out))
            return stop is not None and stop()

        gen = Generator(self.device, self.ops, model.config, model.weights, lora,
                        min(model.config.max_position_embeddings, len(ids) + max_new_tokens))
        started = time.perf_counter()
        try:
            await gen.generate(ids, max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                               stop_ids={tok.eos_id} if tok.eos_id is not None else set(), on_token=on_token)
        finally:
            gen.release()
        return Generation(tok.decode(out), out, len(ids), time.perf_counter() - started)

    # -- exports -----------------------------------------------------------------------------------------------
    async def peft_files(self, plain: bool = False) -> dict[str, bytes]:
        """The adapter as a PEFT folder: adapter_model.safetensors (with the run's history in its
        metadata), adapter_config.json naming the base model, and a README.md model card. An
        AdaLoRA adapter is PEFT's AdaLoRA, or with `plain` LoRA with its ranks as rank_pattern."""
        from .formats.peft import adalora_as_lora, adapter_files, model_card

        model = self.need_model()
        lora_config, state, history = await self.adapter_state()
        if plain and lora_config.adaptive:
            lora_config, state = adalora_as_lora(lora_config, state)
        base_model, revision = model.reference
        files = adapter_files(state, lora_config, base_model,
                              {"loralab_history": json.dumps(history[-HISTORY_KEPT:])}, revision)
        training = asdict(self.run.trainer.config) if self.run is not None else None
        files["README.md"] = model_card(model.name, lora_config, history,
                                        self.dataset.card() if self.dataset else None, training).encode()
        return files

    async def recipe_files(self, train: TrainConfig, lora: LoraConfig | None = None, weights: str = "auto",
                           save_every: int = 0) -> dict[str, bytes]:
        """The server recipe for this plan over the session's dataset (recipe.recipe_files): a plan
        with rank_schedule auto is resolved for this GPU first; without `lora`, the imported
        adapter's configuration."""
        from .recipe import PROBE_TEXT, recipe_files

        model, dataset = self.need_model(), self.need_dataset()
        if lora is None:
            lora = self.imported[0] if self.imported is not None else LoraConfig()
        if lora.rank_schedule == "auto":
            chosen = await self.auto_plan(train, lora)
            train, lora, weights = chosen["train"], chosen["lora"], chosen["weights"]
        if weights == "auto":  # (the weights as this session holds them, by the choice that made them)
            weights = {"nf4": "q4", "q8_0": "q8"}.get(getattr(model, "dtype", None) or "", "auto")
        model_id, revision = model.reference
        probe = model.tokenizer.encode(PROBE_TEXT, add_special_tokens=False) if model.tokenizer else []
        return recipe_files(model_id, revision, hasattr(model.source, "gguf"), train, lora, dataset.source,
                            dataset.train, dataset.valid, probe, weights, save_every)

    async def gguf_adapter(self) -> bytes:
        """The adapter as a llama.cpp GGUF-LoRA file."""
        from .formats.peft import adalora_as_lora
        from .model.gguf_model import gguf_lora

        model = self.need_model()
        lora_config, state, _ = await self.adapter_state()
        if lora_config.adaptive:  # (llama.cpp's LoRA is B · A: AdaLoRA's as plain LoRA)
            lora_config, state = adalora_as_lora(lora_config, state)
        return gguf_lora(state, lora_config, model.config, model.name)

    async def rank_map(self) -> dict[str, int] | None:
        """An adaptive run's ranks left per module {module name: rank} (None for other runs)."""
        from .config import module_name

        lora = self.adapter()
        if lora is None or not lora.adaptive:
            return None
        if self.run is None:  # an imported AdaLoRA adapter: its stored ranks
            return {module_name(l, m): lora.config.stored_rank(l, m) for l, m in lora.modules}
        return {module_name(l, m): k for (l, m), k in (await lora.ranks()).items()}

    def merged_folder_files(self) -> dict[str, bytes]:
        """The merged model folder's small files (config, generation config, tokenizer)."""
        from .merge import folder_files, merged_dtype

        model = self.need_model()
        return folder_files(model.config_dict, *model.tokenizer_files, model.generation,
                            merged_dtype(model.weights or {}))

    def merged_size(self) -> int:
        """Bytes of the merged model.safetensors."""
        from .merge import merged_bytes, merged_dtype, safetensors_header

        model = self.need_model()
        dtype = merged_dtype(model.weights or {})
        return len(safetensors_header(model.config, dtype)) + merged_bytes(model.config, dtype)

    async def write_merged(self, write: Callable[[bytes], object]) -> None:
        """model.safetensors of the base model with the adapter merged in, tensor by tensor."""
        from .merge import write_merged

        model = await self.upload()
        lora = self.adapter()
        if lora is None:
            raise UsageError("train or import an adapter first")
        write = self._counted(write, self.merged_size(), "Merging the adapter into the model")
        await write_merged(write, self.device, self.ops, model.config, model.weights, lora)

    def _counted(self, write: Callable[[bytes], object], total: int, what: str) -> Callable[[bytes], object]:
        """`write` reporting on_progress(what, bytes written / total) as an export streams out."""
        if self.on_progress is None or total <= 0:
            return write
        done, report = [0], self.on_progress

        def counted(data: bytes) -> object:
            done[0] += len(data)
            report(what, min(1.0, done[0] / total))
            return write(data)

        return counted

    def onnx_files(self, dtype: str = "both") -> list[tuple[str, bool, str | None]]:
        """The ONNX folder's models for `dtype` (fp32, q4 or both): (path, q4, the path of its
        external data file when it is over protobuf's 2 GB, else None)."""
        from .onnx_export import MODEL_FILE, Q4_FILE, external_file, needs_external

        model = self.need_model()
        if dtype not in ONNX_DTYPES:
            raise UsageError(f"the ONNX export's dtype is one of {', '.join(ONNX_DTYPES)}, not {dtype!r}")
        out = []
        for q4 in ONNX_DTYPES[dtype]:
            path = Q4_FILE if q4 else MODEL_FILE
            big = needs_external(model.config, model.config_dict, q4)
            out.append((path, q4, f"onnx/{external_file(path)}" if big else None))
        return out

    def onnx_bytes(self, dtype: str = "both") -> int:
        """About how many bytes the ONNX export's models take."""
        from .onnx_export import onnx_size

        model = self.need_model()
        return sum(onnx_size(model.config, model.config_dict, q4) for q4 in ONNX_DTYPES[dtype])

    def onnx_folder_files(self, external: dict[str, bool]) -> dict[str, bytes]:
        """The ONNX folder's small files: config.json (saying which ONNX files keep external
        data, `external`: path → bool, see onnx_files), generation_config.json and the tokenizer's."""
        from .merge import folder_files
        from .onnx_export import folder_config

        model = self.need_model()
        files = folder_files(model.config_dict, *model.tokenizer_files, model.generation, "F32")
        files["config.json"] = folder_config(files["config.json"], external)
        return files

    async def write_onnx(self, write: Callable[[bytes], object], q4: bool = False,
                         external: Callable[[bytes], object] | None = None) -> None:
        """The ONNX decoder (onnx/model.onnx, or onnx/model_q4.onnx with q4) with the adapter, if
        any, merged in; with `external`, its weights are written there (the .onnx_data file)."""
        from .onnx_export import onnx_size, write_onnx

        model = await self.upload()
        what = "Writing the ONNX model" + (" (4-bit)" if q4 else "")
        total = onnx_size(model.config, model.config_dict, q4)  # (the weights are nearly all of it)
        if external is not None:
            external = self._counted(external, total, what)
        else:
            write = self._counted(write, total, what)
        await write_onnx(write, self.device, self.ops, model.config, model.config_dict, model.weights, self.adapter(),
                         q4, external)
        if self.on_progress is not None:
            self.on_progress(what, 1.0)

    def gguf_base(self, what: str = "a re-quantized merged model"):
        """The model's GGUF source, for exports written over it (else a UsageError naming `what`)."""
        from .model.gguf_model import GGUFModel

        model = self.need_model()
        if not isinstance(model.source, GGUFModel):
            raise UsageError(f"{model.name}: {what} is written over a GGUF base model; this one is a Hugging Face "
                             f"folder: export the merged model as a folder (float weights) and convert it with "
                             f"llama.cpp's convert_hf_to_gguf.py")
        return model.source

    def merged_gguf_size(self, quant: str) -> int:
        """Bytes of the re-quantized merged GGUF file."""
        from .merge import merged_gguf_size

        lora = self.adapter()
        if lora is None:
            raise UsageError("train or import an adapter first")
        return merged_gguf_size(self.gguf_base(), lora, quant)

    async def write_merged_gguf(self, write: Callable[[bytes], object], quant: str) -> None:
        """The base GGUF file with the adapter merged in, each changed matrix re-quantized as
        `quant` (merge.MERGED_GGUF_TYPES) and everything else copied as it is."""
        from .merge import write_merged_gguf

        source = self.gguf_base()
        model = await self.upload()
        lora = self.adapter()
        if lora is None:
            raise UsageError("train or import an adapter first")
        write = self._counted(write, self.merged_gguf_size(quant), f"Merging the adapter into the model ({quant})")
        await write_merged_gguf(write, self.device, self.ops, source, model.weights, lora, quant)


def rank_schedule_words(lora: LoraConfig, steps: int) -> str:
    """What the rank schedule will do in a run of `steps` optimizer steps, in words (the plan)."""
    if lora.rank_schedule == "fixed":
        return f"rank {lora.r} throughout" + (" (per-module ranks from rank_pattern)" if lora.rank_pattern else "")
    if lora.rank_schedule == "auto":
        return "auto: the rank and the rest of the run are chosen once a dataset is in use"
    if lora.adaptive:
        if lora.rank_pattern:
            return (f"adaptive (AdaLoRA), continuing at the ranks its adapter was pruned to (no more pruning; "
                    f"the orthogonality regulariser at weight {lora.orth_reg_weight:g})")
        total = lora.total_step or steps
        return (f"adaptive (AdaLoRA): every module starts at rank {lora.r} in SVD form; after step {lora.tinit} the "
                f"budget falls along a cubic to an average of {lora.target_r} per module by step "
                f"{total - lora.tfinal}, every {lora.delta_t} step(s) pruning the singular values whose smoothed "
                f"importance |weight × gradient| is lowest, so modules end with different ranks; the last "
                f"{lora.tfinal} steps train at the final ranks; orthogonality regulariser weight "
                f"{lora.orth_reg_weight:g}. Memory and time are rank {lora.r}'s throughout")
    parts = [f"rank {rank} from step {at + 1}" for at, rank in lora.rank_switches if at < steps]
    late = [f"{rank}@{at}" for at, rank in lora.rank_switches if at >= steps]
    words = "progressive: " + ", ".join(parts) + ("" if not late else f" (never reached in {steps} steps: "
                                                 f"{', '.join(late)})")
    return words + (f"; memory and time are rank {lora.r}'s throughout: the rows not yet in use are zeros that "
                    f"the optimizer leaves alone")


async def gguf_as_onnx(source) -> tuple[bytes, str]:
    """A GGUF model (model.gguf_model.GGUFModel) as a small ONNX decoder that reads the file's own
    bytes in place (onnx_export.GGUFView), for ONNX Runtime without a GPU: (the model, the name the
    GGUF file must have as its external data)."""
    from .formats import onnx
    from .onnx_export import GGUF_LOCATION, gguf_graph

    chunks: list[bytes] = []
    await onnx.write_model(chunks.append, gguf_graph(source))
    return b"".join(chunks), GGUF_LOCATION


def prompt_tokens(tok: Tokenizer, text: str | list[dict], chat: bool | None, name: str) -> list[int]:
    """Token ids of a prompt: one user message through the chat template (`chat` True: the model
    `name` must have one; None: when it has one), or the text as it is (`chat` False). A list of
    messages ({"role", "content"}: a system prompt, earlier turns, the question) is a conversation,
    always through the template."""
    template = getattr(tok, "chat_template", None)
    if not isinstance(text, str):
        if not template:
            raise TokenizerError(f"{name}: the model has no chat template, so it takes no system prompt or "
                                 "conversation; ask one plain question at a time")
        rendered = tok.apply_chat_template(text, add_generation_prompt=True)
        return tok.encode(rendered, add_special_tokens=False)
    if chat and not template:
        raise TokenizerError(f"{name}: the model has no chat template; give a plain prompt")
    if chat or (chat is None and template):
        text = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
        return tok.encode(text, add_special_tokens=False)
    return tok.encode(text)


def conversation(question: str, system: str = "", turns: list[tuple[str, str | None]] = ()) -> str | list[dict]:
    """The messages for a question after earlier (question, answer) turns, under a system prompt;
    the plain question when there is neither. A turn without an answer is left out."""
    if not system and not turns:
        return question
    messages = [{"role": "system", "content": system}] if system else []
    for asked, answered in turns:
        if answered is not None:
            messages += [{"role": "user", "content": asked}, {"role": "assistant", "content": answered}]
    return messages + [{"role": "user", "content": question}]


def run_in_background(run: Run, report: Callable[[dict], None], **train_args) -> asyncio.Task:
    """`run.train` as a task that reports its end ({"kind": "state", ...}) instead of raising:
    the app's runs go on while the page stays responsive."""
    from .errors import one_line

    async def go() -> None:
        try:
            failure = await run.train(report, **train_args)
            if failure is not None:
                report({"kind": "state", "state": "error", "error": one_line(failure), "step": run.step,
                        "device_lost": False})
                return
            end = {"kind": "state", "state": run.state, "step": run.step}
            if run.lora.adaptive:  # AdaLoRA: the ranks its pruning left, for the page's map
                from .config import module_name

                end["rank_map"] = {module_name(l, m): k for (l, m), k in (await run.lora.ranks()).items()}
            report(end)
        except Exception as exc:
            lost = run.trainer.device.lost_reason is not None
            message = one_line(exc) if isinstance(exc, UserError) else f"internal error: {one_line(exc)}"
            report({"kind": "state", "state": "error", "error": message, "step": run.step, "device_lost": lost})

    return asyncio.ensure_future(go())
