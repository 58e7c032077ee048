"""The layout's rules, as a machine checks them: the import-linter contracts in pyproject.toml (the
layers of docs/layout.md, MLflow only in tracking/, no torch in config/), no import circle between
modules (function-level imports included), modules and functions of a readable size, and each tag
name written in one place."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

from helpers import ROOT

PACKAGE = ROOT / "ftsweep"
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 350, 50


def test_the_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "3 kept, 0 broken" in done.stdout


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(edges):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_the_cycle_finder_finds_a_circle_and_passes_a_tree():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_module_imports_itself_through_others():
    graph = grimp.build_graph("ftsweep", cache_dir=None)
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    # a package's __init__ importing its own submodules is not a circle of two modules' code
    edges = {m: {t for t in targets if not m.startswith(f"{t}.")} for m, targets in edges.items()}
    assert _cycle(edges) is None


def _functions(tree: ast.AST):
    return (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))


def test_modules_and_functions_stay_readable():
    long_modules, long_functions = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            long_modules.append(f"{path.relative_to(ROOT)} ({text.count(chr(10))} lines)")
        for fn in _functions(ast.parse(text)):
            if fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES:
                long_functions.append(f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name}")
    assert long_modules == [] and long_functions == []


def test_each_tag_name_is_written_once():
    """Tag and attribute names are spelled in ftsweep/tags.py only: a reader and a writer cannot differ."""
    names = [line.split('"')[1] for line in (PACKAGE / "tags.py").read_text().splitlines() if '= "ftsweep.' in line]
    assert "ftsweep.fold" in names and len(names) == len(set(names))
    elsewhere = [f"{path.relative_to(ROOT)}: {name}" for path in sorted(PACKAGE.rglob("*.py")) if path.name != "tags.py"
                 for name in names if f'"{name}"' in path.read_text()]
    assert elsewhere == []
