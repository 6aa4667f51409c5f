"""The core's import hygiene: no QGIS anywhere in it, and no import cycles between its modules."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import roadseg_plugin.core

CORE = Path(roadseg_plugin.core.__file__).parent
PACKAGE = "roadseg_plugin.core"


def core_modules() -> dict[str, Path]:
    """Dotted name -> file of every module under roadseg_plugin/core (packages by their __init__)."""
    modules = {}
    for path in sorted(CORE.rglob("*.py")):
        parts = path.relative_to(CORE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join((PACKAGE, *parts))] = path
    return modules


def test_every_core_module_imports_without_qgis():
    # A fresh interpreter: this test session may have imported QGIS for the plugin tests.
    code = ("import importlib, sys\n"
            f"for name in {sorted(core_modules())!r}:\n"
            "    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m == 'qgis' or m.startswith('qgis.')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=CORE.parent.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", f"QGIS imported by the core: {done.stdout}"


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """Core modules that `name` imports anywhere in its file (module level, in functions, under
    TYPE_CHECKING), relative imports resolved; `from pkg import mod` counts as importing `mod`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a non-module attribute: its module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: fully explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_core_modules_import_each_other_without_cycles():
    modules = core_modules()
    graph = {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}
    assert graph[f"{PACKAGE}.engine"] >= {f"{PACKAGE}.backends", f"{PACKAGE}.tiling"}  # the parser sees imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(m.removeprefix(PACKAGE + ".") for m in cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
