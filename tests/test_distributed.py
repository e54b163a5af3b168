"""torch.distributed (gloo, CPU): same numbers as in-process, per-rank checkpoints, failures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch

from adflora_analysis.distributed import split_clients
from adflora_analysis.errors import AdfloraError

ROOT = Path(__file__).resolve().parents[1]
BOUNDS = str(ROOT / "synthetic" / "bounds.toml")
KEY = ["method", "seed", "round", "layer"]
SMALL = ["seeds=2", "rounds=10", "methods=['adf-lora','rolora']", "constants_every=5"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun(nproc: int, *args: str, **kw) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "adflora_analysis", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300, **kw)


def inprocess(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adflora_analysis", *args],
                          capture_output=True, text=True, env=_env(), timeout=300)


def metrics(d: Path) -> pd.DataFrame:
    return pd.read_parquet(d / "metrics.parquet").sort_values(KEY).reset_index(drop=True)


def assert_same(a: pd.DataFrame, b: pd.DataFrame, rtol: float = 1e-5) -> None:
    assert len(a) == len(b) and len(a) > 0
    num = [c for c in a.columns if a[c].dtype.kind == "f"]
    pd.testing.assert_frame_equal(a[num], b[num], rtol=rtol, atol=1e-12)
    assert (a[KEY] == b[KEY]).all().all()


def test_split_clients():
    assert split_clients(10, 3) == [(0, 4), (4, 7), (7, 10)]
    with pytest.raises(AdfloraError, match="at most as many processes"):
        split_clients(2, 3)


@pytest.mark.parametrize("nproc, exchange", [(2, "allgather"), (3, "neighbor")])
def test_synthetic_matches_in_process(tmp_path, nproc, exchange):
    ref = inprocess("synthetic", "run", BOUNDS, "--out", str(tmp_path / "ref"), *SMALL)
    assert ref.returncode == 0, ref.stderr
    run = torchrun(nproc, "synthetic", "run", BOUNDS, "--out", str(tmp_path / "dist"), *SMALL,
                   f"exchange={exchange}")
    assert run.returncode == 0, run.stderr[-2000:]
    assert_same(metrics(tmp_path / "ref"), metrics(tmp_path / "dist"))
    # constants (Hessian power iteration on the gathered state) agree too
    a = pd.read_parquet(tmp_path / "ref" / "constants.parquet")
    b = pd.read_parquet(tmp_path / "dist" / "constants.parquet")
    pd.testing.assert_frame_equal(a, b, rtol=1e-5)


def test_killed_rank_stops_run_and_resume_matches(tmp_path):
    """SIGKILL one rank mid-run: the other stops within 60 s naming the lost rank; a resume
    with the same number of processes ends with the uninterrupted run's metrics; another number
    of processes is refused."""
    args = [BOUNDS, "seeds=2", "rounds=120", "methods=['adf-lora','rolora']",
            "checkpoint_every=5", "constants_every=1"]
    full = torchrun(2, "synthetic", "run", *args, "--out", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr[-2000:]
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "adflora_analysis", "synthetic", "run", *args, "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())
    jsonl = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not jsonl.exists() or jsonl.stat().st_size < 40_000):
        time.sleep(0.1)
    victim = None
    for c in psutil.Process(proc.pid).children(recursive=True):
        try:
            if c.environ().get("LOCAL_RANK") == "1":
                victim = c
        except psutil.Error:
            pass
    assert victim is not None and proc.poll() is None, "run ended before the kill"
    victim.kill()
    t0 = time.time()
    _, err = proc.communicate(timeout=120)
    assert time.time() - t0 < 60
    assert proc.returncode != 0
    # Whoever notices first names the dead rank: the surviving process ("error: rank 0: lost
    # contact with rank 1 ...") or, when torchrun's agent stops it first, the agent's summary.
    ours = "error: rank 0: lost contact with rank 1" in err
    agent = re.search(r"rank\s*:\s*1 \(local_rank: 1\)\s*\n\s*exitcode\s*:\s*-9", err)
    assert ours or agent, err[-2000:]
    refused = torchrun(3, "synthetic", "run", *args, "--resume", str(out))
    assert refused.returncode != 0 and "run by 2 process(es), this run has 3" in refused.stderr
    resumed = torchrun(2, "synthetic", "run", *args, "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same(metrics(tmp_path / "full"), metrics(out))


def test_backend_torch_without_torchrun_is_refused(tmp_path):
    r = inprocess("synthetic", "run", BOUNDS, "--out", str(tmp_path / "x"), *SMALL,
                  "backend=torch")
    assert r.returncode == 2 and "not started by torchrun" in r.stderr


def test_neighbor_exchange_sends_less_on_a_sparse_graph():
    """In one process the backend cannot be built; the byte count logic is checked on the
    helper that decides what each rank needs (ring: only boundary clients cross ranks)."""
    from adflora_analysis.distributed.backend import TorchDistBackend

    b = TorchDistBackend.__new__(TorchDistBackend)
    b.n, b.world_size, b.rank = 8, 2, 0
    b.ranges = split_clients(8, 2)
    W = torch.zeros(8, 8)
    for i in range(8):
        W[i, i] = W[i, (i + 1) % 8] = W[i, (i - 1) % 8] = 1 / 3
    assert b._needs(W, 1, 0).tolist() == [0, 3]   # rank 1's clients 4..7 touch 3 and 0
    assert b._needs(W, 0, 1).tolist() == [4, 7]


def _glue_config(tiny: Path, tmp_path: Path, **extra) -> Path:
    """A small GLUE config on the tiny RoBERTa; ``extra`` sets or replaces keys (TOML values)."""
    cfg = tmp_path / "glue.toml"
    keys = {"model": f'"{tiny}"', "task": '"rotten_tomatoes"', "n_clients": "6", "rounds": "4",
            "local_steps": "2", "batch_size": "8", "max_length": "24",
            "max_train_examples": "240", "max_eval_examples": "30", "eval_every": "2",
            "checkpoint_every": "2", "lr": "0.005", "methods": '["adf-lora", "rolora"]',
            "switch_interval": "2", "threads": "1", **extra}
    cfg.write_text("".join(f"{k} = {v}\n" for k, v in keys.items()))
    return cfg


def _glue_tables(d: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    m = pd.read_parquet(d / "metrics.parquet").sort_values(["job", "round", "layer"])
    e = pd.read_parquet(d / "eval.parquet").sort_values(["job", "round", "client", "split",
                                                         "metric"])
    return m.reset_index(drop=True), e.reset_index(drop=True)


@pytest.mark.parametrize("nproc, extra", [(2, {}), (3, {"exchange": '"neighbor"',
                                                        "train_head": "true"})])
def test_glue_tiny_matches_in_process(tiny, tmp_path, nproc, extra):
    """adf-lora and rolora on the tiny RoBERTa: per-round metrics and every client's evaluation
    under 2 and 3 processes equal the in-process run (1e-5 relative)."""
    cfg = _glue_config(tiny, tmp_path, **extra)
    ref = inprocess("glue", "run", str(cfg), "--out", str(tmp_path / "ref"), "--quiet")
    assert ref.returncode == 0, ref.stderr[-2000:]
    run = torchrun(nproc, "glue", "run", str(cfg), "--out", str(tmp_path / "dist"), "--quiet")
    assert run.returncode == 0, run.stderr[-3000:]
    (m1, e1), (m2, e2) = _glue_tables(tmp_path / "ref"), _glue_tables(tmp_path / "dist")
    assert set(m1["method"]) == {"adf-lora", "rolora"} and len(m1) == len(m2)
    num = [c for c in m1.columns if m1[c].dtype.kind == "f"]
    pd.testing.assert_frame_equal(m1[num], m2[num], rtol=1e-5, atol=1e-9)
    pd.testing.assert_frame_equal(e1, e2, rtol=1e-5, atol=1e-9)
    assert set(e2["client"]) >= {str(i) for i in range(6)} | {"mean", "averaged"}
    # every rank saved its part of each checkpoint
    parts = {p.name.rsplit(".rank", 1)[1] for p in (tmp_path / "dist" / "checkpoints").glob("*")}
    assert parts == {f"{r}.pt" for r in range(nproc)}


def test_glue_divergence_stops_every_process(tiny, tmp_path):
    """A non-finite loss on any process stops all of them with the same one-line message
    naming round, client and method, and meta.json records the divergence."""
    cfg = _glue_config(tiny, tmp_path, lr="1e30", methods='["lora"]')
    run = torchrun(2, "glue", "run", str(cfg), "--out", str(tmp_path / "div"), "--quiet")
    assert run.returncode != 0
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 2 and errors[0] == errors[1]
    assert "non-finite loss at round 0, client 0 (method lora, seed 0)" in errors[0]
    assert '"status": "diverged"' in (tmp_path / "div" / "meta.json").read_text()
