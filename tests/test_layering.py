"""The package's import structure, read from the source (every import, at module level or
inside a function): no module imports a higher layer, and no two modules import each
other through any chain (a cycle), so each layer can be read, tested and replaced alone."""

import ast
import os
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dancegrpo_hpc")

# Lowest first: a unit may import only units before it. "" is the package root (__version__, _C).
LAYERS = ["", "checks", "extras", "conditioning", "ops", "sampling", "attention", "distributed", "checkpoint",
          "outputs", "models", "rewards", "data", "config", "memory", "rl", "train", "validate", "perf", "cli",
          "testing"]


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def import_graph():
    """module -> the dancegrpo_hpc modules it imports."""
    edges = {}
    for folder, _, files in os.walk(ROOT):
        for file in files:
            if not file.endswith(".py"):
                continue
            path = os.path.join(folder, file)
            module = _module_name(path)
            package = module if file == "__init__.py" else module.rsplit(".", 1)[0]
            targets = set()
            for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
                if isinstance(node, ast.ImportFrom):
                    if node.level:
                        base = package.split(".")[: len(package.split(".")) - node.level + 1]
                        target = ".".join(base + ([node.module] if node.module else []))
                    else:
                        target = node.module or ""
                    targets.add(target)
                elif isinstance(node, ast.Import):
                    targets.update(a.name for a in node.names)
            edges[module] = {t for t in targets if t == "dancegrpo_hpc" or t.startswith("dancegrpo_hpc.")}
    return edges


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in import_graph()}
    assert units <= set(LAYERS), f"add {sorted(units - set(LAYERS))} to LAYERS"


def test_no_import_reaches_a_higher_layer():
    rank = {u: i for i, u in enumerate(LAYERS)}
    upward = sorted(f"{a} -> {b}" for a, bs in import_graph().items() for b in bs
                    if rank[_unit(b)] > rank[_unit(a)])
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def _cycles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    # a submodule importing its own package's __init__ (the re-export pattern) is not a cycle
    edges = {a: {b for b in bs if not a.startswith(b + ".")} for a, bs in import_graph().items()}
    assert _cycles(edges) == []


def test_the_checker_finds_cycles_and_upward_imports():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    rank = {u: i for i, u in enumerate(LAYERS)}
    assert rank[_unit("dancegrpo_hpc.data.world")] > rank[_unit("dancegrpo_hpc.conditioning")]


@pytest.mark.parametrize("module", ["dancegrpo_hpc.conditioning", "dancegrpo_hpc.models.family"])
def test_the_seam_is_light(module):
    """The family registry and Conditioning import no model code (no megatron-core)."""
    edges = import_graph()
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(edges.get(m, ()))
    assert not any(m.startswith("dancegrpo_hpc.models.hunyuan_video") for m in seen), sorted(seen)
