"""Causal-LM testbed on tiny locally built models: every family's default targets exist, a short
run writes metrics and eval rows (per client, mean, averaged adapter) with finite perplexity,
resume after a stop equals an uninterrupted run, and bad input is one line before any weights
are loaded."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import time

import numpy as np
import pandas as pd
import pytest

from adflora_analysis.config import load_config
from adflora_analysis.lm.config import LmConfig

FAMILIES = ["llama", "qwen2", "mistral", "gpt2"]


@pytest.fixture(scope="module", autouse=True)
def tiny_dir(tmp_path_factory):
    """Tiny models are built into this session's folder, not the user's cache."""
    d = tmp_path_factory.getbasetemp() / "tiny-lm"
    old = os.environ.get("ADFLORA_TINY_DIR")
    os.environ["ADFLORA_TINY_DIR"] = str(d)
    os.environ["ADFLORA_TINY_PRETRAIN"] = "0"   # random weights: fast to build
    yield d
    if old is None:
        os.environ.pop("ADFLORA_TINY_DIR", None)
    else:
        os.environ["ADFLORA_TINY_DIR"] = old


def small(**kw) -> LmConfig:
    base = dict(model="tiny-llama", n_clients=3, rounds=2, local_steps=2, batch_size=4,
                max_length=32, max_train_examples=90, max_eval_examples=12, eval_every=1,
                checkpoint_every=1, lr=5e-3, rank=2, methods=["adf-lora", "lora"],
                switch_interval=1, threads=1, eval_batch_size=12)
    base.update(kw)
    return load_config(LmConfig, data=base)


def _tables(d):
    m = pd.read_parquet(d / "metrics.parquet").sort_values(["job", "round", "layer"])
    e = pd.read_parquet(d / "eval.parquet").sort_values(["job", "round", "client", "split",
                                                         "metric"])
    drop = [c for c in m.columns if c in ("wall_s", "time_s")]
    return m.drop(columns=drop).reset_index(drop=True), e.reset_index(drop=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_default_targets_exist(family):
    from adflora_analysis.lm.model import DEFAULT_TARGETS, adaptable_modules, preflight

    res = preflight(small(model=f"tiny-{family}", lora_mlp=True))
    leaves = {n.split(".")[-1] for n in adaptable_modules(res.config)}
    assert res.config.model_type == family and res.config.num_hidden_layers == 2
    assert set(res.targets) == set(sum(DEFAULT_TARGETS[family], [])) <= leaves


def test_gpt2_builds_and_pairs_conv1d_adapters():
    from adflora_analysis.lm.model import LmModel

    gm = LmModel(small(model="tiny-gpt2"))
    assert len(gm.layers) == 6 and gm.shapes[0] == ((2, 48), (144, 2))   # c_attn: 48 -> 144
    s = gm.initial_state(3, 0)
    assert s.A[0].shape == (3, 2, 48) and float(s.B[0].abs().sum()) == 0


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    from adflora_analysis.lm.runner import run_lm

    out = tmp_path_factory.mktemp("lm") / "full"
    t0 = time.time()
    summary = run_lm(small(), out)
    return out, summary, time.time() - t0


def test_run_writes_metrics_and_perplexity(full_run):
    out, summary, _ = full_run
    m, e = _tables(out)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "lm" and meta["model"]["model_type"] == "llama"
    assert set(m["layer"]) == {"all", *meta["model"]["layers"]}
    tot = m[m["layer"] == "all"]
    assert np.isfinite(tot[["xi_A", "xi_B", "cross_term", "local_loss"]].to_numpy()).all()
    assert set(e["client"]) == {"0", "1", "2", "mean", "averaged"}
    assert set(e["metric"]) == {"loss", "perplexity"} and sorted(e["round"].unique()) == [0, 1]
    ppl = e[e["metric"] == "perplexity"]
    assert np.isfinite(ppl["value"]).all() and (ppl["value"] > 1).all()
    assert set(summary["method"]) == {"adf-lora", "lora"}
    assert np.isfinite(summary[["mean_perplexity", "averaged_perplexity"]].to_numpy()).all()
    counts = pd.read_csv(out / "label_counts.csv")
    assert set(counts["label_name"]) == {"imdb", "rotten_tomatoes"}


def test_resume_after_stop_equals_uninterrupted(full_run, tmp_path):
    from adflora_analysis.lm.runner import run_lm

    full = full_run[0]
    part = tmp_path / "part"
    run_lm(small(), part, stop_after=3)   # stops in the second job after its first round
    assert json.loads((part / "meta.json").read_text())["status"] == "stopped"
    run_lm(small(), part, resume=True)
    (mf, ef), (mp, ep) = _tables(full), _tables(part)
    pd.testing.assert_frame_equal(mf, mp)
    pd.testing.assert_frame_equal(ef, ep)


def _cli(args, capsys) -> tuple[int, list[str]]:
    from adflora_analysis.lm.cli import main

    t0 = time.time()
    rc = main(["run", *args])
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert time.time() - t0 < 60   # imports included, on a loaded 2-core machine
    return rc, lines


@pytest.mark.parametrize("overrides, says", [
    (["lora_targets=[\"query\"]"], r"lora_targets \['query'\] match no linear layer .*"
     r"\(hint: choose from: .*q_proj"),
    (["model=tiny-gpt2", "max_length=1000"], r"max_length = 1000 is longer than the model's "
     r"context \(256 positions\) \(hint: use max_length <= 256\)"),
    (["model=Qwen/Qwen2.5-0.5B", "dtype=bfloat16"], r"model 'Qwen/Qwen2.5-0.5B' is not in the "
     r"local cache .* \(hint: pass model=DIR"),
    (["batch_size=100000", "max_length=256"], r"this lm study needs about .* GiB per process "
     r"\(planner: 2 clients of tiny-llama.* GiB is available \(hint: see `adflora plan"),
])
def test_bad_input_is_one_line_before_weights(overrides, says, tmp_path, capsys):
    import re

    cfg = tmp_path / "c.toml"
    cfg.write_text('model = "tiny-llama"\nn_clients = 2\nrounds = 1\n')
    rc, lines = _cli([str(cfg), "--out", str(tmp_path / "run"), *overrides], capsys)
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert re.search(says, lines[0]), lines[0]
    assert not (tmp_path / "run").exists()


def test_unknown_family_without_targets_is_one_line(tmp_path, capsys):
    from transformers import BertConfig

    d = tmp_path / "bert"   # a config only: the check must not need weights
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64, is_decoder=True).save_pretrained(d)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'model = "{d}"\nn_clients = 2\nrounds = 1\n')
    rc, lines = _cli([str(cfg), "--out", str(tmp_path / "run")], capsys)
    assert rc == 2 and len(lines) == 1, lines
    assert "model family 'bert' has no default LoRA targets (hint: set lora_targets" in lines[0]
    rc, lines = _cli([str(cfg), "--dry-run", 'lora_targets=["query","value"]'], capsys)
    assert rc == 0, lines


def test_shipped_study_loads():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(LmConfig, root / "lm_runs" / "tiny_llama.toml")
    assert cfg.model == "tiny-llama" and len(cfg.methods) == 4


GPU_CHECK = __import__("pathlib").Path(__file__).resolve().parents[1] / "benchmarks" / \
    "gpu_check.sh"


def test_gpu_check_script_parses():
    import subprocess

    r = subprocess.run(["bash", "-n", str(GPU_CHECK)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_gpu_check_cpu_fallback_measures_and_guards_the_planner(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "DEVICE": "cpu", "SHAPE": "tiny", "WORK": str(tmp_path), "STEPS": "2",
           "PY": sys.executable}
    r = subprocess.run(["bash", str(GPU_CHECK), "measure", "plan"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "measure: " in r.stdout and "tokens/s" in r.stdout
    assert "plan: " in r.stdout   # the comparison, or one line saying the planner is missing


def test_report_of_an_lm_run_shows_perplexity_not_a_glue_table(full_run, tmp_path):
    from adflora_analysis.reports import make_report

    out, _, _ = full_run
    make_report([out], tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "perplexity (final round; mean ± sd over seeds)" in md
    assert "GLUE table" not in md and "| adf-lora | 1 | 1 |" in md


def test_checks_read_an_lm_run(full_run, capsys):
    from adflora_analysis.cli import main

    out, _, _ = full_run
    with pytest.raises(SystemExit) as e:
        main(["synthetic", "check", str(out), "--json", "--no-save"])
    assert int(e.value.code or 0) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["run"]["kind"] == "lm"
    checks = {r["check"] for r in got["results"]}
    assert {"gossip-contraction", "cross-term-invariant"} <= checks
