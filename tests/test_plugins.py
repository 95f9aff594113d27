"""speedtrain's Hydra plugins (hydra_plugins/speedtrain_plugins) import speedtrain, never the other way: no
import cycle between the two packages. Only the ``speedtrain train`` entry point (speedtrain.cli) imports the
plugins, inside its function, to register them."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PLUGINS = "hydra_plugins.speedtrain_plugins"


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """Modules named by the imports in ``path``: all of them, and those at module level."""
    tree = ast.parse(path.read_text())
    every, top = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        else:
            continue
        every |= names
        if node in tree.body:
            top |= names
    return every, top


def test_speedtrain_does_not_import_its_hydra_plugins():
    importers, at_module_level = set(), set()
    for path in sorted((REPO / "src" / "speedtrain").rglob("*.py")):
        every, top = _imports(path)
        module = ".".join(path.relative_to(REPO / "src").with_suffix("").parts)
        if any(n == PLUGINS or n.startswith(PLUGINS + ".") for n in every):
            importers.add(module)
        if any(n == PLUGINS or n.startswith(PLUGINS + ".") for n in top):
            at_module_level.add(module)
    assert importers <= {"speedtrain.cli"} and not at_module_level, (importers, at_module_level)
    plugin_imports, _ = _imports(REPO / "src" / "hydra_plugins" / "speedtrain_plugins" / "__init__.py")
    assert not any(n.startswith("speedtrain.cli") for n in plugin_imports)  # cli -> plugins -> cli would be a cycle
