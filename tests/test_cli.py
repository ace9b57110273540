"""The ``numamem`` command as a whole: one error policy, the command list, the entry points."""
from __future__ import annotations

import doctest
import subprocess
import sys

import pytest

import numamem.cli
from numamem.cli import _args, main
from numamem.cli import topology as topology_cmd


def _failing(exc):
    def run(args):
        raise exc
    return run


@pytest.mark.parametrize("exc, status, message", [
    (ValueError("bad value"), 2, "bad value"),
    (numamem.cli.CommandError("bad command"), 2, "bad command"),
    (FileNotFoundError(2, "No such file or directory", "x.json"), 1, "[Errno 2] No such file or directory: 'x.json'"),
    (MemoryError(), 1, "out of memory (MemoryError)"),
    (MemoryError("node 0 is full"), 1, "node 0 is full"),
])
def test_user_errors_are_one_line(monkeypatch, capsys, exc, status, message):
    monkeypatch.setattr(topology_cmd, "run_topology", _failing(exc))
    assert main(["topology"]) == status
    err = capsys.readouterr().err
    assert err == f"numamem topology: error: {message}\n"


def test_interrupt_is_one_line_and_130(monkeypatch, capsys):
    monkeypatch.setattr(topology_cmd, "run_topology", _failing(KeyboardInterrupt()))
    assert main(["topology"]) == 130
    assert capsys.readouterr().err == "numamem topology: interrupted\n"


@pytest.mark.parametrize("exc", [TypeError("bug"), KeyError("bug"), AttributeError("bug"), RuntimeError("bug")])
def test_programming_errors_keep_their_traceback(monkeypatch, exc):
    monkeypatch.setattr(topology_cmd, "run_topology", _failing(exc))
    with pytest.raises(type(exc)):
        main(["topology"])


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        main(["plan", "mlp", "--no-such-option"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("numamem: error: unrecognized arguments: --no-such-option")


def test_commands_in_a_static_list():
    assert [m.__name__ for m in numamem.cli.COMMANDS] == [
        "numamem.cli.topology", "numamem.cli.doctor", "numamem.cli.plan", "numamem.cli.pack", "numamem.cli.run",
        "numamem.cli.bench"]


def test_python_dash_m(tmp_path):
    out = subprocess.run([sys.executable, "-m", "numamem.cli", "--version"], capture_output=True, text=True,
                         check=True)
    assert out.stdout.startswith("numamem ")


def test_args_docstring_examples():
    result = doctest.testmod(_args, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
