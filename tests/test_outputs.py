"""Outputs of sweeps and reports protect what a folder holds: a sweep claims its folder like a
run (refused when used, ``--overwrite`` removes only its own files), and a report replaces its
own previous outputs completely while leaving everything else alone."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from adflora_analysis import fileio
from adflora_analysis.cli import main
from adflora_analysis.errors import AdfloraError
from adflora_analysis.rundir import init_run_dir, make_meta
from adflora_analysis.topology.sweep import run_sweep


def _cli(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main(list(args))
    return e.value.code, capsys.readouterr()


def test_sweep_claims_its_folder_and_overwrite_keeps_user_files(tmp_path):
    out = tmp_path / "sweep"
    run_sweep(out, n=4, samples=100, qs=(0.5,))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "sweep" and meta["status"] == "done"
    (out / "notes.txt").write_text("mine")
    with pytest.raises(AdfloraError, match="already holds a sweep run"):
        run_sweep(out, n=4, samples=100, qs=(0.5,))
    run_sweep(out, n=4, samples=100, qs=(0.5,), overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    listed = set(json.loads((out / "manifest.json").read_text())["files"])
    assert {"sweep.parquet", "sweep.csv", "sweep.png", "meta.json"} <= listed
    assert "notes.txt" not in listed


def test_sweep_into_a_foreign_folder_is_refused(tmp_path, capsys):
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "data.csv").write_text("x")
    code, cap = _cli(capsys, "topology", "sweep", "--n", "4", "--samples", "100",
                     "--out", str(tmp_path / "u"))
    assert code == 2 and "is not empty" in cap.err
    assert [ln for ln in cap.err.splitlines() if ln.startswith("error")] == \
        [cap.err.strip().splitlines()[-1]]


def _tiny_run(path):
    init_run_dir(path, {"task": "sst2", "n_clients": 2},
                 make_meta([0], kind="glue", status="done"))
    rows = [{"method": "lora", "seed": 0, "round": r, "layer": "all", "job": "lora",
             "xi_A": 1.0 / (r + 1), "xi_B": 0.5, "cross_term": 0.1, "trained": "AB",
             "mixed": "AB", "loss": 1.0} for r in range(3)]
    fileio.write_parquet(path / "metrics.parquet", pd.DataFrame(rows))
    ev = [{"method": "lora", "seed": 0, "round": 2, "client": c, "split": "validation",
           "metric": "accuracy", "value": 0.6} for c in ("0", "mean", "averaged")]
    fileio.write_parquet(path / "eval.parquet", pd.DataFrame(ev))


def test_report_replaces_its_previous_outputs_and_nothing_else(tmp_path):
    from adflora_analysis.reports import make_report

    run = tmp_path / "run"
    _tiny_run(run)
    out = tmp_path / "rep"
    make_report([run], out)
    stale = out / "figures" / "from-an-earlier-report.png"
    listed = json.loads((out / "report_files.json").read_text())["files"]
    assert "index.html" in listed
    listed["figures/from-an-earlier-report.png"] = None   # as if the last report wrote it
    fileio.write_json(out / "report_files.json", {"files": listed})
    stale.write_bytes(b"old")
    make_report([run], out)
    assert not stale.exists() and (out / "index.html").exists()  # the earlier report's file
    # a file no report wrote: refused in one line, and the user's file is kept as it was
    (out / "my-notes.md").write_text("mine")
    with pytest.raises(AdfloraError, match="no earlier report wrote"):
        make_report([run], out)
    assert (out / "my-notes.md").read_text() == "mine"


def test_report_out_naming_a_file_and_killed_run_banner(tmp_path, capsys):
    run = tmp_path / "run"
    _tiny_run(run)
    (tmp_path / "f").write_text("x")
    code, cap = _cli(capsys, "report", str(run), "--out", str(tmp_path / "f"))
    assert code == 2 and "is a file, not a folder" in cap.err
    # a run whose meta says running but whose lock is free was killed: the banner says so
    meta = json.loads((run / "meta.json").read_text())
    fileio.write_json(run / "meta.json", {**meta, "status": "running"})
    from adflora_analysis.reports import make_report

    html = make_report([run], tmp_path / "rep2").read_text()
    assert "Not a finished result: run is stopped" in html


@pytest.mark.parametrize("args", [["--graph", "ring", "--n", "100000000"],
                                  ["--graph", "encounter", "--n", "100000000", "--q", "0.1"]])
def test_topology_that_would_not_fit_is_refused_before_allocating(capsys, args):
    code, cap = _cli(capsys, "topology", "inspect", *args, "--weights", "metropolis")
    assert code == 2 and "would need about" in cap.err and "available" in cap.err
    assert len(cap.err.strip().splitlines()) == 1


def _tiny_study():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_reliability import tiny

    return tiny()


def test_resume_leaves_a_users_jsonl_and_parquet_alone(tmp_path):
    from adflora_analysis.synthetic.runner import run_study

    out = tmp_path / "run"
    run_study(_tiny_study(), out, progress=False, stop_after=3)
    (out / "notes.jsonl").write_text('{"mine": 1}\n')
    (out / "notes.parquet").write_bytes(b"user bytes")
    run_study(_tiny_study(), out, resume=True, progress=False)
    assert (out / "notes.jsonl").read_text() == '{"mine": 1}\n'
    assert (out / "notes.parquet").read_bytes() == b"user bytes"
    assert json.loads((out / "meta.json").read_text())["status"] == "done"


def test_a_users_tmp_file_makes_a_folder_used_and_survives(tmp_path):
    from adflora_analysis.rundir import claim

    out = tmp_path / "d"
    out.mkdir()
    (out / ".notes.txt.abc.tmp").write_text("mine")
    with pytest.raises(AdfloraError, match="is not empty"):
        with claim(out, "synthetic", "new"):
            pass
    assert (out / ".notes.txt.abc.tmp").read_text() == "mine"


def test_lock_is_released_when_writing_its_holder_fails(tmp_path, monkeypatch):
    import errno
    import os

    from adflora_analysis.rundir import claim

    out = tmp_path / "d"
    real = os.pwrite

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(AdfloraError):
        with claim(out, "synthetic", "new"):
            pass
    monkeypatch.setattr(os, "pwrite", real)
    with claim(out, "synthetic", "new") as run:   # not "in use by" this very process
        assert run.path == out
