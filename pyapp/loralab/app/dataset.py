"""The dataset panel: a dropped or pasted dataset, its summary and the first example's trained tokens."""

from __future__ import annotations

from pyscript import document  # type: ignore[import-not-found]

from . import cache, client, plan
from .page import el, refresh_status, show_error, state


async def use_dataset(name: str, text: str) -> None:
    train, _ = plan.read_plan()
    result = await client.call("set_dataset", {"name": name, "text": text, "format": el("dataset-format").value,
                                        "seq_len": train.seq_len if train else 256,
                                        "valid_fraction": float(el("dataset-valid").value)})
    state["dataset"] = bool(result)
    if result:
        s = result["summary"]
        el("dataset-summary").textContent = (
            f"{name}: {s['records']:,} records, format {s['format']}"
            f"{' (detected)' if s['detected'] else ''}, {s['tokens']:,} tokens, "
            f"{s['trained_fraction']:.0%} of them trained, {s['truncated']} truncated"
            + (f"; {s['validation_records']} held out for validation" if s["validation_records"] else "")
            + "".join(f"; {note}" for note in s["notes"]))
        state["cuts_most"] = s["cuts_most"]
        state["train_records"], state["longest"] = result["train_records"], result["longest"]
        preview = el("dataset-preview")
        preview.replaceChildren()
        for item in result["preview"]:
            span = document.createElement("span")
            span.textContent = item["token"]
            if item["trained"]:
                span.className = "trained"
            preview.append(span)
    refresh_status()
    if result:
        await cache.render_cache()
        await plan.update_estimate()


async def on_dataset_file(event) -> None:
    files = event.target.files
    if files.length:
        f = files.item(0)
        await use_dataset(f.name, await f.text())


async def on_dataset_text(event) -> None:
    text = el("dataset-text").value
    if not text.strip():
        show_error("Paste some data first (JSONL, or plain text).")
        return
    await use_dataset("pasted.jsonl" if text.lstrip().startswith("{") else "pasted.txt", text)


async def on_dataset_typed(event) -> None:
    """Pasted or typed data is used as soon as the typing pauses (the button does it at once)."""
    import asyncio

    state["typed"] = state.get("typed", 0) + 1
    mine = state["typed"]
    await asyncio.sleep(0.6)
    if mine == state["typed"] and el("dataset-text").value.strip() and state["model"] is not None:
        await on_dataset_text(event)
