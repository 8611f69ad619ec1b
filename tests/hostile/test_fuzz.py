"""Mutation fuzzing of the model and adapter readers, through the entry points the CLI and the
worker use: every case must end in the project's UserError (or load), within 2 s and 256 MiB.

CI runs 20,000 safetensors and 10,000 GGUF cases; LORALAB_FUZZ_SCALE=10 runs ten times as many
(other seeds, same generators). Where our reader accepts a mutated file, the official library
(safetensors, gguf-py) must read the same tensor table from it.
"""

from __future__ import annotations

import os
import random
import time
import tracemalloc

import pytest

from loralab.cli import open_session
from loralab.errors import UserError
from loralab.formats import gguf as our_gguf
from loralab.formats.peft import ADAPTER_FILE, CONFIG_FILE, parse_adapter
from loralab.formats.safetensors import read_header
from tests.rig import settle

from . import files as F
from .mutate import gguf_case, safetensors_case

SCALE = int(os.environ.get("LORALAB_FUZZ_SCALE", "1"))
SAFETENSORS_CASES = 20_000 * SCALE
GGUF_CASES = 10_000 * SCALE
TIME_LIMIT = 2.0  # seconds per case
MEMORY_LIMIT = 256 * 2**20  # bytes of Python allocations per case


class Budget:
    """Runs cases, keeping the first failures (with the case index) and the largest time and memory."""

    def __init__(self):
        self.failures: list[str] = []
        self.slowest = self.largest = 0.0
        self.outcomes = {"loaded": 0, "refused": 0}

    def run(self, label: str, fn) -> bool:
        tracemalloc.reset_peak()
        started = time.perf_counter()
        ok = False
        try:
            fn()
            ok = True
            self.outcomes["loaded"] += 1
        except UserError as exc:
            self.outcomes["refused"] += 1
            message = str(exc)
            if "\n" in message or not message:
                self.failures.append(f"{label}: the message is not one line: {message!r}")
        except Exception as exc:  # noqa: BLE001 - the point of the test
            self.failures.append(f"{label}: {type(exc).__name__}: {exc}"[:300])
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        self.slowest, self.largest = max(self.slowest, elapsed), max(self.largest, peak)
        if elapsed > TIME_LIMIT:
            self.failures.append(f"{label}: took {elapsed:.1f} s")
        if peak > MEMORY_LIMIT:
            self.failures.append(f"{label}: allocated {peak / 2**20:.0f} MiB")
        return ok

    def check(self, what: str):
        print(f"{what}: {self.outcomes}, slowest {self.slowest * 1000:.0f} ms, peak {self.largest / 2**20:.1f} MiB")
        assert not self.failures, f"{len(self.failures)} failures, first: " + "\n".join(self.failures[:10])


@pytest.fixture
def traced():
    tracemalloc.start()
    yield
    tracemalloc.stop()


ADAPTER_CONFIG = b'{"peft_type": "LORA", "r": 2, "lora_alpha": 4}'


def test_safetensors_cases_raise_only_user_errors(tmp_path, traced):
    import safetensors

    folder = F.model_folder(tmp_path / "model")
    weights = folder / "model.safetensors"
    budget = Budget()
    rng_seed = 20_241_129 + SCALE
    for index in range(SAFETENSORS_CASES):
        blob = safetensors_case(random.Random(rng_seed * 1_000_003 + index))
        label = f"safetensors case {index} (seed {rng_seed})"
        if index % 2:  # the worker's and the CLI's adapter reader
            budget.run(label, lambda: parse_adapter({ADAPTER_FILE: blob, CONFIG_FILE: ADAPTER_CONFIG}, "fuzz"))
            continue
        weights.write_bytes(blob)
        budget.run(label, lambda: settle(open_session(str(folder))))  # the CLI's model reader
        try:
            ours = read_header(weights)
        except UserError:
            continue
        try:  # we accepted it: the official library must read the same table
            with safetensors.safe_open(str(weights), "np") as official:
                theirs = {k: tuple(official.get_slice(k).get_shape()) for k in official.keys()}
        except Exception as exc:  # noqa: BLE001
            budget.failures.append(f"{label}: accepted, but the safetensors library refuses it ({exc})")
            continue
        if theirs != {k: t.shape for k, t in ours.tensors.items()}:
            budget.failures.append(f"{label}: accepted with a tensor table other than the safetensors library's")
    budget.check(f"{SAFETENSORS_CASES} safetensors cases")


def test_gguf_cases_raise_only_user_errors(tmp_path, traced):
    import gguf

    path = tmp_path / "model.gguf"
    budget = Budget()
    rng_seed = 11_291_2026 + SCALE
    for index in range(GGUF_CASES):
        path.write_bytes(gguf_case(random.Random(rng_seed * 1_000_003 + index)))
        label = f"gguf case {index} (seed {rng_seed})"
        budget.run(label, lambda: settle(open_session(str(path))))  # the CLI's (and, by bytes, the worker's) reader
        if index % 10:
            continue
        try:
            ours = our_gguf.read(str(path))
        except UserError:
            continue
        try:  # we accepted it: gguf-py must read the same tensor table
            reader = gguf.GGUFReader(str(path))
            theirs = {t.name: (int(t.data_offset), int(t.n_bytes)) for t in reader.tensors}
        except Exception as exc:  # noqa: BLE001
            budget.failures.append(f"{label}: accepted, but gguf-py refuses it ({exc})"[:300])
            continue
        if theirs != {n: (t.start, t.end - t.start) for n, t in ours.tensors.items()}:
            budget.failures.append(f"{label}: accepted with a tensor table other than gguf-py's")
    budget.check(f"{GGUF_CASES} GGUF cases")
