"""The compile step: a plan becomes a program of named tasks, with no memory and no threads."""
from __future__ import annotations

import numamem.models
import pytest

from numamem.planner import plan
from numamem.planner.boxes import contains, full, volume
from numamem.runtime.program import Direct, Group, Staged, compile_program, layer_work
from numamem.runtime.randgraph import KINDS, random_graph


def _groups(p, workers=2):
    # Pure: groups are plain data, no topology is consulted (the plan's nodes need not exist).
    return [Group(n, 0, 0, workers) for n in p.nodes]


def test_compiling_maps_and_starts_nothing(mapping_counter):
    import threading

    g = numamem.models.get("mlp", batch=3, features=(40, 96, 96, 24))
    p = plan(g, nodes=[0, 1, 2])
    threads = threading.active_count()
    program = compile_program(p, g, _groups(p))
    assert mapping_counter() == (0, 0)
    assert threading.active_count() == threads
    assert len(program.tasks) == 3 and all(len(ts) == len(g.layers) for ts in program.tasks)


@pytest.mark.parametrize("kind", KINDS)
def test_reads_are_the_bytes_the_plan_counts(kind):
    # Per layer, the program's reads add up to the plan's local and remote bytes: local when the
    # block read is the reading group's own.
    for seed in range(3):
        g = random_graph(seed, kind)
        p = plan(g, nodes=[0, 1, 2])
        program = compile_program(p, g, _groups(p))
        for step, lp in enumerate(p.layers):
            local = remote = 0
            for group, tasks in enumerate(program.tasks):
                for task in (t for t in tasks if t.step == step):
                    for read in task.reads:
                        nbytes = volume(read.box) * g.itemsize(read.site.block.tensor)
                        if read.site.group == group:
                            local += nbytes
                        else:
                            remote += nbytes
            assert (local, remote) == (lp.local_bytes, lp.remote_bytes), (seed, lp.name)


def test_operands_staging_and_waits_of_a_feature_split():
    g = numamem.models.get("mlp", batch=3, features=(40, 96, 96, 24))
    p = plan(g, nodes=[0, 1, 2])
    program = compile_program(p, g, _groups(p, workers=2))
    staged = direct = 0
    for group, tasks in enumerate(program.tasks):
        assert [t.step for t in tasks] == sorted(t.step for t in tasks)
        for task in tasks:
            assert task.out.group == group and task.out.block is task.work.out_block
            assert all(w.group != group for w in task.deps)
            for operand, region in zip(task.operands, task.work.regions):
                if isinstance(operand, Direct):
                    direct += 1
                    assert contains(operand.site.box, region)
                elif isinstance(operand, Staged):
                    staged += 1
                    slot = operand.slot
                    assert slot.box == region and slot in task.slots
                    # the gathered pieces tile the slot exactly, shared among the workers
                    assert sum(volume(gt.box) for gt in slot.gathers) == volume(slot.box)
                    assert {gt.worker for gt in slot.gathers} <= {0, 1}
                else:
                    assert operand is None and region is None
            ends = [s.offset + s.nbytes for s in task.slots]
            assert all(s.offset % 64 == 0 for s in task.slots)
            assert max(ends, default=0) <= program.staging_bytes[group]
    assert staged and direct
    assert any(task.deps for tasks in program.tasks for task in tasks)


def test_batch_split_program_has_no_waits_and_no_staging():
    g = random_graph(1, "cnn", batch=4)
    p = plan(g, nodes=[0, 1, 2], batch_axis_only=True)
    program = compile_program(p, g, _groups(p))
    assert program.staging_bytes == (0, 0, 0)
    assert not any(task.deps or task.slots for tasks in program.tasks for task in tasks)


def test_worker_calls_tile_each_block():
    g = random_graph(3, "cnn", batch=1)
    p = plan(g, nodes=[0])
    for per in layer_work(p, g, [Group(0, 0, 0, 5)]):
        work = per[0]
        shape = g.tensors[work.out_block.tensor].shape
        calls = [c for worker in work.calls for c in worker]
        assert len(work.calls) == 5 and all(len(worker) <= 1 for worker in work.calls)
        expected = volume(full(shape)) if work.whole else volume(work.part.box(shape))
        assert sum(volume(c.piece.box(shape)) for c in calls) == expected


def test_two_blocks_of_one_output_on_one_node_are_refused():
    g = numamem.models.get("mlp", batch=4, features=(8, 16, 4))
    p = plan(g, nodes=[0, 1], batch_axis_only=True)
    first, second = p.blocks_of(g.layers[0].outputs[0])
    second.node = first.node
    with pytest.raises(ValueError, match="two blocks"):
        layer_work(p, g, _groups(p))
