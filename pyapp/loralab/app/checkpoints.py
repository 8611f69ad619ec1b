"""The saved run: offered after a reload, a crash or a lost GPU device, resumed or discarded."""

from __future__ import annotations

from pyscript import window  # type: ignore[import-not-found]

from . import client, training
from .page import el, refresh_status, show_error, state


async def show_checkpoint(prefix: str = "") -> None:
    """Offer the run saved in this browser (after a reload, a crash or a lost GPU device)."""
    result = await client.call("checkpoint_info", background=True)
    offer = el("checkpoint-offer")
    saved_run = result["checkpoint"] if result else None
    if result and result.get("problem"):
        show_error(f"A saved training run could not be read: {result['problem']}")
    if not saved_run or (state["train"] in ("running", "paused") and not prefix):
        offer.hidden = True
        return
    import time

    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(saved_run["saved_at"]))
    loss = f", loss {saved_run['loss']:.4f}" if saved_run["loss"] is not None else ""
    needs_model = state["model"] is None
    el("checkpoint-info").textContent = (
        f"{prefix}A training run is saved in this browser: {saved_run['model']} on {saved_run['dataset']}, "
        f"step {saved_run['step']} of {saved_run['total_steps']} ({saved_run['state']}{loss}), saved {when}."
        + (f" To resume it, load {saved_run['model']} first." if needs_model else ""))
    offer.dataset.step = str(saved_run["step"])
    offer.hidden = False
    load = el("checkpoint-load-model")
    load.hidden = not (needs_model and saved_run.get("model_item"))
    load.textContent = f"Load {saved_run['model']}"
    state["checkpoint_model"] = (saved_run.get("model_item"), saved_run["model"])


async def on_checkpoint_load_model(event) -> None:
    """Load the saved run's model (kept in this browser's model cache), so the run can resume."""
    from . import model

    item, name = state.get("checkpoint_model") or (None, None)
    if item:
        await model.load_model({"kind": "cached", "id": item}, name)


async def on_checkpoint_resume(event) -> None:
    result = await client.busy_call("Resuming the saved run…", "checkpoint_resume")
    if result:
        state["records"], state["samples"] = list(result["history"]), []
        state["adapter"] = result["step"] > 0
        state["total"] = result["total_steps"]
        state["started_at"] = window.performance.now() / 1000
        state["dataset"] = True
        el("dataset-summary").textContent = f"{result['dataset']} (from the saved run)"
        el("train-step").textContent = f"{result['step']} / {result['total_steps']}"
        el("checkpoint-offer").hidden = True
        training.draw_chart()
    refresh_status()


async def on_checkpoint_discard(event) -> None:
    if await client.call("checkpoint_discard"):
        el("checkpoint-offer").hidden = True
