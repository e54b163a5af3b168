"""The job driver: rows per round, checkpoints, exact resume, divergence keeps rows."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from adflora_analysis.core import LoraState, Problem, get_method
from adflora_analysis.errors import AdfloraError, DivergenceError
from adflora_analysis.rundir import RunDir, init_run_dir
from adflora_analysis.seeding import torch_generator
from adflora_analysis.study.experiment import Job, run_jobs


class NoisyProblem(Problem):
    """Each trained block takes a random step keyed by (seed, t); evaluate reports its norm."""

    def __init__(self, seeds, blow_up_at=None):
        self.seeds, self.blow_up_at = seeds, blow_up_at

    def local_update(self, state, blocks, t, disp=None):
        def step(X):
            noise = torch.stack([torch.randn(X.shape[1:], generator=torch_generator(s, "n", t),
                                             dtype=X.dtype) for s in self.seeds])
            out = X + 0.1 * noise
            if self.blow_up_at == t:
                out[0, 1] = float("nan")
            return out
        new = state.map_blocks(step, blocks)
        if disp is not None:
            disp.add_states(state, new, blocks)
        return new

    def evaluate(self, state, t):
        return {"loss": sum(a.pow(2).sum((-3, -2, -1)) for a in state.A)}


def ring(n):
    W = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        W[i, i], W[i, (i + 1) % n], W[i, (i - 1) % n] = 1 / 3, 1 / 3, 1 / 3
    return W


def make_jobs(seeds=(0, 1), blow_up_at=None):
    n = 5

    def build():
        S = len(seeds)
        A = torch.randn(1, 1, 2, 3, generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64).expand(S, n, 2, 3).clone()
        state = LoraState([A], [torch.zeros(S, n, 4, 2, dtype=torch.float64)], ["q"])
        W = ring(n).expand(S, n, n)
        return NoisyProblem(list(seeds), blow_up_at), state, lambda t: W

    return [Job(f"{m}", get_method(m), list(seeds), build, switch_interval=2)
            for m in ("adf-lora", "rolora")]


def test_run_writes_tidy_rows(tmp_path):
    df = run_jobs(tmp_path, make_jobs(), rounds=6)
    assert len(df) == 2 * 2 * 6 * 2  # methods x seeds x rounds x (layer + all)
    assert set(df.layer) == {"q", "all"}
    assert (tmp_path / "metrics.parquet").exists()
    ro = df[(df.method == "rolora") & (df.layer == "all")]
    # rolora gossips only the trained block: the frozen block keeps its consensus error
    assert (ro[ro.mixed == "A"].xi_B.to_numpy() > 0).all()


def test_resume_after_stop_equals_uninterrupted(tmp_path):
    full = run_jobs(tmp_path / "a", make_jobs(), rounds=7, checkpoint_every=2)
    part = tmp_path / "b"
    run_jobs(part, make_jobs(), rounds=7, checkpoint_every=2, stop_after=10)  # "killed"
    resumed = run_jobs(part, make_jobs(), rounds=7, checkpoint_every=2, resume=True)
    key = ["method", "seed", "round", "layer"]
    a = full.sort_values(key).reset_index(drop=True)
    b = resumed.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_divergence_keeps_rows_and_names_round(tmp_path):
    with pytest.raises(DivergenceError, match=r"round 3 .*method adf-lora, client 1"):
        run_jobs(tmp_path, make_jobs(blow_up_at=3), rounds=6)
    df = pd.read_parquet(tmp_path / "metrics.parquet")
    assert sorted(df["round"].unique()) == [0, 1, 2]


def test_non_finite_extra_row_is_diverged_before_it_is_written(tmp_path):
    # planted: an evaluation table row (not a round metric) turns NaN at round 2
    def on_round(job, problem, res):
        loss = float("nan") if res.t == 2 else 0.5
        return {"eval": [{"accuracy": 0.7, "loss": loss}]}

    with pytest.raises(DivergenceError, match=r"non-finite loss = nan in the eval table at "
                       r"round 2 \(method adf-lora"):
        run_jobs(tmp_path, make_jobs(), rounds=4, on_round=on_round)
    ev = pd.read_parquet(tmp_path / "eval.parquet")
    assert sorted(ev["round"].unique()) == [0, 1]
    assert sorted(pd.read_parquet(tmp_path / "metrics.parquet")["round"].unique()) == [0, 1]


def test_resume_refuses_changed_config(tmp_path):
    init_run_dir(tmp_path, {"lr": 0.1, "topology": {"q": 0.1}}, {})
    RunDir(tmp_path).check_resume({"lr": 0.1, "topology": {"q": 0.1}})
    with pytest.raises(AdfloraError, match="differs in lr, topology.q"):
        RunDir(tmp_path).check_resume({"lr": 0.2, "topology": {"q": 0.2}})


def test_corrupt_checkpoint_is_named(tmp_path):
    run_jobs(tmp_path, make_jobs(), rounds=4, checkpoint_every=2, stop_after=3)
    for f in (tmp_path / "checkpoints").glob("*.pt"):
        f.write_bytes(b"garbage")
    with pytest.raises(AdfloraError, match="is corrupt"):
        run_jobs(tmp_path, make_jobs(), rounds=4, checkpoint_every=2, resume=True)
