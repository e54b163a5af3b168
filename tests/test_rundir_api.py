"""The run directory's reading API (adflora_analysis.rundir): kind detection in one place,
checkpoint payloads written and read back only there, rows and tables, and the readers that
must use it (reports' cross terms and run loading, the GLUE summary, the checks' curves)."""

from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd
import pytest
import torch

from adflora_analysis import fileio
from adflora_analysis.errors import AdfloraError
from adflora_analysis.rundir import (
    CHECKPOINTS,
    RunDir,
    add_kind,
    checkpoint_rounds,
    claim,
    detect_kind,
    init_run_dir,
    latest_checkpoint,
    load_run,
    make_meta,
    save_checkpoint,
)

PKG = Path(__file__).resolve().parents[1] / "adflora_analysis"


def _run(tmp_path: Path, kind: str | None = "synthetic", **meta) -> RunDir:
    d = tmp_path / "run"
    extra = {"kind": kind} if kind else {}
    with claim(d, kind) as run:
        init_run_dir(run, {"rounds": 3}, make_meta([0], status="done", **extra, **meta))
        run.append_jsonl("metrics.jsonl", [{"job": "adf", "round": t, "seed": 0,
                                            "loss": 1.0 / (t + 1)} for t in range(3)])
    return load_run(d)


def test_checkpoint_payload_round_trips_and_keeps_the_last_two(tmp_path):
    ck = tmp_path / CHECKPOINTS
    A = [torch.arange(6.0).reshape(1, 2, 3)]
    for t in range(4):
        save_checkpoint(ck, "adf/seed=0", t, state={"A": A, "B": A}, problem={"step": t},
                        carry={"mix": torch.ones(2)}, rank=0, world_size=1, config_hash="h1")
    assert sorted(checkpoint_rounds(ck, "adf/seed=0")) == [2, 3]
    t, payload = latest_checkpoint(ck, "adf/seed=0", fingerprint="h1")
    assert t == 3 and payload["job"] == "adf/seed=0" and payload["problem"] == {"step": 3}
    assert torch.equal(payload["state"]["A"][0], A[0])
    assert torch.equal(payload["carry"]["mix"], torch.ones(2))


def test_latest_checkpoint_refuses_another_config_and_another_world_size(tmp_path):
    ck = tmp_path / CHECKPOINTS
    save_checkpoint(ck, "adf", 5, state={}, problem=None, carry=None, config_hash="h1")
    with pytest.raises(AdfloraError, match="another config"):
        latest_checkpoint(ck, "adf", fingerprint="h2")
    save_checkpoint(ck, "adf", 6, state={}, problem=None, carry=None, rank=1, world_size=2,
                    config_hash="h1")
    with pytest.raises(AdfloraError, match="written by 2 processes, this run has 1"):
        latest_checkpoint(ck, "adf", world_size=1)
    # with 2 processes only round 6 is complete if rank 0 wrote it too
    assert latest_checkpoint(ck, "adf", rank=0, world_size=2) is None


def test_a_checkpoint_with_code_is_refused_through_the_api(tmp_path):
    run = _run(tmp_path)
    bad = run.path / CHECKPOINTS / "adf.r000001.rank0.pt"
    bad.parent.mkdir()
    torch.save({"x": pd.Timestamp("2020-01-01")}, bad)   # a pickled object, not tensors
    (c,) = run.checkpoints()
    assert (c.job, c.round, c.rank) == ("adf", 1, 0)
    with pytest.raises(AdfloraError, match="holds more than tensors"):
        run.load_checkpoint(c)


def test_reading_api_rows_tables_kind(tmp_path):
    run = _run(tmp_path)
    assert run.kind == "synthetic" and run.status == "done"
    assert [r["round"] for r in run.rows("metrics")] == [0, 1, 2]
    assert run.has_table("metrics") and not run.has_table("eval")
    assert list(run.table("metrics")["loss"]) == [1.0, 0.5, 1.0 / 3]
    assert run.rows("eval") == [] and run.table("eval") is None


def test_kind_is_guessed_from_the_tables_only_when_unrecorded():
    def tables(*names):
        return lambda s: s in names

    assert detect_kind({"layer": "glue"}, has_table=tables("metrics")) == "glue"
    assert detect_kind({}, {"kind": "topology-sweep"}) == "sweep"
    assert detect_kind({}, has_table=tables("sweep", "metrics")) == "sweep"
    assert detect_kind({}, has_table=tables("metrics"), config={"task": "sst2"}) == "glue"
    assert detect_kind({}, has_table=tables("metrics"), config={}) == "synthetic"
    assert detect_kind({}, has_table=tables()) is None


def test_an_unknown_kind_is_one_error_line(tmp_path, capsys):
    run = _run(tmp_path, kind=None)
    meta = run.meta
    meta["kind"] = "synthtic"
    fileio.write_json(run.path / "meta.json", meta)
    with pytest.raises(AdfloraError, match=r"unknown run kind 'synthtic'.*did you mean "
                                           r"'synthetic'"):
        load_run(run.path)
    from adflora_analysis.cli import main

    with pytest.raises(SystemExit) as e:
        main(["report", str(run.path), "--out", str(tmp_path / "rep")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()   # a progress line, then the error
    assert [ln for ln in err if ln.startswith("error:")] == err[-1:]
    assert err[-1].startswith("error: unknown run kind 'synthtic'")
    assert not any("Traceback" in ln for ln in err)


def test_a_registered_kind_is_known(tmp_path, monkeypatch):
    from adflora_analysis.rundir import kinds

    monkeypatch.setattr(kinds, "_ADDED", set())   # the registration lasts this test only
    run = _run(tmp_path, kind=None)
    fileio.write_json(run.path / "meta.json", {**run.meta, "kind": "toy-kind"})
    with pytest.raises(AdfloraError, match="unknown run kind"):
        load_run(run.path)
    add_kind("toy-kind")
    assert load_run(run.path).kind == "toy-kind"


def test_the_glue_summary_reads_rows_through_the_api(tmp_path):
    from adflora_analysis.glue.runner import summarize

    d = tmp_path / "g"
    with claim(d, "glue") as run:
        init_run_dir(run, {"rounds": 2}, make_meta([0], kind="glue", status="done"))
        run.append_jsonl("metrics.jsonl", [
            {"method": "adf", "seed": 0, "layer": "all", "round": t, "xi_A": t, "xi_B": 0.0,
             "cross_term": 0.0, "product_consensus": 0.0, "local_loss": 2.0 - t}
            for t in range(2)])
        run.append_jsonl("eval.jsonl", [
            {"method": "adf", "seed": 0, "round": 1, "client": "mean", "metric": "accuracy",
             "split": "validation", "value": 0.75}])
    out = summarize(d)
    assert out.loc[0, "round"] == 1 and out.loc[0, "local_loss"] == 1.0
    assert out.loc[0, "mean_accuracy"] == 0.75


def _imports_and_names(path: Path) -> tuple[set[str], set[str]]:
    tree = ast.parse(path.read_text())
    mods = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    consts = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
              and isinstance(n.value, str)}
    return mods, names | consts


@pytest.mark.parametrize("module", ["reports/cross.py", "reports/collect.py",
                                    "reports/checks.py", "reports/build.py"])
def test_readers_use_only_the_api(module):
    """No reader parses checkpoint names, loads them with torch, or reads metrics.jsonl
    itself; the checks' curves travel on the Run, not through a module-level dict."""
    mods, names = _imports_and_names(PKG / module)
    text = (PKG / module).read_text()
    assert "torch.load" not in text and r"\.rank" not in text
    assert "metrics.jsonl\"" not in text.replace('append_jsonl("metrics.jsonl"', "")
    assert "_CURVES" not in names
    assert "checkpoint_path" not in names and "checkpoint_rounds" not in names


def test_command_line_parsing_is_not_in_the_run_directory():
    import adflora_analysis.rundir as rd
    from adflora_analysis import run_options

    assert not hasattr(rd, "run_target") and not hasattr(rd, "split_args")
    assert run_options.split_args(["c.toml", "lr=0.1"]) == ("c.toml", ["lr=0.1"])
