"""Run Python code in a child process under a real seccomp filter (tests of containers' refusals).

Docker's default seccomp profile and pods without ``CAP_SYS_NICE`` answer ``mbind``,
``set_mempolicy`` and ``move_pages`` with ``EPERM``. :func:`run_refused` reproduces that on this
machine: a child interpreter loads a libseccomp filter (through ``pyseccomp``, the ctypes binding
from PyPI in the ``test`` extra) that returns ``EPERM`` for those calls and allows every other, then
imports numamem and runs the given code. The filter is loaded before numamem is imported, as in a
container, where it is there from the process's start. A filter cannot be removed, hence the child.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

# The test command installs the test extra: a missing pyseccomp fails here, never skips.
import pyseccomp  # noqa: F401

import numamem

#: The calls Docker's default profile refuses to a container without CAP_SYS_NICE.
REFUSED = ("mbind", "set_mempolicy", "move_pages")

_PRELUDE = """
import errno, json, sys
import pyseccomp as seccomp

refuse, query_allowed = json.loads(sys.argv[1]), json.loads(sys.argv[2])
flt = seccomp.SyscallFilter(seccomp.ALLOW)
for name in refuse:
    if name == "move_pages" and query_allowed:
        # Refuse moving (a node list, argument 3, is given) but allow asking where pages are.
        flt.add_rule(seccomp.ERRNO(errno.EPERM), name, seccomp.Arg(3, seccomp.NE, 0))
    else:
        flt.add_rule(seccomp.ERRNO(errno.EPERM), name)
flt.load()
"""


def _pythonpath() -> str:
    # The child must import this numamem (the tree under test) and pyseccomp, wherever they are.
    paths = [str(Path(numamem.__file__).resolve().parent.parent),
             str(Path(pyseccomp.__file__).resolve().parent)]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(paths)


def run_refused(code: str, refuse=REFUSED, query_allowed: bool = False, timeout: float = 120, args=()):
    """Run ``code`` in a child interpreter whose ``refuse`` calls fail with EPERM.

    Parameters
    ----------
    code : str
        Python source; it runs after the filter is loaded. What it prints on its last line as
        JSON is returned as ``result``.
    refuse : sequence of str
        System calls the filter refuses.
    query_allowed : bool
        Allow ``move_pages`` in query mode (no node list), refusing only moves.
    timeout : float
        Seconds before the child is killed (the test then fails).
    args : sequence of str
        More arguments for the child: its ``sys.argv[3:]``.

    Returns
    -------
    subprocess.CompletedProcess
        With ``result`` set to the JSON of the last line of stdout (None if it is not JSON).
    """
    source = _PRELUDE + textwrap.dedent(code)
    env = dict(os.environ, PYTHONPATH=_pythonpath())
    proc = subprocess.run([sys.executable, "-c", source, json.dumps(list(refuse)), json.dumps(query_allowed), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)
    lines = proc.stdout.strip().splitlines()
    try:
        proc.result = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        proc.result = None
    return proc
