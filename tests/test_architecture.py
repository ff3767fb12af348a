"""The layers of docs/architecture.md, checked on the source: every module imports, and no module
imports what its layer may not (imports inside functions count too)."""
import ast
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import unrolled3d

ROOT = Path(unrolled3d.__file__).resolve().parent
KERNELS = Path(importlib.import_module("unrolled3d.kernels").__file__).resolve().parent


def _modules() -> dict[str, Path]:
    """Every module of the package (``unrolled3d.kernels`` included) and its source file."""
    found = {"unrolled3d": ROOT / "__init__.py"}
    for m in pkgutil.walk_packages(unrolled3d.__path__, "unrolled3d."):
        origin = Path(importlib.util.find_spec(m.name).origin)
        if origin.suffix == ".py" and not m.name.endswith("__main__"):  # not the compiled extension
            found[m.name] = origin
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The unrolled3d modules ``name`` imports (absolute names; ``from x import y`` counts x and x.y)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    # "unrolled3d" alone is the parent of a ``from .. import x``, whose x is counted
    return {m for m in out if m != "unrolled3d" and m in MODULES}


def _in(module: str, *layers: str) -> bool:
    return any(module == layer or module.startswith(layer + ".") for layer in layers)


def _within(*layers: str):
    return lambda name: _in(name, *layers)


# (what, which modules the rule applies to, which imports it forbids)
RULES = [
    ("kernels are leaves", _within("unrolled3d.kernels"), lambda m: not _in(m, "unrolled3d.kernels")),
    ("leaf modules import at most the shared validators",
     _within("unrolled3d._validation", "unrolled3d.protocols", "unrolled3d._distributed", "unrolled3d.memory",
             "unrolled3d.metrics", "unrolled3d._build", "unrolled3d.geometry", "unrolled3d.errors", "unrolled3d._config"),
     lambda m: m != "unrolled3d._validation"),
    ("ops hold tensors only: kernels, the geometry, the extension and validators",
     _within("unrolled3d.ops"),
     lambda m: not _in(m, "unrolled3d.ops", "unrolled3d.kernels", "unrolled3d.geometry", "unrolled3d._build",
                       "unrolled3d._validation")),
    ("physics knows no patches (partition), approximations, networks, training or files (but the atomic "
     "write of its norm cache)",
     _within("unrolled3d.physics", "unrolled3d.mri"),
     lambda m: _in(m, "unrolled3d.partition", "unrolled3d.normal", "unrolled3d.models", "unrolled3d.train",
                   "unrolled3d.training", "unrolled3d.cli", "unrolled3d.budget", "unrolled3d.data", "unrolled3d.io",
                   "unrolled3d.api", "unrolled3d.pretrained") and m != "unrolled3d.io.atomic"),
    ("the normal-operator approximation knows no partition, networks or training",
     _within("unrolled3d.normal"),
     lambda m: _in(m, "unrolled3d.partition", "unrolled3d.models", "unrolled3d.train", "unrolled3d.training",
                   "unrolled3d.cli", "unrolled3d.mri", "unrolled3d.physics")),
    ("H knows no fit, files or wrapper: the operator, its patch operator and its functional form stand alone",
     _within("unrolled3d.normal.operator", "unrolled3d.normal.patch", "unrolled3d.normal.functional",
             "unrolled3d.normal.layout"),
     lambda m: _in(m, "unrolled3d.normal.fit", "unrolled3d.normal.files", "unrolled3d.normal.wrapper")),
    ("the partitioned reconstructor reaches H through protocols (normal=, CarriesNormal): it names nothing of normal",
     _within("unrolled3d.partition"),
     lambda m: _in(m, "unrolled3d.normal")),
    ("files and data know no operators beyond the geometry",
     _within("unrolled3d.io", "unrolled3d.data"),
     lambda m: _in(m, "unrolled3d.physics", "unrolled3d.mri", "unrolled3d.normal", "unrolled3d.partition",
                   "unrolled3d.models", "unrolled3d.train", "unrolled3d.training", "unrolled3d.cli", "unrolled3d.ops")),
    ("figures draw volumes: they import only the atomic writes (and the validators)",
     _within("unrolled3d.figures"),
     lambda m: not _in(m, "unrolled3d.io.atomic", "unrolled3d._validation")),
    ("inference never imports training",
     lambda name: not _in(name, "unrolled3d.train", "unrolled3d.training", "unrolled3d.cli"),
     lambda m: _in(m, "unrolled3d.train", "unrolled3d.training")),
    ("the first name of the training API only re-exports the package",
     _within("unrolled3d.train"),
     lambda m: not _in(m, "unrolled3d.training")),
    ("nothing below the application imports the high-level API (the package's lazy names aside)",
     lambda name: name != "unrolled3d" and not _in(name, "unrolled3d.cli", "unrolled3d.api", "unrolled3d.pretrained",
                                                   "unrolled3d._scan_rules", "unrolled3d._streamed_api"),
     lambda m: _in(m, "unrolled3d.api", "unrolled3d.pretrained", "unrolled3d._scan_rules", "unrolled3d._streamed_api")),
    ("only the command line imports the command line",
     lambda name: not _in(name, "unrolled3d.cli"),
     lambda m: _in(m, "unrolled3d.cli")),
]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_imports(name):
    importlib.import_module(name)


@pytest.mark.parametrize("rule", range(len(RULES)), ids=[r[0] for r in RULES])
def test_import_rules(rule):
    what, applies, forbidden = RULES[rule]
    broken = []
    for name, path in MODULES.items():
        if applies(name):
            broken += [f"{name} -> {m}" for m in sorted(_imports(name, path)) if m != name and forbidden(m)]
    assert not broken, f"{what}: {broken}"


def test_the_rules_see_imports():
    """The checker itself: it finds a relative import inside a function (so a rule can fail)."""
    found = _imports("unrolled3d.cli.commands", MODULES["unrolled3d.cli.commands"])
    assert "unrolled3d.training" in found and "unrolled3d.models" in found


def _import_cycles() -> list[list[str]]:
    """Groups of modules that import each other, directly or through others (Tarjan's strongly
    connected components of the import graph). ``from . import sub`` names the package besides
    ``sub``: an import of a module's own ancestor package is not counted as a cycle."""
    graph = {name: {m for m in _imports(name, path) if m != name and not name.startswith(m + ".")}
             for name, path in MODULES.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycle():
    """No two modules import each other, even inside functions or ``if TYPE_CHECKING:`` blocks
    (where a cycle only hides)."""
    assert not _import_cycles()


def test_the_cycle_check_sees_a_hidden_cycle(monkeypatch):
    """The checker itself: a ``TYPE_CHECKING`` import back (as fit.py once had) is a cycle."""
    real = _imports

    def with_hidden_cycle(name, path):
        found = real(name, path)
        return found | {"unrolled3d.normal.wrapper"} if name == "unrolled3d.normal.fit" else found

    monkeypatch.setitem(globals(), "_imports", with_hidden_cycle)
    assert ["unrolled3d.normal.fit", "unrolled3d.normal.wrapper"] in _import_cycles()


def _private_names_imported(name: str, path: Path, package: str) -> list[str]:
    """The ``_private`` names ``name`` imports from modules of ``package``."""
    base = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            parts = base.split(".")
            mod = (".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                   if node.level else node.module or "")
            if _in(mod, package):
                out += [f"{mod}.{a.name}" for a in node.names if a.name.startswith("_")]
    return out


def test_nothing_outside_training_imports_its_private_names(tmp_path):
    """The command line used ``train._NOT_IDENTITY``: the run's rules are the training package's
    public interface (RunFolder, TrainConfig.identity), not its insides."""
    broken = [f"{name} -> {m}" for name, path in MODULES.items() if not _in(name, "unrolled3d.training")
              for m in _private_names_imported(name, path, "unrolled3d.training")]
    assert not broken, broken
    # the checker sees such an import (so the rule can fail)
    (tmp_path / "x.py").write_text("def f():\n    from ..training.run_folder import RunFolder, _LEGACY_FIELDS\n")
    assert _private_names_imported("unrolled3d.cli.x", tmp_path / "x.py", "unrolled3d.training") == [
        "unrolled3d.training.run_folder._LEGACY_FIELDS"]


def test_the_run_folder_rules_live_in_one_module():
    """Archiving, stale temporaries and checkpoint names are used by the run folder alone: the
    command line and the loop go through RunFolder."""
    for name, path in MODULES.items():
        if name == "unrolled3d.training.run_folder" or not _in(name, "unrolled3d.training", "unrolled3d.cli.commands",
                                                                 "unrolled3d.cli.train_data"):
            continue
        source = path.read_text()
        for needle in ("remove_stale_temporaries", "os.replace", ".rename(", "shutil.move", ".unlink("):
            assert needle not in source, f"{name} uses {needle}: the run folder's rules belong to RunFolder"
