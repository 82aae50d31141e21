"""The project's layers: downstream, bench -> reproduce -> mae, and no import cycle among their modules.

Every module of the four packages is read (ast, not imported), with every ``import`` in it: at the top,
inside functions and under ``if`` alike, since an import that runs late still ties two modules together.
A module may import its own layer and the layers below it; ``downstream`` and ``bench`` are side by side
and do not import each other. Any cycle between two or more modules fails, named module by module.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: package -> layer: a module imports modules of its own layer or lower, and never a sibling package
LAYERS = {"mae": 0, "reproduce": 1, "downstream": 2, "bench": 2}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    """Every module of the layered packages (folders with an ``__init__.py``: configs folders are data)."""
    out = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            if all((folder / "__init__.py").is_file() for folder in path.parents if ROOT in folder.parents):
                out[module_name(path)] = path
    return out


def imported_names(path: Path, module: str) -> list[tuple[str, int]]:
    """(dotted name, line) of every import in the file, relative ones resolved; ``from a import b`` gives
    ``a.b`` (the module b, or the name b of module a: :func:`resolve` decides)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return names


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module a dotted name refers to (its longest module prefix), or None outside the project."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def import_graph() -> tuple[dict[str, set[str]], dict[tuple[str, str], int]]:
    """(module -> modules it imports, (importer, imported) -> line of the first such import)."""
    modules = project_modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    lines: dict[tuple[str, str], int] = {}
    for module, path in modules.items():
        for name, line in imported_names(path, module):
            target = resolve(name, modules)
            if target is not None and target != module:
                graph[module].add(target)
                lines.setdefault((module, target), line)
    return graph, lines


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each as one cycle through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
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
                found.append(_one_cycle(graph, set(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _one_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first), closed: [a, b, ..., a]."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start]
                if w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    return sorted(component)


def layer_violations(graph: dict[str, set[str]], lines: dict[tuple[str, str], int]) -> list[str]:
    out = []
    for module, targets in sorted(graph.items()):
        mine = module.split(".")[0]
        for target in sorted(targets):
            theirs = target.split(".")[0]
            if theirs != mine and LAYERS[theirs] >= LAYERS[mine]:
                out.append(f"{module} (line {lines[module, target]}) imports {target}: layer "
                           f"{mine} must not import {theirs}")
    return out


def test_the_walk_sees_every_package_and_imports_inside_functions():
    graph, _ = import_graph()
    assert {m.split(".")[0] for m in graph} == set(LAYERS)
    assert "downstream.configs.coco_mask_rcnn_smoke" not in graph  # mmengine config files, not modules
    # reproduce.scales imports mae.models.vit inside a function body only
    assert "mae.models.vit" in graph["reproduce.scales"]
    # relative imports resolve (mae/data/__init__.py: from .builder import ...)
    assert "mae.data.builder" in graph["mae.data"]


def test_no_module_imports_against_the_layers():
    graph, lines = import_graph()
    bad = layer_violations(graph, lines)
    assert not bad, "imports against the layers (downstream, bench -> reproduce -> mae):\n" + "\n".join(bad)


def test_no_import_cycles():
    graph, lines = import_graph()
    found = cycles(graph)
    text = "\n".join(" -> ".join(f"{a} (line {lines[a, b]})" for a, b in zip(c, c[1:])) + f" -> {c[-1]}"
                     for c in found)
    assert not found, f"import cycles ({len(found)}):\n{text}"


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"a"}}, [["a", "b", "a"]]),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c", "a"]]),
    ({"a": {"b"}, "b": set(), "c": {"b"}}, []),
])
def test_cycle_finder(graph, expected):
    assert cycles(graph) == expected


def test_layer_rule_by_example():
    graph = {"mae.x": {"reproduce.y"}, "reproduce.y": {"mae.x"}, "bench.z": {"downstream.w", "reproduce.y"},
             "downstream.w": set()}
    lines = {("mae.x", "reproduce.y"): 3, ("reproduce.y", "mae.x"): 1, ("bench.z", "downstream.w"): 5,
             ("bench.z", "reproduce.y"): 6}
    bad = layer_violations(graph, lines)
    assert bad == ["bench.z (line 5) imports downstream.w: layer bench must not import downstream",
                   "mae.x (line 3) imports reproduce.y: layer mae must not import reproduce"]
