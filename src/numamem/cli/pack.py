"""``numamem pack``: pack the buffers of an ``id,lower,upper,size`` CSV file, and that CSV form.

The packer itself is :func:`numamem.planner.packing.pack`; this module reads its input from CSV
(:func:`read_csv`) and writes the offsets back (:func:`write_csv`).
"""
from __future__ import annotations

import argparse
import csv
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from numamem.cli._args import check_writable, positive_float

__all__ = ["PackInput", "add_command", "cmd_pack", "read_csv", "write_csv"]


@dataclass(frozen=True)
class PackInput:
    """Buffers read from a CSV file by :func:`read_csv` (all int64 arrays of one length)."""

    ids: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    size: np.ndarray

    def __len__(self) -> int:
        return int(self.size.shape[0])



_COLUMNS = ("id", "lower", "upper", "size")
_INT64_MIN, _INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)


def read_csv(path: str | os.PathLike) -> PackInput:
    """Read buffers from a CSV file with the header ``id,lower,upper,size``.

    Extra columns (such as ``offset``) are ignored.

    Parameters
    ----------
    path : str or os.PathLike
        The file to read.

    Returns
    -------
    PackInput
        ids, lower, upper and size as int64 arrays, in file order.

    Raises
    ------
    OSError
        If the file cannot be read.
    ValueError
        On a missing column, or a row that is short, not integers, past int64, has
        ``lower >= upper`` or a negative size (the message names the file and line).
    """
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"{path}: empty file, expected a header {','.join(_COLUMNS)}") from None
        names = [h.strip().lower() for h in header]
        missing = [c for c in _COLUMNS if c not in names]
        if missing:
            raise ValueError(f"{path}:1: header lacks column(s) {', '.join(missing)}")
        cols = [names.index(c) for c in _COLUMNS]
        rows = []
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) < len(names):
                raise ValueError(f"{path}:{line}: expected {len(names)} fields, got {len(row)}")
            try:
                values = [int(row[c]) for c in cols]
            except ValueError:
                raise ValueError(
                    f"{path}:{line}: id, lower, upper and size must be integers: {','.join(row)}"
                ) from None
            for name, value in zip(_COLUMNS, values):
                if not _INT64_MIN <= value <= _INT64_MAX:
                    raise ValueError(f"{path}:{line}: {name} ({value}) is past int64")
            if values[1] >= values[2]:
                raise ValueError(f"{path}:{line}: lower ({values[1]}) must be less than upper ({values[2]})")
            if values[3] < 0:
                raise ValueError(f"{path}:{line}: size ({values[3]}) must not be negative")
            rows.append(values)
    data = np.array(rows, dtype=np.int64).reshape(-1, 4)
    return PackInput(ids=data[:, 0].copy(), lower=data[:, 1].copy(),
                     upper=data[:, 2].copy(), size=data[:, 3].copy())


def write_csv(path: str | os.PathLike, ids: Sequence[int], lower: Sequence[int],
              upper: Sequence[int], size: Sequence[int], offsets: Sequence[int]) -> None:
    """Write buffers and their offsets as CSV: ``id,lower,upper,size,offset`` with a header.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write (replaced).
    ids, lower, upper, size, offsets : sequences of int
        One entry per buffer, all the same length.

    Raises
    ------
    ValueError
        If the sequences differ in length.
    OSError
        If the file cannot be written.
    """
    cols = [np.asarray(c, dtype=np.int64) for c in (ids, lower, upper, size, offsets)]
    if len({c.shape for c in cols}) != 1 or cols[0].ndim != 1:
        raise ValueError("ids, lower, upper, size and offsets must be 1-D and of one length")
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow((*_COLUMNS, "offset"))
        writer.writerows(np.stack(cols, axis=1).tolist())


def _align(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1 or value & (value - 1):
        raise argparse.ArgumentTypeError(f"must be a positive power of two, got {text!r}")
    return value


def add_command(subparsers) -> None:
    """Register ``numamem pack`` on an ``argparse`` sub-parser collection.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        What ``ArgumentParser.add_subparsers()`` returned.
    """
    parser = subparsers.add_parser(
        "pack",
        help="pack buffers with lifetimes into the least memory",
        description=(
            "Give every buffer of FILE.csv (columns id,lower,upper,size; buffer live on "
            "[lower, upper)) an offset so that co-live buffers never overlap, as low as possible. "
            "Prints peak, lower bound and their ratio."
        ),
    )
    parser.add_argument("file", metavar="FILE.csv", help="buffers: id,lower,upper,size with a header")
    parser.add_argument("--align", type=_align, default=1, metavar="BYTES",
                        help="offset alignment, a power of two (default 1)")
    parser.add_argument("--time-limit", type=positive_float, default=None, metavar="S",
                        help="search time limit in seconds (default 10; stops earlier at the bound)")
    parser.add_argument("--out", metavar="OUT.csv", default=None,
                        help="write the buffers with an added offset column")
    parser.set_defaults(func=cmd_pack)


def cmd_pack(args: argparse.Namespace) -> int:
    """Execute ``numamem pack`` for parsed ``args``; return the exit status.

    Parameters
    ----------
    args : argparse.Namespace
        With ``file``, ``align``, ``time_limit`` and ``out``.

    Returns
    -------
    int
        0 on success. Bad input raises ``ValueError`` and unreadable files ``OSError``, which
        :func:`numamem.cli.main` reports in one line.
    """
    from numamem.planner.packing import pack

    check_writable(args.out, "--out")
    data = read_csv(args.file)
    result = pack(data.lower, data.upper, data.size, align=args.align, time_limit=args.time_limit)
    if args.out is not None:
        write_csv(args.out, data.ids, data.lower, data.upper, data.size, result.offsets)
    print(
        f"peak={result.peak} lower_bound={result.lower_bound} ratio={result.ratio:.4f} "
        f"buffers={len(data)} method={result.method} seconds={result.seconds:.3f}"
        + (" timed_out" if result.timed_out else "")
    )
    return 0
