"""The dataset panel: a dropped or pasted dataset, its summary and the first example's trained tokens."""

from __future__ import annotations

from pyscript import document  # type: ignore[import-not-found]

from . import cache, client, plan
from .chart import length_histogram
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
        el("dataset-preview").replaceChildren(*token_spans(result["preview"]))
        state["lengths"] = result["lengths"]
        show_examples(result["examples"])
        show_lengths(train.seq_len if train else 256)
    refresh_status()
    if result:
        await cache.render_cache()
        await plan.update_estimate()


def token_spans(tokens: list[dict]) -> list:
    """Tokens as spans, the trained ones (those the loss is taken on) highlighted."""
    spans = []
    for item in tokens:
        span = document.createElement("span")
        span.textContent = item["token"]
        if item["trained"]:
            span.className = "trained"
        spans.append(span)
    return spans


def show_examples(examples: list[dict]) -> None:
    """The first examples as the model sees them: length, trained tokens, the text token by token."""
    body = el("dataset-examples").querySelector("tbody")
    body.replaceChildren()
    for number, example in enumerate(examples, 1):
        row = body.insertRow()
        for text in (str(number), f"{example['tokens']:,}", f"{example['trained']:,}"):
            row.insertCell().textContent = text
        cell = row.insertCell()
        cell.className = "preview"
        cell.append(*token_spans(example["preview"]))
        if len(example["preview"]) < example["tokens"]:
            cell.append(document.createTextNode(" …"))
    el("dataset-examples-wrap").hidden = not examples


def show_lengths(seq_len: int) -> None:
    """The histogram of the examples' token lengths against the plan's sequence length, and how
    many examples training will cut."""
    lengths = state.get("lengths") or []
    figure = el("dataset-lengths")
    figure.hidden = not lengths
    if not lengths:
        return
    h = length_histogram(lengths, seq_len)
    peak = max(h["counts"]) or 1
    w, height, bars = 600, 120, len(h["counts"])
    svg = [f'<svg viewBox="0 0 {w} {height}" role="img" aria-labelledby="dataset-lengths-caption" '
           f'preserveAspectRatio="none" class="histogram">']
    for i, count in enumerate(h["counts"]):
        x, bh = i * w / bars, height * count / peak
        cut = (i + 1) * h["width"] > seq_len
        svg.append(f'<rect x="{x + 1:.1f}" y="{height - bh:.1f}" width="{w / bars - 2:.1f}" height="{bh:.1f}" '
                   f'class="{"cut" if cut else "kept"}"><title>{i * h["width"]:,}–{(i + 1) * h["width"] - 1:,} tokens: '
                   f'{count:,} examples</title></rect>')
    x = min(w - 1, w * seq_len / (bars * h["width"]))
    svg.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{height}" class="limit"/></svg>'
               f'<div class="axis"><span>0</span><span>{bars * h["width"]:,} tokens</span></div>')
    el("dataset-lengths-plot").innerHTML = "".join(svg)
    cut = h["cut"]
    el("dataset-lengths-caption").textContent = (
        f"Token lengths of the {len(lengths):,} examples; the line is the sequence length ({seq_len:,}). "
        + (f"{cut:,} example{'s' if cut != 1 else ''} ({cut / len(lengths):.0%}) will be cut to it."
           if cut else "None will be cut."))
    figure.dataset.cut = str(cut)


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
