"""Atomically written files honour the umask (mkstemp alone makes every file 0600)."""

from __future__ import annotations

import os
import stat

import pandas as pd
import pytest

from adflora_analysis import fileio


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def _write_all(d):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    paths = [fileio.write_text(d / "a.txt", "x"), fileio.write_json(d / "m.json", {"a": 1}),
             fileio.write_parquet(d / "r.parquet", pd.DataFrame({"a": [1]})),
             fileio.write_csv(d / "r.csv", pd.DataFrame({"a": [1]})),
             fileio.save_figure(d / "f.png", fig), fileio.save_figure(d / "f.svg", fig)]
    plt.close(fig)
    fileio.append_jsonl(d / "l.jsonl", [{"a": 1}])
    return [*paths, d / "l.jsonl"]


@pytest.mark.parametrize("mask, want", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_modes_follow_the_umask(umask, tmp_path, mask, want):
    umask(mask)
    assert fileio._umask() == mask
    for p in _write_all(tmp_path):
        assert _mode(p) == want, p.name


def test_overwrite_takes_the_umask_of_the_writer(umask, tmp_path):
    umask(0o077)
    fileio.write_text(tmp_path / "a.txt", "1")
    umask(0o022)
    fileio.write_text(tmp_path / "a.txt", "2")
    assert _mode(tmp_path / "a.txt") == 0o644


def test_planted_defect_without_the_chmod_files_are_0600(umask, tmp_path, monkeypatch):
    monkeypatch.setattr(fileio.os, "fchmod", lambda fd, mode: None)
    assert _mode(fileio.write_text(tmp_path / "a.txt", "x")) == 0o600
