"""Generation with the KV cache against transformers' greedy decoding."""

from __future__ import annotations

import pytest

from loralab.config import LoraConfig
from loralab.generate import Generator
from loralab.lora import LoraState
from loralab.model.weights import HFFolder, upload_weights
from tests.model import hf

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("kind, dora", [("llama", False), ("qwen2", False), ("qwen3", False), ("gemma3", False),
                                        ("phi3", False), ("gpt2", False), ("llama", True), ("phi3", True)])
def test_greedy_generation_matches_transformers(gpu, ops, run, tmp_path, kind, dora):
    """(Gemma 3's local layers see 4 tokens: the 7-token prompt and the 12 new ones go past the window.)
    With DoRA, the weight norms are computed at the prefill and kept for the cached steps."""
    path = hf.tiny_model(kind, tmp_path / kind, seed=9, tied=kind == "llama")
    pm = hf.peft_model(path, r=4, alpha=8.0, b_std=0.2, seed=2, use_dora=dora)
    if dora:
        with torch.no_grad():
            for name, p in pm.named_parameters():
                if "lora_magnitude_vector" in name:
                    p.mul_(1.3)
    prompt = [5, 17, 33, 2, 90, 41, 7]
    with torch.no_grad():
        ref = pm.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                          pad_token_id=0)[0, len(prompt):].tolist()
    source = HFFolder(str(path))
    lora = LoraState(gpu, source.config, LoraConfig(r=4, alpha=8.0, use_dora=dora))
    lora.load_state({k: v.tobytes() for k, v in hf.lora_state(pm).items()})
    gen = Generator(gpu, ops, source.config, run(upload_weights(gpu, source.config, source, ops)), lora, 32)
    assert run(gen.generate(prompt, 12)) == ref
