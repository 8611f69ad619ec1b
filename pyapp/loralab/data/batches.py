"""Batches of token sequences: padding, next-token targets, the order records are taken in."""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import UsageError

IGNORE = -100


@dataclass(frozen=True)
class Sequence:
    input_ids: list[int]
    labels: list[int]  # same length; IGNORE where no loss is taken


def make_batch(sequences: list[Sequence], batch_size: int, seq_len: int, pad_id: int = 0) -> tuple[list[int], list[int], int]:
    """(ids [B·S], targets [B·S], target count) for the model: right-padded, truncated to
    seq_len, targets[t] = labels[t + 1] within each sequence (Hugging Face's causal-LM shift)."""
    ids, targets = [], []
    for b in range(batch_size):
        seq = sequences[b] if b < len(sequences) else Sequence([], [])
        row_ids = seq.input_ids[:seq_len]
        row_labels = seq.labels[:seq_len]
        pad = seq_len - len(row_ids)
        ids.extend(row_ids + [pad_id] * pad)
        shifted = (row_labels[1:] + [IGNORE])[: len(row_ids)]
        targets.extend(shifted + [IGNORE] * pad)
    return ids, targets, sum(1 for t in targets if t != IGNORE)


def pack(sequences: list[Sequence], seq_len: int) -> list[Sequence]:
    """Short examples concatenated (in order) into sequences of at most seq_len tokens, so less
    of each batch is padding. Labels travel with their tokens: a document's masked prompt stays
    masked, including as the target of the previous document's last token. Longer examples are
    kept alone (and truncated by the batch as usual)."""
    packed: list[Sequence] = []
    ids: list[int] = []
    labels: list[int] = []
    for seq in sequences:
        if len(seq.input_ids) >= seq_len:
            packed.append(seq)
            continue
        if len(ids) + len(seq.input_ids) > seq_len:
            packed.append(Sequence(ids, labels))
            ids, labels = [], []
        ids = ids + seq.input_ids
        labels = labels + seq.labels
    if ids:
        packed.append(Sequence(ids, labels))
    return packed


class BatchOrder:
    """Which records form each batch: epochs of a (seeded) permutation, or file order with
    wrap-around. The position (epoch, index) is all the state there is, so resuming is exact."""

    def __init__(self, count: int, batch_size: int, shuffle: bool, seed: int):
        if count == 0:
            raise UsageError("the dataset has no records")
        self.count, self.batch_size, self.shuffle, self.seed = count, batch_size, shuffle, seed
        self.epoch, self.index = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(self.count))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def next(self) -> list[int]:
        """Indices of the next batch (batch_size of them, crossing into the next epoch if needed)."""
        out = []
        while len(out) < self.batch_size:
            if self.index >= self.count:
                self.epoch += 1
                self.index = 0
                self._order = self._permutation(self.epoch)
            out.append(self._order[self.index])
            self.index += 1
        return out

    def batches_per_epoch(self) -> int:
        return -(-self.count // self.batch_size)

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def restore(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._permutation(self.epoch)
