"""The import graph of ``src/numamem``: no cycle, and no import from a lower layer to a higher one.

Every ``.py`` module is parsed with :mod:`ast` (every import statement counts, including imports
inside functions: a lazy import is still a dependency); Cython modules (``.pyx``/``.pxd``) are
scanned for ``import``/``cimport`` lines. An import of a package's submodule counts as an edge to
that submodule, not to the package's ``__init__``.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "numamem"

# The layers, bottom up. This mirrors the layer table of ARCHITECTURE.md ("Layers (bottom up)"):
# the C-backed core (topology, region, pool, arrays, threads, errors and their helpers) at the
# bottom, then the planner, the built-in models (graphs built with the planner), the runtime, the
# other engines and the scale-out modules, and the command line at the top. ``numamem`` itself
# (``__init__.py``) is the facade over all of them and may import any layer.
LAYERS = (
    ("core", ()),                                   # every module not matched below
    ("planner", ("numamem.planner",)),
    ("models", ("numamem.models",)),
    ("runtime", ("numamem.runtime",)),
    ("engines", ("numamem.engines", "numamem.dask", "numamem.ray")),
    ("cli", ("numamem.cli",)),
    ("facade", ("numamem",)),                        # numamem/__init__.py only
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*")):
        # A .pxd alone (raw declarations: _libnuma) is a module too; where a .pyx exists beside it,
        # the .pyx (sorted after it) stands for the module.
        if path.suffix in (".py", ".pyx", ".pxd") and "__pycache__" not in path.parts:
            out[module_name(path)] = path
    return out


def layer_of(name: str) -> int:
    if name == "numamem":
        return len(LAYERS) - 1
    best = 0
    for rank, (_, prefixes) in enumerate(LAYERS[:-1]):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            best = rank
    return best


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The numamem module ``name`` refers to: itself, or the nearest enclosing known module."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


# ``from X cimport a, b`` or ``from X cimport (a, b,\n c)`` (names over several lines), or
# ``cimport X`` / ``import X``.
_CYTHON_IMPORT = re.compile(
    r"^[ \t]*(?:from[ \t]+([\w.]+)[ \t]+c?import[ \t]+(?:\(([^)]*)\)|([\w, ]+))|c?import[ \t]+([\w.]+))",
    re.M)


def _targets(base: str, names: list[str], known: dict[str, Path]) -> list[str]:
    """What ``from base import names`` depends on: each name's submodule where there is one,
    else ``base`` itself (the name is defined in its ``__init__``)."""
    return [f"{base}.{n}" if f"{base}.{n}" in known else base for n in names] or [base]


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """numamem modules that module ``name`` (at ``path``) imports."""
    targets: list[str] = []
    if path.suffix == ".py":
        tree = ast.parse(path.read_text(), str(path))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets += _targets(base, [alias.name for alias in node.names], known)
    else:
        for m in _CYTHON_IMPORT.finditer(path.read_text()):
            if m.group(1):
                names = re.sub(r"#.*", "", m.group(2) if m.group(2) is not None else m.group(3))
                targets += _targets(m.group(1), [n.split()[0] for n in names.split(",") if n.strip()], known)
            else:
                targets.append(m.group(4))
    out = set()
    for t in targets:
        if t == "numamem" or t.startswith("numamem."):
            target = _resolve(t, known)
            if target is not None and target != name:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_the_scan_sees_the_package():
    graph = import_graph()
    assert "numamem.cli" in graph and "numamem.planner.plan" in graph and "numamem._pool" in graph
    assert "numamem.cli.plan" in graph["numamem.cli"]
    assert "numamem.planner.graph" in graph["numamem.models"]


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_upward_import():
    upward = []
    for name, deps in sorted(import_graph().items()):
        for dep in sorted(deps):
            if layer_of(dep) > layer_of(name):
                upward.append(f"{name} ({LAYERS[layer_of(name)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


@pytest.mark.parametrize("graph, cycle", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": set(), "c": {"a", "b"}}, None),
])
def test_find_cycle(graph, cycle):
    assert find_cycle(graph) == cycle


def test_layers_rank_as_documented():
    assert layer_of("numamem._pool") < layer_of("numamem.planner.plan") < layer_of("numamem.models.cnn")
    assert layer_of("numamem.models") < layer_of("numamem.runtime.runner") < layer_of("numamem.cli.run")
    assert layer_of("numamem.cli") < layer_of("numamem")


def test_cython_imports_are_read_across_lines(tmp_path):
    """A parenthesised ``cimport`` list over several lines (with comments) is seen, name by name."""
    known = modules()
    source = tmp_path / "probe.pyx"
    source.write_text("from numamem._arena cimport (\n    arena_alloc,  # a comment\n"
                      "    arena_free as free_it,\n)\nfrom numamem._place cimport PlaceResult\n"
                      "cimport numamem._registry\n")
    assert imports_of("numamem.probe", source, known) == {
        "numamem._arena", "numamem._place", "numamem._registry"}
