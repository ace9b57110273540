"""``numamem doctor`` and the data behind it (numamem.doctor), here and under a seccomp filter."""
from __future__ import annotations

import errno
import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from seccompchild import run_refused  # noqa: E402

from numamem import _kernel, doctor  # noqa: E402
from numamem.cli import main  # noqa: E402

CALLS = ["mbind", "set_mempolicy", "get_mempolicy", "move_pages (query)", "move_pages (move)"]


def test_format_list():
    assert doctor.format_list([5, 0, 1, 2]) == "0-2,5"
    assert doctor.format_list([3]) == "3" and doctor.format_list([]) == "(none)"
    assert doctor.format_list(range(8)) == "0-7" and doctor.format_list([0, 2, 4]) == "0,2,4"


def test_diagnose_trusts_this_unrestricted_process(topo):
    diag = doctor.diagnose()
    assert [probe.call for probe in diag.calls] == CALLS
    assert all(probe.permitted and probe.errno == 0 for probe in diag.calls), diag.calls
    assert [page.node for page in diag.test_pages] == topo.memory_nodes()
    assert all(page.verified and page.pages == {page.node: 1} for page in diag.test_pages)
    assert diag.trusted and "verified" in diag.reason
    assert set(diag.mems_allowed) == set(topo.allowed_nodes) and set(diag.cpus_allowed) == set(topo.allowed_cpus)
    assert diag.seccomp in (0, 1, 2) and diag.sys_nice in (True, False)
    data = json.loads(json.dumps(diag.to_dict()))
    assert data["format"] == "numamem-doctor/1" and data["trusted"] is True
    assert [c["call"] for c in data["calls"]] == CALLS and data["topology"]["nodes"]


def test_probes_leave_the_thread_policy_as_it_was():
    before = _kernel.thread_policy()
    doctor.probe_calls(0)
    assert _kernel.thread_policy() == before


def test_a_page_found_elsewhere_is_not_trusted(monkeypatch, node0):
    # move_pages answering another node for the test page: the verdict says so.
    monkeypatch.setattr(doctor, "page_nodes", lambda array: np.array([node0 + 1]))
    diag = doctor.diagnose()
    assert not diag.trusted
    assert diag.reason == (f"the test page on node {node0} was not verified: the page is on "
                           f"{{{node0 + 1}: 1}}, not on node {node0}")


def test_cli_doctor_here(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for label in ("topology", "cpuset", "THP", "hugetlb", "numa_balancing", "policy calls", "CAP_SYS_NICE",
                  "seccomp", "test pages"):
        assert label in out
    assert out.splitlines()[-1].startswith("numamem doctor: placement can be trusted")
    assert len(out.splitlines()) < 40  # one screen
    assert main(["doctor", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trusted"] is True


def test_cli_doctor_under_a_seccomp_filter_reports_refused_calls_and_exits_1():
    proc = run_refused("import sys\nfrom numamem.cli import main\nsys.exit(main(sys.argv[3:]))\n", args=["doctor"])
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    state = {line[14:34].strip(): line[34:] for line in lines if line[14:34].strip() in CALLS}
    assert state == {"mbind": "REFUSED (EPERM)", "set_mempolicy": "REFUSED (EPERM)",
                     "get_mempolicy": "permitted", "move_pages (query)": "REFUSED (EPERM)",
                     "move_pages (move)": "REFUSED (EPERM)"}, proc.stdout
    assert any("seccomp" in line and "filter" in line for line in lines)
    assert any("NOT VERIFIED: mbind(MPOL_PREFERRED) was refused (EPERM)" in line for line in lines)
    err = proc.stderr.splitlines()
    assert len(err) == 1, proc.stderr
    assert err[0].startswith("numamem doctor: placement cannot be trusted: mbind, set_mempolicy, move_pages "
                             "are refused (EPERM)")
    assert "--cap-add SYS_NICE" in err[0] and "seccomp profile" in err[0]


def test_doctor_json_under_a_filter_that_allows_move_pages_queries():
    proc = run_refused("import sys\nfrom numamem.cli import main\nsys.exit(main(sys.argv[3:]))\n",
                       query_allowed=True, args=["doctor", "--json"])
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    calls = {c["call"]: (c["permitted"], c["errno"]) for c in data["calls"]}
    assert calls["move_pages (query)"] == (True, 0) and calls["move_pages (move)"] == (False, errno.EPERM)
    assert calls["mbind"] == (False, errno.EPERM) and data["trusted"] is False
    assert data["seccomp"]["name"] == "filter" and data["seccomp"]["filters"] >= 1
    assert all(not page["verified"] for page in data["test_pages"])
    assert proc.stderr.count("\n") == 1
