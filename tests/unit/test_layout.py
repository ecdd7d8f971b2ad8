"""The package's shape: no import cycles, fusionrank imports at module level only,
every stage in its folder's stage.py and reached from its job file in one hop."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "lib" / "fusionrank"
# The one deliberate lazy import: `fusionrank.search` resolves on first use so that
# `import fusionrank` stays light (no Spark, torch or FAISS).
LAZY_ALLOWED = {("fusionrank", "fusionrank.interfaces.search")}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported(node: ast.AST, known: set[str]) -> list[str]:
    """fusionrank modules an import statement loads (a `from pkg import mod` names mod)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.startswith("fusionrank")]
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fusionrank"):
        out = []
        for alias in node.names:
            sub = f"{node.module}.{alias.name}"
            out.append(sub if sub in known else node.module)
        return out
    return []


def graph() -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    known = set(modules())
    edges: dict[str, set[str]] = {m: set() for m in known}
    lazy = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        for node in tree.body:
            for target in imported(node, known):
                edges[name].add(target)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    for target in imported(inner, known):
                        lazy.append((name, target))
    return edges, lazy


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle():
    edges, _ = graph()
    assert cycles(edges) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]


def test_fusionrank_modules_are_imported_at_module_level():
    _, lazy = graph()
    assert [pair for pair in lazy if pair not in LAZY_ALLOWED] == []


def test_each_stage_lives_in_its_folder_and_its_job_file_reaches_it_in_one_hop():
    from fusionrank.pipeline import ORDER, STAGES

    assert ORDER[0] == "clean_catalog" and ORDER[-1] == "publish"
    for name in ORDER:
        run = STAGES[name].run
        assert run.__name__ == name and run.__module__.endswith(".stage"), (name, run.__module__)
        job = (ROOT / "jobs" / f"{name}.py").read_text()
        assert f"from {run.__module__} import {name}\n" in job and f"job_main({name})" in job, name
