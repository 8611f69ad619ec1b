"""Batches: padding, the next-token shift, packing."""

from __future__ import annotations


def test_make_batch_pads_missing_rows():
    from loralab.data.batches import Sequence, make_batch

    ids, targets, n = make_batch([Sequence([5, 6, 7], [5, 6, 7])], batch_size=3, seq_len=4)
    assert ids == [5, 6, 7, 0] + [0] * 8
    assert targets == [6, 7, -100, -100] + [-100] * 8 and n == 2


def test_packing_keeps_labels_with_their_tokens():
    from loralab.data.batches import Sequence, pack

    seqs = [Sequence([1, 2], [-100, 2]), Sequence([3, 4, 5], [-100, 4, 5]), Sequence([6] * 9, [6] * 9), Sequence([7], [7])]
    packed = pack(seqs, 6)
    assert [p.input_ids for p in packed] == [[6] * 9, [1, 2, 3, 4, 5, 7]]
    assert packed[1].labels == [-100, 2, -100, 4, 5, 7]
    assert [p.input_ids for p in pack(seqs[:2] + seqs[3:] + seqs[:1], 4)] == [[1, 2], [3, 4, 5, 7], [1, 2]]
