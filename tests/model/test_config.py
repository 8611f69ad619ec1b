"""ModelConfig from the config.json files of the models people fine-tune (their published shapes),
and the fields the engine cannot honour refused by name."""

from __future__ import annotations

import math

import pytest

from loralab.config import NAMED_CONFIGS, PROJECTIONS, ModelConfig, ModelConfigError
from loralab.errors import UsageError

LLAMA_32_1B = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 128000,
    "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
    "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05, "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                            "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True,
    "vocab_size": 128256}
LLAMA_32_3B = {**LLAMA_32_1B, "head_dim": 128, "hidden_size": 3072, "num_attention_heads": 24,
               "num_hidden_layers": 28}
QWEN3_06B = {
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 1024, "initializer_range": 0.02,
    "intermediate_size": 3072, "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
    "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936}
QWEN3_17B = {**QWEN3_06B, "hidden_size": 2048, "intermediate_size": 6144}
GEMMA3_1B = {  # (as published, in the older form: rope_local_base_freq and sliding_window_pattern)
    "architectures": ["Gemma3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "attn_logit_softcapping": None, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": [1, 106],
    "final_logit_softcapping": None, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152,
    "initializer_range": 0.02, "intermediate_size": 6912, "max_position_embeddings": 32768, "model_type": "gemma3_text",
    "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1, "pad_token_id": 0,
    "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000, "rope_scaling": None,
    "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6, "torch_dtype": "bfloat16",
    "use_cache": True, "vocab_size": 262144}


@pytest.mark.parametrize("cfg, q_size, tied, qk_norm", [(LLAMA_32_1B, 2048, True, False), (LLAMA_32_3B, 3072, True, False),
                                                         (QWEN3_06B, 2048, True, True), (QWEN3_17B, 2048, True, True)])
def test_the_published_configs_load(cfg, q_size, tied, qk_norm):
    config = ModelConfig.from_dict(cfg)
    assert (config.q_size, config.tie_word_embeddings, config.qk_norm) == (q_size, tied, qk_norm)
    assert not config.attention_bias
    assert config.projection_shape("o_proj") == (cfg["hidden_size"], q_size)


def test_gemma3_1b():
    """Local layers (a window of 512, RoPE base 10,000) with every sixth global (base 10⁶), (1 + w)
    norms before and after attention and the MLP, GELU, q·k / 16, embeddings times √1152."""
    config = ModelConfig.from_dict(GEMMA3_1B)
    assert config.layer_windows == tuple(0 if (i + 1) % 6 == 0 else 512 for i in range(26))
    assert (config.norm_offset, config.sandwich_norms, config.qk_norm, config.activation) == (1.0, True, True, "gelu_tanh")
    assert config.attn_scale == 1 / 16 and config.embed_scale == pytest.approx(1152 ** 0.5)
    assert config.layer_inv_freq(0)[1] == pytest.approx(10000 ** (-2 / 256))
    assert config.layer_inv_freq(5)[1] == pytest.approx(1e6 ** (-2 / 256))
    assert config.tie_word_embeddings and config.head_dim == 256
    assert "sliding window of 512 tokens on 22 of 26 layers" in config.features()


@pytest.mark.parametrize("change, field", [({"final_logit_softcapping": 30.0}, "final_logit_softcapping"),
                                           ({"hidden_activation": "relu"}, "hidden_activation"),
                                           ({"use_bidirectional_attention": True}, "bidirectional"),
                                           ({"rope_parameters": {"full_attention": {"rope_type": "linear"}}},
                                            "full_attention: factor is missing")])
def test_gemma3_fields_the_engine_cannot_run_are_refused(change, field):
    with pytest.raises(ModelConfigError, match=field):
        ModelConfig.from_dict({**GEMMA3_1B, **change})


def test_the_named_bench_configs_are_the_published_shapes():
    for name, cfg in (("llama3.2-1b", LLAMA_32_1B), ("qwen3-0.6b", QWEN3_06B), ("gemma3-1b", GEMMA3_1B)):
        assert ModelConfig.from_dict(NAMED_CONFIGS[name]) == ModelConfig.from_dict(cfg), name


def test_llama3_scaling_slows_only_the_low_frequencies():
    config = ModelConfig.from_dict(LLAMA_32_1B)
    plain = ModelConfig.from_dict({**LLAMA_32_1B, "rope_scaling": None})
    scaled, base = config.inv_freq(), plain.inv_freq()
    assert scaled[0] == base[0] and scaled[-1] == pytest.approx(base[-1] / 32)


@pytest.mark.parametrize("change, field", [
    ({"mlp_bias": True}, "mlp_bias"),
    ({"attention_bias": True}, "attention_bias"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling"),
    ({"use_sliding_window": True, "sliding_window": 4096}, "sliding-window"),
    ({"num_key_value_heads": 5}, "num_key_value_heads"),
])
def test_what_the_engine_cannot_run_is_refused_by_name(change, field):
    with pytest.raises(ModelConfigError, match=field):
        ModelConfig.from_dict({**QWEN3_06B, **change} if "sliding" in field else {**LLAMA_32_1B, **change})


PHI35_MINI = {
    "architectures": ["Phi3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 1,
    "embd_pdrop": 0.0, "eos_token_id": 32000, "hidden_act": "silu", "hidden_size": 3072, "initializer_range": 0.02,
    "intermediate_size": 8192, "max_position_embeddings": 131072, "model_type": "phi3", "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 32, "original_max_position_embeddings": 4096,
    "pad_token_id": 32000, "resid_pdrop": 0.0, "rms_norm_eps": 1e-05,
    "rope_scaling": {"long_factor": [1.0800000429153442] * 48, "short_factor": [1.0] * 48, "type": "longrope"},
    "rope_theta": 10000.0, "sliding_window": 262144, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "vocab_size": 32064}
PHI3_MINI_4K = {**PHI35_MINI, "max_position_embeddings": 4096, "rope_scaling": None, "sliding_window": 2047,
                "vocab_size": 32064}


def test_phi3_fuses_its_projections_and_supports_longrope_up_to_the_original_context():
    config = ModelConfig.from_dict(PHI35_MINI)
    assert config.fused and config.lora_modules() == ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
    assert config.projection_shape("qkv_proj") == (3 * 3072, 3072) and config.projection_shape("gate_up_proj") == (16384, 3072)
    assert config.max_positions == 4096 and config.rope_freq_factors == (1.0,) * 48
    scale = (1 + math.log(32) / math.log(4096)) ** 0.5  # transformers' LongRoPE attention factor, squared into q·k
    assert config.attn_scale == pytest.approx(scale ** 2 / math.sqrt(96))
    assert config.lora_targets(PROJECTIONS) == config.lora_modules()
    with pytest.raises(UsageError, match="qkv_proj"):
        config.lora_targets(("q_proj", "v_proj"))
    mini = ModelConfig.from_dict(PHI3_MINI_4K)
    assert mini.layer_windows == (2047,) * 32 and mini.max_positions == 0
    with pytest.raises(ModelConfigError, match="partial_rotary_factor"):
        ModelConfig.from_dict({**PHI3_MINI_4K, "partial_rotary_factor": 0.75})
    with pytest.raises(UsageError, match="apart"):
        ModelConfig.from_dict(LLAMA_32_1B).lora_targets(("qkv_proj",))


GPT2 = {  # openai-community/gpt2 as published
    "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1, "bos_token_id": 50256,
    "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02, "layer_norm_epsilon": 1e-05,
    "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12, "n_positions": 1024,
    "resid_pdrop": 0.1, "summary_activation": None, "summary_first_dropout": 0.1, "summary_proj_to_labels": True,
    "summary_type": "cls_index", "summary_use_proj": True,
    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}}, "vocab_size": 50257}


def test_gpt2_reads_its_own_field_names_and_targets_its_conv1d_modules():
    config = ModelConfig.from_dict(GPT2)
    assert (config.hidden_size, config.intermediate_size, config.num_layers, config.num_heads) == (768, 3072, 12, 12)
    assert config.num_kv_heads == 12 and config.head_dim == 64 and config.rms_norm_eps == 1e-5
    assert config.layer_norm and config.learned_positions and config.linear_bias and not config.gated_mlp
    assert config.max_positions == 1024 and config.tie_word_embeddings and config.activation == "gelu_tanh"
    assert config.lora_modules() == ("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj")
    assert config.projection_shape("c_attn") == (3 * 768, 768) and config.projection_shape("c_fc") == (3072, 768)
    assert config.lora_targets(PROJECTIONS) == config.lora_modules()  # the default: every module
    assert config.lora_targets(("c_attn", "c_proj")) == ("c_attn", "attn.c_proj", "mlp.c_proj")
    assert config.lora_targets(("mlp.c_proj",)) == ("mlp.c_proj",)
    with pytest.raises(UsageError, match="c_attn"):
        config.lora_targets(("q_proj", "v_proj"))
    with pytest.raises(UsageError, match="no such module"):
        config.lora_targets(("qkv_proj",))
    with pytest.raises(UsageError, match="no such module"):
        ModelConfig.from_dict(LLAMA_32_1B).lora_targets(("c_attn",))
    assert "learned positions up to 1,024 tokens" in config.features()
    assert ModelConfig.from_dict(NAMED_CONFIGS["gpt2"]) == config
    assert ModelConfig.from_dict({**GPT2, "scale_attn_weights": False}).attn_scale == 1.0


@pytest.mark.parametrize("change, field", [({"activation_function": "relu"}, "activation_function"),
                                           ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse"),
                                           ({"add_cross_attention": True}, "add_cross_attention"),
                                           ({"n_embd": "768"}, "n_embd"),
                                           ({"n_head": 7}, "num_attention_heads 7")])
def test_gpt2_fields_the_engine_cannot_run_are_refused(change, field):
    with pytest.raises(ModelConfigError, match=field):
        ModelConfig.from_dict({**GPT2, **change})


@pytest.mark.parametrize(("config", "name"), [
    ({"_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "model_type": "llama"}, "SmolLM2-135M-Instruct"),
    ({"_name_or_path": "/home/me/out/checkpoint-500/", "model_type": "qwen3"}, "checkpoint-500"),
    ({"_name_or_path": "C:\\models\\my-gemma", "model_type": "gemma3_text"}, "my-gemma"),
    ({"_name_or_path": "", "model_type": "qwen3"}, "qwen3 model"),
    ({"_name_or_path": ".", "model_type": "llama"}, "llama model"),
    ({"architectures": ["LlamaForCausalLM"]}, None),
])
def test_loose_model_files_are_named_from_their_config(config, name):
    from loralab.config import model_name

    assert model_name(config) == name
