"""The one placement routine (numamem._place) and its translator (errors.from_place_result).

Every branch runs on this one-node machine: ``place_fake`` drives the routine over heap memory with
faked system calls, ``injected`` makes the kernel's calls fail inside ``Region.place``.
"""
from __future__ import annotations

import errno
import pickle

import numpy as np
import pytest

import numamem
from numamem import _kernel, _place
from numamem._region import Region
from numamem.errors import (
    HugePageError, NodeMemoryError, NumaUnavailableError, PolicyPermissionError, from_place_result,
)

MiB = 2**20
PAGE = 4096


def translate(outcome, hugetlb=False, page_size=PAGE):
    return from_place_result(outcome, 0, MiB, page_size, hugetlb, free=lambda: 123 * MiB)


# ---- the routine over faked calls -------------------------------------------------------------
def test_strict_success_verifies_every_page_of_a_small_range():
    outcome = _place.place_fake(MiB)
    assert outcome.ok and outcome.step == "none" and outcome.errno == 0
    assert outcome.populated_by == "madvise" and outcome.checked == MiB // PAGE
    assert translate(outcome) is None


def test_large_ranges_are_sampled_every_2_mib_plus_the_last_page():
    outcome = _place.place_fake(16 * MiB + 5 * PAGE)
    assert outcome.ok and outcome.checked == 9 + 1  # 0, 2, ..., 16 MiB, and the last page


def test_a_spill_caught_only_by_the_last_page_sample():
    outcome = _place.place_fake(16 * MiB, misplace_last=True)
    assert outcome.step == "misplaced" and outcome.misplaced > 0
    assert sum(outcome.histogram.values()) == 16 * MiB // PAGE


def test_misplaced_pages_give_the_histogram_of_the_whole_range():
    outcome = _place.place_fake(MiB, misplace_every=4)
    assert outcome.step == "misplaced" and outcome.errno == 0
    assert outcome.histogram == {0: 192, 1: 64} and outcome.misplaced == 64
    error = translate(outcome)
    assert type(error) is NodeMemoryError and error.pages == {0: 192, 1: 64}
    assert error.node == 0 and error.free == 123 * MiB and "64 page(s) landed elsewhere" in str(error)
    restored = pickle.loads(pickle.dumps(error))
    assert restored.pages == error.pages and str(restored) == str(error)


def test_misplaced_hugetlb_pages_are_a_huge_page_error():
    outcome = _place.place_fake(8 * MiB, misplace_every=2, page_size=2 * MiB)
    assert outcome.histogram == {0: 2, 1: 2}
    error = translate(outcome, hugetlb=True, page_size=2 * MiB)
    assert type(error) is HugePageError and error.page_size == 2 * MiB and error.pages == {0: 2, 1: 2}


def test_strict_walk_eio_is_misplacement_not_an_oserror():
    outcome = _place.place_fake(MiB, step="bind", errno=errno.EIO)
    assert outcome.step == "misplaced" and outcome.errno == errno.EIO
    error = translate(outcome)
    assert isinstance(error, NodeMemoryError) and "landed elsewhere" in str(error)


def test_populate_einval_touches_base_pages():
    outcome = _place.place_fake(MiB, step="populate", errno=errno.EINVAL)
    assert outcome.ok and outcome.populated_by == "touch"


def test_populate_einval_never_touches_huge_pages():
    outcome = _place.place_fake(4 * MiB, step="populate", errno=errno.EINVAL, page_size=2 * MiB)
    assert outcome.step == "populate" and outcome.errno == errno.EINVAL
    error = translate(outcome, hugetlb=True, page_size=2 * MiB)
    assert type(error) is OSError and error.errno == errno.EINVAL and "MADV_POPULATE_WRITE" in str(error)


@pytest.mark.parametrize("err", [errno.ENOMEM, errno.EFAULT, errno.EAGAIN])
def test_populate_shortage_is_a_memory_error(err):
    outcome = _place.place_fake(MiB, step="populate", errno=err)
    assert outcome.step == "populate" and outcome.errno == err
    assert type(translate(outcome)) is NodeMemoryError
    assert type(translate(outcome, hugetlb=True, page_size=2 * MiB)) is HugePageError


@pytest.mark.parametrize("step, call", [("prefer", "mbind(MPOL_PREFERRED)"), ("populate", "madvise"),
                                        ("verify", "move_pages"), ("bind", "mbind(MPOL_BIND")])
def test_eperm_at_any_step_is_a_permission_error_with_the_fix(step, call):
    outcome = _place.place_fake(MiB, step=step, errno=errno.EPERM)
    assert outcome.step == step and outcome.errno == errno.EPERM
    error = translate(outcome)
    assert isinstance(error, PermissionError) and isinstance(error, PolicyPermissionError)
    assert not isinstance(error, MemoryError)
    text = str(error)
    assert call in text and "node 0" in text and "SYS_NICE" in text and "seccomp" in text
    assert error.errno == errno.EPERM and error.node == 0
    assert str(pickle.loads(pickle.dumps(error))) == text


@pytest.mark.parametrize("err", [errno.EFAULT, errno.ENOMEM, errno.EINVAL])
def test_move_pages_failure_is_never_out_of_memory(err):
    outcome = _place.place_fake(MiB, step="verify", errno=err)
    assert outcome.step == "verify"
    error = translate(outcome)
    assert type(error) is OSError and not isinstance(error, MemoryError)
    assert error.errno == err and "move_pages" in str(error)


def test_enosys_means_no_numa_interface():
    outcome = _place.place_fake(MiB, step="prefer", errno=errno.ENOSYS)
    assert isinstance(translate(outcome), NumaUnavailableError)


def test_other_bind_errors_are_oserrors():
    outcome = _place.place_fake(MiB, step="bind", errno=errno.EINVAL)
    assert outcome.step == "bind"
    error = translate(outcome)
    assert type(error) is OSError and "mbind(MPOL_BIND" in str(error)


def test_preferred_does_not_verify_and_lazy_modes_do_not_populate():
    preferred = _place.place_fake(MiB, mode="preferred", misplace_every=1)
    assert preferred.ok and preferred.checked == 0 and preferred.populated_by == "madvise"
    for mode in ("bind-lazy", "preferred-lazy"):
        lazy = _place.place_fake(MiB, mode=mode, step="populate", errno=errno.ENOMEM)
        assert lazy.ok and lazy.populated_by is None
    refused = _place.place_fake(MiB, mode="bind-lazy", step="bind", errno=errno.EPERM)
    assert refused.step == "bind" and isinstance(translate(refused), PolicyPermissionError)


def test_node_beyond_any_mask_is_einval():
    outcome = _place.place_fake(MiB, node=5000)
    assert outcome.step == "prefer" and outcome.errno == errno.EINVAL


def test_every_page_elsewhere():
    outcome = _place.place_fake(MiB, misplace_every=1)
    assert outcome.histogram == {1: 256} and outcome.misplaced == 256


def test_fault_arguments_are_checked():
    with pytest.raises(ValueError, match="step"):
        _place.place_fake(MiB, step="mmap", errno=1)
    with pytest.raises(ValueError, match="together"):
        _place.place_fake(MiB, step="bind")
    with pytest.raises(ValueError, match="mode"):
        _place.place_fake(MiB, mode="interleave")


# ---- Region.place: the kernel's calls ----------------------------------------------------------
def test_region_place_binds_and_verifies(node0):
    region = Region(3 * MiB)
    outcome = region.place(node0)
    assert outcome.ok and outcome.populated_by in ("madvise", "touch")
    assert outcome.checked == 3  # 3 MiB is sampled: at 0 and 2 MiB, and its last page
    assert _kernel.range_policy(region.address) == ("bind", (node0,))
    status = _kernel.page_status(np.arange(region.address, region.address + 3 * MiB, PAGE, dtype=np.uint64))
    assert set(status.tolist()) == {node0}


def test_region_place_parts_and_policies(node0):
    region = Region(8 * PAGE)
    region.place(node0, "preferred", offset=0, length=4 * PAGE)
    region.place(node0, "bind", populate=False, offset=4 * PAGE)
    assert _kernel.range_policy(region.address)[0] == "preferred"
    assert _kernel.range_policy(region.address + 4 * PAGE)[0] == "bind"
    with pytest.raises(ValueError, match="policy"):
        region.place(node0, "interleave")
    with pytest.raises(ValueError, match="outside"):
        region.place(node0, offset=16 * PAGE)


def test_region_place_reports_injected_misplacement(node0, mapping_counter):
    region = Region(MiB)
    with _place.injected(misplace_every=2, node=node0):
        with pytest.raises(NodeMemoryError) as info:
            region.place(node0, what="a test region")
    error = info.value
    assert error.pages == {node0: 128, node0 + 1: 128} and "a test region" in str(error)
    assert error.free is not None  # read from the node's meminfo for the message
    region.close()  # the caller owns the mapping: still there to unmap, exactly once
    assert mapping_counter() == (1, 1)


def test_region_place_reports_refused_calls(node0):
    with _place.injected(step="prefer", errno=errno.EPERM):
        with pytest.raises(PolicyPermissionError, match="mbind"):
            Region(PAGE).place(node0)
    with _place.injected(step="verify", errno=errno.EPERM):
        with pytest.raises(PolicyPermissionError, match="move_pages"):
            Region(PAGE).place(node0)
    with _place.injected(step="populate", errno=errno.ENOMEM):
        with pytest.raises(NodeMemoryError, match="pre-faulting failed"):
            Region(PAGE).place(node0)
    Region(PAGE).place(node0)  # the injection ended with the block


def test_injection_does_not_nest():
    with _place.injected(misplace_every=1):
        with pytest.raises(RuntimeError, match="already"):
            with _place.injected(misplace_every=1):
                pass


def test_region_populate_reports_how(node0):
    region = Region(4 * PAGE)
    assert region.populate() in ("madvise", "touch")
    with pytest.raises(ValueError, match="advice"):
        region.advise("foo")
