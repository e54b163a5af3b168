"""Shipped configs as package data: list/show/copy, and CONFIG by name from any directory."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from adflora_analysis.cli import main
from adflora_analysis.configs import (
    SHIPPED,
    copy_config,
    find_shipped,
    list_configs,
    resolve_config,
)
from adflora_analysis.errors import AdfloraError

ROOT = Path(__file__).resolve().parents[1]


def test_every_shipped_toml_is_listed_and_parses():
    found = {c.qualified for c in list_configs()}
    on_disk = {f"{p.parent.name}/{p.stem}" for p in SHIPPED.glob("*/*.toml")}
    assert found == on_disk and "synthetic/bounds" in found and "glue_runs/smoke" in found
    for c in list_configs():
        tomllib.loads(c.path.read_text())


def test_repo_root_folders_link_to_the_package_data():
    for group in ("synthetic", "glue_runs"):
        link = ROOT / group
        assert link.is_symlink() and not os.path.isabs(os.readlink(link))
        assert link.resolve() == (SHIPPED / group).resolve()


def test_package_data_globs_cover_every_shipped_file():
    """pyproject's package-data must match each file under configs/ (else pip installs lack it)."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = data["tool"]["setuptools"]["package-data"]["adflora_analysis"]
    pkg = SHIPPED.parent
    covered = {p for g in globs for p in pkg.glob(g)}
    shipped = {p for p in SHIPPED.rglob("*") if p.is_file()}
    assert shipped and shipped <= covered
    # the planted defect: a glob for TOMLs alone misses the READMEs
    assert not shipped <= {p for p in pkg.glob("configs/*/*.toml")}


@pytest.mark.parametrize("name", ["bounds", "bounds.toml", "synthetic/bounds",
                                  "synthetic/bounds.toml"])
def test_resolve_by_name_from_another_directory(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config(name) == SHIPPED / "synthetic" / "bounds.toml"


def test_an_existing_file_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bounds.toml").write_text("n_clients = 3\n")
    assert resolve_config("bounds.toml") == Path("bounds.toml")


def test_unknown_name_names_the_closest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AdfloraError, match="did you mean 'glue_runs/smoke'"):
        resolve_config("smok")
    with pytest.raises(AdfloraError, match="does not exist"):
        resolve_config("./nothere.toml")


def test_copy_refuses_to_overwrite(tmp_path):
    out = copy_config("smoke", tmp_path)
    assert out == tmp_path / "smoke.toml"
    assert out.read_text() == find_shipped("glue_runs/smoke").path.read_text()
    with pytest.raises(AdfloraError, match="already exists"):
        copy_config("smoke", tmp_path)
    assert copy_config("smoke", tmp_path, force=True) == out


def test_cli_configs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["configs", "list"])
    assert e.value.code == 0
    assert "synthetic/t_ablation" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["configs", "show", "t_ablation"])
    assert "switch_interval" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["configs", "copy", "bounds", "b.toml"])
    assert e.value.code == 0 and (tmp_path / "b.toml").is_file()
    assert capsys.readouterr().err == "wrote b.toml\n"
    with pytest.raises(SystemExit) as e:
        main(["configs", "show", "nope"])
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith("error: unknown shipped config 'nope'")
