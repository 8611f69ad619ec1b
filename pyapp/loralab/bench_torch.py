"""The reference side of `loralab bench --compare-torch`: the same configuration trained by
PyTorch + PEFT (eager; fp32 with TF32 off, TF32, bf16 autocast, bf16 autocast with the model
under torch.compile ("bf16-compile"), or QLoRA: the projections as bitsandbytes NF4 with float32
compute), and torch's matmul rate. Every variant clips gradients as LoRA Lab does.
Imported only when asked for; PyTorch, transformers and PEFT are references, never dependencies.
"""

from __future__ import annotations

import time


def _model(config: dict, device: str):
    import torch
    import transformers

    kind = {"LlamaForCausalLM": transformers.LlamaConfig, "Qwen2ForCausalLM": transformers.Qwen2Config,
            "MistralForCausalLM": transformers.MistralConfig, "Qwen3ForCausalLM": transformers.Qwen3Config,
            "Gemma3ForCausalLM": transformers.Gemma3TextConfig, "GPT2LMHeadModel": transformers.GPT2Config,
            "Phi3ForCausalLM": transformers.Phi3Config}[config["architectures"][0]]
    cfg = kind(**{k: v for k, v in config.items() if k != "architectures"})
    if config["architectures"][0] == "GPT2LMHeadModel":  # (LoRA Lab trains without the model's own dropout)
        cfg.resid_pdrop = cfg.embd_pdrop = cfg.attn_pdrop = 0.0
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32).to(device)


PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TORCH_PRECISIONS = ("fp32", "tf32", "bf16", "bf16-compile", "nf4")
# Every linear module, as PEFT names them per architecture (the same adapters LoRA Lab trains).
TARGETS = {"Phi3ForCausalLM": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
           "GPT2LMHeadModel": ("c_attn", "c_proj", "c_fc")}


def _nf4(model):
    """The decoder's projections as bitsandbytes Linear4bit (NF4, blocks of 64, no double
    quantization, float32 compute), as QLoRA loads a model; quantized when moved to the GPU."""
    import bitsandbytes as bnb
    import torch

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear) and name in PROJECTIONS:
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=torch.float32, compress_statistics=False, quant_type="nf4")
                q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, compress_statistics=False,
                                             quant_type="nf4")
                if child.bias is not None:
                    q.bias = child.bias
                setattr(module, name, q)
    return model


def bench_torch_training(config: dict, batch: int, seq_len: int, steps: int, rank: int, precision: str = "fp32",
                         warmup: int = 2) -> dict:
    import peft
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    arch = config["architectures"][0]
    if precision == "nf4" and arch in TARGETS:
        raise ValueError(f"--torch-precisions nf4 covers nn.Linear projections; {arch} has fused or Conv1D ones")
    if precision not in TORCH_PRECISIONS:
        raise ValueError(f"torch precision {precision!r}: choose from {', '.join(TORCH_PRECISIONS)}")
    base = _nf4(_model(config, "cpu")).to(device) if precision == "nf4" else _model(config, device)
    model = peft.get_peft_model(base, peft.LoraConfig(
        r=rank, lora_alpha=2 * rank, lora_dropout=0.0, task_type="CAUSAL_LM",
        target_modules=list(TARGETS.get(arch, PROJECTIONS)), fan_in_fan_out=arch == "GPT2LMHeadModel"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, config["vocab_size"], (batch, seq_len), device=device)
    forward = torch.compile(model) if precision == "bf16-compile" else model
    if precision == "bf16-compile":  # (compiled, forward and backward, in the warm-up steps)
        warmup = max(warmup, 3)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=precision.startswith("bf16")):
            loss = forward(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        loss = step()
    loss = loss.item()
    elapsed = time.perf_counter() - started
    return {"reference": f"pytorch {torch.__version__} + peft {peft.__version__}", "precision": precision,
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "batch_size": batch, "seq_len": seq_len, "rank": rank, "steps": steps,
            "tokens_per_s": steps * batch * seq_len / elapsed, "ms_per_step": 1000 * elapsed / steps,
            "peak_gpu_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None, "loss": loss}


def bench_torch_matmul(M: int, N: int, K: int, tf32: bool = False, repeats: int = 20) -> dict:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    a = torch.randn(M, K, device=device)
    b = torch.randn(N, K, device=device)
    seconds = _cuda_seconds(lambda: a @ b.T, repeats)
    return {"op": "torch.matmul" + (" tf32" if tf32 else " fp32"), "M": M, "N": N, "K": K,
            "ms": 1000 * seconds, "gflops": 2 * M * N * K / seconds / 1e9}


def _cuda_seconds(fn, repeats: int) -> float:
    """Wall time of fn() per call, after a warm-up call, with the GPU's queue drained at both ends."""
    import torch

    cuda = torch.cuda.is_available()
    fn()
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def bench_torch_attention(B: int, S: int, Hq: int, Hkv: int, D: int, repeats: int = 20) -> dict:
    """torch's scaled_dot_product_attention (fp32, causal, grouped-query) at the same shape:
    forward, and backward as forward + backward minus forward."""
    import torch
    import torch.nn.functional as F

    from .bench import attention_flops

    device = "cuda" if torch.cuda.is_available() else "cpu"
    q = torch.randn(B, Hq, S, D, device=device, requires_grad=True)
    k = torch.randn(B, Hkv, S, D, device=device, requires_grad=True)
    v = torch.randn(B, Hkv, S, D, device=device, requires_grad=True)
    d_o = torch.randn(B, Hq, S, D, device=device)

    def forward():
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    def both():
        q.grad = k.grad = v.grad = None
        F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).backward(d_o)

    fwd = _cuda_seconds(forward, repeats)
    bwd = max(_cuda_seconds(both, repeats) - fwd, 1e-9)
    f_fwd, f_bwd = attention_flops(B, S, Hq, D)
    return {"op": "torch sdpa fp32", "forward_ms": 1000 * fwd, "backward_ms": 1000 * bwd,
            "forward_gflops": f_fwd / fwd / 1e9, "backward_gflops": f_bwd / bwd / 1e9}


def bench_torch_cross_entropy(R: int, V: int, repeats: int = 20) -> dict:
    """F.cross_entropy forward + backward on fp32 logits, GB/s counted as ours (8·R·V bytes)."""
    import torch
    import torch.nn.functional as F

    device = "cuda" if torch.cuda.is_available() else "cpu"
    logits = torch.randn(R, V, device=device, requires_grad=True)
    targets = torch.randint(0, V, (R,), device=device)

    def both():
        logits.grad = None
        F.cross_entropy(logits, targets).backward()

    seconds = _cuda_seconds(both, repeats)
    return {"op": "torch cross_entropy fp32", "ms": 1000 * seconds, "gbps": 8 * R * V / seconds / 1e9}


def bench_torch_copy(nbytes: int, repeats: int = 20) -> dict:
    """The device's memory bandwidth as torch measures it: a device-to-device copy, GB/s counted
    as bytes read + written."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    src = torch.empty(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    seconds = _cuda_seconds(lambda: dst.copy_(src), repeats)
    return {"op": "torch copy", "bytes": nbytes, "gbps": 2 * nbytes / seconds / 1e9}

