"""Per-round callbacks and the live trackers: every round seen in order, a raising callback
stops the run resumably in one line, TensorBoard and MLflow hold the metrics rows, the ETA
counts evaluations."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import adflora_analysis as af
from adflora_analysis.rundir import RunDir
from adflora_analysis.study.experiment import run_jobs
from adflora_analysis.tbevents import read_events
from adflora_analysis.tracking import Callback, CallbackError, TensorBoardTracker

sys.path.insert(0, str(Path(__file__).parent))
from test_experiment import make_jobs  # noqa: E402

KEY = ["job", "seed", "round", "layer"]
SMALL = dict(n_clients=4, rounds=4, seeds=2, d_in=4, d_out=4, samples_per_client=8,
             batch_size=4, methods=["adf-lora", "lora"], constants_every=0,
             topology_samples=200, switch_interval=2, topology={"graph": "ring"})


class Recorder(Callback):
    def __init__(self):
        self.events: list = []
        self.rounds: list = []

    def on_run_start(self, run):
        self.events.append(("start", run.jobs, run.rounds, run.resume))

    def on_round_end(self, info):
        self.events.append(("round", info.job, info.round))
        self.rounds.append(info)

    def on_run_end(self, status):
        self.events.append(("end", status))


class Boom(Callback):
    """Raises in round ``at`` of job ``job``."""

    def __init__(self, job, at):
        self.job, self.at = job, at

    def on_round_end(self, info):
        if (info.job, info.round) == (self.job, self.at):
            raise ValueError("boom\nsecond line")


def _sorted(df):
    return df.sort_values(KEY).reset_index(drop=True)


def test_callback_sees_every_round_of_every_job_in_order(tmp_path):
    rec = Recorder()
    df = run_jobs(tmp_path, make_jobs(), rounds=5, callbacks=[rec])
    keys = ["adf-lora", "rolora"]
    assert rec.events == ([("start", keys, 5, False)]
                          + [("round", k, t) for k in keys for t in range(5)]
                          + [("end", "done")])
    # the rows handed over are the rows written
    seen = pd.DataFrame([r for info in rec.rounds for r in info.rows])
    pd.testing.assert_frame_equal(_sorted(seen), _sorted(df))
    assert {tuple(i.seeds) for i in rec.rounds} == {(0, 1)}
    walls = [i.wall_time for i in rec.rounds]
    assert walls == sorted(walls) and walls[-1] > walls[0]
    assert all(i.seconds > 0 for i in rec.rounds)


def test_in_memory_study_calls_back_too():
    rec, fn = Recorder(), []
    df = af.run_synthetic(**SMALL, callbacks=[rec, fn.append])   # a plain function too
    assert [e[1:] for e in rec.events if e[0] == "round"] == [
        (m, t) for m in ("adf-lora", "lora") for t in range(4)]
    assert [(i.job, i.round) for i in fn] == [(i.job, i.round) for i in rec.rounds]
    assert rec.events[-1] == ("end", "done")
    assert len(df) == sum(len(i.rows) for i in rec.rounds)


def test_raising_callback_stops_resumably_in_one_line(tmp_path):
    from adflora_analysis.synthetic.runner import run_study

    cfg = af.synthetic_config(**{**SMALL, "rounds": 6, "checkpoint_every": 2})
    full = run_study(cfg, tmp_path / "a", progress=False)
    run = tmp_path / "b"
    rec = Recorder()
    with pytest.raises(CallbackError) as err:
        run_study(cfg, run, progress=False, callbacks=[rec, Boom("lora", 3)])
    msg = str(err.value)
    assert "\n" not in msg
    assert msg == (f"callback Boom raised ValueError: boom second line in round 3 of job "
                   f"lora (hint: fix the callback; continue the run with --resume {run})")
    assert err.value.exit_code == 2
    meta = RunDir(run).meta
    assert meta["status"] == "stopped" and meta["error"] == msg
    assert rec.events[-1] == ("end", "stopped")   # the others still hear the end
    # the rows of the interrupted job are those up to its failed round
    rows = pd.read_parquet(run / "metrics.parquet")
    assert rows[rows.job == "lora"]["round"].max() == 3
    # resumed without the callback: exactly the rows of an uninterrupted run
    resumed = run_study(cfg, run, resume=True, progress=False)
    pd.testing.assert_frame_equal(_sorted(resumed), _sorted(full))
    assert RunDir(run).meta["status"] == "done"


def test_track_with_a_bad_name_is_one_line_with_did_you_mean(tmp_path, capsys):
    from adflora_analysis.cli import main

    with pytest.raises(SystemExit) as e:
        main(["synthetic", "run", "bounds", "--out", str(tmp_path / "r"), "--track",
              "tensorbord"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: unknown tracker 'tensorbord'; valid: mlflow, tensorboard "
                   "(hint: did you mean 'tensorboard'?)"]
    assert not (tmp_path / "r").exists()


class LiveProbe(Callback):
    """After the TensorBoard tracker: the round just finished is already in its file."""

    def __init__(self, tb):
        self.tb, self.checked = tb, 0

    def on_round_end(self, info):
        f = self.tb._files[(info.job, info.seeds[0])].path
        steps = [e["step"] for e in read_events(f) if "metrics/loss" in e["values"]]
        assert steps[-1] == info.round
        self.checked += 1


def _scalars(path: Path) -> dict[str, list[tuple[int, float, float]]]:
    out: dict[str, list] = {}
    for e in read_events(path):
        for tag, v in e["values"].items():
            if isinstance(v, float):
                out.setdefault(tag, []).append((e["step"], v, e["wall_time"]))
    return out


def test_live_tensorboard_holds_the_metrics_rows(tmp_path):
    tb = TensorBoardTracker(checks=False)
    probe = LiveProbe(tb)
    df = af.run_synthetic(out=tmp_path / "run", callbacks=[tb, probe], **SMALL)
    assert probe.checked == 8
    tot = df[df.layer == "all"]
    for (job, seed), g in tot.groupby(["job", "seed"]):
        files = list((tmp_path / "run" / "tb" / job / f"seed{seed}").glob("events.out.*"))
        assert len(files) == 1
        sc = _scalars(files[0])
        for col in ("loss", "xi_B", "cross_term", "grad_norm_sq", "bytes_sent"):
            steps, vals, walls = zip(*sc[f"metrics/{col}"], strict=True)
            assert list(steps) == g["round"].tolist()
            np.testing.assert_array_equal(np.float32(g[col].to_numpy()), np.float32(vals))
        walls = [w for _, _, w in sc["metrics/loss"]]
        assert walls == sorted(walls) and walls[-1] > walls[0]   # real times, not one stamp
        assert "metrics/lr" not in sc          # the job's constant columns are hparams
    # the config at the root, listed in the manifest
    root = list((tmp_path / "run" / "tb").glob("events.out.*"))
    texts = {k: v for e in read_events(root[0]) for k, v in e["values"].items()}
    assert "n_clients = 4" in texts["config"] and texts["status"] == "done"
    own = {p.relative_to(tmp_path / "run").as_posix() for p in RunDir(tmp_path / "run")
           .own_files()}
    assert {f"tb/{job}/seed0/{next((tmp_path / 'run' / 'tb' / job / 'seed0').iterdir()).name}"
            for job in ("adf-lora", "lora")} <= own


def test_tensorboard_reads_scalars_and_hparams(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    df = af.run_synthetic(out=tmp_path / "run", track=["tensorboard"], **SMALL)
    g = df[(df.layer == "all") & (df.job == "lora") & (df.seed == 1)]
    acc = EventAccumulator(str(tmp_path / "run" / "tb" / "lora" / "seed1"),
                           size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    loss = acc.Scalars("metrics/loss")
    assert [e.step for e in loss] == g["round"].tolist()
    np.testing.assert_allclose([e.value for e in loss], g["loss"], rtol=1e-6)
    content = acc.PluginTagToContent("hparams")
    start = metadata.parse_session_start_info_plugin_data(
        content[metadata.SESSION_START_INFO_TAG])
    assert start.group_name == "lora"
    assert start.hparams["lr"].number_value == pytest.approx(g["lr"].iloc[0])
    assert start.hparams["method"].string_value == "lora"
    assert start.hparams["topology.graph"].string_value == "ring"
    assert start.hparams["seed"].number_value == 1
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    assert end.status == 1   # SUCCESS
    # the theory checks after the run: the same verdicts `adflora synthetic check` gives
    root = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"tensors": 0})
    root.Reload()
    table = root.Tensors("checks")[0].tensor_proto.string_val[0].decode()
    checks = af.run_checks(tmp_path / "run")
    assert len(table.splitlines()) == 2 + len(checks)
    for status, n in checks.status.value_counts().items():
        assert root.Scalars(f"checks/{status}")[0].value == n


def test_mlflow_holds_the_metrics_rows(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    run = tmp_path / "run"
    df = af.run_synthetic(out=run, track=["mlflow"], **SMALL)
    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name("run")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"{m}/seed{s}" for m in
                                                     ("adf-lora", "lora") for s in (0, 1)]
    tot = df[df.layer == "all"]
    for r in runs:
        job, seed = r.data.tags["adflora.job"], int(r.data.tags["adflora.seed"])
        g = tot[(tot.job == job) & (tot.seed == seed)]
        assert r.info.status == "FINISHED"
        assert r.data.params["n_clients"] == "4" and r.data.params["method"] == job
        for col in ("loss", "xi_B"):
            hist = sorted(client.get_metric_history(r.info.run_id, col), key=lambda m: m.step)
            assert [m.step for m in hist] == g["round"].tolist()
            assert [m.value for m in hist] == g[col].tolist()
            assert hist[-1].timestamp >= hist[0].timestamp > 0


def test_eta_counts_the_evaluations(tmp_path):
    jobs = [replace(j, evaluates=lambda t: t == 4) for j in make_jobs()]
    run_jobs(tmp_path, jobs, rounds=6, progress=None)
    lines = [ln for ln in (tmp_path / "log.txt").read_text().splitlines()
             if "round" in ln and "ETA" in ln]
    first = [ln for ln in lines if " adf-lora: round " in ln]
    # before the first evaluation is timed the ETA says how many are still due
    assert all("+ 2 evals" in ln for ln in first[:4]), first
    assert not any("evals" in ln for ln in first[5:] + lines[6:]), lines
    json.dumps(lines)


def test_glue_run_calls_back_with_eval_rows_and_logs_them(tiny, tmp_path):
    from test_glue_runs import small

    from adflora_analysis.glue.runner import run_glue

    rec, tb = Recorder(), TensorBoardTracker(checks=False)
    out = tmp_path / "run"
    run_glue(small(tiny, methods=["adf-lora"], rounds=4, eval_every=2), out,
             callbacks=[rec, tb])
    assert [(i.round, sorted(i.tables)) for i in rec.rounds] == [
        (0, []), (1, ["eval"]), (2, []), (3, ["eval"])]
    assert rec.events[-1] == ("end", "done")
    ev = pd.read_parquet(out / "eval.parquet")
    mean = ev[ev.client == "mean"]
    job = rec.rounds[0].job
    sc = _scalars(next((out / "tb" / job / "seed0").glob("events.out.*")))
    for (split, metric), g in mean.groupby(["split", "metric"]):
        steps, vals, _ = zip(*sc[f"eval/{split}/{metric}"], strict=True)
        assert list(steps) == [1, 3]
        np.testing.assert_array_equal(np.float32(g.sort_values("round")["value"]),
                                      np.float32(vals))


def test_resume_after_a_raising_callback_logs_each_round_once(tmp_path):
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from adflora_analysis.synthetic.runner import run_study
    from adflora_analysis.tracking import MlflowTracker

    cfg = af.synthetic_config(**{**SMALL, "rounds": 6, "checkpoint_every": 2, "seeds": 1})
    run = tmp_path / "run"
    with pytest.raises(CallbackError):
        run_study(cfg, run, progress=False, callbacks=[
            TensorBoardTracker(checks=False), MlflowTracker(), Boom("lora", 3)])
    df = run_study(cfg, run, resume=True, progress=False,
                   callbacks=[TensorBoardTracker(checks=False), MlflowTracker()])
    g = df[(df.layer == "all") & (df.job == "lora")].sort_values("round")
    # round 3 was logged before the stop, rounds 2.. run again from the checkpoint of round 1
    acc = EventAccumulator(str(run / "tb" / "lora" / "seed0"), size_guidance={"scalars": 0})
    acc.Reload()
    loss = acc.Scalars("metrics/loss")
    assert [e.step for e in loss] == list(range(6))
    np.testing.assert_allclose([e.value for e in loss], g["loss"], rtol=1e-6)
    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    runs = client.search_runs([client.get_experiment_by_name("run").experiment_id])
    assert {r.info.run_name: r.info.status for r in runs} == {
        "adf-lora/seed0": "FINISHED", "lora/seed0": "FINISHED"}
    r = next(r for r in runs if r.info.run_name == "lora/seed0")
    hist = sorted(client.get_metric_history(r.info.run_id, "loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in hist] == list(zip(g["round"], g["loss"], strict=True))


def test_the_tracker_logs_saved_checks_only_while_they_cover_the_run(tmp_path):
    """tracking._checks reads checks.json through theory.load_saved_checks: the run's own saved
    results are logged; the same file recording another config hash (a stale or foreign
    checks.json) is not."""
    from adflora_analysis.config import load_config
    from adflora_analysis.synthetic.config import SyntheticConfig
    from adflora_analysis.synthetic.runner import run_study
    from adflora_analysis.theory import run_checks, save_results
    from adflora_analysis.tracking import _checks

    cfg = load_config(SyntheticConfig, data=dict(
        n_clients=4, rounds=4, local_steps=1, rank=2, seeds=2, d_in=4, d_out=4, target_rank=2,
        samples_per_client=8, batch_size=4, constants_every=0, topology_samples=200,
        methods=["adf-lora"]))
    out = tmp_path / "run"
    run_study(cfg, out, progress=False)
    save_results(out, run_checks(out, entry_points=False))
    assert _checks(out) and all(isinstance(r, dict) for r in _checks(out))
    doc = json.loads((out / "checks.json").read_text())
    doc["run"]["config_hash"] = "0" * 64
    (out / "checks.json").write_text(json.dumps(doc))
    assert _checks(out) == []
