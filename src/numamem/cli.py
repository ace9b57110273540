"""The ``numamem`` command.

Each part of numamem registers its own sub-commands through an ``add_commands(subparsers)``
function (see ``COMMAND_MODULES``); this module only wires them together and turns expected
errors into a one-line message and a non-zero exit status, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Modules that contribute sub-commands, in help order. Each defines ``add_commands(subparsers)``
# and sets ``func`` on its parsers; ``func(args)`` returns the exit status.
COMMAND_MODULES = (
    "numamem._cli_topology",
    "numamem.planner.cli",
    "numamem.runtime.cli",
)


class CommandError(Exception):
    """An error a command reports as one line on stderr with exit status 2."""


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``numamem`` command with every available sub-command."""
    from numamem._version import __version__

    parser = argparse.ArgumentParser(
        prog="numamem",
        description="NUMA-aware NumPy memory, DNN memory planning and execution.",
    )
    parser.add_argument("--version", action="version", version=f"numamem {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # A part that is not built yet contributes no commands; anything else is a bug.
            if exc.name is None or not name.startswith(exc.name):
                raise
            continue
        module.add_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``numamem`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.func(args)
    except KeyboardInterrupt:
        print("numamem: interrupted", file=sys.stderr)
        return 130
    except (CommandError, ValueError, TypeError, MemoryError, OSError, KeyError) as exc:
        # Expected failures (bad input, missing files, nodes this machine lacks) are reported
        # in one line; a traceback would hide the message from the user.
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"numamem {args.command}: error: {message}", file=sys.stderr)
        return 2 if isinstance(exc, (CommandError, ValueError, TypeError, KeyError)) else 1
    return int(status or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
