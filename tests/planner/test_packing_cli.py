"""Tests of the CSV format and of ``numamem pack`` (driven through argparse)."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from numamem.cli import pack as pack_cli
from numamem.cli.pack import read_csv, write_csv
from numamem.planner.packing import check, pack


def run_pack(argv):
    """Parse ``argv`` with a parser holding only ``pack`` and run it, like ``numamem`` does."""
    parser = argparse.ArgumentParser(prog="numamem")
    sub = parser.add_subparsers(dest="command")
    pack_cli.add_command(sub)
    args = parser.parse_args(["pack", *argv])
    return args.func(args)


def write(path, text):
    path.write_text(text)
    return path


def test_csv_round_trip(tmp_path):
    src = write(tmp_path / "in.csv", "id,lower,upper,size\n7,0,4,100\n3,2,6,50\n9,5,8,0\n")
    data = read_csv(src)
    assert data.ids.tolist() == [7, 3, 9]
    assert data.lower.tolist() == [0, 2, 5]
    assert data.upper.tolist() == [4, 6, 8]
    assert data.size.tolist() == [100, 50, 0]
    out = tmp_path / "out.csv"
    write_csv(out, data.ids, data.lower, data.upper, data.size, [0, 100, 0])
    lines = out.read_text().splitlines()
    assert lines[0] == "id,lower,upper,size,offset"
    assert lines[1:] == ["7,0,4,100,0", "3,2,6,50,100", "9,5,8,0,0"]
    again = read_csv(out)  # the offset column is ignored on input
    assert again.ids.tolist() == data.ids.tolist() and again.size.tolist() == data.size.tolist()


def test_csv_columns_in_any_order_and_blank_lines(tmp_path):
    src = write(tmp_path / "in.csv", "size,id,upper,lower\n\n10,1,3,0\n")
    data = read_csv(src)
    assert (data.ids.tolist(), data.lower.tolist(), data.upper.tolist(), data.size.tolist()) == (
        [1], [0], [3], [10])


def test_empty_csv_with_header(tmp_path):
    data = read_csv(write(tmp_path / "in.csv", "id,lower,upper,size\n"))
    assert len(data) == 0


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "empty file"),
        ("id,lower,size\n1,0,3\n", "lacks column.*upper"),
        ("id,lower,upper,size\n1,0,3,4\n2,0,x,4\n", r":3: .*integers"),
        ("id,lower,upper,size\n1,0,3\n", r":2: expected 4 fields"),
        ("id,lower,upper,size\n1,0,3,4\n2,5,5,4\n", r":3: lower \(5\) must be less than upper \(5\)"),
        ("id,lower,upper,size\n1,0,3,-4\n", r":2: size \(-4\) must not be negative"),
    ],
)
def test_csv_errors_name_the_line(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        read_csv(write(tmp_path / "bad.csv", text))


def test_cli_prints_summary_and_writes_offsets(tmp_path, capsys):
    src = write(tmp_path / "in.csv",
                "id,lower,upper,size\n0,0,2,100\n1,1,3,100\n2,2,4,100\n3,0,4,1\n")
    out = tmp_path / "out.csv"
    assert run_pack([str(src), "--align", "64", "--time-limit", "5", "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("peak=320 lower_bound=320 ratio=1.0000")
    assert "method=" in line and "seconds=" in line
    rows = np.loadtxt(out, delimiter=",", skiprows=1, dtype=np.int64)
    assert rows.shape == (4, 5)
    assert (rows[:, 4] % 64 == 0).all()
    check(rows[:, 1], rows[:, 2], -(-rows[:, 3] // 64) * 64, rows[:, 4])


def test_cli_missing_file_is_os_error(tmp_path):
    with pytest.raises(OSError):
        run_pack([str(tmp_path / "nope.csv")])


def test_cli_bad_row_is_value_error(tmp_path):
    src = write(tmp_path / "in.csv", "id,lower,upper,size\n0,4,2,1\n")
    with pytest.raises(ValueError, match=":2: lower"):
        run_pack([str(src)])


@pytest.mark.parametrize("argv", [["--align", "3"], ["--align", "x"], ["--time-limit", "0"],
                                  ["--time-limit", "nan"]])
def test_cli_rejects_bad_options(tmp_path, argv):
    src = write(tmp_path / "in.csv", "id,lower,upper,size\n0,0,1,1\n")
    with pytest.raises(SystemExit):
        run_pack([str(src), *argv])


def test_numamem_main_reports_errors_in_one_line(tmp_path, capsys, monkeypatch):
    """Through numamem.cli.main."""
    import numamem.cli as cli

    status = cli.main(["pack", str(tmp_path / "missing.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status != 0 and len(err) == 1 and err[0].startswith("numamem pack: error:")
    src = write(tmp_path / "in.csv", "id,lower,upper,size\n0,4,2,1\n")
    assert cli.main(["pack", str(src)]) == 2


# --- issue 12 item 10: sizes past int64, the time limit and Ctrl-C on large inputs -----------

def _main_error(capsys, argv):
    from numamem.cli import main

    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_sizes_adding_up_past_int64_are_refused(tmp_path, capsys):
    """The sum wrapped: a wrong peak and lower_bound=0."""
    big = 2**62
    src = write(tmp_path / "in.csv", f"id,lower,upper,size\n0,0,2,{big}\n1,0,2,{big}\n2,1,3,{big}\n")
    err = _main_error(capsys, ["pack", str(src)])
    assert f"add up to {3 * big} bytes, past int64" in err
    with pytest.raises(ValueError, match="past int64"):
        pack([0, 0], [1, 1], [2**62, 2**62], align=1)
    with pytest.raises(ValueError, match="past int64"):  # the rounding to align counts
        pack([0, 0], [1, 1], [2**62 + 1, 2**61], align=2**62)
    r = pack([0, 0], [1, 1], [2**62 - 1, 2**62], align=1)  # just fits: exact
    assert (r.peak, r.lower_bound) == (2**63 - 1, 2**63 - 1)


def test_a_size_past_int64_is_one_line(tmp_path, capsys):
    """A traceback (OverflowError) from reading the CSV."""
    src = write(tmp_path / "in.csv", f"id,lower,upper,size\n0,0,2,5\n1,0,2,{2**63}\n")
    err = _main_error(capsys, ["pack", str(src)])
    assert f"in.csv:3: size ({2**63}) is past int64" in err
    src = write(tmp_path / "in.csv", f"id,lower,upper,size\n0,{-2**63 - 1},2,5\n")
    assert "lower" in _main_error(capsys, ["pack", str(src)])
    with pytest.raises(ValueError, match="size has values beyond int64"):
        pack([0], [1], [2**64])


def test_check_refuses_offsets_past_int64():
    with pytest.raises(ValueError, match="offset \\+ size is past int64"):
        check([0, 0], [1, 1], [8, 8], [2**63 - 4, 0])


def _big_instance(path, n, seed=0):
    rng = np.random.default_rng(seed)
    lo = rng.integers(0, 1_000_000, n)
    rows = zip(range(n), lo.tolist(), (lo + rng.integers(1, 20_000, n)).tolist(), rng.integers(1, 1 << 20, n).tolist())
    path.write_text("id,lower,upper,size\n" + "".join(f"{i},{a},{b},{c}\n" for i, a, b, c in rows))
    return path


def test_time_limit_is_honoured_on_a_large_instance(tmp_path):
    """--time-limit 1 took 42 s on 200,000 rows: the first greedy run (quadratic, in C) ignored
    the deadline, np.unique took 1.4 s and the final check 1.6 s. Run in a child process with a
    generous timeout (a 300,000-row greedy alone takes over a minute)."""
    import subprocess
    import sys

    src = _big_instance(tmp_path / "big.csv", 300_000)
    done = subprocess.run([sys.executable, "-m", "numamem.cli", "pack", str(src), "--time-limit", "1"],
                          capture_output=True, text=True, timeout=60)
    # (pack checks its own result before returning: a valid packing, cut short)
    assert done.returncode == 0, done.stderr
    assert "timed_out" in done.stdout and "cut by the time limit" in done.stdout


CHILD = """
import sys, numpy as np
from numamem.planner import _greedy, packing
rng = np.random.default_rng(0)
n, span, life, where = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
lo = rng.integers(0, span, n)
up = lo + rng.integers(1, life, n)
sz = rng.integers(1, 1000, n)
try:
    if where == "greedy":
        # say "ready" as the greedy loop starts (whichever entry point packing calls)
        for name in ("greedy", "greedy_until"):
            f = getattr(_greedy, name, None)
            if f is not None:
                def announce(*args, _f=f):
                    print("ready", flush=True)
                    return _f(*args)
                setattr(_greedy, name, announce)
        packing.pack(lo, up, sz, time_limit=1000)
    else:
        # one search attempt with no node budget and no deadline: only a signal ends it early
        solver = packing._build_search(lo, up, sz)
        lb = packing.lower_bound(lo, up, sz)
        print("ready", flush=True)
        solver.solve(lb, 2**62, float("inf"), 0)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
print("finished", flush=True)
"""


@pytest.mark.parametrize("n, span, life, where, wait", [
    # the quadratic greedy run (about 90 s here); the wait lets it get past its set-up (which
    # took 1.4 s with np.unique) into the C loop
    (300_000, 1_000_000, 20_000, "greedy", 5.0),
    (3_000, 3_000, 300, "search", 1.0),       # the branch and bound, where the bound does not fit
])
def test_ctrl_c_ends_a_pack_promptly(n, span, life, where, wait):
    """Ctrl-C took 34 s: the C loops never looked for signals."""
    import signal
    import subprocess
    import sys
    import time

    child = subprocess.Popen([sys.executable, "-c", CHILD, str(n), str(span), str(life), where],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(wait)   # inside the C loop by now
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 130 and "interrupted" in out, (where, out, err)
