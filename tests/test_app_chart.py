"""The training chart's content (loralab.app.chart): series, alignment of runs on one step axis,
smoothing, log-scale floors and the accessible description. uPlot draws it in the page
(tests/browser/test_app_flow.py)."""

from __future__ import annotations

import math

from loralab.app.chart import FLOOR, chart_spec, describe, smoothed


def records(losses: dict[int, float], evals: dict[int, float] = {}, lr: float = 1e-3) -> list[dict]:
    out = [{"kind": "train", "step": s, "loss": v, "lr": lr * s} for s, v in losses.items()]
    return out + [{"kind": "eval", "step": s, "loss": v} for s, v in evals.items()]


def series(spec: dict) -> dict[str, list]:
    return {s["label"]: s["data"] for s in spec["series"]}


def test_smoothing_is_a_debiased_moving_average():
    assert smoothed([2.0]) == [2.0]  # debiased: the first value is itself
    values = [4.0, 2.0, 3.0, 1.0]
    avg, expect = 0.0, []
    for i, v in enumerate(values, 1):
        avg = 0.9 * avg + 0.1 * v
        expect.append(avg / (1 - 0.9 ** i))
    assert all(math.isclose(a, b) for a, b in zip(smoothed(values), expect))


def test_series_of_one_run():
    spec = chart_spec(records({1: 3.0, 2: 2.5, 3: 2.0}, {3: 2.2}), [], log=False)
    assert spec["x"] == [1, 2, 3]
    got = series(spec)
    assert got["loss"] == [3.0, 2.5, 2.0]
    assert got["validation loss"] == [None, None, 2.2]
    assert got["learning rate"] == [1e-3, 2e-3, 3e-3]
    assert got["smoothed loss"][0] == 3.0 and 2.0 < got["smoothed loss"][-1] < 3.0
    by_label = {s["label"]: s for s in spec["series"]}
    assert by_label["validation loss"]["points_only"] and by_label["learning rate"]["axis"] == "lr"


def test_overlays_share_the_step_axis():
    other = {"name": "run A", "records": records({2: 4.0, 4: 3.0, 6: 2.0}, {6: 2.5})}
    spec = chart_spec(records({1: 3.0, 2: 2.5}), [other], log=False)
    assert spec["x"] == [1, 2, 4, 6]
    got = series(spec)
    assert got["loss"] == [3.0, 2.5, None, None]
    assert got["run A: loss"] == [None, 4.0, 3.0, 2.0]
    assert got["run A: validation"] == [None, None, None, 2.5]
    assert "run A: 2 at step 6" in describe(records({1: 3.0}), [other])


def test_sample_answers_are_marked_on_the_smoothed_curve_with_their_text():
    samples = [{"step": 2, "text": "The key is\nunder the mat."}, {"step": 3, "text": "x" * 200}]
    spec = chart_spec(records({1: 3.0, 2: 2.5, 3: 2.0}), [], log=False, samples=samples)
    mark = next(s for s in spec["series"] if s["label"] == "sample answer")
    smooth = series(spec)["smoothed loss"]
    assert mark["points_only"] and mark["data"] == [None, smooth[1], smooth[2]]
    assert mark["notes"][:2] == [None, "The key is under the mat."]
    assert len(mark["notes"][2]) == 80 and mark["notes"][2].endswith("…")
    assert "sample answers at step 2, 3" in describe(records({1: 3.0}), [], samples)
    # A sample between reported steps sits on the last reported value before it.
    spec = chart_spec(records({2: 2.5, 4: 2.0}), [], log=False, samples=[{"step": 3, "text": ""}])
    mark = next(s for s in spec["series"] if s["label"] == "sample answer")
    assert spec["x"] == [2, 3, 4] and mark["data"][1] == series(spec)["smoothed loss"][0]
    assert mark["notes"][1] == "(an empty answer)"


def test_log_scale_floors_zero_and_drops_non_finite():
    got = series(chart_spec(records({1: 0.0, 2: float("nan"), 3: 1.0}), [], log=True))
    assert got["loss"] == [FLOOR, None, 1.0]


def test_empty():
    spec = chart_spec([], [], log=False)
    assert spec["x"] == [] and spec["series"] == []
    assert describe([], []) == "Loss by step: no steps yet"


def test_length_histogram_counts_what_the_sequence_cuts():
    from loralab.app.chart import length_histogram

    h = length_histogram([10, 20, 30, 250, 600], seq_len=256, bins=6)
    assert h["top"] == 600 and h["width"] == 100 and h["counts"] == [3, 0, 1, 0, 0, 1]
    assert h["cut"] == 1 and sum(h["counts"]) == 5
    h = length_histogram([5, 7], seq_len=64, bins=8)  # short data: the axis still reaches the sequence length
    assert h["top"] == 64 and h["width"] == 8 and h["counts"][0] == 2 and h["cut"] == 0
