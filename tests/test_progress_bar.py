"""The page's progress bar as the engine worker feeds it (loralab.browser.progress): one forward-only
bar over an operation's stages, at most a record per percent, and Cancel that ends only the
operation it belongs to. (The AbortController is the browser's; a small stand-in here.)"""

from __future__ import annotations

import pytest

from loralab.browser.progress import DOWNLOADING, Progress
from loralab.errors import Cancelled, UsageError


class Abort:  # the part of the browser's AbortController that Progress reads
    def __init__(self):
        self.signal = type("Signal", (), {"aborted": False})()

    def abort(self):
        self.signal.aborted = True


STAGES = {"Compiling the GPU kernels": (0.0, 0.15, "Loading m: compiling"),
          DOWNLOADING: (0.15, 0.575, "Loading m: reading its files"),
          "Reading the weights onto the GPU": (0.575, 1.0, "Loading m: reading the weights")}


def test_an_operation_is_one_forward_bar_reported_at_most_once_a_percent():
    sent = []
    progress = Progress(sent.append)
    with progress.cancellable(Abort(), stages=STAGES):
        for i in range(101):
            progress("Compiling the GPU kernels", i / 100)
        for done in range(0, 1001, 1):
            progress.download("model.safetensors", done * 1024, 1000 * 1024)
        for i in range(11):
            progress("Reading the weights onto the GPU", i / 10)
    fractions = [r["fraction"] for r in sent]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert len(sent) <= 2 * 101 + 11  # (never one a byte)
    assert {r["what"] for r in sent} == {label for _, _, label in STAGES.values()}
    assert all(r["cancellable"] for r in sent)
    files = [r for r in sent if r["what"] == "Loading m: reading its files"]
    assert files[-1]["detail"] == "model.safetensors: 1.0 of 1.0 MiB"
    progress.download("adapter.zip", 5, 10)  # outside a model load, a file read is not a bar
    progress("Tokenizing d.jsonl", 0.5)
    assert sent[-1]["what"] == "Tokenizing d.jsonl" and not sent[-1]["cancellable"]


def test_cancel_ends_the_operation_at_its_next_report_and_nothing_else():
    sent = []
    progress, abort = Progress(sent.append), Abort()
    assert not progress.cancel()  # nothing runs
    with pytest.raises(Cancelled, match="Merging the adapter into the model: cancelled"):
        with progress.cancellable(abort, "Merging the adapter"):
            assert progress.signal() is abort.signal
            progress("Merging the adapter into the model", 0.2)
            with pytest.raises(UsageError, match="another long operation"):
                with progress.cancellable(Abort(), "Writing the ONNX model"):
                    pass
            assert progress.cancel() and abort.signal.aborted
            progress("Tokenizing d.jsonl", 0.3)  # another call's report, beside it: goes on
            progress("Merging the adapter into the model", 0.4)
    assert sent[-1]["what"] == "Tokenizing d.jsonl"
    assert progress.signal() is None and not progress.cancel()
    with progress.cancellable(Abort(), stages=STAGES):  # the next operation starts afresh
        with pytest.raises(Cancelled, match="Loading m: reading its files: cancelled"):
            progress.cancel()
            progress.download("model.safetensors", 1, 2)
