"""PEFT adapter files: every malformed kind gets a clear AdapterError; a PEFT-made adapter
evaluates like PEFT."""

from __future__ import annotations

import json
import struct

import pytest

from loralab.config import ModelConfig
from loralab.formats.peft import AdapterError, check_fits, parse_adapter
from loralab.formats.safetensors import serialize

KEY = "base_model.model.model.layers.0.self_attn.q_proj.lora_{}.weight"
CONFIG = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}
MODEL = ModelConfig.from_dict({"architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 8,
                               "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2})


def adapter(tensors=None, config=CONFIG) -> dict[str, bytes]:
    tensors = tensors or {KEY.format("A"): ("F32", (2, 8), bytes(64)), KEY.format("B"): ("F32", (8, 2), bytes(64))}
    return {"adapter_model.safetensors": serialize(tensors),
            "adapter_config.json": config if isinstance(config, bytes) else json.dumps(config).encode()}


def test_a_good_adapter_parses_and_fits():
    lora, state, _ = parse_adapter(adapter())
    assert (lora.r, lora.alpha, lora.targets) == (2, 4.0, ("q_proj",))
    check_fits(lora, state, MODEL)


@pytest.mark.parametrize("files, message", [
    (lambda: {**adapter(), "adapter_model.safetensors": adapter()["adapter_model.safetensors"][:60]}, "truncated|past the end"),
    (lambda: {**adapter(), "adapter_model.safetensors": struct.pack("<Q", 1 << 20) + b"{}"}, "past the end"),
    (lambda: adapter({KEY.format("A"): ("F32", (2, 8), bytes(64)), "lm_head.weight": ("F32", (2,), bytes(8))}),
     "'lm_head.weight' is not a LoRA"),
    (lambda: {**adapter(), "adapter_model.safetensors": adapter()["adapter_model.safetensors"].replace(b'"F32"', b'"Q9Z"', 1)},
     "unknown dtype"),
    (lambda: {"adapter_model.bin": b"\x80\x04", "adapter_config.json": b"{}"}, "pickle"),
    (lambda: adapter(config=b"{nope"), "invalid JSON"),
    (lambda: {"adapter_config.json": json.dumps(CONFIG).encode()}, "adapter_model.safetensors is missing"),
])
def test_malformed_adapters(files, message):
    with pytest.raises(AdapterError, match=message):
        parse_adapter(files(), "x")


def test_an_adapter_for_another_model_names_the_tensor():
    lora, state, _ = parse_adapter(adapter({KEY.format("A"): ("F32", (2, 12), bytes(96)),
                                            KEY.format("B"): ("F32", (8, 2), bytes(64))}))
    with pytest.raises(AdapterError, match=r"q_proj.lora_A.weight has shape \[2, 12\], expected \[2, 8\]"):
        check_fits(lora, state, MODEL)


TWO_LAYERS = ModelConfig.from_dict({"architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 8,
                                    "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2})


def test_projections_the_config_leaves_out_are_zero_and_others_still_required():
    """layers_to_transform / exclude_modules: the projections left out get zero A and B (no
    adapter); a tensor for one of them, or a left-out projection the config does not explain, is
    refused; they go with plain LoRA only."""
    one = {KEY.format("A"): ("F32", (2, 8), bytes(64)), KEY.format("B"): ("F32", (8, 2), bytes(64))}
    for extra in ({"layers_to_transform": [0]}, {"layers_to_transform": 0},
                  {"exclude_modules": ["layers.1.self_attn.q_proj"]}, {"exclude_modules": r"model\.layers\.1\..*"}):
        config = {**CONFIG, **extra}
        lora, state, raw = parse_adapter(adapter(one, config))
        check_fits(lora, state, TWO_LAYERS, raw=raw)
        zero_b = state[KEY.format("B").replace("layers.0", "layers.1")]
        assert zero_b == ((8, 2), bytes(64)), extra
    lora, state, raw = parse_adapter(adapter(one, {**CONFIG, "layers_to_transform": [1]}))
    with pytest.raises(AdapterError, match="layers.0.self_attn.q_proj.lora_A.weight is of a projection that"):
        check_fits(lora, state, TWO_LAYERS, raw=raw)
    lora, state, raw = parse_adapter(adapter(one, CONFIG))
    with pytest.raises(AdapterError, match="layers.1.self_attn.q_proj.lora_A.weight is missing"):
        check_fits(lora, state, TWO_LAYERS, raw=raw)
    for bad, message in (({"layers_to_transform": ["0"]}, "layers_to_transform must be a layer index"),
                         ({"exclude_modules": "(("}, "exclude_modules '\\(\\(' is not a valid pattern"),
                         ({"exclude_modules": "(.|.)*z"}, "could take a very long time"),
                         ({"exclude_modules": 3}, "exclude_modules must be"),
                         ({"layers_to_transform": [0], "use_dora": True}, "with DoRA are not supported")):
        with pytest.raises(AdapterError, match=message):
            lora, state, raw = parse_adapter(adapter(one, {**CONFIG, **bad}))
            check_fits(lora, state, TWO_LAYERS, raw=raw)
