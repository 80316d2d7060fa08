# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""The package layering of ``tlk_components``, checked from the source.

Layers, lowest first: ``utils`` → ``boxes`` → ``data`` / ``losses`` / ``networks`` → ``adaptation`` → ``engines`` →
``zoo`` → ``workflows`` → ``cli``. A module may import from its own package or from a lower layer, never from a
higher one or from another package of its own layer; and no set of modules imports itself round in a cycle. Every
import counts: top-level, inside functions, and module paths written as strings for ``importlib`` (a string that is
exactly ``tlk_components.<...>`` or ``tlk_components.<...>:<name>``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "tlk_components"
RANK = {
    "utils": 0,
    "boxes": 1,
    "data": 2,
    "losses": 2,
    "networks": 2,
    "adaptation": 3,
    "engines": 4,
    "zoo": 5,
    "workflows": 6,
    "cli": 7,
    "__main__": 8,
}
_MODULE_STRING = re.compile(r"^(tlk_components(?:\.\w+)+)(?::\w+)?$")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, package: str = "tlk_components") -> set[str]:
    """Every ``tlk_components`` module ``path`` (in ``package``) imports (absolute names; ``from x import y``: x)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    logger_names = {  # logging.getLogger("tlk_components.zoo") names a logger, not an import
        id(arg)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "getLogger"
        for arg in node.args
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                found.add(node.module)
        elif (
            isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings | logger_names
        ):
            m = _MODULE_STRING.match(node.value)
            if m:
                found.add(m.group(1))
    return {m for m in found if m == "tlk_components" or m.startswith("tlk_components.")}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for imp in _imports(path, package):
            # ``from tlk_components.engines import handlers`` names a module or a symbol: keep the longest module
            while imp not in modules and "." in imp:
                imp = imp.rpartition(".")[0]
            if imp in modules and imp != name:
                targets.add(imp)
        graph[name] = targets
    return graph


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_package_has_a_layer() -> None:
    packages = {_package(m) for m in _graph()} - {""}
    assert packages <= set(RANK), f"packages without a layer in this test: {sorted(packages - set(RANK))}"


def test_imports_only_point_down() -> None:
    wrong = []
    for module, targets in _graph().items():
        src = _package(module)
        for target in targets:
            dst = _package(target)
            if not src or not dst or src == dst:
                continue
            if RANK[dst] >= RANK[src]:
                wrong.append(f"{module} ({src}, layer {RANK[src]}) imports {target} ({dst}, layer {RANK[dst]})")
    assert not wrong, "imports that do not point down:\n" + "\n".join(sorted(wrong))


def test_no_import_cycle() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from tlk_components.engines import handlers\n", {"tlk_components.engines"}),
        ("x = 'tlk_components.data.kidney:write_demo'\n", {"tlk_components.data.kidney"}),
        ('"""tlk_components.zoo is mentioned in a docstring."""\n', set()),
        ("import logging\nlog = logging.getLogger('tlk_components.zoo')\n", set()),
        ("def f():\n    import tlk_components.zoo.api\n", {"tlk_components.zoo.api"}),
    ],
)
def test_the_import_reader_sees_lazy_and_string_imports(tmp_path: Path, source: str, expected: set[str]) -> None:
    path = tmp_path / "m.py"
    path.write_text(source)
    got = {m for m in _imports(path) if m != "tlk_components"}
    assert got == expected
