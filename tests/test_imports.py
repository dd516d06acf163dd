"""The import graph, drawn from the code: data flows one way and nothing imports in a circle.

Every ``import`` counts, wherever it stands (a function-level import is still a dependency,
and the shape review found cycles hidden exactly there), and so does every module loaded
by name (``importlib.import_module("...")`` / ``__import__("...")`` with a literal). A
name-loaded module whose name is not a literal cannot be checked, so it fails the test.
Imports under ``if TYPE_CHECKING:`` are for the type checker only and are skipped.

Layers (issue #12, the project's shape): the compiler ``cerberus`` at the bottom; the
``ledger`` beside it, importing nothing of ours; ``runtime`` above the compiler; ``network``
above both; ``benchmarks`` reads everything below the shell; the application shell
``cerberus_cli`` sits on top and nothing imports it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package → the packages of ours it may import (besides itself)
ALLOWED = {
    "cerberus": set(),
    "ledger": set(),
    "runtime": {"cerberus"},
    "network": {"cerberus", "ledger", "runtime"},
    "benchmarks": {"cerberus", "ledger", "runtime", "network"},
    "cerberus_cli": {"cerberus", "ledger", "runtime", "network"},
}


def _modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted name → file, for every module of ``packages`` under ``root``."""
    out: dict[str, Path] = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_names(module: str, path: Path) -> tuple[set[str], list[str]]:
    """(dotted names this module imports, problems such as non-literal name loads)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    names: set[str] = set()
    problems: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{a.name}" for a in node.names)  # maybe submodules
        elif isinstance(node, ast.Call):
            f = node.func
            loader = (isinstance(f, ast.Attribute) and f.attr == "import_module") or (
                isinstance(f, ast.Name) and f.id in ("import_module", "__import__"))
            if loader:
                arg = node.args[0] if node.args else None
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    names.add(arg.value)
                else:
                    problems.append(f"{path}:{node.lineno}: a module loaded by a computed name")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names, problems


def import_graph(root: Path, packages: Iterable[str]) -> tuple[dict[str, set[str]], list[str]]:
    """Module → the modules of ``packages`` it imports (resolved to real modules)."""
    mods = _modules(root, packages)
    graph: dict[str, set[str]] = {}
    problems: list[str] = []
    for name, path in mods.items():
        raw, bad = _imported_names(name, path)
        problems += bad
        edges = set()
        for target in raw:
            # `from a.b import c`: c is a module if a.b.c is one, else a name in a.b
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph, problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, it = work[-1]
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        comp.append(top)
                        if top == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    g, problems = import_graph(ROOT, ALLOWED)
    assert not problems, "\n".join(problems)
    return g


def test_no_import_cycle_between_or_inside_packages(graph: dict[str, set[str]]) -> None:
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" ↔ ".join(c) for c in found)


def test_packages_import_only_the_layers_below(graph: dict[str, set[str]]) -> None:
    wrong = sorted(
        f"{mod} imports {dep}"
        for mod, deps in graph.items() for dep in deps
        if dep.split(".")[0] != mod.split(".")[0]
        and dep.split(".")[0] not in ALLOWED[mod.split(".")[0]]
    )
    assert not wrong, "\n".join(wrong)


def test_nothing_imports_the_application_shell(graph: dict[str, set[str]]) -> None:
    users = sorted(m for m, deps in graph.items() if not m.startswith("cerberus_cli")
                   and any(d.startswith("cerberus_cli") for d in deps))
    assert not users
    assert any(d.startswith("runtime") for d in graph["cerberus_cli.commands.serve"])


def test_ledger_knows_torch_only_in_its_tft_module() -> None:
    heavy = ("torch", "transformers", "concrete", "triton", "onnx")
    users = []
    for name, path in _modules(ROOT, ["ledger"]).items():
        raw, _ = _imported_names(name, path)
        if any(r.split(".")[0] in heavy for r in raw) and name != "ledger.tft":
            users.append(name)
    assert not users


def test_the_walker_sees_cycles_and_names_loaded_by_importlib(tmp_path: Path) -> None:
    """The checks above can fail: a package whose cycle hides in a function and behind
    ``importlib`` is caught, and a computed module name is reported."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import importlib\n\ndef f():\n"
                              "    return importlib.import_module('pkg.b')\n")
    (pkg / "b.py").write_text("def g():\n    from . import a\n    return a\n")
    (pkg / "c.py").write_text("import importlib\nimportlib.import_module('pkg.' + 'a')\n"
                              "from typing import TYPE_CHECKING\n"
                              "if TYPE_CHECKING:\n    from pkg import b\n")
    g, problems = import_graph(tmp_path, ["pkg"])
    assert cycles(g) == [["pkg.a", "pkg.b"]]
    assert len(problems) == 1 and "c.py:2" in problems[0]
    assert g["pkg.c"] == set()  # the TYPE_CHECKING import is not a runtime edge
