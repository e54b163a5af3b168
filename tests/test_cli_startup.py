"""Fast start-up: ``adflora --help``, ``--version`` and every sub-command's ``--help`` import no
torch, pandas, matplotlib, scipy or transformers (what made ``adflora --help`` take 6-8 s)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ["torch", "pandas", "matplotlib", "scipy", "transformers", "networkx", "pyarrow"]

# Runs every help in one fresh interpreter, then prints which heavy modules got imported.
HARNESS = """
import json, sys
{preamble}
import click
import adflora_analysis.cli as cli

def run(argv):
    try:
        cli.main(argv)
    except SystemExit:
        pass

argvs = [["--help"], ["--version"]]
root = cli.app
for name in [*cli.LAZY_COMMANDS, "configs"]:
    argvs.append([name, "--help"])
run(["--help"])
heavy_after_root = sorted(m for m in {heavy} if m in sys.modules)
for argv in argvs:
    run(argv)
# every sub-command of every group: adflora GROUP CMD --help
import typer
group = typer.main.get_command(cli.app)
for name in group.list_commands(None):
    cmd = group.get_command(None, name)
    if isinstance(cmd, click.Group):
        for sub in cmd.commands:
            run([name, sub, "--help"])
print(json.dumps({{"root": heavy_after_root,
                   "all": sorted(m for m in {heavy} if m in sys.modules)}}))
"""


def _heavy_imports(preamble: str = "") -> dict:
    code = HARNESS.format(preamble=preamble, heavy=HEAVY)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_help_and_version_import_nothing_heavy():
    found = _heavy_imports()
    assert found == {"root": [], "all": []}


def test_the_probe_sees_a_heavy_import():
    """The planted defect: a module imported at start-up that pulls in torch is caught."""
    found = _heavy_imports(preamble="import adflora_analysis.core.state")
    assert "torch" in found["root"]


def test_lazy_listing_matches_the_commands_own_help():
    from adflora_analysis.cli import LAZY_COMMANDS, load_command

    for name, (_, short) in LAZY_COMMANDS.items():
        cmd = load_command(name)
        own = " ".join((cmd.help or "").split("\n\n")[0].split())
        assert own == short, name


def test_version_is_the_package_version(capsys):
    from adflora_analysis.cli import main

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"adflora-analysis {version}"


def test_unknown_command_is_a_usage_error():
    r = subprocess.run([sys.executable, "-m", "adflora_analysis", "topolgy"], capture_output=True,
                       text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and "topolgy" in r.stderr
