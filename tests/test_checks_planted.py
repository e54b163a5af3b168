"""Proof of power: plant a defect in a tiny run (or its saved rows) and the check that guards
against it must say ``violated`` — while the same check on the clean run does not
(docs/theory.md §6 has the table)."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

from adflora_analysis.config import load_config
from adflora_analysis.synthetic.config import SyntheticConfig
from adflora_analysis.synthetic.runner import run_study
from adflora_analysis.theory import run_checks

SMALL = dict(n_clients=8, rounds=16, local_steps=2, lr=0.05, rank=2, seeds=20, d_in=5,
             d_out=4, target_rank=2, samples_per_client=12, batch_size=4, constants_every=0,
             topology_samples=4000, switch_interval=3, methods=["adf-lora", "lora"])


def small(**kw) -> SyntheticConfig:
    return load_config(SyntheticConfig, data={**SMALL, "topology": {
        "graph": "encounter", "weights": "metropolis", "q": 0.3}, **kw})


def status(results, number, method):
    got = [r.status for r in results if r.number == number and r.method == method]
    assert got, f"no check {number} for {method}"
    return got


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    run_study(small(), out, progress=False)
    return out, run_checks(out)


@pytest.fixture(scope="module")
def copy_rows(clean, tmp_path_factory):
    """A copy of the clean run directory whose rows/meta a test may edit."""
    import shutil

    def make(name: str):
        d = tmp_path_factory.mktemp(name) / "run"
        shutil.copytree(clean[0], d)
        return d
    return make


def test_clean_run_has_no_violation(clean):
    _, res = clean
    bad = [(r.number, r.method, r.note) for r in res if r.status == "violated"]
    assert not bad, bad


def test_gossip_applied_twice_fails_check_2(tmp_path, monkeypatch, clean):
    """Two gossip steps per round (independent draws: E ratio (1 - p)^2) while meta's p is
    one step's."""
    import adflora_analysis.synthetic.runner as runner

    orig = runner.mixing_schedule

    def twice(*a, **k):
        f = orig(*a, **k)
        return lambda t: f(t + 100_000) @ f(t)
    monkeypatch.setattr(runner, "mixing_schedule", twice)
    run_study(small(), tmp_path, progress=False)
    res = run_checks(tmp_path)
    assert status(res, "2", "adf-lora") == ["violated"]
    assert status(clean[1], "2", "adf-lora") == ["held"]


def test_frozen_block_left_out_of_adf_gossip_fails_check_3(tmp_path, monkeypatch, clean):
    import adflora_analysis.synthetic.runner as runner

    orig = runner.get_method

    def leaky(name):
        spec = orig(name)
        return dataclasses.replace(spec, mix="phase") if name == "adf-lora" else spec
    monkeypatch.setattr(runner, "get_method", leaky)
    run_study(small(methods=["adf-lora"]), tmp_path, progress=False)
    res = run_checks(tmp_path)
    assert "violated" in status(res, "3", "adf-lora")
    assert "violated" not in status(clean[1], "3", "adf-lora")


def test_p_reported_20_percent_too_high_fails_check_2(copy_rows):
    d = copy_rows("p_high")
    meta = json.loads((d / "meta.json").read_text())
    meta["p"] *= 1.2
    for v in meta.get("variants", {}).values():
        v["p"] *= 1.2
        v["topology"]["p"] *= 1.2
    (d / "meta.json").write_text(json.dumps(meta))
    res = run_checks(d)
    assert status(res, "2", "adf-lora") == ["violated"]
    assert status(res, "2", "lora") == ["violated"]


def test_unreported_displacement_fails_check_4(copy_rows, clean):
    d = copy_rows("no_disp")
    m = pd.read_parquet(d / "metrics.parquet")
    m["disp_A"] = 0.0
    m["disp_B"] = 0.0
    m.to_parquet(d / "metrics.parquet")
    res = run_checks(d)
    assert status(res, "4", "lora") == ["violated"]
    assert status(clean[1], "4", "lora") == ["held"]
    # the unrolled recursion (4b) is driven by the same displacement
    assert status(res, "4b", "lora") == ["violated"] and status(clean[1], "4b", "lora") == ["held"]


def test_unreported_gradient_spread_fails_check_4c(copy_rows, clean):
    """The a-priori lemma is driven by the measured spread Γ: reported as 0, it cannot hold."""
    d = copy_rows("no_gamma")
    m = pd.read_parquet(d / "metrics.parquet")
    m["gamma_A"] = 0.0
    m["gamma_B"] = 0.0
    m.to_parquet(d / "metrics.parquet")
    res = run_checks(d)
    assert status(clean[1], "4c", "lora") != ["violated"]
    assert status(res, "4c", "lora") == ["violated"]
    assert status(res, "4c", "adf-lora") == ["violated"]


def test_step_3x_above_the_curvature_limit_fails_check_5(tmp_path, clean):
    """ffa-lora trains B with A fixed at A^0: its curvature s^2 lam_max(A0 Sig A0^T) is constant,
    so lr = 3 / L puts every step 3x above the limit 1/L: the descent audit (5a, logged eta) and
    the convergence check (5, configured eta against L_hull >= L) both fail."""
    import torch

    from adflora_analysis.synthetic.problem import QuadraticProblem

    cfg = small(methods=["ffa-lora"], rounds=4)
    prob = QuadraticProblem(cfg)
    A0 = torch.stack(prob.initial_state().A, 2).double().mean(1)
    L = torch.linalg.eigvalsh(A0 @ prob.Sig_bar64 @ A0.transpose(-1, -2)).amax(-1).max()
    run_study(small(methods=["ffa-lora"], rounds=4, lr=3 / float(L)), tmp_path,
              progress=False)
    res = run_checks(tmp_path)
    five = [r for r in res if r.number == "5a" and r.method == "ffa-lora"][0]
    assert five.status == "violated" and five.details["max_eta_L_block"] == pytest.approx(3)
    assert status(res, "5", "ffa-lora") == ["violated"]
    assert status(clean[1], "5a", "adf-lora") != ["violated"]
    assert status(clean[1], "5", "adf-lora") != ["violated"]


def test_cross_term_from_mismatched_client_pairs_fails_check_6i(tmp_path, monkeypatch, clean):
    import adflora_analysis.core.metrics as metrics

    orig = metrics.cross_term
    monkeypatch.setattr(metrics, "cross_term", lambda A, B: orig(A.roll(1, dims=-3), B))
    run_study(small(methods=["lora"]), tmp_path, progress=False)
    res = run_checks(tmp_path)
    assert status(res, "6i", "lora") == ["violated"]
    six = [r for r in res if r.number == "6i" and r.method == "lora"][0]
    assert "pairs the wrong factors" in six.note and "before gossip" not in six.note
    assert status(clean[1], "6i", "lora") == ["held"]


def test_cross_term_computed_before_gossip_is_diagnosed_as_such(tmp_path, monkeypatch, clean):
    """C taken on the state after the local update (before gossip) and logged with the
    gossiped Xi: 6i is violated and its note names the cause, not a wrong pairing."""
    import adflora_analysis.core.loop as loop
    from adflora_analysis.core.metrics import layer_metrics

    orig = loop.round_metrics
    pre: dict = {}

    def planted(state, backend=None, full=True):
        if not full:                                   # the pre-gossip call
            pre["C"] = layer_metrics(state)["cross_term"]
            return orig(state, backend, full=False)
        return {**orig(state, backend), "cross_term": pre["C"]}

    monkeypatch.setattr(loop, "round_metrics", planted)
    run_study(small(methods=["lora"]), tmp_path, progress=False)
    res = run_checks(tmp_path)
    six = [r for r in res if r.number == "6i" and r.method == "lora"][0]
    assert six.status == "violated", six.note
    assert "computed before gossip" in six.note and "wrong factors" not in six.note
    assert six.details["computed_before_gossip"] is True


def test_cross_term_ratio_of_a_shared_factor_is_not_0_over_0(tmp_path):
    """ffa-lora's A is shared (Xi_A round-off of zero): 6i's ratio is undefined (inf, shown
    as -), never round-off ÷ round-off (it printed 3.2e14)."""
    import math

    from adflora_analysis.theory import format_results

    run = tmp_path / "ffa"
    run_study(small(methods=["ffa-lora", "lora"], rounds=6), run, progress=False)
    res = run_checks(run)
    ffa = [r for r in res if r.number == "6i" and r.method == "ffa-lora"][0]
    assert ffa.status == "held" and ffa.ratio == math.inf, (ffa.ratio, ffa.note)
    assert "ratio n/a" in ffa.note and ffa.details["ratio_points"] == 0
    assert "e+" not in format_results([ffa])            # the ratio column reads "-"
    lora = [r for r in res if r.number == "6i" and r.method == "lora"][0]
    assert 1 <= lora.ratio < 100 and lora.details["ratio_points"] > 0


def test_adf_cross_term_above_lora_fails_check_6d(copy_rows, clean):
    """ADF-LoRA's claimed advantage: with the two methods' rows swapped, ADF's time-averaged C
    is lora's, above lora's (now ADF's) — 6d must say so."""
    d = copy_rows("swap")
    m = pd.read_parquet(d / "metrics.parquet")
    m["method"] = m["method"].map({"adf-lora": "lora", "lora": "adf-lora"})
    m.to_parquet(d / "metrics.parquet")
    assert status(clean[1], "6d", "adf-lora") == ["held"]
    assert status(run_checks(d), "6d", "adf-lora") == ["violated"]


def test_cross_term_100x_too_large_fails_checks_6a_and_6b(copy_rows):
    """A cross term far above its unrolled bound (6a) and its constant-step floor (6b)."""
    d = copy_rows("c_big")
    m = pd.read_parquet(d / "metrics.parquet")
    m["cross_term"] *= 100
    m.to_parquet(d / "metrics.parquet")
    res = run_checks(d)
    for method in ("adf-lora", "lora"):
        assert status(res, "6a", method) == ["violated"]
        assert status(res, "6b", method) == ["violated"]


def test_complete_graph_p_1_check_2_is_exact_and_can_fail(tmp_path):
    """W^t = J (p = 1): Ξ after gossip is round-off, so check 2 holds (it used to read
    `violated`: round-off ÷ a bound of exactly 0); rows where gossip did not average fail."""
    from adflora_analysis.theory import check_data

    cfg = load_config(SyntheticConfig, data={**SMALL, "seeds": 4, "rounds": 6,
                                             "methods": ["lora"],
                                             "topology": {"graph": "complete"}})
    run_study(cfg, tmp_path / "run", progress=False)
    assert status(run_checks(tmp_path / "run"), "2", "lora") == ["held"]
    data = check_data(tmp_path / "run")
    data.metrics["xi_A"] = data.metrics["xi_A_local"] * 0.5          # gossip half-averaged
    assert status(run_checks(tmp_path / "run", data=data), "2", "lora") == ["violated"]


def test_check_2_with_two_seeds_does_not_trust_a_one_degree_of_freedom_spread():
    """Two seeds whose per-seed ratios agree by construction (the seeds' spread is ~0) while
    each round's Ξ(WX)/Ξ(X) scatters ±20 % around 1 − p: a 0.3 % offset is not evidence (the
    rounds' martingale spread says so: underpowered), a 60 % one still reads violated."""
    from types import SimpleNamespace

    import numpy as np

    from adflora_analysis.theory.gossip import check_gossip

    rng = np.random.default_rng(0)
    R, p = 30, 0.5
    before = np.tile(rng.uniform(1.0, 2.0, R), (2, 1))
    noise = np.tile(rng.uniform(-0.2, 0.2, R), (2, 1))

    def verdict(offset: float) -> str:
        after = (1 - p) * before * (1 + noise) * (1 + offset)
        cols = {"xi_A_local": before, "xi_A": after, "xi_B_local": 0 * before,
                "xi_B": 0 * before}
        run = SimpleNamespace(S=2, R=R, rounds=np.arange(R), mixed=[{"A"}] * R,
                              mat=lambda c: cols[c])
        ctx = SimpleNamespace(run=run, p=p, p_se=0.0, rho=None, rho_se=None, exchangeable=True,
                              z=3.0, effect=0.2, method="adf-lora", variant="base")
        r = check_gossip(ctx)
        assert r.details["stderr_rounds"] > 100 * r.details["stderr_seeds"]
        assert r.threshold < 4           # the rounds' degrees of freedom, not t with one
        return r.status

    assert verdict(0.003) == "underpowered"
    assert verdict(0.6) == "violated"
