"""The plugin loads on the oldest Python it says it supports (MIN_PYTHON): QGIS builds ship 3.10."""
from __future__ import annotations

import ast
from pathlib import Path

import roadseg_plugin

ROOT = Path(__file__).resolve().parents[2]


def test_no_python_3_11_only_names_in_the_plugin():
    """datetime.UTC, tomllib, typing.Self, StrEnum and except* are 3.11+: they would break the
    plugin on a QGIS with Python 3.10, which `MIN_PYTHON` admits."""
    assert roadseg_plugin.MIN_PYTHON == (3, 10)
    newer = {("datetime", "UTC"), ("typing", "Self"), ("enum", "StrEnum")}
    found = []
    for path in (ROOT / "roadseg_plugin").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names]
                module = getattr(node, "module", None) or ""
                if "tomllib" in names or module == "tomllib" or any((module, n) in newer for n in names):
                    found.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.Attribute) and node.attr == "UTC":
                found.append(f"{path.name}:{node.lineno}")
            if isinstance(node, getattr(ast, "TryStar", ())):
                found.append(f"{path.name}:{node.lineno}")
    assert not found, f"Python 3.11+ only: {found}"
