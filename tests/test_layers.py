"""The layers of speedtrain point one way: ``speedtrain.bundle`` (reading a bundle folder: runtime, manifest,
Predictor, cache) sits below export, bench and serve, which may import it; it imports none of them, nor training.
Export and bench never import serve, and bench never imports export (export imports bench to time its variants).

Imports anywhere in a module count, those inside functions too: a late import is still an arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

SRC = REPO / "src"

# package -> the speedtrain modules it must not import (nor anything below them)
FORBIDDEN = {
    "speedtrain.bundle": ["speedtrain.export", "speedtrain.bench", "speedtrain.serve", "speedtrain.lit",
                          "speedtrain.pipeline", "speedtrain.cli", "speedtrain.commands"],
    "speedtrain.export": ["speedtrain.serve"],
    "speedtrain.bench": ["speedtrain.serve", "speedtrain.export"],
}


def _modules(package: str) -> dict[str, Path]:
    """``module name -> file`` of every module of ``package``."""
    folder = SRC.joinpath(*package.split("."))
    return {".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted(folder.rglob("*.py"))}


def _imported(module: str, path: Path) -> set[str]:
    """Every module name an import in ``path`` names (``from a import b``: ``a`` and ``a.b``), relative ones
    resolved against ``module``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")[: -node.level + (path.name == "__init__.py") or None]
                base = ".".join([*package, base] if base else package)
            names |= {base} | {f"{base}.{a.name}" for a in node.names}
    return names


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_one_way(package):
    modules = _modules(package)
    assert modules, f"{package} has no modules"
    wrong = {module: sorted(n for n in _imported(module, path) if any(_under(n, f) for f in FORBIDDEN[package]))
             for module, path in modules.items()}
    assert not {m: names for m, names in wrong.items() if names}
