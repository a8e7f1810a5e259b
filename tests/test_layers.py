"""The house's map (DESIGN.md section 2), held against the code's own imports.

Every ``import`` and ``from ... import`` in ``rlscale/`` is read with ``ast``,
lazy ones inside functions included, so an edge hidden in a function body
still counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "rlscale"

LAYERS: dict[str, int] = {
    # the core: numpy in, numpy out
    "rlscale": 0, "atomic": 0, "config": 0, "workload": 0, "spaces": 0, "sim": 0, "episode": 0,
    "policies": 1,
    "env": 2, "rollout": 2,
    # the roles above the policies; they may use each other, but never in a circle
    "evaluation": 3, "learn": 3, "clusters": 3, "controller": 3, "assess": 3,
    "cli": 4,
}
"""Imports point down or sideways, never up: core -> policies -> env/rollout -> the roles -> cli."""


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py") if "externalscaler" not in p.parts}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module an import names (``rlscale.a.b.c`` may be the function ``c`` of ``rlscale.a.b``)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _edges() -> dict[str, set[str]]:
    modules = _modules()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                names = [f"{base}.{a.name}" for a in node.names] + [base]
            for name in names:
                if name.split(".")[0] != "rlscale":
                    continue
                target = _resolve(name, modules)
                if target and target != mod:
                    edges[mod].add(target)
    return edges


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "rlscale"


def test_every_room_of_the_package_has_a_layer():
    rooms = {_room(m) for m in _modules()}
    assert rooms <= set(LAYERS), f"rooms without a layer in the map: {sorted(rooms - set(LAYERS))}"


def test_imports_never_point_to_a_higher_layer():
    upward = sorted(f"{a} -> {b}" for a, targets in _edges().items() for b in targets
                    if LAYERS[_room(b)] > LAYERS[_room(a)])
    assert upward == []


def test_nothing_imports_the_cli():
    assert sorted(a for a, targets in _edges().items() if "rlscale.cli" in targets) == []


def test_no_module_imports_itself_through_a_circle():
    edges = _edges()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    # a package's __init__ re-exporting its own modules is not a circle of the map
    circles = [c for c in circles if not all(m.startswith(min(c, key=len) + ".") or m == min(c, key=len) for m in c)]
    assert circles == []


def test_the_top_of_the_package_keeps_ten_modules_at_most():
    top = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(top) <= 10, top


@pytest.mark.parametrize("room", ["controller", "clusters"])
def test_serving_rooms_import_nothing_of_training(room):
    training = {"learn", "evaluation"}
    bad = sorted(f"{a} -> {b}" for a, targets in _edges().items() if _room(a) == room
                 for b in targets if _room(b) in training)
    assert bad == []


def _imported_names(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.append(node.module or "")
    return names


def test_no_test_benchmark_or_module_imports_a_trial_kept_for_the_record():
    """``experiments/`` is a record: nothing the suite, a benchmark or the package runs may depend on it."""
    project = ROOT.parent
    trials = {"experiments", *(p.stem for p in (project / "experiments").glob("*.py") if p.stem != "__init__")}
    users = [*(project / "tests").rglob("*.py"), *(project / "benchmarks").rglob("*.py"), *ROOT.rglob("*.py")]
    found = [f"{p.relative_to(project)} imports {n}" for p in users for n in _imported_names(p) if n.split(".")[0] in trials]
    assert not found, found
    assert not [p for p in ROOT.rglob("*.py") if any(n.split(".")[0] == "benchmarks" for n in _imported_names(p))]
