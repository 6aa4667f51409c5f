"""Import hygiene: no QGIS anywhere in the core, and no import cycles between the modules of the
whole plugin package (core, command line, QGIS adapters, desktop plugin, Processing)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import roadseg_plugin

PLUGIN = Path(roadseg_plugin.__file__).parent
CORE = PLUGIN / "core"
PACKAGE = "roadseg_plugin.core"


def package_modules(folder: Path = CORE, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted name -> file of every module under `folder` (packages by their __init__)."""
    modules = {}
    for path in sorted(folder.rglob("*.py")):
        parts = path.relative_to(folder).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join((package, *parts))] = path
    return modules


def core_modules() -> dict[str, Path]:
    """Every module under roadseg_plugin/core."""
    return package_modules(CORE, PACKAGE)


def plugin_modules() -> dict[str, Path]:
    """Every module of the roadseg_plugin package, the package itself and its subpackages included."""
    return package_modules(PLUGIN, "roadseg_plugin")


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


def import_statements(name: str, path: Path) -> list[tuple[int, str, tuple[str, ...]]]:
    """(line, module, names taken from it) of every import in the file of module `name` (module
    level, in functions, under TYPE_CHECKING), relative imports resolved to absolute names;
    `import a.b` takes no names."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.append((node.lineno, base, tuple(alias.name for alias in node.names)))
    return found


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of `known` that `name` imports anywhere in its file (see `import_statements`);
    `from pkg import mod` counts as importing `mod`."""
    found = set()
    for _, base, names in import_statements(name, path):
        targets = [f"{base}.{n}" if f"{base}.{n}" in known else base for n in names] if names else [base]
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a non-module attribute: its module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def top_level_names(path: Path) -> set[str]:
    """What a module defines at its top level (also under `if`/`try`): defs, classes, assignments, imports."""
    names: set[str] = set()
    statements = list(ast.parse(path.read_text(encoding="utf-8"), str(path)).body)
    while statements:
        node = statements.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for block in ("body", "orelse", "finalbody"):
                statements += getattr(node, block, [])
            statements += [stmt for handler in getattr(node, "handlers", []) for stmt in handler.body]
    return names


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


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    return {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}


def test_core_modules_import_each_other_without_cycles():
    graph = import_graph(core_modules())
    assert graph[f"{PACKAGE}.engine"] >= {f"{PACKAGE}.backends", f"{PACKAGE}.tiling"}  # the parser sees imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(m.removeprefix(PACKAGE + ".") for m in cycle)


def test_plugin_modules_import_each_other_without_cycles():
    """Every module of roadseg_plugin, core to Processing, module- and function-level imports: the
    plugin object reaches Processing, the task, the dialog and the installer; none of them, nor
    the adapters they share, reaches back (`log`, `adapters.layers` and `adapters.options` hold
    what used to be taken from the plugin object, the task and processing.base)."""
    modules = plugin_modules()
    assert {"roadseg_plugin", "roadseg_plugin.processing.provider", "roadseg_plugin.cli.main",
            "roadseg_plugin.gui.plugin", "roadseg_plugin.core.engine"} <= set(modules)
    graph = import_graph(modules)
    # the parser sees the imports that made the old circles: relative, `..`, inside functions
    assert graph["roadseg_plugin"] >= {"roadseg_plugin.gui.plugin", "roadseg_plugin.install.packages"}
    assert graph["roadseg_plugin.gui.plugin"] >= {"roadseg_plugin.processing.provider", "roadseg_plugin.gui.task",
                                                  "roadseg_plugin.log"}
    assert graph["roadseg_plugin.processing.segment_roads"] >= {"roadseg_plugin.adapters.layers",
                                                                "roadseg_plugin.core.pipeline"}
    assert graph["roadseg_plugin.cli.main"] >= {"roadseg_plugin.cli.region", "roadseg_plugin.cli.segment"}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# What each kind of module of roadseg_plugin may import of the others (docs/DEVELOPING.md, "The QGIS
# shell"): only kinds further down. The core is QGIS-free; its one import of the shell is the region
# runner asking `install.packages` for the Python to start Dask workers with (plain Python).
MAY_IMPORT = {
    "roadseg_plugin": {"install", "gui"},  # classFactory
    "__main__": {"cli"},
    "gui": {"processing", "adapters", "log", "install", "core"},
    "processing": {"adapters", "log", "install", "core"},
    "adapters": {"install", "core"},
    "cli": {"core"},
    "log": set(),
    "install": set(),
    "core": {"install"},
}


def kind(module: str) -> str:
    """roadseg_plugin.gui.task -> gui; the package itself -> roadseg_plugin."""
    return module.split(".")[1] if "." in module else module


def test_each_kind_imports_only_the_kinds_below_it():
    graph = import_graph(plugin_modules())
    assert {kind(m) for m in graph} == set(MAY_IMPORT), "a new folder: give it its place in MAY_IMPORT"
    wrong = sorted(f"{a} -> {b}" for a, imported in graph.items() for b in imported
                   if kind(b) != kind(a) and kind(b) not in MAY_IMPORT[kind(a)])
    assert not wrong, "\n".join(wrong)


def test_log_and_layer_helpers_import_nothing_of_the_plugin_but_the_core():
    graph = import_graph(plugin_modules())
    assert graph["roadseg_plugin.log"] == set()
    for name in ("roadseg_plugin.adapters.layers", "roadseg_plugin.adapters.qgis_reader",
                 "roadseg_plugin.adapters.styles"):
        outside = {m for m in graph[name] if not m.startswith(("roadseg_plugin.core", "roadseg_plugin.adapters."))}
        assert not outside, f"{name} imports {sorted(outside)}"


ROOT = PLUGIN.parent


def test_every_import_of_the_plugin_names_what_it_imports():
    """Every `roadseg_plugin` import in the package, the tests, training, bench and scripts names a
    module that exists and, for `from X import n`, a submodule of X or a name X defines. Imports
    inside functions run only when the function does: one left behind by a move would otherwise
    fail first in QGIS (the import graph above would silently attach it to a parent package)."""
    modules = plugin_modules()
    files = dict(modules)
    for folder in ("tests", "training", "bench", "scripts"):
        files.update(package_modules(ROOT / folder, folder))
    defined: dict[str, set[str]] = {}
    wrong = []
    for name, path in files.items():
        for line, base, names in import_statements(name, path):
            if base != "roadseg_plugin" and not base.startswith("roadseg_plugin."):
                continue
            where = f"{path.relative_to(ROOT)}:{line}"
            if base not in modules:
                wrong.append(f"{where}: no module {base}")
                continue
            for taken in names:
                if f"{base}.{taken}" in modules or taken == "*":
                    continue
                if taken not in defined.setdefault(base, top_level_names(modules[base])):
                    wrong.append(f"{where}: {base} defines no {taken}")
    assert not wrong, "\n".join(wrong)


def test_the_old_circles_are_found_by_this_test(tmp_path: Path):
    """The shell's two circles before issue 20, rebuilt in miniature, are reported."""
    package = tmp_path / "pkg"
    (package / "processing").mkdir(parents=True)
    files = {"__init__.py": "", "cli.py": "def build_parser():\n    from .region_cli import add_parser\n",
             "region_cli.py": "from .cli import build\n", "plugin.py": "from .processing.provider import P\n",
             "task.py": "from .plugin import PLUGIN_NAME, log\n", "processing/__init__.py": "",
             "processing/provider.py": "from .segment_roads import S\n",
             "processing/segment_roads.py": "def run():\n    from ..task import layer_source\n"}
    for name, text in files.items():
        (package / name).write_text(text)
    graph = import_graph(package_modules(package, "pkg"))
    assert find_cycle(graph) == ["pkg.cli", "pkg.region_cli", "pkg.cli"]
    del graph["pkg.cli"], graph["pkg.region_cli"]
    assert find_cycle(graph) == ["pkg.plugin", "pkg.processing.provider", "pkg.processing.segment_roads",
                                 "pkg.task", "pkg.plugin"]


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
