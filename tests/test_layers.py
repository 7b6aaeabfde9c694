"""The package layering, checked on the code's own imports (lazy ones inside functions included).

From the top: the command line (``cli``, ``pipeline``, ``commands``); the stages that train, evaluate, collect
feedback and serve models (``rl``, ``train``, ``eval``, ``feedback``, ``serve``, ``cai``); what they call on (``rewards``,
``generation``, the remote-model client ``remote``); the foundations (``losses``, ``data``, ``models``); and the
shared utilities (``config``, ``errors``, ``runs``, ``progress``, ``memory``, ``distributed``). A module may import its own layer and
the layers below, never one above; and no two packages import each other, directly or round a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "preftune"

LAYERS: list[tuple[str, ...]] = [
    ("cli", "pipeline", "commands", "__main__"),
    ("rl", "train", "eval", "feedback", "serve", "cai"),
    ("rewards", "generation", "remote"),
    ("losses", "data", "models"),
    ("config", "errors", "runs", "progress", "memory", "distributed", "__init__"),
]


def _unit(module: str) -> str | None:
    """``preftune.data.convert`` -> ``data``; None outside preftune."""
    parts = module.split(".")
    return parts[1] if parts[0] == "preftune" and len(parts) > 1 else ("__init__" if module == "preftune" else None)


def _layer(unit: str) -> int:
    for i, names in enumerate(LAYERS):
        if unit in names:
            return i
    raise AssertionError(f"preftune/{unit} is in no layer: add it to LAYERS in {__file__}")


def _imports() -> list[tuple[str, str, str, int]]:
    """(importing unit, imported unit, file, line) for every import of a preftune module."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(rel.parts)
        me = _unit(module.removesuffix(".__init__")) or "__init__"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                unit = _unit(target)
                if unit is not None and (PACKAGE / unit).exists() or (PACKAGE / f"{unit}.py").exists():
                    found.append((me, unit, str(path.relative_to(PACKAGE.parent)), node.lineno))
    return found


def test_no_module_imports_a_higher_layer():
    upward = [f"{file}:{line}: {me} imports {unit}" for me, unit, file, line in _imports()
              if unit != me and _layer(unit) < _layer(me)]
    assert upward == []


def test_no_import_cycles_between_packages():
    graph: dict[str, set[str]] = {}
    for me, unit, _, _ in _imports():
        if unit != me:
            graph.setdefault(me, set()).add(unit)
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif len(path) < len(graph) + 1:
                visit(nxt, path + [nxt])

    for start in sorted(graph):
        visit(start, [start])
    assert sorted(set(cycles)) == []
