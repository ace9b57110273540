"""The ``numamem`` command: the top layer, and the only one that prints.

One module per command (:data:`COMMANDS`, in help order), each with ``add_command(subparsers)``
that sets ``func`` on its parser; ``func(args)`` returns the exit status. Shared options live in
:mod:`numamem.cli._args`. This module wires them together and holds the one error policy:

* user errors (:class:`CommandError`, ``ValueError``, ``OSError``, ``MemoryError``) print one
  line, ``numamem CMD: error: ...``, and exit non-zero (2 for bad input, 1 for the system
  refusing: a missing file, no memory);
* Ctrl-C prints ``numamem CMD: interrupted`` and exits 130;
* anything else (``TypeError``, ``KeyError``, ``AttributeError``...) is a bug in numamem and
  propagates with its traceback. Commands turn user input into values at the argument boundary,
  so bad input never surfaces as one of those.
"""
from __future__ import annotations

import argparse
import sys

from numamem.cli import bench, doctor, pack, plan, run, topology
from numamem.cli._args import CommandError, positive_int

__all__ = ["COMMANDS", "CommandError", "build_parser", "main", "positive_int"]

#: The command modules, in help order.
COMMANDS = (topology, doctor, plan, pack, run, bench)

# Errors a user can cause with input or the machine's state; reported in one line.
USER_ERRORS = (CommandError, ValueError, OSError, MemoryError)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line too, like every other user error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``numamem`` command with every sub-command."""
    from numamem._version import __version__

    parser = _Parser(
        prog="numamem",
        description="NUMA-aware NumPy memory, DNN memory planning and execution.",
    )
    parser.add_argument("--version", action="version", version=f"numamem {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module in COMMANDS:
        module.add_command(subparsers)
    return parser


def _message(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, MemoryError) and not text:
        # A bare MemoryError (NumPy, the interpreter) carries no message at all.
        return "out of memory (MemoryError)"
    return text or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the ``numamem`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.func(args)
    except KeyboardInterrupt:
        print(f"numamem {args.command}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        print(f"numamem {args.command}: error: {_message(exc)}", file=sys.stderr)
        return 1 if isinstance(exc, (OSError, MemoryError)) else 2
    return int(status or 0)
