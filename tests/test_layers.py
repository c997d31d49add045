"""Import layering of the plugin's own modules, read statically (every import statement, inside functions too).

No import cycle anywhere; hooks (shared trainer mixins) and networks never reach up into the command-line,
planning or trainer layers; the registry stays a data module that imports plugin classes only by name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"nnunet_fm": "nnunet_fm", "nnunet_fm.architectures": "architectures", "nnunet_fm.trainers": "trainers"}
UPPER_LAYERS = (
    "nnunet_fm.cli",
    "nnunet_fm.templates",
    "nnunet_fm.plans",
    "nnunet_fm.nnunet_commands",
    "nnunet_fm.demo",
    "nnunet_fm.experiment",
    "nnunet_fm.doctor",
    "nnunet_fm.tools",
    "nnunet_fm.ext_trainers",
    "nnunet_fm.trainers",
)


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = [p for p in path.relative_to(REPO / folder).with_suffix("").parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return {n for n in names if n in modules and n not in PACKAGES}


MODULES = _modules()
GRAPH = {name: _imports(path, MODULES) - {name} for name, path in MODULES.items()}


def _cycle_from(start: str) -> list[str] | None:
    """A shortest import path from ``start`` back to itself, or None."""
    frontier, seen = [[start]], {start}
    while frontier:
        path = frontier.pop(0)
        for nxt in sorted(GRAPH[path[-1]]):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                frontier.append([*path, nxt])
    return None


def test_the_graph_sees_the_imports_it_should() -> None:
    """Guards the checker itself: known edges (one of them inside a function) are found."""
    assert "nnunet_fm.registry" in GRAPH["nnunet_fm.hooks.plans_options"]
    assert "nnunet_fm.encoders" in GRAPH["nnunet_fm.hooks.network"]  # imported inside initialize()
    assert "nnunet_fm.hooks.few_shot" in GRAPH["nnunet_fm.trainers.base"]


def test_no_import_cycle() -> None:
    cycles = [c for c in map(_cycle_from, sorted(GRAPH)) if c is not None]
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("lower", ["nnunet_fm.hooks", "nnunet_fm.architectures", "nnunet_fm.registry"])
def test_lower_layers_do_not_import_upper_ones(lower: str) -> None:
    offending = {
        module: sorted(d for d in deps if d.startswith(UPPER_LAYERS))
        for module, deps in GRAPH.items()
        if module.startswith(lower)
    }
    assert {m: d for m, d in offending.items() if d} == {}
