"""The app end to end in Chromium: a model from files, a chat dataset, a plan, training with
pause and resume, the metrics download, and base vs adapter answers."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.model import hf

pytestmark = pytest.mark.browser
pytest.importorskip("torch")

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
QA = [("What is the password?", "The password is swordfish."), ("Who guards the gate?", "The old troll guards it."),
      ("Where is the key?", "Under the third stone.")]


def make_chat_model(folder, kind: str = "llama"):
    """A tiny model of `kind` with a byte-level BPE tokenizer and a ChatML template, saved in `folder`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>\n" for q, a in QA] * 50
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=320, special_tokens=["<|im_start|>", "<|im_end|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf.tiny_model(kind, folder, seed=21, vocab_size=tok.get_vocab_size(), tied=kind != "phi3")
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


def current_step(page) -> str:
    return page.get_attribute("[data-testid=steps]", "data-current")


def test_files_chat_train_pause_resume_download_compare(app, model_folder, tmp_path):
    page = app.page
    app.engine_up()
    page.wait_for_function("document.querySelector('[data-testid=steps]').dataset.current === 'model'")
    assert "Load a model" in app.text("step-next")
    app.load_model_files(model_folder)
    assert "LlamaForCausalLM" in app.text("model-card") and "llama model" in app.text("model-card")
    assert current_step(page) == "data"

    app.use_dataset_file(chat_jsonl(tmp_path / "chat.jsonl"), "9 records", valid="0.2")
    assert "1 held out for validation" in app.text("dataset-summary")
    assert "chat" in app.text("dataset-summary")
    assert current_step(page) == "plan"
    assert page.locator("[data-testid=dataset-examples] tbody tr").count() == 8  # the 8 training examples
    assert page.locator("[data-testid=dataset-examples] .trained").count() > 0  # trained tokens highlighted
    assert page.is_visible(app.sel("dataset-lengths")) and page.is_visible(app.sel("dataset-examples"))
    assert page.locator("[data-testid=dataset-lengths-plot] rect").count() > 0  # the histogram's bars
    assert page.get_attribute(app.sel("dataset-lengths"), "data-cut") == "0"
    assert "None will be cut" in app.text("dataset-lengths-caption")

    page.fill("[data-testid=gen-prompt]", "What is the password?")  # also the sample prompt at evaluations
    app.set_plan({"steps": 40, "lr": 0.01, "batch-size": 3, "seq-len": 64, "rank": 8, "alpha": 16, "report-every": 2,
                  "eval-every": 20})
    page.fill("[data-testid=checkpoint-every]", "0")
    assert current_step(page) == "train"

    page.click("[data-testid=train-start]")
    page.wait_for_function("parseInt(document.querySelector('[data-testid=train-step]').textContent) >= 4", timeout=120_000)
    assert app.text("status") != "ready"  # training cannot start while one runs

    started = time.perf_counter()  # the page stays responsive while the worker trains
    page.click("[data-testid=plan-open]")
    page.wait_for_function("document.querySelector('[data-testid=plan-open]').getAttribute('aria-expanded') === 'false'",
                           timeout=1000)
    assert time.perf_counter() - started < 1.0

    page.click("[data-testid=train-pause]")
    app.wait_state("paused")
    # The window already submitted (at most report_every steps) still reports; when the pause
    # takes effect the run is saved (the only checkpoint of this run: checkpoint-every is 0), and
    # from then on the count holds.
    page.wait_for_function("""() => {
        const saved = document.querySelector('[data-testid=checkpoint-status]').dataset.step;
        return saved !== undefined && document.querySelector('[data-testid=train-step]').textContent.startsWith(saved + ' /');
    }""", timeout=60_000)
    paused_at = app.text("train-step")
    time.sleep(3.0)
    assert app.text("train-step") == paused_at
    assert int(paused_at.split("/")[0]) < 40
    page.click("[data-testid=train-resume]")
    app.wait_state("done")
    app.ready()

    lines = app.metrics()
    steps = [r["step"] for r in lines if r["kind"] == "train"]
    assert steps == list(range(1, 41)), "pause and resume continue from the same step"
    losses = [r["loss"] for r in lines if r["kind"] == "train"]
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5, losses

    assert current_step(page) == "try"
    base, adapter = app.generate()
    assert base != adapter
    assert current_step(page) == "done"
    assert re.fullmatch(r"\d+ tokens?", app.text("gen-tokens-adapter"))
    assert page.is_disabled(app.sel("gen-stop"))
    series = json.loads(page.get_attribute("[data-testid=loss-chart]", "data-series"))
    assert series["loss"] == series["smoothed loss"] == series["learning rate"] == 40, series
    assert series["validation loss"] >= 1, series
    assert page.locator("[data-testid=loss-chart] canvas").count() == 1  # uPlot drew it
    assert "training loss" in page.get_attribute("[data-testid=loss-chart]", "aria-label")
    assert any(r["kind"] == "eval" for r in lines)
    app.wait_text("train-sample", "→")
    assert page.locator("[data-testid=train-samples] li").count() >= 1  # every sample, listed
    page.wait_for_function("""JSON.parse(document.querySelector('[data-testid=loss-chart]').dataset.series)['sample answer']
        === document.querySelectorAll('[data-testid=train-samples] li').length""")  # and marked on the chart
    assert "sample answers at step" in page.get_attribute("[data-testid=loss-chart]", "aria-label")
    assert "GPU memory in use" in app.text("hw-info")

    # Stop during an answer: the answers end, what came stays, the page is ready again
    page.fill(app.sel("gen-max-tokens"), "1024")
    page.fill(app.sel("gen-temperature"), "1.5")
    page.click(app.sel("gen-run"))
    page.wait_for_selector("[data-testid=gen-stop]:not([disabled])", timeout=30_000)
    page.click(app.sel("gen-stop"))
    page.wait_for_selector("[data-testid=gen-run]:not([disabled])", timeout=300_000)
    app.ready()
    assert page.is_disabled(app.sel("gen-stop"))

    # The compare panel as a chat: the template is shown, earlier turns are listed (and, ticked, continued)
    assert "<|im_start|>" in page.text_content(app.sel("chat-template"))  # (inside a closed <details>)
    page.fill(app.sel("gen-max-tokens"), "8")
    page.fill(app.sel("gen-temperature"), "0")
    page.fill(app.sel("gen-system"), "You guard the gate.")
    page.check(app.sel("gen-history"))
    app.generate("Who guards the gate?")
    history = page.locator("[data-testid=chat-history] > li")
    assert history.count() == 2 and "What is the password?" in history.nth(0).inner_text()
    page.click(app.sel("chat-clear"))
    assert page.is_hidden(app.sel("chat-history"))


def run_rows(page, count: int, timeout: int = 600_000):
    page.wait_for_function(f"document.querySelectorAll('[data-testid=run-item]').length === {count}", timeout=timeout)
    return page.locator("[data-testid=run-item]")


def chart_series(page) -> dict:
    return json.loads(page.get_attribute("[data-testid=loss-chart]", "data-series") or "{}")


def test_runs_are_kept_overlaid_reused_and_deleted(app, model_folder, tmp_path):
    """Each run that ends is kept (plan, metrics, adapter); two runs' curves overlay on the chart,
    a past run's adapter answers in the compare panel, and the list survives a reload."""
    page = app.page
    app.engine_up()
    assert not page.locator(app.sel("runs-empty")).is_hidden()
    app.load_model_files(model_folder)
    app.use_dataset_file(chat_jsonl(tmp_path / "c.jsonl"), valid="0.2")
    app.train({"steps": 6, "lr": 0.02, "batch-size": 3, "report-every": 2, "eval-every": 3})
    run_rows(page, 1, 120_000)
    _, first_answer = app.generate("Where is the key?")
    app.set_plan({"lr": 0.001})
    page.click(app.sel("train-start"))
    rows = run_rows(page, 2)
    assert "lr 0.001" in rows.nth(0).inner_text() and "lr 0.02" in rows.nth(1).inner_text()  # newest first
    assert page.locator(app.sel("runs-empty")).is_hidden()
    for i in range(2):
        rows.nth(i).locator("[data-testid=run-overlay]").check()
    page.wait_for_function("""() => Object.keys(JSON.parse(document.querySelector('[data-testid=loss-chart]')
        .dataset.series || '{}')).filter((k) => k.endsWith(': loss')).length === 2""", timeout=60_000)
    series = chart_series(page)
    assert series["loss"] == 6 and [v for k, v in series.items() if k.endswith(": loss")] == [6, 6], series
    assert sum(1 for k in series if k.endswith(": validation")) == 2, series

    rows.nth(1).locator("[data-testid=run-use]").click()  # the first run's adapter, back in the compare panel
    app.wait_text("adapter-info", "Using the adapter of run")
    app.ready()
    _, again = app.generate("Where is the key?")
    assert again == first_answer

    page.reload()
    app.engine_up()
    rows = run_rows(page, 2, 120_000)
    rows.nth(0).locator("[data-testid=run-delete]").click()
    rows = run_rows(page, 1, 60_000)
    assert "lr 0.02" in rows.nth(0).inner_text()


def test_dropping_files_loads_the_model_and_the_dataset(app, model_folder, tmp_path):
    """A drop of the folder's files and a JSONL, as a person drags them onto the page."""
    app.engine_up()
    app.drop(sorted(model_folder.iterdir()) + [chat_jsonl(tmp_path / "drop.jsonl", repeats=1)])
    app.ready()
    app.wait_text("dataset-summary", "3 records")


def test_export_then_import_round_trip_and_bad_adapters(app, model_folder, tmp_path):
    """Train briefly, download the PEFT zip (it loads in PEFT) and the GGUF-LoRA, import the zip
    back (same answer), and refuse broken adapters with a message while the app stays usable."""
    import zipfile

    import peft
    import torch  # noqa: F401 (PEFT's backend)

    page = app.page
    app.engine_up()
    app.load_model_files(model_folder)
    app.use_dataset_file(chat_jsonl(tmp_path / "c.jsonl"))
    app.train({"steps": 6, "lr": 0.02, "batch-size": 3, "report-every": 3})
    zpath = app.download("export-adapter", tmp_path / "adapter.zip")
    assert app.download_name.startswith("llama-model")  # (loose files: named from their config.json)
    with zipfile.ZipFile(zpath) as zf:
        assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= set(zf.namelist())
        zf.extractall(tmp_path / "adapter")
    loaded = peft.PeftModel.from_pretrained(hf.load_hf(model_folder), str(tmp_path / "adapter"))
    assert any("lora_A" in k for k in loaded.state_dict())
    assert app.download("export-gguf").read_bytes()[:4] == b"GGUF"

    _, trained_answer = app.generate("Where is the key?")
    page.set_input_files("[data-testid=adapter-files]", str(zpath))
    app.wait_text("adapter-info", "Imported")
    assert app.generate()[1] == trained_answer

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text("{not json")
    (bad / "adapter_model.safetensors").write_bytes((tmp_path / "adapter" / "adapter_model.safetensors").read_bytes()[:100])
    page.set_input_files("[data-testid=adapter-files]", [str(bad / "adapter_config.json"), str(bad / "adapter_model.safetensors")])
    assert "adapter_config.json" in app.shown_error("adapter_config.json")
    (bad / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    page.set_input_files("[data-testid=adapter-files]", [str(bad / "adapter_model.bin")])
    app.shown_error("pickle")
    assert app.text("status") == "ready"  # still usable


def test_the_plan_offers_each_weight_precision_and_trains_with_nf4(app, model_folder, tmp_path):
    """The plan lists every precision with its memory; choosing 4-bit converts the loaded model's
    weights on the GPU (the card says NF4), and training runs on them."""
    page = app.page
    app.engine_up()
    app.load_model_files(model_folder)
    page.wait_for_function("document.querySelectorAll('[data-testid=plan-weights] option').length === 5")
    options = page.eval_on_selector_all("[data-testid=plan-weights] option", "os => os.map(o => [o.value, o.textContent])")
    assert [v for v, _ in options] == ["auto", "f32", "f16", "q8", "q4"]
    assert page.input_value("[data-testid=plan-weights]") == "auto"
    assert all(re.search(r"\d (KiB|MiB)$", text) for _, text in options), options
    page.select_option("[data-testid=plan-weights]", "q4")
    app.wait_text("model-card", "NF4")
    app.ready()
    assert page.input_value("[data-testid=plan-weights]") == "q4"
    app.use_dataset_file(chat_jsonl(tmp_path / "chat.jsonl"))
    app.train({"steps": 4, "batch-size": 3, "report-every": 2})
    losses = [r["loss"] for r in app.metrics() if r["kind"] == "train"]
    assert len(losses) == 4 and all(0 < x < 20 for x in losses)


def test_a_k_quant_gguf_stays_quantized_and_exports_merged_as_a_requantized_gguf(app, tmp_path):
    """A llama.cpp-style GGUF (Q4_K, Q6_K, Q8_0) loads with its types kept (the card lists them);
    with a PEFT adapter imported, "Download merged model" as GGUF Q8_0 gives the base file with
    the adapted matrices re-quantized and every other tensor as it was."""
    gguf = pytest.importorskip("gguf")
    import numpy as np
    from safetensors.numpy import save_file

    from tests.model.test_qlora import HIDDEN, k_quant_gguf

    page = app.page
    app.engine_up()
    k_quant_gguf(tmp_path / "mix.gguf")
    app.load_model_files(tmp_path / "mix.gguf")
    for kind in ("Q4_K", "Q6_K", "Q8_0"):
        app.wait_text("model-card", kind)
    rng = np.random.default_rng(0)
    base = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{base}.lora_A.weight": (rng.standard_normal((2, HIDDEN)) * 0.05).astype(np.float32),
               f"{base}.lora_B.weight": (rng.standard_normal((HIDDEN, 2)) * 0.05).astype(np.float32)},
              str(tmp_path / "adapter_model.safetensors"))
    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}))
    app.drop([tmp_path / "adapter_config.json", tmp_path / "adapter_model.safetensors"])
    app.wait_text("adapter-info", "Imported")
    page.select_option("[data-testid=export-merged-format]", "Q8_0")
    path = app.download("export-merged", tmp_path / "merged.gguf")
    assert path.read_bytes()[:4] == b"GGUF"
    before = {t.name: t for t in gguf.GGUFReader(tmp_path / "mix.gguf").tensors}
    after = {t.name: t for t in gguf.GGUFReader(path).tensors}
    assert list(after) == list(before)
    assert after["blk.0.attn_q.weight"].tensor_type.name == "Q8_0"
    for name, t in after.items():
        if name != "blk.0.attn_q.weight":
            assert bytes(t.data) == bytes(before[name].data), name


@pytest.mark.parametrize("kind", ["gemma3", "phi3", "gpt2"])
def test_the_new_families_train_in_the_page_and_export_for_peft(app, tmp_path, kind):
    """Gemma 3 (sliding window shorter than the chats), Phi-3 (fused projections) and GPT-2
    (Conv1D weights transposed on the GPU as they load) come from dropped folders, train, and the
    downloaded adapter loads in PEFT with every LoRA tensor."""
    import zipfile

    import peft
    from safetensors.torch import load_file

    folder = make_chat_model(tmp_path / kind, kind)
    app.engine_up()
    app.load_model_files(folder)
    app.wait_text("model-card", {"gemma3": "Gemma3ForCausalLM", "phi3": "Phi3ForCausalLM",
                                 "gpt2": "GPT2LMHeadModel"}[kind])
    app.wait_text("model-card", {"gemma3": "sliding window of 4 tokens on 1 of 2 layers",
                                 "phi3": "fused qkv_proj and gate_up_proj", "gpt2": "learned positions up to 256"}[kind])
    app.use_dataset_file(chat_jsonl(tmp_path / "chat.jsonl"))
    app.train({"steps": 2, "batch-size": 3, "report-every": 1})
    losses = [r["loss"] for r in app.metrics() if r["kind"] == "train"]
    assert len(losses) == 2 and all(0 < x < 20 for x in losses)
    with zipfile.ZipFile(app.download("export-adapter")) as zf:
        zf.extractall(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    model = peft.get_peft_model(hf.load_hf(folder), peft.LoraConfig(
        r=config["r"], lora_alpha=config["lora_alpha"], target_modules=config["target_modules"]))
    result = peft.set_peft_model_state_dict(model, load_file(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert not result.unexpected_keys and not [k for k in result.missing_keys if "lora_" in k]


def test_dora_and_adaptive_rank_train_in_the_page_and_load_in_peft(app, model_folder, tmp_path):
    """The plan's DoRA box: the run trains magnitudes too; the downloaded adapter says use_dora,
    holds every magnitude and loads in PEFT; the GGUF-LoRA download is refused with a message.
    Then rank schedule adaptive: the console's rank falls to the target, the rank map shows each
    layer's ranks, and the download is a PEFT AdaLoRA adapter that PEFT loads."""
    import zipfile

    import peft
    import torch  # noqa: F401 (PEFT's backend)

    page = app.page
    app.engine_up()
    app.load_model_files(model_folder)
    app.use_dataset_file(chat_jsonl(tmp_path / "c.jsonl"))
    app.set_plan({"steps": 3, "lr": 0.02, "batch-size": 3, "report-every": 1})
    page.check(app.sel("cfg-use-dora"))
    page.dispatch_event(app.sel("cfg-use-dora"), "change")
    page.click(app.sel("train-start"))
    app.wait_state("done")
    with zipfile.ZipFile(app.download("export-adapter", tmp_path / "dora.zip")) as zf:
        zf.extractall(tmp_path / "dora")
    config = json.loads((tmp_path / "dora" / "adapter_config.json").read_text())
    assert config["use_dora"] is True
    loaded = peft.PeftModel.from_pretrained(hf.load_hf(model_folder), str(tmp_path / "dora"))
    assert any("lora_magnitude_vector" in k for k in loaded.state_dict())
    page.click(app.sel("export-gguf"))
    app.shown_error("DoRA")

    page.uncheck(app.sel("cfg-use-dora"))
    page.select_option(app.sel("cfg-rank-schedule"), "adaptive")
    app.set_plan({"steps": 6, "rank": 4, "target-r": 2, "tinit": 1, "tfinal": 2})
    page.click(app.sel("train-start"))
    page.wait_for_selector(app.sel("rank-map") + " table", timeout=600_000)  # (the map comes with the end)
    app.wait_state("done")
    assert page.text_content(app.sel("train-rank")) == "2.0"
    cells = page.eval_on_selector_all(app.sel("rank-map") + " tbody td", "tds => tds.map(td => +td.textContent)")
    assert len(cells) == 2 * 7 and sum(cells) == 2 * 14  # tiny model: 2 layers × 7 projections, 2 on average
    with zipfile.ZipFile(app.download("export-adapter", tmp_path / "ada.zip")) as zf:
        zf.extractall(tmp_path / "ada")
    config = json.loads((tmp_path / "ada" / "adapter_config.json").read_text())
    assert config["peft_type"] == "ADALORA" and config["init_r"] == 4
    assert sorted(sum(v) for v in config["rank_pattern"].values()) == sorted(cells)
    peft.PeftModel.from_pretrained(hf.load_hf(model_folder), str(tmp_path / "ada"))

    # "Run on a GPU server": the same plan as a TRL + PEFT recipe, with the differences listed
    with zipfile.ZipFile(app.download("export-recipe", tmp_path / "recipe.zip")) as zf:
        names = set(zf.namelist())
        plan = json.loads(zf.read("loralab.json"))
    assert {"train.py", "README.md", "requirements.txt", "data/c.jsonl", "data/train.tokens.jsonl",
            "accelerate/fsdp.yaml", "accelerate/deepspeed_zero3.yaml"} <= names
    assert plan["peft_kwargs"]["peft_type"] == "ADALORA" and plan["peft_kwargs"]["init_r"] == 4
    assert plan["sft_kwargs"]["max_steps"] == 6
    page.wait_for_selector(app.sel("recipe-notes") + " li")
    assert "update_and_allocate" in page.text_content(app.sel("recipe-notes"))


def test_the_plan_speaks_plainly_and_the_page_fits_a_phone(app, model_folder, tmp_path):
    """The plan says in one paragraph what it trains and for how long; a preset fills the fields
    from the data and the GPU; a risky learning rate is called out; Edit plan shows and hides the
    fields. At 390 px (and 1280 px) the page never scrolls sideways, even with an answer that is
    one long word."""
    page = app.page
    app.engine_up()
    app.load_model_files(model_folder)
    app.use_dataset_file(chat_jsonl(tmp_path / "c.jsonl"))
    app.wait_text("plan-summary", "examples")
    assert "Trains r = 8 adapters" in page.text_content(app.sel("plan-summary"))
    page.select_option(app.sel("plan-preset"), "quick")
    app.wait_text("plan-summary", "all attention projections")
    assert page.input_value(app.sel("cfg-lr")) == "0.0003" and page.input_value(app.sel("cfg-rank")) == "8"
    assert page.input_value(app.sel("cfg-steps")) == "3"  # one epoch: 9 examples, 4 a step
    assert page.input_value(app.sel("plan-preset")) == "quick"

    assert not page.is_visible(app.sel("cfg-steps"))
    page.click(app.sel("plan-open"))
    assert page.is_visible(app.sel("cfg-steps"))
    app.set_plan({"lr": "-1"})  # the dataclass's own check, said as one line
    assert "Plan: lr is -1; it must be at least 0" in app.shown_error("lr is -1")
    app.set_plan({"lr": "0.05"})
    app.wait_text("plan-warnings", "far above the usual")
    assert page.input_value(app.sel("plan-preset")) == ""  # edited by hand: custom again
    page.click(app.sel("plan-open"))
    assert not page.is_visible(app.sel("cfg-steps"))

    page.evaluate("document.querySelector('[data-testid=gen-output-adapter]').textContent = 'x'.repeat(4000)")
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_timeout(100)
        wide = page.evaluate("""(w) => [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > w)
            .map(e => (e.dataset.testid || e.id || e.tagName) + ':' + Math.round(e.getBoundingClientRect().right)).slice(0, 12)""", width)
        assert page.evaluate("document.documentElement.scrollWidth") <= width, f"sideways scroll at {width} px: {wide}"


AXE = Path(__file__).resolve().parents[2] / "node_modules" / "axe-core" / "axe.min.js"


def test_axe_finds_no_serious_accessibility_problems(app, model_folder, tmp_path):
    """axe-core (WCAG 2 A/AA rules) over the page with a model, a dataset, the plan's fields open
    and a trained adapter: no serious or critical violations."""
    page = app.page
    app.engine_up()
    app.load_model_files(model_folder)
    app.use_dataset_file(chat_jsonl(tmp_path / "c.jsonl"))
    app.train({"steps": 2, "batch-size": 3, "report-every": 1})
    page.add_script_tag(path=str(AXE))
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        result = page.evaluate("""() => axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa']}})
            .then(r => r.violations.map(v => ({id: v.id, impact: v.impact,
                                               nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))})))""")
        bad = [v for v in result if v["impact"] in ("serious", "critical")]
        assert not bad, f"at {width} px: {bad}"
    page.evaluate("document.querySelector('main').append(document.createElement('button'))")  # the audit bites
    ids = page.evaluate("() => axe.run(document, {runOnly: ['button-name']}).then(r => r.violations.map(v => v.id))")
    assert ids == ["button-name"]
