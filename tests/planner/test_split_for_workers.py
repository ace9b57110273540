"""Cutting one node's block among its workers (planner.partition.split_for_workers)."""
from __future__ import annotations

from numamem.planner.boxes import Slice
from numamem.planner.partition import split_for_workers


def test_a_small_batch_dense_layer_is_cut_by_columns():
    # Cut by rows, each of two workers would read the whole 64x128 weight; by columns, half.
    pieces = split_for_workers("dense", [(2, 64), (64, 128)], (2, 128), {}, Slice(0, 0, 2), True, 2)
    assert pieces == [Slice(1, 0, 64), Slice(1, 64, 128)]


def test_a_large_batch_dense_layer_is_cut_by_rows():
    pieces = split_for_workers("dense", [(512, 64), (64, 8)], (512, 8), {}, Slice(0, 0, 512), True, 2)
    assert pieces == [Slice(0, 0, 256), Slice(0, 256, 512)]


def test_a_restricted_block_is_cut_along_its_own_axis():
    pieces = split_for_workers("relu", [(4, 10)], (4, 10), {}, Slice(1, 3, 10), False, 3)
    assert [p.axis for p in pieces] == [1, 1, 1]
    assert (pieces[0].start, pieces[-1].stop) == (3, 10)
    assert all(a.stop == b.start for a, b in zip(pieces, pieces[1:]))


def test_no_cut_for_one_worker_an_unsplittable_axis_or_a_one_row_block():
    whole = Slice(0, 0, 4)
    assert split_for_workers("relu", [(4, 10)], (4, 10), {}, whole, True, 1) == [whole]
    # softmax over its last axis cannot be cut along it
    blk = Slice(1, 0, 10)
    assert split_for_workers("softmax", [(4, 10)], (4, 10), {"axis": -1}, blk, False, 2) == [blk]
    one = Slice(0, 2, 3)
    assert split_for_workers("relu", [(4, 10)], (4, 10), {}, one, False, 4) == [one]


def test_more_workers_than_indices_gives_fewer_pieces():
    pieces = split_for_workers("relu", [(3,)], (3,), {}, Slice(0, 0, 3), True, 8)
    assert pieces == [Slice(0, 0, 1), Slice(0, 1, 2), Slice(0, 2, 3)]
