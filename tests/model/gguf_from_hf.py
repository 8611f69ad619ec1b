"""A tiny Hugging Face model written as llama.cpp's converter writes it (gguf-py's GGUFWriter,
llama.cpp's tensor names and metadata keys for the architecture, q/k rows permuted for Llama),
so the GGUF loader is checked against the folder it came from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

LAYER = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
         "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
         "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate",
         "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
GEMMA3 = {**LAYER, "post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
          "post_feedforward_layernorm": "post_ffw_norm"}
PHI3 = {**LAYER, "self_attn.qkv_proj": "attn_qkv", "mlp.gate_up_proj": "ffn_up"}
GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
          "lm_head.weight": "output.weight"}


def llama_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(name: str, arch: str) -> str:
    if name in GLOBAL:
        return GLOBAL[name]
    parts = name.split(".")  # model.layers.N.<module path>.<weight|bias>
    names = {"gemma3": GEMMA3, "phi3": PHI3}.get(arch, LAYER)
    return f"blk.{parts[2]}.{names['.'.join(parts[3:-1])]}.{parts[-1]}"


GPT2 = {"ln_1": "attn_norm", "ln_2": "ffn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
        "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
GPT2_GLOBAL = {"wte": "token_embd", "wpe": "position_embd", "ln_f": "output_norm"}


def write_gpt2(config: dict, tensors: dict, out: Path) -> Path:
    """llama.cpp's converter for GPT-2: its names, the Conv1D weights transposed to [out, in],
    the causal-mask buffers dropped, and the output matrix (when tied) written as a copy of
    token_embd."""
    import gguf

    writer = gguf.GGUFWriter(str(out), "gpt2")
    writer.add_block_count(config["n_layer"])
    writer.add_context_length(config["n_positions"])
    writer.add_embedding_length(config["n_embd"])
    writer.add_feed_forward_length(config.get("n_inner") or 4 * config["n_embd"])
    writer.add_head_count(config["n_head"])
    writer.add_layer_norm_eps(config["layer_norm_epsilon"])
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(config["vocab_size"])])
    writer.add_token_types([1] * config["vocab_size"])
    for name, value in tensors.items():
        name = name.removeprefix("transformer.")
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        base, kind = name.rsplit(".", 1)
        if base == "lm_head":  # (an untied head)
            new = "output.weight"
        elif base in GPT2_GLOBAL:
            new = f"{GPT2_GLOBAL[base]}.{kind}"
        else:
            _, layer, module = base.split(".", 2)
            new = f"blk.{layer}.{GPT2[module]}.{kind}"
            if kind == "weight" and value.ndim == 2:
                value = value.T
        writer.add_tensor(new, np.ascontiguousarray(value.astype(np.float32)))
        if new == "token_embd.weight" and "lm_head.weight" not in tensors:
            writer.add_tensor("output.weight", np.ascontiguousarray(value.astype(np.float32)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def write(folder: Path, out: Path, types: tuple = ()) -> Path:
    """`folder` (config.json + model.safetensors, float32) as a GGUF file at `out`; with `types`
    (gguf.GGMLQuantizationType values), the 2-D tensors take them in turn (quantized by gguf-py)."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((folder / "config.json").read_text())
    if config["architectures"][0] == "GPT2LMHeadModel":
        return write_gpt2(config, load_file(str(folder / "model.safetensors")), out)
    arch = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3",
            "Gemma3ForCausalLM": "gemma3", "Phi3ForCausalLM": "phi3"}[config["architectures"][0]]
    tensors = load_file(str(folder / "model.safetensors"))
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    rope = config.get("rope_parameters") or {}
    if arch == "gemma3":  # (llama.cpp: every 6th layer global, local layers at base 10,000)
        rope = rope["full_attention"]
        writer.add_sliding_window(config["sliding_window"])
    writer.add_rope_freq_base(config.get("rope_theta") or rope["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    if arch in ("qwen3", "gemma3"):
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    else:
        writer.add_rope_dimension_count(head_dim)
    if arch == "phi3" and config.get("sliding_window"):
        writer.add_sliding_window(config["sliding_window"])
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(config["vocab_size"])])
    writer.add_token_types([1] * config["vocab_size"])
    if rope.get("rope_type") == "longrope":  # llama.cpp's Phi-3: both factor tables, the original context
        import math

        original = config["original_max_position_embeddings"]
        scale = config["max_position_embeddings"] / original
        writer.add_rope_scaling_orig_ctx_len(original)
        writer.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0)
        writer.add_tensor("rope_factors_short.weight", np.array(rope["short_factor"], np.float32))
        writer.add_tensor("rope_factors_long.weight", np.array(rope["long_factor"], np.float32))
    if rope.get("rope_type") == "llama3":  # llama.cpp's rope_freqs: 1 / HF's factor per frequency
        factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
        old = rope["original_max_position_embeddings"]
        factors = []
        for freq in 1.0 / rope["rope_theta"] ** (np.arange(0, head_dim, 2) / head_dim):
            wavelen = 2 * np.pi / freq
            if wavelen < old / high:
                factors.append(1.0)
            elif wavelen > old / low:
                factors.append(factor)
            else:
                smooth = (old / wavelen - low) / (high - low)
                factors.append(1 / ((1 - smooth) / factor + smooth))
        writer.add_tensor("rope_freqs.weight", np.array(factors, np.float32))
    for name, value in tensors.items():
        if name == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            value = llama_permute(value, heads if "q_proj" in name else kv_heads)
        if arch == "gemma3" and name.endswith("norm.weight"):  # llama.cpp's converter: Gemma's norms as 1 + w
            value = value + 1
        value = np.ascontiguousarray(value.astype(np.float32))
        if types and value.ndim == 2:
            kind = types[sum(1 for n in tensors if n < name and tensors[n].ndim == 2) % len(types)]
            if kind == gguf.GGMLQuantizationType.F16:
                writer.add_tensor(gguf_name(name, arch), value.astype(np.float16))
            else:
                writer.add_tensor(gguf_name(name, arch), gguf.quants.quantize(value, kind), raw_dtype=kind)
            continue
        writer.add_tensor(gguf_name(name, arch), value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
