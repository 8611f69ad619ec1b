"""Long operations report their progress (Session.on_progress: the app's progress bar), and a
generation ends where its on_token callback says Stop."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from loralab.config import LoraConfig, TrainConfig
from loralab.errors import UsageError
from loralab.generate import Generator
from loralab.gpu.native import NativeDevice
from loralab.kernels import directory_reader
from loralab.model.weights import HFFolder, upload_weights
from loralab.session import Session
from tests.model import hf


def test_compiling_tokenizing_merging_and_onnx_writing_report_progress(tmp_path, run):
    hf.tiny_model("llama", tmp_path / "model", seed=4)
    seen: list[tuple[str, float]] = []
    session = Session()
    session.on_progress = lambda what, fraction: seen.append((what, fraction))

    async def no_tokenizer(*_):
        raise AssertionError("the tiny model has no tokenizer")

    def steps(what: str) -> list[float]:
        return [f for w, f in seen if w.startswith(what)]

    run(session.start(run(NativeDevice.create()), directory_reader()))
    compiled = steps("Compiling the GPU kernels")
    assert compiled == sorted(compiled) and compiled[-1] == 1.0 and len(compiled) > 10

    run(session.open_model(HFFolder(str(tmp_path / "model")), ("tiny", None), no_tokenizer))
    rng = np.random.default_rng(0)
    text = "".join(json.dumps({"input_ids": rng.integers(0, 96, 12).tolist()}) + "\n" for _ in range(250))
    session.use_dataset("t.jsonl", text, "tokens", seq_len=16)
    tokenized = steps("Tokenizing t.jsonl")
    assert tokenized == sorted(tokenized) and tokenized[-1] == 1.0 and len(tokenized) >= 100

    run(session.start_run(TrainConfig(steps=1, batch_size=2, seq_len=16), LoraConfig(r=2, alpha=4)))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf, zf.open("model.safetensors", "w") as entry:
        run(session.write_merged(entry.write))
    merged = steps("Merging the adapter into the model")
    assert merged == sorted(merged) and merged[-1] == 1.0 and len(merged) > 3
    assert len(zipfile.ZipFile(out).read("model.safetensors")) == session.merged_size()

    onnx = io.BytesIO()
    run(session.write_onnx(onnx.write))
    written = steps("Writing the ONNX model")
    assert written == sorted(written) and written[-1] == 1.0 and len(written) > 3 and onnx.tell() > 0

    # (While that run is going, another model does not replace its model under it.)
    assert session.run.going
    with pytest.raises(UsageError, match="loading another model waits until training is stopped"):
        run(session.open_model(HFFolder(str(tmp_path / "model")), ("another", None), no_tokenizer))
    assert session.model.reference == ("tiny", None) and session.run.going


def test_an_answer_ends_where_on_token_says_stop(gpu, ops, run, tmp_path):
    path = hf.tiny_model("llama", tmp_path / "m", seed=9)
    source = HFFolder(str(path))
    weights = run(upload_weights(gpu, source.config, source, ops))
    prompt = [5, 17, 33, 2]
    full = run(Generator(gpu, ops, source.config, weights, None, 32).generate(prompt, 12))
    seen: list[int] = []
    stopped = run(Generator(gpu, ops, source.config, weights, None, 32).generate(
        prompt, 12, on_token=lambda t: seen.append(t) or len(seen) == 3))
    assert len(full) == 12 and stopped == seen == full[:3]
