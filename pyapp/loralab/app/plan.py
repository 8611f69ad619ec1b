"""The plan panel: the form generated from TrainConfig and LoraConfig (defaults and validation
live there), the weights' precision, and the memory and time estimate."""

from __future__ import annotations

from dataclasses import MISSING, fields

from pyodide.ffi import create_proxy, jsnull  # type: ignore[import-not-found]
from pyscript import document  # type: ignore[import-not-found]

from ..config import (
    CHOICES,
    DATASET_FORMATS,
    NAMED_CONFIG_LABELS,
    PROJECTIONS,
    LoraConfig,
    TrainConfig,
    option_fields,
)
from ..errors import UserError, one_line
from ..presets import preset_values
from ..presets import summary as plan_summary
from ..presets import warnings as plan_warnings
from . import client, hardware, model
from .page import el, mib, rate, refresh_status, save, saved, show_error, state

TESTID_NAMES = {"r": "rank"}  # cfg-<name> hooks; LoRA's r is "rank" in the UI


ADVANCED_FIELDS = {"beta1", "beta2", "eps"}  # (set from the CLI; the form keeps the defaults)


def plan_fields():
    for cls, group in ((TrainConfig, "train"), (LoraConfig, "lora")):
        for f in option_fields(cls):
            if f.name not in ADVANCED_FIELDS:
                yield group, f


def fill_options() -> None:
    """The dataset format and benchmark choices, from the engine's own lists (config.py)."""
    for testid, options in (("dataset-format", [("auto", "detect"), *((f, f) for f in DATASET_FORMATS)]),
                            ("hw-bench-config", [("loaded", "the loaded model"),
                                                 *((name, label if name == "tiny" else f"{label} (random weights)")
                                                   for name, label in NAMED_CONFIG_LABELS.items())])):
        select = el(testid)
        for value, text in options:
            option = document.createElement("option")
            option.value, option.textContent = value, text
            select.append(option)


def build_plan_form() -> None:
    form = el("plan-open").closest("section").querySelector("form")
    values = saved().get("plan", {})
    for group, f in plan_fields():
        default = f.default if f.default is not MISSING else None
        value = values.get(f.name, default)
        label = document.createElement("label")
        label.title = f.metadata.get("help", "")
        name = f.name.replace("_", " ")
        if f.type in ("bool", bool):
            control = document.createElement("input")
            control.type = "checkbox"
            control.checked = bool(value)
            label.className = "check"
            label.append(control, document.createTextNode(name))
        else:
            if f.name in CHOICES:
                control = document.createElement("select")
                for choice in CHOICES[f.name]:
                    option = document.createElement("option")
                    option.value = option.textContent = choice
                    control.append(option)
            else:
                control = document.createElement("input")
                if f.type in ("int", "float", int, float):
                    control.type = "number"
                    control.step = "1" if f.type in ("int", int) else "any"
            control.value = ",".join(value) if isinstance(value, (tuple, list)) else str(value)
            label.append(document.createTextNode(name), control)
        control.name = f"{group}.{f.name}"
        control.dataset.testid = "cfg-" + TESTID_NAMES.get(f.name, f.name).replace("_", "-")
        control.setAttribute("data-testid", control.dataset.testid)
        if label.title:  # the field's help, shown (touch screens have no tooltips) and read with the field
            help_text = document.createElement("small")
            help_text.className = "help"
            help_text.id = f"help-{f.name}"
            help_text.textContent = label.title
            control.setAttribute("aria-describedby", help_text.id)
            label.append(help_text)
        form.append(label)


def default_precision(f16: bool) -> None:
    """Without shader-f16 the plan's arithmetic is float32, the only choice offered. With it,
    the plan picks the faster of the two as measured on this GPU (update_estimate), until the
    person chooses one."""
    control = document.querySelector('[name="train.precision"]')
    if control is None or control is jsnull:
        return
    if not f16:
        control.value = "f32"
        control.querySelector('option[value="mixed"]').disabled = True
        control.title = "This GPU lacks shader-f16: float32 arithmetic only"
    else:
        control.addEventListener("change", create_proxy(lambda event: save(precision_chosen=True)))


def suggest_precision(measured: dict, train: TrainConfig) -> str | None:
    """The plan's words on the arithmetic; switches the form to the faster precision measured
    here unless the person chose one (returns None then it switched: estimate again)."""
    if not measured["mixed_gflops"]:
        return ""
    control = document.querySelector('[name="train.precision"]')
    if not saved().get("precision_chosen") and control.value != measured["faster"]:
        control.value = measured["faster"]
        return None
    ratio = measured["mixed_gflops"] / measured["f32_gflops"]
    return (f" Arithmetic: {train.precision} (float16 products ran {ratio:.2f}× float32's speed on this GPU; "
            f"{measured['faster']} is the faster).")


def read_plan() -> tuple[TrainConfig | None, LoraConfig | None]:
    """The plan as the two dataclasses (their own validation), or (None, None) with the error shown."""
    values = {"train": {}, "lora": {}}
    try:
        for group, f in plan_fields():
            control = document.querySelector(f'[name="{group}.{f.name}"]')
            if control is None or control is jsnull:
                continue
            if f.type in ("bool", bool):
                value = bool(control.checked)
            elif f.type in ("int", int):
                value = int(float(control.value or 0))  # (1e400 is inf: OverflowError, told as the others)
            elif f.type in ("float", float):
                value = float(control.value or 0)
            elif f.name == "targets":
                value = tuple(t.strip() for t in control.value.split(",") if t.strip()) or PROJECTIONS
            else:
                value = control.value
            values[group][f.name] = value
        return TrainConfig(**values["train"]), LoraConfig(**values["lora"])
    except (TypeError, ValueError, OverflowError, UserError) as exc:
        show_error(f"Plan: {one_line(exc)}")
        return None, None


def plan_payload(train: TrainConfig, lora: LoraConfig) -> dict:
    return {"train": {f.name: getattr(train, f.name) for f in fields(TrainConfig)},
            "lora": {f.name: list(v) if isinstance(v := getattr(lora, f.name), tuple) else v for f in fields(LoraConfig)}}


def set_fields(values: dict) -> None:
    """Plan fields by name ({"steps": 40, "r": 16, "targets": "q_proj,v_proj"}) into the form."""
    for name, value in values.items():
        control = document.querySelector(f'[name="train.{name}"]')
        if control is None or control is jsnull:
            control = document.querySelector(f'[name="lora.{name}"]')
        if control is None or control is jsnull:
            continue
        if control.type == "checkbox":
            control.checked = bool(value)
        else:
            control.value = f"{value:g}" if isinstance(value, float) else str(value)


async def on_preset(event) -> None:
    """A preset sets the plan's fields from the model, the dataset and the measured GPU
    (presets.preset_values); editing a field afterwards makes the plan custom again."""
    name = el("plan-preset").value
    if not name:
        return
    parameters = (state.get("model") or {}).get("parameters") or 0
    values = preset_values(name, state.get("train_records") or 0, state.get("longest") or 256, parameters,
                           state.get("gflops"))
    set_fields(values)
    state["plan_seen"] = True
    await update_estimate()
    refresh_status()


def show_warnings(items: list[str]) -> None:
    node = el("plan-warnings")
    node.replaceChildren()
    for text in items:
        item = document.createElement("li")
        item.textContent = text
        node.append(item)
    node.hidden = not items


async def update_estimate(event=None) -> None:
    if event is not None:  # (a field edited by hand: the plan is no longer the preset's)
        el("plan-preset").value = ""
    train, lora = read_plan()
    if train is None:
        return
    payload = plan_payload(train, lora)
    save(plan={**payload["train"], **payload["lora"]})
    from .dataset import show_lengths  # (dataset imports this module)

    show_lengths(train.seq_len)
    if state["model"] is None:
        return
    result = await client.call("plan", payload)
    if result:
        records = state.get("train_records") or 0
        state["gflops"] = result["gflops"] or None
        if result["steps"] and records:
            el("plan-summary").textContent = plan_summary(payload["train"], payload["lora"], records, result["steps"],
                                                          result["total_seconds"], result["memory"]["total"])
            show_warnings(plan_warnings(payload["train"], records, result["steps"], bool(state.get("cuts_most"))))
        else:
            el("plan-summary").textContent = "Add a dataset: the plan then says how many steps it trains and for how long."
            show_warnings([])
        m = result["memory"]
        text = (f"GPU memory: {mib(m['total'])} (weights {mib(m['weights'])}, activations {mib(m['activations'])}, "
                f"logits {mib(m['logits'])}, adapter + optimizer {mib(m['adapter_and_optimizer'])}). "
                f"About {result['step_seconds']:.2f} s per step")
        if result["steps"]:
            text += f", {result['total_seconds'] / 60:.1f} min for {result['steps']} steps"
        text += f" at this GPU's measured {rate(result['gflops'])}. Rank: {result['rank_schedule']}."
        await hardware.show_gpu_status()
        if not result["fits"]:
            text += f" This will not fit: {result['advice']}."
        words = suggest_precision(result["precision"], train)
        if words is None:  # (switched to the faster arithmetic: the estimate follows it)
            await update_estimate()
            return
        text += words
        el("plan-estimate").textContent = text
        render_precisions(result["weights"])


# What each weights choice means, for the plan's precision list.
PRECISIONS = {"auto": "as the model has them", "f32": "float32", "f16": "float16", "q8": "8-bit (Q8_0)",
              "q4": "4-bit (NF4, as QLoRA)"}


def render_precisions(weights: dict) -> None:
    """The precision list: each choice with the GPU memory its weights take; the current one selected."""
    select = el("plan-weights")
    select.innerHTML = ""
    for dtype, size in weights["choices"].items():
        option = document.createElement("option")
        option.value = dtype
        option.textContent = f"{PRECISIONS.get(dtype, dtype)}: {mib(size)}"
        option.selected = dtype == weights["current"]
        select.append(option)
    select.disabled = state["busy"] or state["train"] in ("running", "paused")


async def on_weights(event) -> None:
    """Upload the model's weights again in the chosen precision (the run and its adapter go)."""
    result = await client.busy_call("Converting the weights…", "set_weights", {"weights": el("plan-weights").value})
    if result:
        state["model"] = result["model"]
        model.render_model_card(result["model"])
    refresh_status()
    await update_estimate()


def toggle_plan(event) -> None:
    form = document.getElementById("plan-form")
    form.hidden = not form.hidden
    el("plan-open").setAttribute("aria-expanded", "false" if form.hidden else "true")
    state["plan_seen"] = True
    refresh_status()
