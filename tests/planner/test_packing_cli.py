"""Tests of the CSV format and of ``numamem pack`` (driven through argparse)."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from numamem.cli import pack as pack_cli
from numamem.cli.pack import read_csv, write_csv
from numamem.planner.packing import check


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
