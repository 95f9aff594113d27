"""The layers of speedtrain point one way, and no source file grows past 350 lines (issue 19). Read with ``ast``:
nothing is imported.

``speedtrain.bundle`` (reading a bundle folder: runtime, manifest, Predictor, cache) sits below export, bench and
serve, which may import it; it imports none of them, nor training. Export and bench never import serve, and bench
never imports export (export imports bench to time its variants).

The whole package (and its Hydra plugins) stands on the floors of :data:`FLOORS`, lowest first. A module imports
from its own floor or a floor below, never above: imports inside functions count too (a late import is still an
arrow), and so do ``if TYPE_CHECKING:`` ones. Within a floor, module-level imports must not form a circle (a late
import inside a function may break one). ``import a.b.c`` and ``from a.b import c`` (``c`` a module) are arrows to
``a.b.c`` only, ``from a.b import name`` to ``a.b``: the parent packages' ``__init__`` run first, but a package
that imports its own modules in its ``__init__`` is not in a circle with them.
"""

from __future__ import annotations

import ast
import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

SRC = REPO / "src"
PACKAGES = ("speedtrain", "hydra_plugins.speedtrain_plugins")  # the import names of the code under src/

# package -> the speedtrain modules it must not import (nor anything below them)
FORBIDDEN = {
    "speedtrain.bundle": ["speedtrain.export", "speedtrain.bench", "speedtrain.serve", "speedtrain.lit",
                          "speedtrain.pipeline", "speedtrain.fit", "speedtrain.cli"],
    "speedtrain.export": ["speedtrain.serve"],
    "speedtrain.bench": ["speedtrain.serve", "speedtrain.export"],
}

# floor -> (its modules: a name stands for the module and everything under it, except the package root
# "speedtrain", which is only itself; the floors right below it). Lowest first. A new module needs a floor here.
FLOORS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # every import of speedtrain.<x> runs the package root, which imports config (the resolvers, the cache folder)
    "base": (("speedtrain", "speedtrain.errors", "speedtrain.config", "speedtrain.stopping"), ()),
    "models": (("speedtrain.models",), ("base",)),  # the model classes (the static family registers itself)
    "bundle": (("speedtrain.bundle",), ("models",)),  # reading a bundle: loads models' classes
    "bench": (("speedtrain.bench",), ("bundle",)),  # timing and load-testing bundles
    "data": (("speedtrain.data",), ("models",)),  # the datamodule tokenizes for a teacher model
    "distill": (("speedtrain.distill",), ("data",)),  # KD losses, teachers, augmentation, logit cache
    "export": (("speedtrain.export",), ("bench", "distill")),  # builds bundles; times them; pruning recovers by KD
    "lit": (("speedtrain.lit",), ("distill",)),  # the LightningModules
    "serve": (("speedtrain.serve",), ("bundle",)),  # the HTTP server: only the entry floor stands on it
    "training": (("speedtrain.callbacks", "speedtrain.loggers", "speedtrain.resume", "speedtrain.launcher",
                  "speedtrain.trainer", "speedtrain.families", "speedtrain.summary", "speedtrain.sweep",
                  "speedtrain.wandb_sweep", "speedtrain.checkpoints", "speedtrain.builders"),
                 ("export", "lit")),  # the parts of a run (built from its config), sweeps
    # a whole run: one stage (fit), stage 1 (teacher_stage), their wiring (pipeline); the frontier of runs
    "run": (("speedtrain.fit", "speedtrain.teacher_stage", "speedtrain.pipeline", "speedtrain.frontier"),
            ("training",)),
    "entry": (("speedtrain.cli", "hydra_plugins.speedtrain_plugins"), ("run", "serve")),
}

MAX_LINES = 350


@dataclass(frozen=True)
class Arrow:
    source: str  # the importing module
    target: str  # the speedtrain module imported (the deepest one the imported name names)
    where: str  # file:line
    kind: str  # "module" (runs on import), "function" (inside a def or lambda), "type_checking"

    def __str__(self) -> str:
        late = "" if self.kind == "module" else f" ({self.kind})"
        return f"{self.source} -> {self.target}{late} at {self.where}"


def _modules(package: str, src: Path = SRC) -> dict[str, Path]:
    """``module name -> file`` of every module of ``package``."""
    folder = src.joinpath(*package.split("."))
    return {".".join(p.relative_to(src).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted(folder.rglob("*.py"))}


def _imports(module: str, path: Path):
    """``(name, line, kind)`` for every name an import in ``path`` names (``from a import b``: ``a.b``, which is
    module ``a.b`` or a name in module ``a``), relative ones resolved against ``module``; ``kind`` as
    :attr:`Arrow.kind`."""

    def visit(nodes, kind: str):
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield alias.name, node.lineno, kind
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = module.split(".")[: -node.level + (path.name == "__init__.py") or None]
                    base = ".".join([*package, base] if base else package)
                for alias in node.names:
                    yield f"{base}.{alias.name}", node.lineno, kind
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from visit(ast.iter_child_nodes(node), "function")
            elif isinstance(node, ast.If) and kind == "module" and "TYPE_CHECKING" in ast.unparse(node.test):
                yield from visit(node.body, "type_checking")
                yield from visit(node.orelse, kind)
            else:
                yield from visit(ast.iter_child_nodes(node), kind)

    yield from visit(ast.parse(path.read_text()).body, "module")


def _imported(module: str, path: Path) -> set[str]:
    return {name for name, _, _ in _imports(module, path)}


def _arrows(src: Path = SRC, packages: tuple[str, ...] = PACKAGES) -> list[Arrow]:
    """Every import of one of our modules by another, each imported name resolved to the deepest module it names."""
    modules = {m: p for package in packages for m, p in _modules(package, src).items()}
    arrows = set()
    for module, path in modules.items():
        for name, line, kind in _imports(module, path):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                arrows.add(Arrow(module, name, f"{path.relative_to(src)}:{line}", kind))
    return sorted(arrows, key=lambda a: (a.source, a.target, a.where))


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _floor_of(module: str, floors=FLOORS) -> str | None:
    """The floor whose longest name covers ``module`` (a package root like ``speedtrain`` covers only itself)."""
    best = max(((len(name), floor) for floor, (names, _) in floors.items() for name in names
                if module == name or ("." in name and _under(module, name))), default=None)
    return best and best[1]


def _reach(floor: str, floors=FLOORS) -> set[str]:
    """The floors ``floor`` may import from: itself and every floor below it."""
    seen, todo = set(), [floor]
    while todo:
        f = todo.pop()
        if f not in seen:
            seen.add(f)
            todo += floors[f][1]
    return seen


def _upward(arrows: list[Arrow], floors=FLOORS) -> list[str]:
    """The arrows that point to a floor above (or beside) their source's."""
    wrong = []
    for a in arrows:
        source, target = _floor_of(a.source, floors), _floor_of(a.target, floors)
        if source and target and target not in _reach(source, floors):  # no floor: test_every_module_has_a_floor
            wrong.append(f"{a} [{source} -> {target}]")
    return wrong


def _circles(arrows: list[Arrow]) -> list[list[str]]:
    """The import circles of the module-level arrows: each a strongly connected set of modules (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for a in arrows:
        if a.kind == "module":
            graph.setdefault(a.source, set()).add(a.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []
    counter = itertools.count()

    def connect(v: str) -> None:
        index[v] = low[v] = next(counter)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            members = []
            while not members or members[-1] != v:
                members.append(stack.pop())
            if len(members) > 1:
                circles.append(sorted(members))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(circles)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_one_way(package):
    modules = _modules(package)
    assert modules, f"{package} has no modules"
    wrong = {module: sorted(n for n in _imported(module, path) if any(_under(n, f) for f in FORBIDDEN[package]))
             for module, path in modules.items()}
    assert not {m: names for m, names in wrong.items() if names}


def test_every_module_has_a_floor():
    modules = [m for package in PACKAGES for m in _modules(package)]
    assert len(modules) > 50 and "speedtrain.wandb_sweep" in modules
    assert [m for m in modules if _floor_of(m) is None] == [], "give these a floor in FLOORS (tests/test_layers.py)"


def test_floors_stand_on_each_other_one_way():
    """The floors form no circle, bundle is below export, bench and serve, and only the entry floor (cli,
    commands) stands on serve."""
    for floor, (_, below) in FLOORS.items():
        assert set(below) <= set(FLOORS), floor
        assert not any(floor in _reach(b) for b in below), f"floor {floor} stands on itself"
    assert {f for f in FLOORS if "serve" in _reach(f)} == {"serve", "entry"}
    assert {"export", "bench", "serve"} <= {f for f in FLOORS if "bundle" in _reach(f)}
    assert not _reach("bundle") & {"export", "bench", "serve", "lit", "run", "entry"}
    assert "bench" in _reach("export") and "export" not in _reach("bench")


def test_imports_stay_on_their_floor_or_below():
    arrows = _arrows()
    assert len(arrows) > 100 and any(a.kind == "function" for a in arrows)  # the walk sees late imports
    assert _upward(arrows) == []


def test_no_import_circles_at_module_level():
    assert _circles(_arrows()) == []


def test_src_does_not_import_scripts():
    """scripts/ is not a package: a module that imports one works only when that folder is on sys.path."""
    scripts = {p.stem for p in (REPO / "scripts").glob("*.py")} | {"scripts"}
    assert {"loadtest", "wandb_sweep"} <= scripts
    wrong = [f"{m} imports {name} (line {line})" for package in PACKAGES for m, path in _modules(package).items()
             for name, line, _ in _imports(m, path) if name.split(".")[0] in scripts]
    assert wrong == []


def test_the_checks_find_circles_and_upward_imports(tmp_path):
    """The walk on a made-up package: a circle at module level, a late import up a floor, a TYPE_CHECKING import
    (not a circle, but an arrow), relative imports."""
    files = {
        "pkg/__init__.py": "",
        "pkg/low/__init__.py": "from .a import x\n",
        "pkg/low/a.py": "from pkg.low import b\nx = 1\n",
        "pkg/low/b.py": "import pkg.low.a\n\ndef late():\n    from ..high import y\n",
        "pkg/low/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.low.d import Z\n",
        "pkg/low/d.py": "from . import c\n",
        "pkg/high.py": "import os\nfrom pkg.low.a import x as y\nfrom pkg.low import x\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    arrows = _arrows(tmp_path, ("pkg",))
    assert {(a.source, a.target, a.kind) for a in arrows} == {
        ("pkg.low", "pkg.low.a", "module"), ("pkg.low.a", "pkg.low.b", "module"), ("pkg.low.b", "pkg.low.a", "module"),
        ("pkg.low.b", "pkg.high", "function"), ("pkg.low.c", "pkg.low.d", "type_checking"),
        ("pkg.low.d", "pkg.low.c", "module"), ("pkg.high", "pkg.low.a", "module"), ("pkg.high", "pkg.low", "module")}
    # a <-> b; not pkg.low <-> a (its __init__ imports a, a imports the module pkg.low.b), nor c <-> d (c's arrow
    # is TYPE_CHECKING only)
    assert _circles(arrows) == [["pkg.low.a", "pkg.low.b"]]
    floors = {"low": (("pkg", "pkg.low"), ()), "high": (("pkg.high",), ("low",))}
    assert _floor_of("pkg.low.c", floors) == "low" and _floor_of("pkg.high", floors) == "high"
    assert _floor_of("pkg.other", floors) is None  # the package root covers only itself
    (up,) = _upward(arrows, floors)
    assert up == "pkg.low.b -> pkg.high (function) at pkg/low/b.py:4 [low -> high]"


def _lines(path: Path) -> int:
    return len(path.read_bytes().splitlines())


def _source_files() -> list[Path]:
    return sorted(p for folder in (SRC, REPO / "scripts") for p in folder.rglob("*")
                  if p.is_file() and p.suffix != ".pyc"
                  and not any(part == "__pycache__" or part.endswith(".egg-info") for part in p.parts))


def test_no_source_file_over_350_lines():
    files = _source_files()
    assert REPO / "scripts" / "loadtest.py" in files and SRC / "speedtrain" / "pipeline.py" in files
    long = {str(p.relative_to(REPO)): _lines(p) for p in files if _lines(p) > MAX_LINES}
    assert long == {}, "split them (issue 19)"
