"""The floors of the package, enforced: the import contract in pyproject.toml
(``[tool.importlinter]``, run by ``lint-imports`` in CI) holds, a planted upward import breaks
it, every top-level module is placed on a floor, and no new import cycle appears."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp")
pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "adflora_analysis"
CONTRACT = "floors: app > reports > testbeds > study/theory/distributed > core > topology > base"

#: module-level import cycles that exist today, each owned by another room; the test fails when
#: a new one appears, and when one of these is gone (then delete it here)
KNOWN_CYCLES: list[set[str]] = []


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the package under ``tree`` with ``tree``'s pyproject.toml."""
    code = ("import sys; from importlinter.cli import lint_imports_command; "
            "sys.argv = ['lint-imports', '--no-cache', '--config', sys.argv[1]]; "
            "lint_imports_command()")
    return subprocess.run([sys.executable, "-c", code, str(tree / "pyproject.toml")],
                          cwd=tree, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"})


def floors() -> list[list[str]]:
    """The contract's layers, top first, each as its list of modules."""
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in conf["contracts"] if c["name"] == CONTRACT]
    return [[m.strip() for m in re.split(r"[:|]", layer)] for layer in contract["layers"]]


def test_the_contract_holds():
    res = lint_imports(ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "1 kept, 0 broken" in res.stdout


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> Path:
    """The package's Python files and pyproject.toml in a temp folder."""
    tree = tmp_path_factory.mktemp("tree")
    shutil.copytree(PKG, tree / "adflora_analysis",
                    ignore=shutil.ignore_patterns("__pycache__", "*.toml", "*.json", "*.csv"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


@pytest.mark.parametrize("module,line,floor,above", [
    # base importing the app floor (the run directory reading the CLI's options)
    ("rundir/paths.py", "from adflora_analysis import run_options", "adflora_analysis.rundir",
     "adflora_analysis.run_options"),
    # core importing a testbed, lazily inside a function: still an import
    ("core/state.py", "def _f():\n    from adflora_analysis.glue import runner\n",
     "adflora_analysis.core", "adflora_analysis.glue"),
    # topology importing core (the cycle this release removed)
    ("topology/config.py", "from adflora_analysis.core.gossip import gossip",
     "adflora_analysis.topology", "adflora_analysis.core"),
])
def test_a_planted_upward_import_breaks_it(copy, module, line, floor, above):
    f = copy / "adflora_analysis" / module
    text = f.read_text()
    try:
        f.write_text(text + "\n" + line + "\n")
        res = lint_imports(copy)
    finally:
        f.write_text(text)
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    assert "0 kept, 1 broken" in res.stdout
    assert f"{floor} is not allowed to import {above}" in res.stdout


def test_every_top_level_module_is_on_a_floor():
    placed = {m for layer in floors() for m in layer}
    top = {f"adflora_analysis.{p.stem}" for p in PKG.glob("*.py") if p.stem != "__init__"}
    top |= {f"adflora_analysis.{p.parent.name}" for p in PKG.glob("*/__init__.py")}
    assert sorted(top - placed) == [], "put each new module on a floor in pyproject.toml"
    assert sorted(placed - top) == [], "the contract names a module that does not exist"


def test_no_new_import_cycle():
    import networkx as nx

    g = grimp.build_graph("adflora_analysis")
    G = nx.DiGraph((m, i) for m in g.modules for i in g.find_modules_directly_imported_by(m))
    cycles = [c for c in nx.strongly_connected_components(G) if len(c) > 1]
    new = [sorted(c) for c in cycles if not any(c <= k for k in KNOWN_CYCLES)]
    assert new == [], f"new import cycles: {new}"
    gone = [sorted(k) for k in KNOWN_CYCLES if not any(k <= c for c in cycles)]
    assert gone == [], f"these known cycles are gone: delete them from KNOWN_CYCLES: {gone}"
