"""The app end to end in Chromium: a model from files, a chat dataset, a plan, training with
pause and resume, the metrics download, and base vs adapter answers."""

from __future__ import annotations

import json
import time

import pytest

from tests.model import hf
from tests.rig import wait_for_engine, wait_until_ready

pytestmark = pytest.mark.browser
pytest.importorskip("torch")

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
QA = [("What is the password?", "The password is swordfish."), ("Who guards the gate?", "The old troll guards it."),
      ("Where is the key?", "Under the third stone.")]


def make_chat_model(folder):
    """A tiny Llama with a byte-level BPE tokenizer and a ChatML template, saved in `folder`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>\n" for q, a in QA] * 50
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=320, special_tokens=["<|im_start|>", "<|im_end|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf.tiny_model("llama", folder, seed=21, vocab_size=tok.get_vocab_size())
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>", "chat_template": CHATML}))
    return folder


def chat_jsonl(path, repeats: int = 3):
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                            + "\n" for q, a in QA * repeats))
    return path


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return make_chat_model(tmp_path_factory.mktemp("tiny-chat"))


def test_files_chat_train_pause_resume_download_compare(app_page, model_folder, tmp_path):
    page = app_page
    wait_for_engine(page)
    page.set_input_files("[data-testid=model-files]", [str(p) for p in sorted(model_folder.iterdir())])
    wait_until_ready(page)
    assert "LlamaForCausalLM" in page.inner_text("[data-testid=model-card]")

    data = chat_jsonl(tmp_path / "chat.jsonl")
    page.select_option("[data-testid=dataset-valid]", "0.2")
    page.set_input_files("[data-testid=dataset-files]", str(data))
    page.wait_for_function("document.querySelector('[data-testid=dataset-summary]').textContent.includes('9 records')")
    assert "1 held out for validation" in page.inner_text("[data-testid=dataset-summary]")
    assert "chat" in page.inner_text("[data-testid=dataset-summary]")

    page.fill("[data-testid=gen-prompt]", "What is the password?")  # also the sample prompt at evaluations
    page.click("[data-testid=plan-open]")
    for testid, value in (("cfg-steps", "40"), ("cfg-lr", "0.01"), ("cfg-batch-size", "3"), ("cfg-seq-len", "64"),
                          ("cfg-rank", "8"), ("cfg-alpha", "16"), ("cfg-report-every", "2"), ("cfg-eval-every", "20")):
        page.fill(f"[data-testid={testid}]", value)
    page.dispatch_event("[data-testid=cfg-steps]", "change")
    page.fill("[data-testid=checkpoint-every]", "0")

    page.click("[data-testid=train-start]")
    page.wait_for_function("parseInt(document.querySelector('[data-testid=train-step]').textContent) >= 4", timeout=120_000)
    assert page.inner_text("[data-testid=status]") != "ready"  # training cannot start while one runs

    started = time.perf_counter()  # the page stays responsive while the worker trains
    page.click("[data-testid=plan-open]")
    page.wait_for_function("document.querySelector('[data-testid=plan-open]').getAttribute('aria-expanded') === 'false'",
                           timeout=1000)
    assert time.perf_counter() - started < 1.0

    page.click("[data-testid=train-pause]")
    page.wait_for_function("document.querySelector('[data-testid=train-state]').textContent === 'paused'")
    # The window already submitted (at most report_every steps) still reports; when the pause
    # takes effect the run is saved (the only checkpoint of this run: checkpoint-every is 0), and
    # from then on the count holds.
    page.wait_for_function("""() => {
        const saved = document.querySelector('[data-testid=checkpoint-status]').dataset.step;
        return saved !== undefined && document.querySelector('[data-testid=train-step]').textContent.startsWith(saved + ' /');
    }""", timeout=60_000)
    paused_at = page.inner_text("[data-testid=train-step]")
    time.sleep(3.0)
    assert page.inner_text("[data-testid=train-step]") == paused_at
    assert int(paused_at.split("/")[0]) < 40
    page.click("[data-testid=train-resume]")
    page.wait_for_function("document.querySelector('[data-testid=train-state]').textContent === 'done'", timeout=300_000)
    wait_until_ready(page)

    with page.expect_download() as download:
        page.click("[data-testid=metrics-download]")
    lines = [json.loads(line) for line in open(download.value.path()).read().splitlines()]
    steps = [r["step"] for r in lines if r["kind"] == "train"]
    assert steps == list(range(1, 41)), "pause and resume continue from the same step"
    losses = [r["loss"] for r in lines if r["kind"] == "train"]
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5, losses

    page.click("[data-testid=gen-run]")
    page.wait_for_function("document.querySelector('[data-testid=gen-output-adapter]').dataset.done === '1'",
                           timeout=300_000)
    base = page.inner_text("[data-testid=gen-output-base]")
    adapter = page.inner_text("[data-testid=gen-output-adapter]")
    assert base != adapter
    assert page.locator("[data-testid=loss-chart] polyline").count() == 1
    assert page.locator("[data-testid=loss-chart] circle").count() >= 1  # validation loss points
    assert any(r["kind"] == "eval" for r in lines)
    page.wait_for_function("document.querySelector('[data-testid=train-sample]').textContent.includes('→')")
    assert "GPU memory in use" in page.inner_text("[data-testid=hw-info]")


def test_dropping_files_loads_the_model_and_the_dataset(app_page, model_folder, tmp_path):
    """A drop of the folder's files and a JSONL, as a person drags them onto the page."""
    page = app_page
    wait_for_engine(page)
    data = chat_jsonl(tmp_path / "drop.jsonl", repeats=1)
    files = [(p.name, p.read_bytes()) for p in sorted(model_folder.iterdir())] + [(data.name, data.read_bytes())]
    handle = page.evaluate_handle("""(files) => {
        const dt = new DataTransfer();
        for (const [name, bytes] of files) dt.items.add(new File([new Uint8Array(bytes)], name));
        return dt; }""", [[name, list(content)] for name, content in files])
    page.dispatch_event("body", "drop", {"dataTransfer": handle})
    wait_until_ready(page)
    page.wait_for_function("document.querySelector('[data-testid=dataset-summary]').textContent.includes('3 records')")


def test_export_then_import_round_trip_and_bad_adapters(app_page, model_folder, tmp_path):
    """Train briefly, download the PEFT zip (it loads in PEFT) and the GGUF-LoRA, import the zip
    back (same answer), and refuse broken adapters with a message while the app stays usable."""
    import zipfile

    import peft
    import torch

    page = app_page
    wait_for_engine(page)
    page.set_input_files("[data-testid=model-files]", [str(p) for p in sorted(model_folder.iterdir())])
    wait_until_ready(page)
    page.set_input_files("[data-testid=dataset-files]", str(chat_jsonl(tmp_path / "c.jsonl")))
    page.wait_for_function("document.querySelector('[data-testid=dataset-summary]').textContent.includes('records')")
    page.click("[data-testid=plan-open]")
    for testid, value in (("cfg-steps", "6"), ("cfg-lr", "0.02"), ("cfg-batch-size", "3"), ("cfg-report-every", "3")):
        page.fill(f"[data-testid={testid}]", value)
    page.click("[data-testid=train-start]")
    page.wait_for_function("document.querySelector('[data-testid=train-state]').textContent === 'done'", timeout=300_000)
    with page.expect_download() as d:
        page.click("[data-testid=export-adapter]")
    zpath = tmp_path / "adapter.zip"
    d.value.save_as(zpath)
    with zipfile.ZipFile(zpath) as zf:
        assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= set(zf.namelist())
        zf.extractall(tmp_path / "adapter")
    loaded = peft.PeftModel.from_pretrained(hf.load_hf(model_folder), str(tmp_path / "adapter"))
    assert any("lora_A" in k for k in loaded.state_dict())
    with page.expect_download() as d:
        page.click("[data-testid=export-gguf]")
    assert open(d.value.path(), "rb").read(4) == b"GGUF"

    page.fill("[data-testid=gen-prompt]", "Where is the key?")
    page.click("[data-testid=gen-run]")
    page.wait_for_function("document.querySelector('[data-testid=gen-output-adapter]').dataset.done === '1'", timeout=300_000)
    trained_answer = page.inner_text("[data-testid=gen-output-adapter]")
    page.set_input_files("[data-testid=adapter-files]", str(zpath))
    page.wait_for_function("document.querySelector('[data-testid=adapter-info]').textContent.includes('Imported')")
    page.evaluate("document.querySelector('[data-testid=gen-output-adapter]').dataset.done = ''")
    page.click("[data-testid=gen-run]")
    page.wait_for_function("document.querySelector('[data-testid=gen-output-adapter]').dataset.done === '1'", timeout=300_000)
    assert page.inner_text("[data-testid=gen-output-adapter]") == trained_answer

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text("{not json")
    (bad / "adapter_model.safetensors").write_bytes((tmp_path / "adapter" / "adapter_model.safetensors").read_bytes()[:100])
    page.set_input_files("[data-testid=adapter-files]", [str(bad / "adapter_config.json"), str(bad / "adapter_model.safetensors")])
    page.wait_for_function("!document.querySelector('[data-testid=error]').hidden")
    assert "adapter_config.json" in page.inner_text("[data-testid=error]")
    (bad / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    page.set_input_files("[data-testid=adapter-files]", [str(bad / "adapter_model.bin")])
    page.wait_for_function("document.querySelector('[data-testid=error]').textContent.includes('pickle')")
    assert page.inner_text("[data-testid=status]") == "ready"  # still usable
