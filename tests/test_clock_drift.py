"""Clock drift (issue 12; docs/theory.md §9): each client reads the schedule on its own clock,
so clients of one round can be in different phases. Drift 0 is today exactly; with drift each
client trains only its phase's factor, rolora gossips a factor only among the clients in that
factor's phase, and torch.distributed and resume repeat the in-process run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from adflora_analysis.config import load_config
from adflora_analysis.core.displacement import DisplacementStats
from adflora_analysis.core.loop import run_rounds
from adflora_analysis.core.methods import get_method
from adflora_analysis.core.mixers import asynchronous, block_weights, synchronous
from adflora_analysis.core.schedules import clock_rates, drifting, periodic
from adflora_analysis.core.state import LoraState
from adflora_analysis.errors import AdfloraError
from adflora_analysis.synthetic.config import SyntheticConfig

SMALL = {"n_clients": 6, "rounds": 10, "seeds": 2, "d_in": 4, "d_out": 4,
         "methods": ["adf-lora", "rolora"], "switch_interval": 2}
DRIFT = {**SMALL, "gossip": {"clock_drift": 0.3}}
KEY = ["job", "seed", "round", "layer"]
ROOT = Path(__file__).resolve().parents[1]


def _rows(data: dict) -> pd.DataFrame:
    from adflora_analysis.synthetic.runner import study_rows

    return study_rows(load_config(SyntheticConfig, data=data)).sort_values(KEY) \
        .reset_index(drop=True)


# ---------------------------------------------------------------- the clocks
def test_clients_read_the_schedule_on_their_own_clocks():
    rates = clock_rates(range(20), 10, 0.2)
    assert ((rates >= 0.8) & (rates <= 1.2)).all() and rates.std() > 0.05
    assert torch.equal(clock_rates([3], 10, 0.2)[0], rates[3])      # per (seed, client)
    s = drifting(periodic(2), 0.2, range(20), 10)
    st = s.init()
    for t in (0, 7, 31):
        c = torch.floor(t * rates).long()
        assert torch.equal(s.clients(st, t), (c // 2) % 2 == 1)    # phase() at own clock
        assert s.phase(st, t) == periodic(2).phase({}, t)            # the reference clock
    late = torch.stack([s.clients(st, t) for t in range(20, 40)])
    assert (late.any(-1) & ~late.all(-1)).any()                      # phases really differ
    with pytest.raises(AdfloraError, match="fixed interval"):
        from adflora_analysis.core.schedules import feedback

        drifting(feedback(), 0.2, [0], 4)


# ---------------------------------------------------------------- drift 0 is today
def test_drift_zero_is_today_exactly():
    from adflora_analysis.synthetic.problem import QuadraticProblem

    assert _rows(SMALL).equals(_rows({**SMALL, "gossip": {"clock_drift": 0.0}}))
    # the per-client path with every client on one clock (rates 1) leaves out all-True masks
    # and gives the same numbers as the schedule without clients
    cfg = load_config(SyntheticConfig, data=SMALL)
    W = torch.full((2, 6, 6), 1 / 6, dtype=torch.float64)
    for method in ("adf-lora", "rolora"):
        out = {}
        for name, sched in (("plain", periodic(2)), ("clocks", drifting(periodic(2), 0.0,
                                                                         [0, 1], 6))):
            prob = QuadraticProblem(cfg, [0, 1])
            res = list(run_rounds(prob, get_method(method), prob.initial_state(),
                                  lambda t: W, rounds=6, schedule=sched))
            out[name] = res[-1]
        for a, b in zip(out["plain"].state.A + out["plain"].state.B,
                        out["clocks"].state.A + out["clocks"].state.B, strict=True):
            assert torch.equal(a, b)
        assert out["clocks"].scalar["phase_frac_A"].tolist() == [0.0, 0.0]   # round 5: B


def test_a_drifting_run_differs_and_records_every_clients_phase():
    a, b = _rows(SMALL), _rows(DRIFT)
    assert "phase_clients" not in a and "phase_frac_A" not in a
    rol = b[(b.method == "rolora") & (b.layer == "all")]
    mixed = rol.phase_clients.map(lambda s: "A" in s and "B" in s)
    assert mixed.any() and (rol.phase_clients.str.len() == 6).all()
    frac = rol.phase_clients.map(lambda s: s.count("A") / len(s))
    assert (frac - rol.phase_frac_A).abs().max() < 1e-12
    assert (rol.trained[mixed] == "AB").all()                       # the union of blocks
    assert not a.xi_B.equals(b.xi_B)
    assert (b.clock_drift == 0.3).all()


# ---------------------------------------------------------------- masked training
def test_each_client_trains_only_its_phases_factor():
    from adflora_analysis.synthetic.problem import QuadraticProblem

    cfg = load_config(SyntheticConfig, data=SMALL)
    prob = QuadraticProblem(cfg, [0, 1])
    st = prob.initial_state()
    g = torch.Generator().manual_seed(0)
    for X in st.B:
        X.normal_(generator=g)
    phA = torch.tensor([[True, False, True, False, False, True],
                        [False, False, True, True, True, False]])
    masks = get_method("rolora").trained_masks(phA)
    before = st.clone()
    disp = DisplacementStats()
    new, _ = prob.local_update(st, ("A", "B"), 0, disp, train_mask=masks)
    for name, m in masks.items():
        old, cur = before.block(name)[0], new.block(name)[0]
        assert torch.equal(cur[~m], old[~m])                         # bit-identical
        assert (cur[m] - old[m]).flatten(1).norm(dim=-1).min() > 0   # every trainer moved
    assert disp.count("A", 0) == 6 and disp.count("B", 0) == 6
    # planted defect: a problem that ignores the mask moves the other factor too
    ignored, _ = QuadraticProblem(cfg, [0, 1]).local_update(before.clone(), ("A", "B"), 0)
    assert not torch.equal(ignored.A[0][~masks["A"]], before.A[0][~masks["A"]])


def test_glue_client_trains_only_its_phases_factor(tiny):
    import numpy as np

    from adflora_analysis.glue import get_task, partition_indices
    from adflora_analysis.glue.data import encode, load_movie_reviews
    from adflora_analysis.glue.model import GlueModel
    from adflora_analysis.glue.problem import GlueProblem

    gm = GlueModel(str(tiny), 2, rank=4, lora_alpha=8, dropout=0.1)
    task = get_task("rotten_tomatoes")
    df = load_movie_reviews(task).train.sample(60, random_state=0).reset_index(drop=True)
    parts = partition_indices(df["label"].to_numpy(), 3, "paper", seed=0)
    prob = GlueProblem(gm, encode(gm.tokenizer, task, df, 32), parts, method="rolora", seed=0,
                       local_steps=2, batch_size=4, lr=1e-2)
    st = gm.initial_state(3, seed=0)
    for X in st.B:
        X.normal_(generator=torch.Generator().manual_seed(1)).mul_(0.1)
    before = st.clone()
    masks = get_method("rolora").trained_masks(torch.tensor([True, False, True]))
    disp = DisplacementStats()
    new, _ = prob.local_update(st, ("A", "B"), 0, disp, train_mask=masks)
    for name, m in masks.items():
        for old, cur in zip(before.block(name), new.block(name), strict=True):
            assert torch.equal(cur[~m], old[~m])
            assert (cur[m] - old[m]).flatten(1).norm(dim=-1).min() > 0
    assert disp.count("A", 0) == 3 and np.isfinite(prob.last_loss)


# ---------------------------------------------------------------- restricted gossip
def _W(S: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    M = torch.rand(S, n, n, generator=g, dtype=torch.float64)
    M = (M + M.transpose(-1, -2)) / (2 * n)
    return M + torch.diag_embed(1 - M.sum(-1))


@pytest.mark.parametrize("mixer", [synchronous(), asynchronous(staleness=1),
                                   asynchronous(participation=0.7, seeds=[0, 1])],
                         ids=["sync", "stale", "partial"])
def test_rolora_gossips_a_factor_only_among_the_clients_in_its_phase(mixer):
    S, n = 2, 7
    g = torch.Generator().manual_seed(0)
    st = LoraState([torch.randn(S, n, 2, 3, generator=g, dtype=torch.float64)],
                   [torch.randn(S, n, 3, 2, generator=g, dtype=torch.float64)], ["l0"])
    phA = torch.tensor([[True, True, False, True, False, False, True],
                        [False, True, True, False, False, True, False]])
    masks = get_method("rolora").mixed_masks(phA)
    W = _W(S, n, 3)
    Ws = block_weights(W, ("A", "B"), masks)
    for b, m in masks.items():
        ones = torch.ones(S, n, dtype=torch.float64)
        assert torch.allclose(Ws[b].sum(-1), ones) and torch.allclose(Ws[b].sum(-2), ones)
        off = Ws[b] * ~torch.eye(n, dtype=torch.bool)
        assert (off[~m].abs().sum() == 0) and (off.transpose(-1, -2)[~m].abs().sum() == 0)
    carry = mixer.init(st)
    before = st.clone()
    st, carry, sent = mixer.mix(carry, st, ("A", "B"), W, 0, masks=masks)
    for b, m in masks.items():
        old, cur = before.block(b)[0], st.block(b)[0]
        idle = ~m
        if mixer.name.startswith("stale-read(staleness=0"):
            from adflora_analysis.core.mixers import active_clients

            idle = idle | ~active_clients([0, 1], n, 0, 0.7)
        assert torch.equal(cur[idle], old[idle])                    # not its phase: kept
        for s in range(S):                                           # S_X's average kept
            torch.testing.assert_close(cur[s][m[s]].mean(0), old[s][m[s]].mean(0),
                                       rtol=0, atol=1e-12)
        assert not torch.allclose(cur[m], old[m])
    # planted defect: mixing with the unrestricted W^t moves the average over S_X
    full = before.clone()
    full, _, sent_all = synchronous().mix({}, full, ("A", "B"), W, 0)
    m = masks["A"]
    assert (full.A[0][0][m[0]].mean(0) - before.A[0][0][m[0]].mean(0)).abs().max() > 1e-3
    assert (sent < sent_all).all()                                   # fewer messages


def test_restricted_gossip_of_a_sparse_W_equals_the_dense_one(monkeypatch):
    """From 1,024 clients W^t is sparse; a block gossiped by part of the clients is mixed with
    the sparse restriction (no dense W built), the same numbers as with the dense W^t."""
    from adflora_analysis.core.sparse import SparseMix
    from adflora_analysis.topology.sparse import SparseW

    S, n = 2, 5
    W = _W(S, n, 4)
    sp = SparseMix.from_sparse_w(SparseW.from_dense(W.numpy()), (S,), dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    st = LoraState([torch.randn(S, n, 2, 3, generator=g, dtype=torch.float64)],
                   [torch.randn(S, n, 3, 2, generator=g, dtype=torch.float64)], ["l0"])
    masks = get_method("rolora").mixed_masks(torch.tensor([[True, False, True, True, False],
                                                           [False, True, True, False, True]]))
    a, _, sa = synchronous().mix({}, st.clone(), ("A", "B"), W, 0, masks=masks)

    def no_dense(self):
        raise AssertionError("the sparse path built a dense W")

    monkeypatch.setattr(SparseMix, "dense", no_dense)
    b, _, sb = synchronous().mix({}, st.clone(), ("A", "B"), sp, 0, masks=masks)
    for x, y in zip(a.A + a.B, b.A + b.B, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-14)
    assert torch.equal(sa, sb)


# ---------------------------------------------------------------- runs
def test_resume_mid_run_equals_the_uninterrupted_run(tmp_path):
    from adflora_analysis.synthetic.runner import run_study

    cfg = load_config(SyntheticConfig, data={**DRIFT, "checkpoint_every": 2,
                                             "gossip": {"clock_drift": 0.3, "staleness": 1}})
    full = run_study(cfg, tmp_path / "full", progress=False)
    run_study(cfg, tmp_path / "part", progress=False, stop_after=5)
    resumed = run_study(cfg, tmp_path / "part", progress=False, resume=True)
    a = full.sort_values(KEY).reset_index(drop=True)
    b = resumed.sort_values(KEY).reset_index(drop=True)
    cols = [c for c in a.columns if c not in ("wall_s", "time_s")]
    assert "phase_clients" in cols
    pd.testing.assert_frame_equal(a[cols], b[cols], check_exact=True)


@pytest.mark.slow
def test_drift_under_torch_distributed_matches_in_process(tmp_path):
    from _dist import in_process_and_torchrun

    args = ["synthetic", "run", "synthetic/bounds.toml", "seeds=2", "rounds=8",
            "methods=['adf-lora','rolora']", "constants_every=0", "switch_interval=2",
            "gossip.clock_drift=0.3"]
    a, b, num = in_process_and_torchrun(args, tmp_path)
    assert len(a) == len(b) > 0
    pd.testing.assert_frame_equal(a[num].reset_index(drop=True), b[num].reset_index(drop=True),
                                  rtol=1e-5, atol=1e-12)
    assert a.phase_clients.tolist() == b.phase_clients.tolist()
    assert a.phase_clients.map(lambda s: "A" in s and "B" in s).any()


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad, msg", [
    ({"gossip": {"clock_drift": -0.1}}, "clock_drift = -0.1 must lie in"),
    ({"gossip": {"clock_drift": 1.0}}, "clock_drift = 1.0 must lie in"),
    ({"gossip": {"clock_drift": "fast"}}, "must be a number"),
    ({"gossip": {"clock_drift": 0.1}, "switch_schedule": "feedback", "switch_interval": None},
     "fixed interval"),
    ({"gossip": {"clock_drift": 0.1}, "methods": ["lora", "ffa-lora"]}, "changes nothing"),
])
def test_bad_clock_drift_is_one_line(bad, msg):
    with pytest.raises(AdfloraError, match=msg) as e:
        load_config(SyntheticConfig, data={**SMALL, **bad})
    assert e.value.hint


def test_cli_refuses_bad_drift_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "adflora_analysis", "synthetic", "run",
                        "synthetic/bounds.toml", "gossip.clock_drift=-1", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "clock_drift" in r.stderr
    assert "hint:" in r.stderr
    assert not out.exists() or not any(out.iterdir())


# ---------------------------------------------------------------- the theory checks on drift runs
def test_checks_that_assume_one_phase_are_not_applicable_under_drift(tmp_path):
    """Checks 2 and 4 (rolora: a factor mixes among its phase's clients only) and 3, 5
    (alternating methods: one phase per client) say n/a on a drift run; the same run read as
    synchronous (its clock_drift column dropped: the defect the n/a guards against) makes check
    2 for rolora and the descent audit 5a read `violated` for reasons the drift explains."""
    from adflora_analysis.synthetic.runner import run_study
    from adflora_analysis.theory import check_data, run_checks

    cfg = load_config(SyntheticConfig, data={
        **SMALL, "n_clients": 10, "rounds": 40, "seeds": 4, "d_in": 8, "d_out": 8,
        "switch_interval": 4, "gossip": {"clock_drift": 0.3},
        "topology": {"graph": "encounter", "weights": "metropolis", "q": 0.3}})
    run_study(cfg, tmp_path / "run", progress=False)
    st = {(r.number, r.method): r.status for r in run_checks(tmp_path / "run")}
    assert {k: st[k] for k in [("2", "rolora"), ("3", "rolora"), ("4", "rolora"),
                               ("5", "rolora"), ("3", "adf-lora"), ("5", "adf-lora")]} \
        == dict.fromkeys([("2", "rolora"), ("3", "rolora"), ("4", "rolora"), ("5", "rolora"),
                          ("3", "adf-lora"), ("5", "adf-lora")], "n/a")
    assert st[("2", "adf-lora")] == "held"          # adf-lora still mixes with the whole W^t
    data = check_data(tmp_path / "run")
    data.metrics = data.metrics.drop(columns="clock_drift")
    planted = {(r.number, r.method): r.status
               for r in run_checks(tmp_path / "run", data=data)}
    assert planted[("2", "rolora")] == "violated"
    assert planted[("5a", "rolora")] == planted[("5a", "adf-lora")] == "violated"
