"""Locality accounting: page histograms and the per-layer traffic ledger."""
from __future__ import annotations

import numpy as np

import numamem
from numamem.runtime.locality import TrafficLedger, bytes_by_node, page_histogram


def test_page_histogram_adds_up_arrays_and_skips_none(node0):
    page = numamem.topology().base_page_size
    a = numamem.zeros(3 * page, np.uint8, node=node0)
    b = numamem.zeros(page, np.uint8, node=node0)
    assert page_histogram([a, None, b, np.zeros(0)]) == {node0: 4}
    assert page_histogram([]) == {}


def test_page_histogram_counts_pages_not_faulted_in_under_minus_one(node0):
    page = numamem.topology().base_page_size
    lazy = numamem.empty(4 * page, np.uint8, node=node0, populate=False)
    assert page_histogram([lazy]) == {-1: 4}
    lazy[:page] = 1
    assert page_histogram([lazy]) == {-1: 3, node0: 1}


def test_bytes_by_node_and_histogram_agree_on_whole_arrays(node0):
    a = numamem.zeros((16, 4096), np.float32, node=node0)
    page = numamem.topology().base_page_size
    assert bytes_by_node(a) == {n: c * page for n, c in page_histogram([a]).items()}


def test_traffic_ledger_sums_by_layer_and_reader():
    t = TrafficLedger(2)
    t.add(0, reader=0, counts={0: 10, 1: 5})
    t.add(0, reader=0, counts={0: 1})
    t.add(1, reader=1, counts={0: 7})
    s = t.summary()
    assert (s["local_bytes"], s["remote_bytes"]) == (11, 12)
    assert s["per_node"] == {"0": {"local_bytes": 11, "remote_bytes": 5}, "1": {"local_bytes": 0, "remote_bytes": 7}}
    assert s["layers"][0] == {"local_bytes": 11, "remote_bytes": 5, "pairs": [[0, 0, 11], [1, 0, 5]]}
    assert s["layers"][1]["pairs"] == [[0, 1, 7]]


def test_traffic_ledger_add_view_counts_where_the_view_is(node0):
    a = numamem.zeros((64, 1024), np.float32, node=node0)
    t = TrafficLedger(1)
    t.add_view(0, node0, a[:, :16])
    assert t.summary()["local_bytes"] == 64 * 16 * 4
