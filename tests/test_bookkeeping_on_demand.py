"""Bookkeeping on demand (issue 25 item 1): config ``checks`` and ``measure_every``.

A run computes only the columns its checks read; the scheduled (expensive) ones on measured
rounds only, NaN on the others, with a ``measured`` column. The method itself never depends on
the bookkeeping: the factors, the loss and the loop's consensus metrics are the same numbers
whatever is measured. Bad values are one AdfloraError each."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from adflora_analysis.config import load_config
from adflora_analysis.core import get_method, mixing_schedule, run_rounds
from adflora_analysis.core.displacement import DisplacementStats
from adflora_analysis.errors import AdfloraError
from adflora_analysis.synthetic.bookkeeping import SCHEDULED, Columns, columns_for
from adflora_analysis.synthetic.config import SyntheticConfig
from adflora_analysis.synthetic.problem import QuadraticProblem
from adflora_analysis.theory import columns_needed
from adflora_analysis.topology import build_sampler

BASE = {"n_clients": 8, "rounds": 6, "local_steps": 3, "lr": 0.05, "rank": 2, "seeds": 2,
        "methods": ["adf-lora"], "d_in": 6, "d_out": 5, "switch_interval": 2,
        "samples_per_client": 12, "batch_size": 4, "constants_every": 0,
        "topology_samples": 200, "topology": {"graph": "ring"}}


def cfg_of(**kw) -> SyntheticConfig:
    return load_config(SyntheticConfig, data={**BASE, **kw})


def run(cfg: SyntheticConfig, method: str = "adf-lora"):
    """Every round's (state, layer metrics, scalars) of one job, in memory."""
    prob = QuadraticProblem(cfg)
    sampler = build_sampler(cfg.topology, cfg.n_clients, seed=cfg.seed_list[0])
    mixing = mixing_schedule(sampler, cfg.seed_list, dtype=prob.dtype)
    res = list(run_rounds(prob, get_method(method), prob.initial_state(), mixing,
                          rounds=cfg.rounds, switch_interval=cfg.switch_interval))
    return res


@pytest.fixture(scope="module")
def full():
    return run(cfg_of())


@pytest.mark.parametrize("storage", ["statistics", "rows"])
def test_checks_none_is_the_method_alone(storage, full):
    ref = full if storage == "statistics" else run(cfg_of(client_storage=storage))
    none = run(cfg_of(checks="none", client_storage=storage))
    for a, b in zip(ref, none, strict=True):
        # the method is untouched: the same factors, bit for bit
        assert all(torch.equal(x, y) for x, y in zip(a.state.A + a.state.B,
                                                      b.state.A + b.state.B, strict=True))
        assert not (set(b.scalar) & set(SCHEDULED)), sorted(set(b.scalar) & set(SCHEDULED))
        assert {"loss", "loss_gap", "eta", "grad_norm_sq", "f_inf_B"} <= set(b.scalar)
        assert "L_hull" not in b.scalar and "measured" not in b.scalar
        # the loss at the averaged model: the same value, without the float64 copy of the
        # clients' factors (agrees to round-off)
        torch.testing.assert_close(b.scalar["loss"], a.scalar["loss"], rtol=1e-12, atol=0)
        # the loop's consensus errors after gossip: the same numbers (the loop's metrics pass
        # without the cross term)
        for col in ("xi_A", "xi_B"):
            torch.testing.assert_close(b.layer[col], a.layer[col], rtol=1e-12, atol=0)
        # the loop computes nothing no check reads: no audits, no cross term or product
        # consensus, no Ξ(Δ), no consensus before gossip (a fixed switching interval)
        assert set(b.layer) == {"xi_A", "xi_B"}, sorted(b.layer)
        assert {"cross_term", "disp_A", "disp_B", "xi_A_local"} <= set(a.layer)
        assert not [c for c in b.scalar if c.startswith("audit_")]
        assert {"audit_eps", "audit_frozen_move", "audit_gossip_err"} <= set(a.scalar)


def test_measure_every_thins_the_scheduled_columns(full):
    k = 3
    thin = run(cfg_of(measure_every=k))
    for a, b in zip(full, thin, strict=True):
        assert set(b.scalar) == set(a.scalar) | {"measured"}
        on = a.t % k == 0
        assert b.scalar["measured"].tolist() == [float(on)] * 2
        for col in a.scalar:
            if col in SCHEDULED:
                if on:   # a measured round: the numbers of the full run
                    assert torch.equal(a.scalar[col], b.scalar[col]), (a.t, col)
                else:
                    assert torch.isnan(b.scalar[col]).all(), (a.t, col)
            else:        # every round
                assert torch.equal(a.scalar[col], b.scalar[col]), (a.t, col)
        for col in ("disp_A", "disp_B"):
            if on or col[-1] not in b.trained:
                assert torch.equal(a.layer[col], b.layer[col])
            else:
                assert torch.isnan(b.layer[col]).all()
        assert torch.equal(a.state.B[0], b.state.B[0])


def test_a_selection_computes_what_its_checks_read(full):
    sel = ["consensus"]
    need = columns_needed(sel)
    part = run(cfg_of(checks=sel))
    for a, b in zip(full, part, strict=True):
        sched = {c for c in b.scalar if c in SCHEDULED}
        assert sched == {c for c in SCHEDULED if c in need and c in a.scalar}
        assert "gamma_A" in sched and "sn_drift" not in sched and "zeta_sq" not in sched
        for col in sched:
            assert torch.equal(a.scalar[col], b.scalar[col])
        assert torch.equal(a.layer["disp_B"], b.layer["disp_B"])


def test_checks_none_keeps_the_loop_metrics_a_schedule_reads():
    """A schedule without a fixed interval (feedback) reads xi before and after gossip: with the
    checks off the loop still computes them."""
    from adflora_analysis.core.schedules import feedback

    cfg = cfg_of(checks="none")
    prob = QuadraticProblem(cfg)
    mixing = mixing_schedule(build_sampler(cfg.topology, cfg.n_clients, seed=0), cfg.seed_list,
                             dtype=prob.dtype)
    res = list(run_rounds(prob, get_method("adf-lora"), prob.initial_state(), mixing,
                          rounds=3, schedule=feedback(0.1)))
    assert {"xi_A_local", "xi_B_local", "xi_A", "xi_B"} <= set(res[-1].layer)
    assert "cross_term" not in res[-1].layer


def test_checks_none_still_stops_at_a_non_finite_state():
    """One finiteness check a round with the checks off (after gossip, which spreads a NaN)."""
    from adflora_analysis.errors import DivergenceError

    cfg = cfg_of(checks="none", lr=1e6, rounds=20)
    with pytest.raises(DivergenceError, match="after gossip"):
        run(cfg)


def test_default_columns_and_rows_unchanged(full):
    """checks = "all", measure_every = 1 is the default: every column, no ``measured``."""
    cfg = cfg_of()
    assert (cfg.checks, cfg.measure_every) == ("all", 1)
    assert Columns.of(cfg) == Columns(None, 1)
    assert "measured" not in full[0].scalar
    assert {"sn_drift", "zeta_sq", "cross_term_direct", "xi_inner", "L_hull"} <= set(
        full[0].scalar)


def test_thinned_rows_through_the_runner():
    from adflora_analysis.synthetic.runner import study_rows

    df = study_rows(cfg_of(measure_every=2, rounds=4, seeds=1))
    allrows = df[df.layer == "all"].sort_values("round")
    assert allrows["measured"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert allrows["sn_drift"].isna().tolist() == [False, True, False, True]
    assert allrows["loss"].notna().all()


@pytest.mark.parametrize("kw, match", [
    ({"measure_every": 0}, "measure_every = 0 must lie in"),
    ({"measure_every": 7}, r"measure_every = 7 must lie in \[1, rounds = 6\]"),
    ({"measure_every": -2}, "measure_every = -2"),
    ({"checks": ["gossip-contractoin"]}, "unknown check 'gossip-contractoin'"),
    ({"checks": "some"}, "must be \"all\", \"none\" or a list"),
])
def test_bad_values_are_one_error(kw, match):
    with pytest.raises(AdfloraError, match=match) as e:
        cfg_of(**kw)
    if "checks" in kw and isinstance(kw["checks"], list):
        assert "did you mean 'gossip-contraction'" in e.value.hint


def test_bad_value_on_the_command_line(tmp_path, capsys):
    from adflora_analysis.cli import main

    p = tmp_path / "s.toml"
    p.write_text('n_clients = 4\nrounds = 3\nmeasure_every = 5\nmethods = ["adf-lora"]\n'
                 'seeds = 1\n')
    with pytest.raises(SystemExit) as e:
        main(["synthetic", "run", str(p), "--out", str(tmp_path / "r")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: measure_every = 5"), err


def test_columns_helpers():
    assert columns_for("all") is None and columns_for("none") == frozenset()
    assert columns_for(["stationarity"]) == columns_needed(["stationarity"])
    c = Columns(frozenset({"zeta_sq"}), every=4)
    assert [c.measured(t) for t in range(5)] == [True, False, False, False, True]
    assert c.wants("zeta_sq", "x") and not c.wants("x")


def test_skipped_displacement_is_nan_and_counted():
    d = DisplacementStats()
    d.skip("A", 0, 3)
    d.add("A", 0, torch.ones(2, 5, 1, 1))     # a later report cannot make it measured
    assert d.count("A", 0) == 8
    assert torch.isnan(d.consensus("A", 1, batch_shape=(2,))).all()
    d.add("B", 0, torch.ones(2, 5, 1, 1))
    assert float(d.consensus("B", 1, batch_shape=(2,))[0, 0]) == 0.0
    assert math.isnan(float(d.consensus("A", 1, batch_shape=(2,))[0, 0]))


def test_rows_frame_keeps_nan(full):
    """NaN is what an unmeasured cell holds in the rows; pandas keeps it as NaN."""
    s = pd.Series([np.nan, 1.0])
    assert s.isna().tolist() == [True, False]


def test_float32_bookkeeping_agrees_with_float64():
    """From 1,024 clients a float32 run's bookkeeping passes run in float32 with float64 sums
    (``exact_bookkeeping`` off); every column agrees with the float64 passes to 1e-5 of the
    column's scale (measured at d = 64, n = 4,096: <= 2.4e-7, benchmarks/synthetic.py). The
    float32 pass also gives the step's minibatch gradient (the m rows weighted by how often the
    minibatch drew them), so the factors agree to float32 rounding (1e-6)."""
    cfg = cfg_of(n_clients=1100, dtype="float32", client_storage="rows", rounds=3, seeds=1,
                 topology={"graph": "encounter", "q": 0.005})
    out = {}
    for exact in (True, False):
        prob = QuadraticProblem(cfg)
        assert not prob.exact_bookkeeping     # the default at this size and dtype
        prob.exact_bookkeeping = exact
        sampler = build_sampler(cfg.topology, cfg.n_clients, seed=0)
        mixing = mixing_schedule(sampler, cfg.seed_list, dtype=prob.dtype)
        out[exact] = [(r.scalar, [x.clone() for x in r.state.A + r.state.B])
                      for r in run_rounds(prob, get_method("adf-lora"), prob.initial_state(),
                                          mixing, rounds=cfg.rounds, switch_interval=2)]
    checked = set()
    for (a, sa), (b, sb) in zip(out[True], out[False], strict=True):
        for x, y in zip(sa, sb, strict=True):
            assert float((x - y).abs().max()) <= 1e-6 * float(x.abs().max())
        for k in (k for k in a if k in SCHEDULED or k in ("loss", "L_hull")):
            scale = float(a[k].abs().max())
            assert float((a[k] - b[k]).abs().max()) <= 1e-5 * scale, k
            checked.add(k)
    assert {"sn_drift", "sn_curv_right", "zeta_sq", "sigma_sq_max", "local_loss"} <= checked
    assert QuadraticProblem(cfg_of(n_clients=1100, rounds=2)).exact_bookkeeping   # float64


def test_checking_a_run_made_with_checks_none_is_one_error_line(tmp_path, capsys):
    """``checks = "none"`` then ``adflora synthetic check``: exit 2, one line naming the
    missing columns and how to get them; a run naming one check is checked (the others n/a)."""
    from adflora_analysis.cli import main
    from adflora_analysis.synthetic.runner import run_study

    def check(out) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as e:
            main(["synthetic", "check", str(out), "--no-save"])
        got = capsys.readouterr()
        return e.value.code, got.out, got.err

    out = tmp_path / "none"
    run_study(cfg_of(checks="none"), out, progress=False)
    code, _, err = check(out)
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert 'checks = "none"' in lines[0] and "missing" in lines[0] and "xi_A_local" in lines[0]
    assert '(hint: re-run the study with checks = "all"' in lines[0]
    one = tmp_path / "one"
    run_study(cfg_of(checks=["gossip-contraction"]), one, progress=False)
    code, out_, err = check(one)
    assert code == 0, err
    row = next(ln for ln in out_.splitlines() if "gossip-contraction" in ln)
    assert " n/a " not in row                     # the check it asked for is judged


def test_a_thinned_run_finishes_and_its_checks_see_the_thinning(tmp_path):
    """``measure_every = 2`` through the run driver: the run is done (NaN in a column the
    problem skipped is not divergence), and a check that reads a thinned column is n/a naming
    it, while one that reads every round's columns is judged."""
    from adflora_analysis.rundir import load_run
    from adflora_analysis.synthetic.runner import run_study
    from adflora_analysis.theory import run_checks

    out = tmp_path / "thin"
    run_study(cfg_of(measure_every=2, rounds=8, seeds=3), out, progress=False)
    assert load_run(out).status == "done"
    res = {(r.number, r.check): r for r in run_checks(out, entry_points=False)}
    stat = next(r for (no, _), r in res.items() if no == "5")
    assert stat.status == "n/a" and "measure_every" in stat.note, stat.note
    gossip = next(r for (no, _), r in res.items() if no == "2")
    assert gossip.status != "n/a", gossip.note


def test_a_nan_the_problem_did_not_skip_still_stops_a_thinned_run(tmp_path, monkeypatch):
    """Planted: on a round not measured (measure_every = 2), a NaN loss — a column computed
    every round — is divergence, not a skipped column: the run stops at that round and no
    non-finite row is kept."""
    from adflora_analysis.rundir import load_run
    from adflora_analysis.synthetic.runner import run_study

    real = QuadraticProblem.evaluate

    def evaluate(self, state, t):
        out = real(self, state, t)
        if t == 3:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(QuadraticProblem, "evaluate", evaluate)
    out = tmp_path / "thin-nan"
    from adflora_analysis.errors import DivergenceError

    with pytest.raises(DivergenceError, match="non-finite loss = nan at round 3"):
        run_study(cfg_of(measure_every=2, rounds=8, seeds=2), out, progress=False)
    run = load_run(out)
    assert run.status == "diverged" and "loss" in run.meta["error"], run.meta
    rows = run.table("metrics")
    tot = rows[rows["layer"] == "all"]                 # per-layer rows carry no loss
    assert rows["round"].max() == 2 and len(tot) and tot["loss"].notna().all()
