"""The training chart's content: which series, their values per step, how each is drawn. Plain
Python (no page access), so it is tested on CPython; static/chart.js hands the spec to uPlot."""

from __future__ import annotations

import math

SMOOTHING = 0.9  # the smoothed loss: an exponential moving average, debiased (TensorBoard's)
OVERLAY_COLORS = ("#d97706", "#0891b2", "#db2777", "#65a30d", "#7c3aed")
FLOOR = 1e-9  # a log scale cannot show 0


def smoothed(values: list[float], weight: float = SMOOTHING) -> list[float]:
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** i))
    return out


def _column(steps: list[int], points: dict[int, float], log: bool) -> list[float | None]:
    def value(v: float | None) -> float | None:
        if v is None or not math.isfinite(v):
            return None
        return max(v, FLOOR) if log else v

    return [value(points.get(s)) for s in steps]


def curves(records: list[dict]) -> tuple[dict[int, float], dict[int, float], dict[int, float]]:
    """A run's training loss, validation loss and learning rate by step."""
    train = {int(r["step"]): float(r["loss"]) for r in records if r.get("kind") == "train"}
    evals = {int(r["step"]): float(r["loss"]) for r in records if r.get("kind") == "eval"}
    lr = {int(r["step"]): float(r["lr"]) for r in records if r.get("kind") == "train" and r.get("lr") is not None}
    return train, evals, lr


def chart_spec(records: list[dict], overlays: list[dict], log: bool, height: int = 240,
               samples: list[dict] = ()) -> dict:
    """{"x", "log", "height", "series": [{label, data, axis, css | color, points_only?, dash?,
    notes?}]}: this run's loss, smoothed loss, validation loss (points), its sample answers
    ({"step", "text"}: marks on the smoothed curve whose hover readout is the answer, `notes`)
    and learning rate (right axis), then each overlaid run ({"name", "records"}) as a dashed
    loss line and its validation points."""
    train, evals, lr = curves(records)
    others = [(o["name"], *curves(o["records"])[:2]) for o in overlays]
    answers = {int(a["step"]): str(a["text"]) for a in samples}
    steps = sorted(set(train) | set(evals) | set(answers) | {s for _, t, e in others for s in (*t, *e)})
    series = []
    if train:
        order = sorted(train)
        ema = dict(zip(order, smoothed([train[s] for s in order])))
        series += [{"label": "loss", "data": _column(steps, train, log), "axis": "y", "css": "--accent", "width": 1},
                   {"label": "smoothed loss", "data": _column(steps, ema, log), "axis": "y", "css": "--fg", "width": 2}]
    if evals:
        series.append({"label": "validation loss", "data": _column(steps, evals, log), "axis": "y", "css": "--ok",
                       "points_only": True})
    if answers and train:
        order = sorted(train)
        ema = dict(zip(order, smoothed([train[s] for s in order])))
        at = {s: ema[max((t for t in order if t <= s), default=order[0])] for s in answers}
        series.append({"label": "sample answer", "data": _column(steps, at, log), "axis": "y", "css": "--mark",
                       "points_only": True, "notes": [_note(answers[s]) if s in answers else None for s in steps]})
    if lr:
        series.append({"label": "learning rate", "data": _column(steps, lr, False), "axis": "lr", "css": "--muted",
                       "dash": [4, 4], "width": 1})
    for i, (name, t, e) in enumerate(others):
        color = OVERLAY_COLORS[i % len(OVERLAY_COLORS)]
        series.append({"label": f"{name}: loss", "data": _column(steps, t, log), "axis": "y", "color": color,
                       "dash": [6, 4], "width": 1.5})
        if e:
            series.append({"label": f"{name}: validation", "data": _column(steps, e, log), "axis": "y",
                           "color": color, "points_only": True})
    return {"x": steps, "log": log, "height": height, "series": series}


def _note(text: str, most: int = 80) -> str:
    text = " ".join(text.split()) or "(an empty answer)"
    return text if len(text) <= most else text[:most - 1] + "…"


def describe(records: list[dict], overlays: list[dict], samples: list[dict] = ()) -> str:
    """The chart in words (its accessible name)."""
    train, evals, _ = curves(records)
    parts = []
    if train:
        first, last = min(train), max(train)
        parts.append(f"training loss {train[first]:.4g} at step {first}, {train[last]:.4g} at step {last}")
    if evals:
        last = max(evals)
        parts.append(f"validation loss {evals[last]:.4g} at step {last}")
    if samples:
        parts.append("sample answers at step " + ", ".join(str(a["step"]) for a in samples))
    for o in overlays:
        t, _, _ = curves(o["records"])
        if t:
            parts.append(f"{o['name']}: {t[max(t)]:.4g} at step {max(t)}")
    return "Loss by step: " + ("; ".join(parts) if parts else "no steps yet")


def length_histogram(lengths: list[int], seq_len: int, bins: int = 24) -> dict:
    """Examples' token lengths in `bins` equal bins from 0 to the longest (or seq_len, whichever is
    larger): {"width", "top", "counts", "cut"}; `cut` counts the examples longer than seq_len,
    which training cuts."""
    top = max([seq_len, *lengths, 1])
    width = max(1, math.ceil(top / bins))
    counts = [0] * math.ceil(top / width)
    for n in lengths:
        counts[min(len(counts) - 1, n // width)] += 1
    return {"width": width, "top": top, "counts": counts, "cut": sum(1 for n in lengths if n > seq_len)}
