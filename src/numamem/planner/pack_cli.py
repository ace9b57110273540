"""The ``numamem pack`` command: pack the buffers of an ``id,lower,upper,size`` CSV file.

``numamem.planner.cli.add_commands`` calls :func:`add_commands` to register it.
"""
from __future__ import annotations

import argparse
import math

from numamem.planner.packing import pack, read_csv, write_csv


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _align(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1 or value & (value - 1):
        raise argparse.ArgumentTypeError(f"must be a positive power of two, got {text!r}")
    return value


def add_commands(subparsers) -> None:
    """Register ``pack`` on an ``argparse`` sub-parser collection.

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
    parser.add_argument("--time-limit", type=_positive_float, default=None, metavar="S",
                        help="search time limit in seconds (default 10; stops earlier at the bound)")
    parser.add_argument("--out", metavar="OUT.csv", default=None,
                        help="write the buffers with an added offset column")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Execute ``numamem pack`` for parsed ``args``; return the exit status.

    Parameters
    ----------
    args : argparse.Namespace
        With ``file``, ``align``, ``time_limit`` and ``out``.

    Returns
    -------
    int
        0 on success. Bad input raises ``ValueError`` and unreadable files ``OSError``, which
        ``numamem.cli.main`` reports in one line.
    """
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
