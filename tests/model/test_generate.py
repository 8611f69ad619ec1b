"""Generation with the KV cache against transformers' greedy decoding."""

from __future__ import annotations

import pytest

from loralab.config import LoraConfig
from loralab.generate import Generator
from loralab.lora import LoraState
from loralab.model.weights import HFFolder, upload_weights
from tests.model import hf

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "gemma3", "phi3", "gpt2"])
def test_greedy_generation_matches_transformers(gpu, ops, run, tmp_path, kind):
    """(Gemma 3's local layers see 4 tokens: the 7-token prompt and the 12 new ones go past the window.)"""
    path = hf.tiny_model(kind, tmp_path / kind, seed=9, tied=kind == "llama")
    pm = hf.peft_model(path, r=4, alpha=8.0, b_std=0.2, seed=2)
    prompt = [5, 17, 33, 2, 90, 41, 7]
    with torch.no_grad():
        ref = pm.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                          pad_token_id=0)[0, len(prompt):].tolist()
    source = HFFolder(str(path))
    lora = LoraState(gpu, source.config, LoraConfig(r=4, alpha=8.0))
    lora.load_state({k: v.tobytes() for k, v in hf.lora_state(pm).items()})
    gen = Generator(gpu, ops, source.config, run(upload_weights(gpu, source.config, source, ops)), lora, 32)
    assert run(gen.generate(prompt, 12)) == ref
