"""`loralab bench`: the real training step on random weights, timed; kernel micro-benchmarks.

Shapes of the named configs follow the models' config.json files. The step is exactly the
Trainer's (forward, chunked loss, backward, gradient norm, clipping, AdamW), submitted once per
step with no readback until the end; the clock stops after a readback, so GPU work is included.
"""

from __future__ import annotations

import random
import time

from .config import PROJECTIONS, LoraConfig, ModelConfig, TrainConfig, module_name
from .data.batches import Sequence
from .errors import UsageError
from .gpu.device import Device
from .lora import LoraState
from .model.transformer import Transformer
from .model.weights import expected_shapes, fuse_attention_inputs, weight_types
from .ops import GGUF_TYPES, QUANTIZE_TO, Ops
from .train import Trainer

# Formats of `loralab bench --weights`: the --weights choices of training, each GGUF block type
# (random blocks, as repacked on the GPU), and llama.cpp's Q4_K_M mix.
BENCH_WEIGHTS = ("f32", "f16", "q8", "q4", *GGUF_TYPES, "Q4_K_M")


def _mix_type(name: str, config: ModelConfig) -> str:
    """llama.cpp's Q4_K_M: Q6_K for the embeddings and head, and for v and down projections in
    the layers its use_more_bits picks (the first and last eighth, every third between); Q4_K else."""
    if "layers." not in name:
        return "Q6_K"
    layer, n = int(name.split(".")[2]), config.num_layers
    more = layer < n // 8 or layer >= 7 * n // 8 or (layer - n // 8) % 3 == 2
    return "Q6_K" if more and (name.endswith("v_proj.weight") or name.endswith("down_proj.weight")) else "Q4_K"


def random_weights(ops: Ops, config: ModelConfig, seed: int = 0, dtype: str = "f32") -> dict:
    """Every weight the config needs, random, in the format `dtype` (BENCH_WEIGHTS): float
    weights uniform in ±1/√fan_in, generated on the GPU (f16: converted, q8/q4: the projections
    quantized as training's --weights does); GGUF types straight in their repacked layout."""
    projections = {f"{module_name(i, m)}.weight" for i in range(config.num_layers) for m in PROJECTIONS}
    weights, cmds = {}, []
    for i, (name, shape) in enumerate(sorted(expected_shapes(config).items())):
        gguf_type = _mix_type(name, config) if dtype == "Q4_K_M" else dtype
        if gguf_type in GGUF_TYPES and len(shape) == 2:
            buf = ops.quantized_buffer(GGUF_TYPES[gguf_type][1], *shape, label=name)
            cmds.append(ops.random_quantized(buf, *shape, seed + i))
            weights[name] = buf
            continue
        numel = 1
        for d in shape:
            numel *= d
        buf = ops.device.create_buffer(numel * 4, label=name)
        cmds.append(ops.lora_init(buf, 0, numel, shape[-1] if len(shape) > 1 else 1, seed + i))
        if dtype == "f16" and len(shape) == 2:
            ops.device.submit(cmds)
            cmds = []
            packed = ops.device.create_buffer(-(-numel // 2) * 4, label=name)
            packed.dtype = "f16"
            ops.device.submit([ops.to_f16(packed, buf, numel)])
            ops.device.destroy_buffer(buf)
            buf = packed
        elif dtype in QUANTIZE_TO and name in projections and (dtype == "q4" or shape[1] % 32 == 0):
            ops.device.submit(cmds)
            cmds = []
            packed = ops.quantized_buffer(QUANTIZE_TO[dtype], *shape, label=name)
            ops.device.submit([ops.quantize(packed, buf, *shape)])
            ops.device.destroy_buffer(buf)
            buf = packed
        weights[name] = buf
    ops.device.submit(cmds)
    return fuse_attention_inputs(ops.device, config, weights)


def bench_quant_dtypes(dtype: str) -> tuple[str, ...]:
    """The quantized GPU dtypes random_weights makes for `dtype` (to prepare their pipelines)."""
    if dtype == "Q4_K_M":
        return (GGUF_TYPES["Q4_K"][1], GGUF_TYPES["Q6_K"][1])
    if dtype in GGUF_TYPES:
        return (GGUF_TYPES[dtype][1],)
    return (QUANTIZE_TO[dtype],) if dtype in QUANTIZE_TO else ()


def check_bench_sizes(batch: int, seq_len: int, steps: int, rank: int) -> None:
    """The benchmark's sizes, refused by name before any GPU work."""
    if batch < 1 or seq_len < 2 or steps < 1 or rank < 1:
        raise UsageError("the benchmark needs a batch size and steps of at least 1, a sequence length of at least 2 "
                         "and a rank of at least 1")


async def bench_training(ops: Ops, config: ModelConfig, batch: int, seq_len: int, steps: int, rank: int,
                         weights: dict | None = None, warmup: int = 2, checkpointing: bool = False,
                         weights_dtype: str = "f32", attention: str = "auto", precision: str = "f32") -> dict:
    """Time `steps` training steps after `warmup` ones; every buffer it made is freed after
    (the weights too, when it generated them)."""
    check_bench_sizes(batch, seq_len, steps, rank)
    device: Device = ops.device
    attention = await ops.specialize_head_dim(config.head_dim, attention)
    own_weights = weights is None
    await ops.prepare(f16_weights=weights_dtype == "f16", quant=bench_quant_dtypes(weights_dtype),
                      mixed=precision == "mixed")
    weights = weights or random_weights(ops, config, dtype=weights_dtype)
    lora = LoraState(device, config, LoraConfig(r=rank, alpha=2.0 * rank))
    device.submit(lora.init_dispatches(ops, seed=1))
    model = Transformer(device, ops, config, weights, lora, batch, seq_len, checkpointing, precision)
    rng = random.Random(0)
    records = [Sequence(ids, ids) for ids in ([rng.randrange(config.vocab_size) for _ in range(seq_len)] for _ in range(batch * 4))]
    train = TrainConfig(steps=warmup + steps, batch_size=batch, seq_len=seq_len, report_every=max(steps, warmup),
                        gradient_checkpointing=checkpointing)
    trainer = Trainer(device, ops, model, lora, train, records)
    try:
        return {**await _timed_steps(device, trainer, lora, batch, seq_len, steps, rank, warmup, checkpointing,
                                     weights_dtype), "attention": attention, "precision": precision,
                "weight_bytes": sum(b.size for b in weights.values()), "weight_types": weight_types(weights)}
    finally:
        for part in (trainer, model, lora):
            part.release()
        if own_weights:
            for buf in weights.values():
                device.destroy_buffer(buf)


async def _timed_steps(device: Device, trainer: Trainer, lora: LoraState, batch: int, seq_len: int, steps: int,
                       rank: int, warmup: int, checkpointing: bool, weights_dtype: str) -> dict:
    for i in range(warmup):
        trainer.run_step(i)
    await device.read_buffer(trainer.loss_hist, 0, 4)
    submits, dispatches = device.submits, device.dispatches
    started = time.perf_counter()
    counts = [trainer.run_step(i)[0] for i in range(steps)]
    recorded = time.perf_counter() - started  # host time to write batches and encode the steps
    losses = await device.read_buffer(trainer.loss_hist, 0, 4 * steps)
    elapsed = time.perf_counter() - started
    import struct

    last_loss = struct.unpack(f"<{steps}f", losses)[-1] / counts[-1]
    tokens = steps * batch * seq_len
    return {
        "adapter": f"{device.info.vendor} {device.info.device}".strip() or device.info.description,
        "driver": device.info.driver,
        "batch_size": batch, "seq_len": seq_len, "rank": rank, "steps": steps,
        "tokens_per_s": tokens / elapsed,
        "ms_per_step": 1000 * elapsed / steps,
        "host_ms_per_step": 1000 * recorded / steps,
        "dispatches_per_step": (device.dispatches - dispatches) / steps,
        "submits_per_step": (device.submits - submits) / steps,
        "peak_gpu_bytes": device.peak_bytes,
        "trainable_parameters": lora.trainable_parameters,
        "loss": last_loss,
        "gradient_checkpointing": checkpointing,
        "weights": weights_dtype,
    }


async def _captured_step(ops: Ops, config: ModelConfig, batch: int, seq_len: int, rank: int, weights: dict | None,
                         attention: str) -> tuple[Trainer, list]:
    """A trainer over `weights` (random if None) and the commands of one training step, recorded
    instead of run."""
    from .gpu.device import expand

    device: Device = ops.device
    await ops.specialize_head_dim(config.head_dim, attention)
    await ops.prepare()
    weights = weights or random_weights(ops, config)
    lora = LoraState(device, config, LoraConfig(r=rank, alpha=2.0 * rank))
    model = Transformer(device, ops, config, weights, lora, batch, seq_len)
    records = [Sequence([1] * seq_len, [1] * seq_len)] * batch
    trainer = Trainer(device, ops, model, lora, TrainConfig(steps=1, batch_size=batch, seq_len=seq_len), records)
    captured: list = []
    submit = device.submit
    device.submit = lambda cmds: captured.extend(expand(cmds))  # record the step instead of running it
    try:
        trainer.run_step(0)
    finally:
        device.submit = submit
    return trainer, captured


async def profile_step(ops: Ops, config: ModelConfig, batch: int, seq_len: int, rank: int, weights: dict | None = None,
                       repeats: int = 3, attention: str = "auto") -> list[dict]:
    """Time per kernel in one training step: each kernel's dispatches of the step, submitted
    alone `repeats` times (results are garbage, times are real), sorted by time."""
    from .gpu.device import Dispatch

    device: Device = ops.device
    trainer, captured = await _captured_step(ops, config, batch, seq_len, rank, weights, attention)
    groups: dict[str, list] = {}
    for command in captured:
        if isinstance(command, Dispatch):
            groups.setdefault(command.kernel, []).append(command)
    rows = []
    for name, dispatches in groups.items():
        device.submit(dispatches)
        await device.read_buffer(trainer.loss_hist, 0, 4)
        started = time.perf_counter()
        for _ in range(repeats):
            device.submit(dispatches)
        await device.read_buffer(trainer.loss_hist, 0, 4)
        rows.append({"kernel": name, "dispatches": len(dispatches), "ms_per_step": 1000 * (time.perf_counter() - started) / repeats})
    return sorted(rows, key=lambda r: -r["ms_per_step"])


TIMELINE_WINDOW = 2048  # dispatches timed per submit (a query set holds one timestamp more)


async def timeline_step(ops: Ops, config: ModelConfig, batch: int, seq_len: int, rank: int,
                        weights: dict | None = None, attention: str = "auto") -> tuple[list[dict], dict]:
    """One training step with a GPU timestamp between every two commands (each dispatch in its
    own compute pass, so the times include a pass boundary each): (the kernels by their total
    time, largest first, with their share of the step) and a Chrome trace ({"traceEvents": …},
    one complete event per dispatch, microseconds from the step's start)."""
    from .errors import UsageError
    from .gpu.device import Dispatch, Timestamp

    device: Device = ops.device
    _, captured = await _captured_step(ops, config, batch, seq_len, rank, weights, attention)
    timer = device.create_timer(TIMELINE_WINDOW + 1)
    if timer is None:
        raise UsageError("this GPU offers no timestamp queries (timestamp-query): no timeline")
    events: list[dict] = []
    origin = None
    try:
        for at in range(0, len(captured), TIMELINE_WINDOW):
            window = captured[at:at + TIMELINE_WINDOW]
            cmds: list = [Timestamp(timer, 0)]
            for i, command in enumerate(window):
                cmds += [command, Timestamp(timer, i + 1)]
            device.submit(cmds)
            stamps = await device.read_timer(timer, len(window) + 1)
            origin = stamps[0] if origin is None else origin
            for command, begin, end in zip(window, stamps, stamps[1:]):
                name = command.kernel if isinstance(command, Dispatch) else type(command).__name__.lower()
                events.append({"name": name, "ph": "X", "pid": 0, "tid": 0, "ts": (begin - origin) / 1e3,
                               "dur": max(end - begin, 0) / 1e3,
                               "args": {"grid": list(command.grid)} if isinstance(command, Dispatch) else {}})
    finally:
        device.destroy_timer(timer)
    total = sum(e["dur"] for e in events) or 1.0
    kernels: dict[str, dict] = {}
    for e in events:
        row = kernels.setdefault(e["name"], {"kernel": e["name"], "dispatches": 0, "ms": 0.0})
        row["dispatches"] += 1
        row["ms"] += e["dur"] / 1e3
    rows = sorted(kernels.values(), key=lambda r: -r["ms"])
    for row in rows:
        row["share"] = row["ms"] * 1e3 / total
    return rows, {"traceEvents": events, "displayTimeUnit": "ms"}


async def bench_matmul(ops: Ops, M: int, N: int, K: int, repeats: int = 20, trans_b: bool = False) -> dict:
    """GFLOP/s of C[M,N] = A[M,K]·B[N,K]ᵀ (or A·B with trans_b), `repeats` dispatches per submit."""
    await ops.prepare()
    device = ops.device
    a = device.create_buffer(M * K * 4, label="bench.A")
    b = device.create_buffer(N * K * 4, label="bench.B")
    c = device.create_buffer(M * N * 4, label="bench.C")
    device.submit([ops.lora_init(a, 0, M * K, K, 1), ops.lora_init(b, 0, N * K, K, 2)])
    seconds = await _seconds_per_repeat(device, ops.matmul(c, a, b, M, N, K, trans_b=trans_b), c, repeats)
    for buf in (a, b, c):
        device.destroy_buffer(buf)
    return {"op": "matmul", "M": M, "N": N, "K": K, "trans_b": trans_b,
            "ms": 1000 * seconds, "gflops": 2 * M * N * K / seconds / 1e9}


async def _seconds_per_repeat(device: Device, cmds: list, probe, repeats: int) -> float:
    """Wall time of `cmds` (one submit holding them `repeats` times), after a warm-up, per repeat."""
    device.submit(cmds)
    await device.read_buffer(probe, 0, 4)
    started = time.perf_counter()
    device.submit(cmds * repeats)
    await device.read_buffer(probe, 0, 4)
    return (time.perf_counter() - started) / repeats


def attention_flops(B: int, S: int, Hq: int, D: int) -> tuple[float, float]:
    """Causal attention's floating-point operations by the usual count (FlashAttention's): 4·D
    per (query, key ≤ query) pair forward (q·k and p·v), 2.5 times that backward. Our kernels
    recompute more than that; the count is the same for every implementation compared."""
    pairs = B * Hq * S * (S + 1) / 2
    return 4 * D * pairs, 10 * D * pairs


async def bench_attention(ops: Ops, B: int, S: int, Hq: int, Hkv: int, D: int, repeats: int = 20,
                          attention: str = "auto") -> dict:
    """Forward and backward time of causal GQA attention at one shape, with the kernels
    specialize_head_dim picks for D (or the family `attention` names)."""
    device = ops.device
    variant = await ops.specialize_head_dim(D, attention)
    T = B * S
    sizes = dict(q=T * Hq * D, k=T * Hkv * D, v=T * Hkv * D, d_o=T * Hq * D, o=T * Hq * D, lse=B * Hq * S,
                 dq=T * Hq * D, dk=T * Hkv * D, dv=T * Hkv * D, delta=B * Hq * S, dk_heads=T * Hq * D,
                 dv_heads=T * Hq * D)
    b = {name: device.create_buffer(n * 4, label=f"bench.{name}") for name, n in sizes.items()}
    device.submit([ops.lora_init(b[name], 0, sizes[name], D, i + 1) for i, name in enumerate(("q", "k", "v", "d_o"))])
    forward = [ops.attention(b["o"], b["lse"], b["q"], b["k"], b["v"], B, S, Hq, Hkv, D)]
    backward = ops.attention_backward(b["dq"], b["dk"], b["dv"], b["delta"], b["dk_heads"], b["dv_heads"],
                                      b["q"], b["k"], b["v"], b["o"], b["d_o"], b["lse"], B, S, Hq, Hkv, D)
    fwd = await _seconds_per_repeat(device, forward, b["o"], repeats)
    bwd = await _seconds_per_repeat(device, backward, b["dq"], repeats)
    for buf in b.values():
        device.destroy_buffer(buf)
    f_fwd, f_bwd = attention_flops(B, S, Hq, D)
    return {"op": "attention", "B": B, "S": S, "Hq": Hq, "Hkv": Hkv, "D": D, "kernels": variant,
            "forward_ms": 1000 * fwd, "backward_ms": 1000 * bwd,
            "forward_gflops": f_fwd / fwd / 1e9, "backward_gflops": f_bwd / bwd / 1e9}


async def bench_cross_entropy(ops: Ops, R: int, V: int, repeats: int = 20) -> dict:
    """The loss kernel over R rows of V logits (reads them, writes their gradient in place):
    GB/s counted as 8·R·V bytes."""
    device = ops.device
    logits = device.create_buffer(R * V * 4, label="bench.logits")
    targets = device.create_buffer_with_data(b"".join((i % V).to_bytes(4, "little") for i in range(R)), label="bench.targets")
    loss = device.create_buffer(R * 4, label="bench.loss")
    device.submit([ops.lora_init(logits, 0, R * V, 1, 7)])
    seconds = await _seconds_per_repeat(device, [ops.cross_entropy(loss, logits, targets, R, V, 1.0 / R)], loss, repeats)
    for buf in (logits, targets, loss):
        device.destroy_buffer(buf)
    return {"op": "cross_entropy", "R": R, "V": V, "ms": 1000 * seconds, "gbps": 8 * R * V / seconds / 1e9}

