"""Training: the configuration, the learning-rate schedule, the step and the loop.

A step is recorded into one command list per micro-batch (the last one also holds the gradient
norm, clipping and the optimizer update) and submitted with no readback. Per-step scalars (the
learning rate, bias corrections, the mean-loss scale, the history slot) go through one small
`step` buffer written before the submit, so the recorded dispatches never change. Losses and
gradient norms land in history buffers on the GPU and are read back every `report_every`
steps; the callback then gets one plain dict per optimizer step.
"""

from __future__ import annotations

import math
import struct
import time
from typing import Callable

from .config import TrainConfig
from .data.batches import BatchOrder, Sequence, make_batch
from .errors import UsageError, UserError
from .gpu.device import Copy, Device, Recording, Timestamp
from .lora import LoraState, adalora_control
from .model.transformer import Transformer
from .ops import Ops


def lr_at(config: TrainConfig, step: int, total: int) -> float:
    """Learning rate of 0-based optimizer step `step` (transformers' get_scheduler: the first
    step of a warmup runs at 0; `constant` with warmup is constant_with_warmup)."""
    w = config.warmup_steps
    if step < w:
        return config.lr * step / max(1, w)
    if config.lr_schedule == "constant":
        return config.lr
    progress = (step - w) / max(1, total - w)
    if config.lr_schedule == "linear":
        return config.lr * max(0.0, 1.0 - progress)
    return config.lr * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def step_scalars(ops: Ops, lr: float = 0.0, bc1: float = 1.0, bc2: float = 1.0, grad_scale: float = 1.0,
                 slot: int = 0, seed: int = 0) -> bytes:
    """The per-step scalars as the kernels read them (`struct Step`, wgsl/include/step.wgsl); the
    defaults leave the loss unscaled in slot 0 and no optimizer effect."""
    return ops.step.pack(lr=lr, bc1=bc1, bc2=bc2, grad_scale=grad_scale, slot=slot, seed=seed)


def step_bytes(ops: Ops) -> int:
    """The size of a buffer for the Step struct (rounded up to 16 bytes)."""
    return -(-ops.step.size // 16) * 16


class TrainControl:
    """Pause, resume and stop for a running Trainer.train (the app's buttons); checked between
    reporting windows, so a pause takes effect after at most report_every steps."""

    def __init__(self):
        self.paused = False
        self.stopped = False

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def stop(self) -> None:
        self.stopped = True

    async def wait(self) -> None:
        import asyncio

        while self.paused and not self.stopped:
            await asyncio.sleep(0.05)


class NonFiniteLoss(UserError):
    def __init__(self, step: int):
        super().__init__(f"the loss became NaN or infinite at step {step}; training stopped and the adapter "
                         f"was restored to the last one whose loss was finite")
        self.step = step


class Trainer:
    """Trains `lora` on `model` (built for batch_size × seq_len) over token sequences."""

    def __init__(self, device: Device, ops: Ops, model: Transformer, lora: LoraState, config: TrainConfig,
                 train: list[Sequence], valid: list[Sequence] | None = None, pad_id: int = 0):
        if model.B != config.batch_size or model.S != config.seq_len:
            raise ValueError("the model was built for another batch size or sequence length")
        self.device, self.ops, self.model, self.lora, self.config = device, ops, model, lora, config
        self.train_set, self.valid_set, self.pad_id = train, valid or [], pad_id
        self.order = BatchOrder(len(train), config.batch_size, config.shuffle, config.seed)
        self.total_steps = config.total_steps(len(train))
        if lora.adaptive:
            self._adalora_span()
        self.step = 0  # optimizer steps done
        n = config.report_every
        self.step_buf = device.create_buffer(step_bytes(ops), label="step")  # see _write_step
        self.loss_hist = device.create_buffer(4 * n, label="loss_history")
        self.norm_hist = device.create_buffer(4 * n, label="grad_norm_history")
        self.clip = device.create_buffer(12, label="clip")  # [norm, factor, halted] (grad_clip.wgsl)
        self.partial = device.create_buffer(4 * ops.sumsq_partials(lora.numel), label="sumsq_partial")
        # The last adapter whose loss was finite: the optimizer keeps it, and restores it on the GPU
        # once a loss or gradient norm is not (adamw.wgsl), so no step needs a readback to be safe.
        self.last_good = device.create_buffer(lora.nbytes, label="lora.last_good")
        self.eval_hist = device.create_buffer(4, label="eval_loss")
        # GPU timestamps at the start of each reporting window and the end of each step, for each
        # step's own throughput (None without timestamp-query: the window's average is used).
        self.timer = device.create_timer(n + 1)
        if lora.adaptive:
            self._adalora_buffers()
        self.tokens_seen = 0
        self.history: list[dict] = []
        self._recorded: dict[bool, Recording] = {}
        self._optimizer_cmds = Recording(self._optimizer())

    def _adalora_span(self) -> None:
        """AdaLoRA's schedule over this run (checked before any buffer is made for it)."""
        lora = self.lora
        # A pruned adapter (imported with PEFT's rank_pattern) keeps its ranks: no more allocation.
        if not lora.config.total_step:  # (the schedule's span, kept with the adapter as PEFT's total_step)
            import dataclasses

            lora.config = dataclasses.replace(lora.config, total_step=self.total_steps)
        self.ada_total = lora.config.total_step
        self.ada_pruned = bool(lora.config.rank_pattern)
        if not self.ada_pruned and self.ada_total - lora.config.tfinal <= lora.config.tinit:
            raise UsageError(f"adaptive: tinit {lora.config.tinit} and tfinal {lora.config.tfinal} leave no steps of "
                             f"{self.ada_total} for pruning; lower them or train longer")

    def _adalora_buffers(self) -> None:
        """AdaLoRA's training state: the importance's moving averages (flat, like the adapter), the
        triplet scores, the threshold, the Gram matrices and norms of the regulariser, its history,
        and `ctl` (update, mask mode, k: adalora_control) written before each step."""
        lora = self.lora
        device, n = self.device, self.config.report_every
        self.ada = {"ema": device.create_buffer(lora.nbytes, label="adalora.ema"),
                    "unc": device.create_buffer(lora.nbytes, label="adalora.unc"),
                    "scores": device.create_buffer(4 * lora.triplets, label="adalora.scores"),
                    "threshold": device.create_buffer(16, label="adalora.threshold"),
                    "gram": device.create_buffer(4 * lora.M * 2 * lora.R * lora.R, label="adalora.gram"),
                    "fro": device.create_buffer(4 * lora.M * 2, label="adalora.fro"),
                    "orth_hist": device.create_buffer(4 * n, label="orth_reg_history"),
                    "ctl": device.create_buffer(16, label="adalora.ctl")}

    def ada_control(self, step: int) -> tuple[int, int, int, int]:
        """adalora_control for 0-based step `step` of this run ((0, 0, 0, budget) once pruned)."""
        lora = self.lora
        if self.ada_pruned:
            return 0, 0, 0, lora.triplets
        return adalora_control(lora.config, step, self.ada_total, lora.triplets, lora.M)

    def rank_at(self, step: int) -> float:
        """The rank shown for 0-based step `step`: the schedule's, or AdaLoRA's mean rank after it."""
        if not self.lora.adaptive:
            return self.lora.rank_now(step)
        return round(self.ada_control(step)[3] / self.lora.M, 2)

    def release(self) -> None:
        """Free the trainer's own buffers (the model's and the adapter's belong to the caller)."""
        for buf in (self.step_buf, self.loss_hist, self.norm_hist, self.clip, self.partial, self.last_good,
                    self.eval_hist, *getattr(self, "ada", {}).values()):
            self.device.destroy_buffer(buf)
        if self.timer is not None:
            self.device.destroy_timer(self.timer)

    # -- recording ----------------------------------------------------------------------------
    def _optimizer(self) -> list:
        c, ops, lora = self.config, self.ops, self.lora
        pre, post = self._adalora_commands() if lora.adaptive else ([], [])
        cmds = pre + ops.grad_norm(self.clip, self.partial, lora.grads, self.step_buf, self.loss_hist, lora.numel,
                             c.max_grad_norm)
        if c.optimizer == "adamw":
            cmds.append(ops.adamw(lora.params, lora.m, lora.v, lora.grads, self.step_buf, self.clip, self.last_good,
                                  lora.numel, beta1=c.beta1, beta2=c.beta2, eps=c.eps, weight_decay=c.weight_decay))
        else:
            cmds.append(ops.sgd(lora.params, lora.grads, self.step_buf, self.clip, self.last_good, lora.numel,
                                weight_decay=c.weight_decay))
        return cmds + post

    def _adalora_commands(self) -> tuple[list, list]:
        """AdaLoRA around the optimizer (PEFT's order): before it, B's and E's gradients from the
        model's and the orthogonality regulariser's gradient (and value); after it, the importance
        update and the pruning that adalora_control asks of this step (through `ctl`)."""
        ops, lora, a, cfg = self.ops, self.lora, self.ada, self.lora.config
        pre = [ops.adalora_grad(lora.grads, lora.params, lora.table, lora.M, lora.R)]
        if cfg.orth_reg_weight > 0:
            pre += ops.orth_reg(lora.grads, a["fro"], a["gram"], lora.params, lora.table, self.step_buf, lora.M, lora.R,
                                lora.max_rows, cfg.orth_reg_weight)
        pre.append(ops.orth_sum(a["orth_hist"], a["fro"], self.step_buf, lora.M, cfg.orth_reg_weight))
        post = [ops.ada_ipt(a["ema"], a["unc"], lora.params, lora.grads, self.clip, a["ctl"], lora.numel,
                            cfg.ada_beta1, cfg.ada_beta2),
                *ops.ada_prune(lora.params, lora.mask, a["scores"], a["threshold"], a["ema"], a["unc"], a["ctl"],
                               lora.table, lora.M, lora.R, lora.triplets)]
        return pre, post

    def _write_step(self, lr: float, t: int, grad_scale: float, slot: int, micro: int) -> None:
        """The Step struct (wgsl/include/step.wgsl), written before each micro-batch's submit
        (queue writes are ordered with submits, so each submit sees its own values)."""
        c = self.config
        seed = (c.seed * 1_000_003 + t * c.grad_accum + micro) & 0xFFFFFF  # exact as a float
        self.device.write_buffer(self.step_buf, step_scalars(self.ops, lr=lr, bc1=1 - c.beta1**t, bc2=1 - c.beta2**t,
                                                             grad_scale=grad_scale, slot=slot, seed=seed))

    def _batches(self) -> list[tuple[list[int], list[int], int]]:
        out = []
        for _ in range(self.config.grad_accum):
            seqs = [self.train_set[i] for i in self.order.next()]
            out.append(make_batch(seqs, self.config.batch_size, self.config.seq_len, self.pad_id))
        return out

    def _micro_batch(self, accumulate: bool) -> list:
        """The recorded forward, loss and backward of one micro-batch. Every buffer and parameter
        in it is fixed, so it is recorded once and replayed: per-step values reach it through the
        step buffer and the batch buffers."""
        if accumulate not in self._recorded:
            step = self.step_buf
            cmds = self.model.forward(step=step) + self.model.loss(self.loss_hist, step, backward=True)
            self._recorded[accumulate] = Recording(cmds + self.model.backward(accumulate_grads=accumulate, step=step))
        return self._recorded[accumulate]

    def record(self) -> None:
        """Record the step's command lists now (they allocate any scratch they need)."""
        self._micro_batch(False)
        if self.config.grad_accum > 1:
            self._micro_batch(True)

    def grow_rank(self) -> None:
        """A progressive rank schedule's switch due before step self.step + 1: the new rows of A
        initialised (B's new columns are zero: the loss does not change at the switch)."""
        switches = dict(self.lora.config.rank_switches)
        if self.step in switches and self.step > 0:
            before = self.lora.config.rank_at(self.step - 1)
            self.device.submit(self.lora.grow_dispatches(self.ops, before, switches[self.step],
                                                         self.config.seed + self.step))

    def run_step(self, slot: int) -> tuple[int, float]:
        """Record and submit optimizer step self.step + 1; returns its target-token count and the
        epoch (a fraction) its data came from."""
        self.grow_rank()
        batches = self._batches()
        epoch = self.order.epoch + self.order.index / self.order.count
        n_targets = sum(n for _, _, n in batches)
        lr = lr_at(self.config, self.step, self.total_steps)
        if self.lora.adaptive:
            update, mode, k, _ = self.ada_control(self.step)
            self.device.write_buffer(self.ada["ctl"], struct.pack("<4I", update, mode, k, 0))
        for micro, (ids, targets, _) in enumerate(batches):
            self._write_step(lr, self.step + 1, 1.0 / max(1, n_targets), slot, micro)
            self.model.write_batch(ids, targets)
            cmds = [self._micro_batch(micro > 0)]
            if micro == len(batches) - 1:
                cmds += [self._optimizer_cmds, Copy(self.clip, 0, self.norm_hist, 4 * slot, 4)]
                if self.timer is not None:
                    cmds.append(Timestamp(self.timer, slot + 1))
            self.device.submit(cmds)
        self.step += 1
        self.tokens_seen += self.config.batch_size * self.config.seq_len * self.config.grad_accum
        return n_targets, epoch

    async def _step_seconds(self, window: int, elapsed: float) -> list[float]:
        """Each step's own time in the window just run: between GPU timestamps (the window's
        start, then the end of each step), or the window's average without timestamps."""
        if self.timer is not None:
            stamps = await self.device.read_timer(self.timer, window + 1)
            seconds = [(b - a) * 1e-9 for a, b in zip(stamps, stamps[1:])]
            if all(s > 0 for s in seconds):
                return seconds
        return [elapsed / window] * window

    # -- the loop -----------------------------------------------------------------------------
    async def train(self, on_report: Callable[[dict], None] | None = None,
                    control: TrainControl | None = None, stop_after: int | None = None,
                    save_every: int = 0, on_checkpoint=None) -> list[dict]:
        """Run to total_steps (or step `stop_after`, or until control.stop()); on_report gets a
        dict per step (kind "train") and per evaluation (kind "eval"); `await on_checkpoint(self)`
        runs every `save_every` steps, when a pause takes effect and when training ends or stops. Raises NonFiniteLoss after
        restoring the last good adapter."""
        c = self.config
        end = min(self.total_steps, stop_after) if stop_after else self.total_steps
        self.device.write_buffer(self.clip, bytes(12))
        self.device.submit([Copy(self.lora.params, 0, self.last_good, 0, self.lora.nbytes)])
        while self.step < end:
            if control is not None:
                if control.paused and on_checkpoint:  # a paused run is saved, in case it never resumes
                    await on_checkpoint(self)
                await control.wait()
                if control.stopped:
                    break
            window = min(c.report_every, end - self.step)
            if save_every:  # windows end on checkpoint steps
                window = min(window, save_every - self.step % save_every)
            self.device.write_buffer(self.loss_hist, bytes(4 * c.report_every))
            started, first = time.perf_counter(), self.step
            if self.timer is not None:
                self.device.submit([Timestamp(self.timer, 0)])
            steps = [self.run_step(slot) for slot in range(window)]
            losses = struct.unpack(f"<{window}f", await self.device.read_buffer(self.loss_hist, 0, 4 * window))
            norms = struct.unpack(f"<{window}f", await self.device.read_buffer(self.norm_hist, 0, 4 * window))
            orth = (struct.unpack(f"<{window}f", await self.device.read_buffer(self.ada["orth_hist"], 0, 4 * window))
                    if self.lora.adaptive else None)
            elapsed = time.perf_counter() - started
            seconds = await self._step_seconds(window, elapsed)
            tokens_per_step = c.batch_size * c.seq_len * c.grad_accum
            for i in range(window):
                count, epoch = steps[i]
                loss = losses[i] / max(1, count)
                if not math.isfinite(loss) or not math.isfinite(norms[i]):  # (restored on the GPU)
                    raise NonFiniteLoss(first + i + 1)
                record = {
                    "kind": "train", "step": first + i + 1, "total_steps": self.total_steps, "loss": loss,
                    "lr": lr_at(c, first + i, self.total_steps), "grad_norm": norms[i], "targets": count,
                    "tokens": (first + i + 1) * tokens_per_step, "tokens_per_s": tokens_per_step / seconds[i],
                    "epoch": epoch, "rank": self.rank_at(first + i),
                }
                if orth is not None:  # AdaLoRA: the regulariser added to the loss, on its own
                    record["orth_reg"] = orth[i]
                self.history.append(record)
                if on_report:
                    on_report(record)
            due = c.eval_every and self.step % c.eval_every == 0 and self.step < self.total_steps
            if self.valid_set and (due or self.step == self.total_steps):
                record = {"kind": "eval", "step": self.step, **await evaluate(self.device, self.model, self.valid_set,
                                                                               self.eval_hist, self.step_buf, self.pad_id)}
                self.history.append(record)
                if on_report:
                    on_report(record)
            if on_checkpoint and save_every and self.step % save_every == 0 and self.step < end:
                await on_checkpoint(self)
        if on_checkpoint:
            await on_checkpoint(self)
        return self.history

    # -- checkpoints ----------------------------------------------------------------------------
    async def state(self) -> tuple[dict, dict[str, bytes]]:
        """Everything needed to continue exactly: (JSON-able state, {name: float32 bytes}) with
        the adapter, AdamW's moments, the step, the data order position and the history."""
        from dataclasses import asdict

        buffers = {name: await self.device.read_buffer(buf) for name, buf in self._state_buffers()}
        meta = {"step": self.step, "order": self.order.state(), "train": asdict(self.config),
                "lora": {**asdict(self.lora.config), "targets": list(self.lora.config.targets)},
                "history": self.history, "tokens_seen": self.tokens_seen}
        return meta, buffers

    def _state_buffers(self) -> list[tuple[str, object]]:
        """The GPU buffers a checkpoint holds: the adapter and AdamW's moments (AdaLoRA: and its
        importance averages and mask)."""
        out = [("params", self.lora.params), ("m", self.lora.m), ("v", self.lora.v)]
        if self.lora.adaptive:
            out += [("ada_ema", self.ada["ema"]), ("ada_unc", self.ada["unc"]), ("ada_mask", self.lora.mask)]
        return out

    def restore(self, meta: dict, buffers: dict[str, bytes]) -> None:
        for name, buf in self._state_buffers():
            if name not in buffers:
                raise UsageError(f"checkpoint lacks {name} (it was saved by a run of another rank schedule)")
            if len(buffers[name]) != buf.size:
                raise UsageError(f"checkpoint {name} holds {len(buffers[name])} bytes; this adapter needs {buf.size}")
            self.device.write_buffer(buf, buffers[name])
        self.step = int(meta["step"])
        self.order.restore(meta["order"])
        self.history = list(meta.get("history", []))
        self.tokens_seen = int(meta.get("tokens_seen", 0))


async def evaluate(device: Device, model: Transformer, records: list[Sequence], history, step_buf, pad_id: int = 0) -> dict:
    """Mean loss over every target token of `records` (one readback at the end)."""
    device.write_buffer(history, bytes(4))
    device.write_buffer(step_buf, step_scalars(model.ops))
    total = 0
    for start in range(0, len(records), model.B):
        ids, targets, n = make_batch(records[start : start + model.B], model.B, model.S, pad_id)
        total += n
        model.write_batch(ids, targets)
        device.submit(model.forward() + model.loss(history, step_buf, backward=False))
    (loss_sum,) = struct.unpack("<f", await device.read_buffer(history, 0, 4))
    return {"loss": loss_sum / max(1, total), "tokens": total}
