"""``numamem bench``: the C loops, the result's shape, and that the planner takes its matrix."""
from __future__ import annotations

import json

import numpy as np

import numamem
from numamem.cli import main
from numamem.planner import plan
from numamem.runtime import bench
from numamem.runtime._chase import chase, read_sum
from numamem.runtime.randgraph import random_graph


def test_chase_follows_the_links():
    rng = np.random.default_rng(0)
    slots = 1000
    perm = rng.permutation(slots)
    links = np.zeros(slots * 8, np.int64)
    links[perm * 8] = np.roll(perm, -1)
    p = int(perm[0])
    for _ in range(37):
        p = int(links[p * 8])
    assert chase(links, int(perm[0]), 37) == p
    assert chase(links, int(perm[0]), slots) == int(perm[0])  # one cycle through every slot
    assert chase(links[::8].copy(), 5, 0, 1) == 5


def test_read_sum_wraps_like_uint64():
    a = np.arange(1, 1003, dtype=np.uint64)
    assert read_sum(a) == int(a.sum())
    assert read_sum(a, 3) == 3 * int(a.sum())
    big = np.full(5, 2**63, np.uint64)
    assert read_sum(big) == (5 * 2**63) % 2**64


def test_measure_small(tmp_path):
    r = bench.measure(buffer_bytes=4 << 20, chase_steps=1 << 12, repeats=1)
    nodes = [str(n) for n in r["nodes"]]
    assert r["format"] == bench.FORMAT
    assert set(r["bandwidth"]) == set(nodes) and set(r["latency_ns"]) == set(nodes)
    for a in nodes:
        for b in nodes:
            assert r["bandwidth"][a][b] > 1e8
            assert 0 < r["latency_ns"][a][b] < 1e6
    assert [a["bytes"] for a in r["allocation"]] == [4096, 1 << 20, 64 << 20]
    assert all(a["numamem_empty_us"] > 0 for a in r["allocation"])
    # the planner's cost model takes the matrix as it is
    g = random_graph(0, "cnn")
    p = plan(g, nodes=[int(n) for n in nodes], bandwidth=r["bandwidth"])
    assert p.info["bandwidth_measured"]
    assert "GB/s" in bench.format_table(r)


def test_bench_command_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "--quick", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "read bandwidth" in text and "latency" in text and "allocation" in text
    r = json.loads(out.read_text())
    assert r["buffer_bytes"] > r["llc_bytes"]  # the chase really leaves the caches
    assert main(["plan", "mlp", "--nodes", "all", "--bandwidth", str(out), "-q"]) == 0  # this machine, as measured


def test_llc_bytes_is_positive():
    assert bench.llc_bytes() > 0
    assert numamem.topology().node_ids
