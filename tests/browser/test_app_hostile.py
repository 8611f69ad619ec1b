"""Hostile files in the app (issue 14): a model, a dataset and an adapter that are malformed or
built to hang the engine each get one line naming the file and the problem, never an internal
error, and the app stays usable: a good model, dataset and adapter load right after."""

from __future__ import annotations

import json

import pytest

from tests.hostile import files as F
from tests.hostile.test_reproducers import adapter_config, adapter_tensors, adapter_zip, gguf_with, zip_overlapping

pytestmark = pytest.mark.browser


def test_hostile_files_get_one_line_errors_and_the_app_stays_usable(app, tmp_path):
    page, shown_error = app.page, app.shown_error
    app.engine_up()

    bad_model = tmp_path / "bad-model"
    F.model_folder(bad_model, config={**F.CONFIG, "num_attention_heads": 0})
    page.set_input_files("[data-testid=model-files]", [str(p) for p in sorted(bad_model.iterdir())])
    assert "config.json" in shown_error("num_attention_heads")
    nested = tmp_path / "nested-config"
    F.model_folder(nested)
    (nested / "config.json").write_text("[" * 100_000 + "]" * 100_000)  # (the page reads it for a name too)
    page.set_input_files("[data-testid=model-files]", [str(p) for p in sorted(nested.iterdir())])
    assert "config.json" in shown_error("nested too deeply")
    (tmp_path / "deep.gguf").write_bytes(gguf_with({"general.alignment": (F.U32, 24)}))
    page.set_input_files("[data-testid=model-files]", str(tmp_path / "deep.gguf"))
    assert "deep.gguf" in shown_error("general.alignment")

    (tmp_path / "tiny.gguf").write_bytes(F.tiny_gguf())
    page.set_input_files("[data-testid=model-files]", str(tmp_path / "tiny.gguf"))
    app.wait_text("model-card", "tiny.gguf", timeout=300_000)
    app.ready()

    (tmp_path / "nested.json").write_text("[" * 100_000 + "]" * 100_000)
    page.set_input_files("[data-testid=dataset-files]", str(tmp_path / "nested.json"))
    assert "nested.json" in shown_error("nested too deeply")
    (tmp_path / "labels.jsonl").write_text('{"input_ids": [4, 5, 6], "labels": [4, 5, 99]}\n')
    page.set_input_files("[data-testid=dataset-files]", str(tmp_path / "labels.jsonl"))
    assert "labels.jsonl record 1" in shown_error("label 99")

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(adapter_tensors())
    (adapter / "adapter_config.json").write_bytes(adapter_config(rank_pattern={"(.|.)*z": 2}))
    page.set_input_files("[data-testid=adapter-files]", [str(p) for p in sorted(adapter.iterdir())])
    shown_error("could take a very long time")
    (tmp_path / "overlap.zip").write_bytes(zip_overlapping())
    page.set_input_files("[data-testid=adapter-files]", str(tmp_path / "overlap.zip"))
    assert "overlap.zip" in shown_error("overlap")
    (adapter / "adapter_model.safetensors").write_bytes(adapter_tensors(float("nan")))
    (adapter / "adapter_config.json").write_bytes(adapter_config())
    page.set_input_files("[data-testid=adapter-files]", [str(p) for p in sorted(adapter.iterdir())])
    shown_error("NaN or infinite")

    # Still usable: a good dataset and a good adapter load.
    (tmp_path / "good.jsonl").write_text("".join(json.dumps({"text": "hi ab c"}) + "\n" for _ in range(4)))
    app.use_dataset_file(tmp_path / "good.jsonl", "4 records")
    (tmp_path / "good.zip").write_bytes(adapter_zip({"adapter_model.safetensors": adapter_tensors(),
                                                     "adapter_config.json": adapter_config()}))
    page.set_input_files("[data-testid=adapter-files]", str(tmp_path / "good.zip"))
    app.wait_text("adapter-info", "Imported")
    assert app.text("status") == "ready"
