"""Tiny random Hugging Face models and PEFT references for the end-to-end checks (CPU torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PHI3_PROJECTIONS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
GPT2_PROJECTIONS = ["c_attn", "c_proj", "c_fc"]


def tiny_model(kind: str, path: Path, seed: int = 0, tied: bool = True, **overrides) -> Path:
    """Build, seed and save a tiny model of `kind` (llama, llama3, qwen2, qwen3, gemma3, phi3, mistral, gpt2) as
    safetensors."""
    import torch
    import transformers

    common = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-5, tie_word_embeddings=tied)
    common.update(overrides)
    if kind == "llama":
        config = transformers.LlamaConfig(**common, rope_theta=10000.0)
        cls = transformers.LlamaForCausalLM
    elif kind == "llama3":
        config = transformers.LlamaConfig(**common, rope_theta=500000.0, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64})
        cls = transformers.LlamaForCausalLM
    elif kind == "qwen2":
        config = transformers.Qwen2Config(**common, rope_theta=1000000.0)
        cls = transformers.Qwen2ForCausalLM
    elif kind == "qwen3":  # head_dim × heads ≠ hidden_size, as in Qwen3-0.6B (128 × 16 over 1024)
        config = transformers.Qwen3Config(**{"head_dim": 32, **common}, rope_theta=1000000.0)
        cls = transformers.Qwen3ForCausalLM
    elif kind == "gemma3":  # local layers with a window of 4 (shorter than the tests' sequences) and a global one
        common.pop("rms_norm_eps")
        layers = common["num_hidden_layers"]
        config = transformers.Gemma3TextConfig(**{"head_dim": 16, "query_pre_attn_scalar": 24, "sliding_window": 4,
                                                  "layer_types": ["sliding_attention", "full_attention"]
                                                  + ["sliding_attention"] * (layers - 2), **common})
        cls = transformers.Gemma3ForCausalLM
    elif kind == "phi3":  # fused qkv_proj and gate_up_proj
        config = transformers.Phi3Config(**{"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2, **common},
                                         rope_theta=10000.0)
        cls = transformers.Phi3ForCausalLM
    elif kind == "phi3_longrope":  # LongRoPE's short factors (and attention factor) below its original context
        half = common["hidden_size"] // common["num_attention_heads"] // 2
        config = transformers.Phi3Config(**{"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2, **common,
                                            "max_position_embeddings": 256}, original_max_position_embeddings=64,
                                         rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                                          "short_factor": [1.0 + 0.5 * i for i in range(half)],
                                                          "long_factor": [2.0 + i for i in range(half)]})
        cls = transformers.Phi3ForCausalLM
    elif kind == "gpt2":  # LayerNorm, learned positions, Conv1D weights, no gate; its own dropout off
        config = transformers.GPT2Config(vocab_size=common["vocab_size"], n_embd=common["hidden_size"],
                                         n_layer=common["num_hidden_layers"], n_head=common["num_attention_heads"],
                                         n_inner=common["intermediate_size"], n_positions=common["max_position_embeddings"],
                                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.1,
                                         tie_word_embeddings=tied, bos_token_id=2, eos_token_id=1)
        cls = transformers.GPT2LMHeadModel
    elif kind == "mistral":
        config = transformers.MistralConfig(**common, rope_theta=10000.0, sliding_window=None)
        cls = transformers.MistralForCausalLM
    else:
        raise ValueError(kind)
    torch.manual_seed(seed)
    model = cls(config).float().eval()
    with torch.no_grad():  # larger-than-default weights so the maths is not all near zero
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    model.save_pretrained(path, safe_serialization=True)
    return path


def load_hf(path: Path):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype="float32").eval()


def peft_model(path: Path, r: int = 4, alpha: float = 8.0, targets=None, b_std: float = 0.0, seed: int = 1,
               use_rslora: bool = False, **patterns):
    """The model wrapped by PEFT; B is random (std b_std) when b_std > 0 so gradients reach A.
    `targets`: every linear projection by default (Phi-3's are fused). `patterns`: PEFT's
    rank_pattern / alpha_pattern."""
    import peft
    import torch

    base = load_hf(path)
    targets = targets or {"phi3": PHI3_PROJECTIONS, "gpt2": GPT2_PROJECTIONS}.get(base.config.model_type, PROJECTIONS)
    torch.manual_seed(seed)
    model = peft.get_peft_model(base, peft.LoraConfig(
        r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, bias="none",
        task_type="CAUSAL_LM", use_rslora=use_rslora, fan_in_fan_out=base.config.model_type == "gpt2", **patterns))
    if b_std:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(b_std * torch.randn_like(p))
    return model


def lora_state(model) -> dict[str, np.ndarray]:
    """PEFT's adapter state dict as float32 numpy arrays, keys as saved on disk."""
    import peft

    return {k: v.detach().float().numpy().copy() for k, v in peft.get_peft_model_state_dict(model).items()}


def lora_grads(model) -> dict[str, np.ndarray]:
    out = {}
    for name, p in model.named_parameters():
        if "lora_" in name and p.grad is not None:
            out[name.replace(".default", "")] = p.grad.detach().numpy().copy()
    return out


def batch(seed: int, B: int, S: int, vocab: int = 96, ignore_prefix: int = 0):
    """Random ids and labels [B, S]; labels of the first `ignore_prefix` tokens are -100."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (B, S))
    labels = ids.copy()
    labels[:, :ignore_prefix] = -100
    return ids, labels
