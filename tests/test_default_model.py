"""The built-in default, SmolLM2-135M-Instruct from its Q4_1 GGUF, against transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loralab.model.gguf_model import default_model_path

torch = pytest.importorskip("torch")
pytest.importorskip("gguf")
LORALAB = str(Path(sys.executable).with_name("loralab"))
TOKENS = [[1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712, 8182, 2],
          [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198]]


@pytest.fixture(scope="module")
def reference():
    import transformers

    path = default_model_path()
    return transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()


def test_eval_default_matches_transformers_loading_the_same_gguf(tmp_path, reference):
    data = tmp_path / "tokens.jsonl"
    data.write_text("".join(json.dumps({"input_ids": ids}) + "\n" for ids in TOKENS))
    out = subprocess.run([LORALAB, "eval", "default", data, "--format", "tokens"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    ours = json.loads(out.stdout)
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in TOKENS:
            logits = reference(torch.tensor([ids])).logits[0, :-1]
            total += torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum").item()
            count += len(ids) - 1
    assert ours["tokens"] == count
    assert ours["loss"] == pytest.approx(total / count, rel=1e-3)


@pytest.mark.slow
def test_generate_default_answers_paris():
    out = subprocess.run([LORALAB, "generate", "default", "--chat", "What is the capital of France?", "--temperature", "0",
                          "--max-new-tokens", "12"], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout


def test_chat_loss_masks_the_prompt_like_the_tokenizers_own_template(tmp_path, reference):
    """Loss only on the assistant's answer and its end of turn, against a reference built with
    transformers' tokenizer (from the same GGUF) and its apply_chat_template."""
    import transformers

    path = default_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    chats = [[{"role": "user", "content": "What is the capital of France?"},
              {"role": "assistant", "content": "The capital of France is Paris."}],
             [{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": "Colour of the sky?"},
              {"role": "assistant", "content": "Blue."}]]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in chats))
    out = subprocess.run([LORALAB, "eval", "default", data], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    ours = json.loads(out.stdout)
    total, count = 0.0, 0
    with torch.no_grad():
        for messages in chats:
            prompt = tok.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True)
            full = tok.apply_chat_template(messages, tokenize=True)
            prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
            full = list(full["input_ids"] if hasattr(full, "keys") else full)
            assert full[: len(prompt)] == prompt
            labels = [-100] * len(prompt) + full[len(prompt):]
            logits = reference(torch.tensor([full])).logits[0, :-1]
            targets = torch.tensor(labels[1:])
            total += torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="sum").item()
            count += int((targets != -100).sum())
    assert ours["tokens"] == count
    assert ours["loss"] == pytest.approx(total / count, rel=1e-3)


def test_default_gguf_read_in_place_by_onnxruntime_matches_transformers(tmp_path, run, reference):
    """Chat without WebGPU runs the built-in model's own GGUF bytes in ONNX Runtime (Q4_1 and
    Q8_0 blocks decoded by the graph, once): transformers' logits on the same file (≤ 1e-3)."""
    import shutil

    import numpy as np

    from loralab.formats import onnx
    from loralab.model.gguf_model import GGUFModel
    from loralab.onnx_export import GGUF_LOCATION, gguf_graph
    from tests.test_onnx_export import ort_run, session

    shutil.copy(default_model_path(), tmp_path / GGUF_LOCATION)
    with open(tmp_path / "model.onnx", "wb") as f:
        run(onnx.write_model(f.write, gguf_graph(GGUFModel.from_path(str(tmp_path / GGUF_LOCATION)))))
    ids = np.array([TOKENS[1]])
    logits = ort_run(session(tmp_path / "model.onnx"), ids)[0]
    with torch.no_grad():
        expected = reference(torch.tensor(ids)).logits.numpy()
    assert np.abs(logits - expected).max() <= 1e-3
