"""examples/*.py: percent-format notebooks that run as plain scripts, on the public surface."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def foreign_imports(source: str) -> list[str]:
    """Imports of adflora_analysis other than ``import adflora_analysis as af``."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "adflora_analysis"):
            bad.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Import):
            bad += [a.name for a in node.names if a.name.startswith("adflora_analysis")
                    and (a.name != "adflora_analysis" or a.asname != "af")]
    return bad


def test_there_is_an_example():
    assert EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_uses_only_the_public_surface_and_percent_cells(path):
    src = path.read_text()
    assert foreign_imports(src) == []
    assert src.count("\n# %%") >= 4 and "format_name: percent" in src


def test_the_import_check_catches_a_private_import():
    assert foreign_imports("from adflora_analysis.synthetic.runner import run_study\n")
    assert foreign_imports("import adflora_analysis.topology\n")
    assert foreign_imports("import adflora_analysis as af\n") == []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_as_a_script(path, tmp_path):
    env = {**os.environ, "ADFLORA_EXAMPLE_OUT": str(tmp_path), "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "encounter q=0.1" in r.stdout and "held" in r.stdout
    assert (tmp_path / "xi_B.png").stat().st_size > 1000
