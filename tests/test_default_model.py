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
