"""The package's shape: subpackages import one way (no cycles, imports inside functions
included), no module over 600 lines, no function over 80 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cxrtriage"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


ROOT = "<package root>"  # cxrtriage/__init__.py: the public API, which imports the layers below it
LEAVES = {"about"}  # imported by every layer; imports nothing of the package


def _unit(path: Path) -> str:
    """The subpackage a module belongs to ('io', 'serve', ...); top-level modules are their own
    unit and the package's ``__init__`` is :data:`ROOT`."""
    rel = path.relative_to(PACKAGE)
    if rel.parts == ("__init__.py",):
        return ROOT
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _unit_of(dotted: str) -> str | None:
    """The unit a dotted module name lies in: a subpackage or top-level module, :data:`ROOT` for
    the package itself (``import cxrtriage``, ``from cxrtriage import load_model``), None outside."""
    parts = dotted.split(".")
    if parts[0] != "cxrtriage":
        return None
    if len(parts) > 1 and ((PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").exists()):
        return parts[1]
    return ROOT


def _absolute(path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names, relative imports resolved."""
    if node.level == 0:
        return node.module or ""
    package = ["cxrtriage", *path.relative_to(PACKAGE).parent.parts]
    base = package[:len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imported_units(path: Path) -> set[str]:
    """Units named by every import in the module, at any depth (functions included): ``import``,
    ``from ... import`` (relative ones too) and ``importlib.import_module("cxrtriage...")``."""
    units: set[str | None] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            units.update(_unit_of(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(path, node)
            unit = _unit_of(module)
            if unit == ROOT:  # ``from cxrtriage import io``: the subpackage, not the root
                units.update(_unit_of(f"{module}.{a.name}") for a in node.names)
            else:
                units.add(unit)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            units.add(_unit_of(node.args[0].value))
    return {u for u in units if u is not None}


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in _modules():
        unit = _unit(path)
        graph.setdefault(unit, set()).update(u for u in _imported_units(path) if u != unit)
    graph.pop("__main__", None)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_cycle_finder_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_subpackages_import_one_way():
    """No cycle, the package root included (a subpackage importing the root closes a loop
    through everything the root imports)."""
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle between subpackages: " + " -> ".join(cycle)


def test_nothing_imports_the_package_root_and_leaves_stay_leaves():
    graph = import_graph()
    up = sorted(unit for unit, deps in graph.items() if ROOT in deps)
    assert not up, f"these import the package root (use cxrtriage.about or the subpackage itself): {up}"
    for leaf in LEAVES:
        assert graph.get(leaf, set()) == set(), f"{leaf} imports {graph[leaf]}"


def test_the_import_finder_sees_relative_root_and_importlib_imports(tmp_path):
    """The checks above are only as good as the finder: relative imports, ``from cxrtriage import
    name`` and ``importlib.import_module`` all count."""
    mod = PACKAGE / "serve" / "_probe_for_structure_test.py"
    mod.write_text("from .. import load_model\nfrom ..infer import engine\nimport importlib\n"
                   "importlib.import_module('cxrtriage.pacs.results')\nfrom cxrtriage import io\n")
    try:
        assert _imported_units(mod) == {ROOT, "infer", "pacs", "io"}
    finally:
        mod.unlink()


def test_prediction_layers_do_not_reach_up():
    graph = import_graph()
    assert graph.get("io", set()) <= LEAVES, f"io imports {graph['io']}"
    assert graph.get("contract", set()) <= {"io"} | LEAVES, f"contract imports {graph['contract']}"
    assert "data" not in graph.get("infer", set()), "infer imports data: preparation is the contract's"
    for low in ("infer", "contract", "io", "data", "evaluate"):
        assert not graph.get(low, set()) & {"serve", "pacs", "bulk", "cli", "train"}, (low, graph[low])


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_and_function_sizes(path: Path):
    text = path.read_text(encoding="utf-8")
    lines = text.count("\n") + 1
    assert lines <= MAX_MODULE_LINES, f"{path.name} has {lines} lines (at most {MAX_MODULE_LINES})"
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(ast.parse(text))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


def test_every_class_name_is_unique_in_the_package():
    """One name, one thing: a reader (and an import) never has to ask which ``Triager`` is meant."""
    seen: dict[str, list[str]] = {}
    for path in _modules():
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef):
                seen.setdefault(node.name, []).append(str(path.relative_to(PACKAGE)))
    dupes = {name: where for name, where in seen.items() if len(where) > 1}
    assert not dupes, f"class names defined more than once: {dupes}"
