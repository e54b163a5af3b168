"""Audits from the states (issue 20 item 1, core/audit.py, theory/audits.py): clean runs audit
clean, planted deviations at the problem's and the mixer's interface are measured with the
right size, stale gossip and AdamW say n/a, sparse W and clock drift are audited too, and a
GLUE run gets the frozen, gossip and bytes audits."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from adflora_analysis.config import load_config
from adflora_analysis.core.audit import RoundAudit, off_diagonal_nonzeros
from adflora_analysis.core.mixers import synchronous
from adflora_analysis.core.state import LoraState
from adflora_analysis.synthetic import mutations as mut
from adflora_analysis.synthetic.config import SyntheticConfig
from adflora_analysis.synthetic.runner import study_rows

SMALL = dict(n_clients=6, rounds=6, seeds=2, methods=["adf-lora", "ffa-lora"], d_in=6, d_out=6,
             rank=2, target_rank=2, local_steps=3, switch_interval=2, batch_size=8,
             samples_per_client=16, topology={"graph": "encounter", "q": 0.5})


def rows(**kw):
    data = {**SMALL, **kw}
    df = study_rows(load_config(SyntheticConfig, data=data))
    return df[df.layer == "all"]


@pytest.mark.parametrize("noise", ["minibatch", "additive", "none"])
def test_clean_runs_audit_clean(noise):
    a = rows(noise_kind=noise)
    assert (a.audit_step_err <= 1e-12).all()          # float64 replay by autograd
    assert np.allclose(a.audit_step_scale, 1, atol=1e-12)
    assert (a.audit_frozen_move == 0).all()
    assert (a.audit_gossip_over == 0).all() and (a.audit_gossip_err < 1e-10).all()
    assert (a.audit_bytes == a.bytes_sent).all()
    # adf-lora's rounds freeze a factor, so the frozen audit is not vacuous
    assert set(a[a.method == "adf-lora"].trained) == {"A", "B"}


def test_float32_run_audits_within_its_tolerance():
    from adflora_analysis.theory.audits import STEP_TOL

    a = rows(dtype="float32")
    eps = float(a.audit_eps.iloc[0])
    assert eps == pytest.approx(torch.finfo(torch.float32).eps)
    assert (a.audit_step_err <= STEP_TOL * 3 * eps).all()
    assert (a.audit_step_err > 0).any()     # float32 steps against a float64 replay
    assert (a.audit_gossip_over == 0).all()


@pytest.mark.parametrize("c", [0.95, 1.5])
def test_scaled_step_is_measured(c):
    with mut.step_scaled(c):
        a = rows(noise_kind="minibatch")
    assert np.allclose(a.audit_step_scale, c, rtol=1e-9)
    assert np.allclose(a.audit_step_err, abs(c - 1), rtol=1e-9)


def test_frozen_block_trained_is_seen_only_by_the_frozen_audit():
    with mut.frozen_trained(0.02):
        a = rows()
    adf = a[(a.method == "adf-lora") & (a["round"] > 0)]   # round 0: B = 0, so grad_A = 0
    assert (adf.audit_frozen_move > 0).all()
    assert (adf.audit_step_err <= 1e-12).all()       # the trained block steps correctly


def test_gossip_deviations_are_measured():
    with mut.gossip_twice():
        a = rows()
    assert (a.audit_gossip_over > 0).any() and (a.audit_gossip_err > 0.01).any()
    with mut.bytes_undercount(0.5):
        b = rows()
    assert np.allclose(b.bytes_sent, 0.5 * b.audit_bytes) and (b.audit_gossip_over == 0).all()


def ctx_of(a, method="adf-lora", **kw):
    from adflora_analysis.theory.data import Context, RunData, Series

    d = a[a.method == method]
    s = Series(d)
    return Context(s, RunData(d, {}, None, None), {"local_steps": SMALL["local_steps"]}, method,
                   "base", {method: s}, **kw)


def test_stale_gossip_has_no_gossip_audit_and_the_check_says_why():
    from adflora_analysis.theory.audits import check_bytes_audit, check_gossip_audit

    a = rows(gossip={"staleness": 1})
    assert "audit_gossip_err" not in a or a.audit_gossip_err.isna().all()
    assert (a.audit_frozen_move == 0).all() and (a.audit_step_err <= 1e-12).all()
    for check in (check_gossip_audit, check_bytes_audit):
        r = check(ctx_of(a))
        # called directly (the registry answers first, by the declared premise: below)
        assert r.status == "n/a" and "mixer declares no" in r.note, r.note


def test_checks_verdicts_and_causes_on_planted_rows():
    from adflora_analysis.theory.audits import (
        check_bytes_audit,
        check_frozen_audit,
        check_gossip_audit,
        check_step_audit,
    )

    clean = rows()
    for check in (check_step_audit, check_frozen_audit, check_gossip_audit, check_bytes_audit):
        assert check(ctx_of(clean)).status == "held"
    with mut.step_scaled(1.5):
        r = check_step_audit(ctx_of(rows()))
    assert r.status == "violated" and "1.5 × the replayed SGD step" in r.note
    with mut.previous_gradient():
        r = check_step_audit(ctx_of(rows()))
    assert r.status == "violated" and "previous step's gradient" in r.note
    with mut.swapped_data():
        r = check_step_audit(ctx_of(rows(rounds=12, n_clients=10)))
    assert r.status == "violated" and "another client's data" in r.note
    with mut.client_left_out():
        r = check_gossip_audit(ctx_of(rows()))
    assert r.status == "violated" and "a client left out" in r.note
    gl = clean.drop(columns=[c for c in clean if c.startswith("audit_step")])
    r = check_step_audit(ctx_of(gl, kind="glue"))
    assert r.status == "n/a" and r.note.startswith("AdamW steps")
    old = clean.drop(columns=[c for c in clean if c.startswith("audit_")])
    assert {c(ctx_of(old)).status for c in (check_step_audit, check_frozen_audit,
                                            check_gossip_audit, check_bytes_audit)} == {"n/a"}


def test_sparse_w_and_server_bytes():
    from adflora_analysis.core.sparse import SparseMix
    from adflora_analysis.topology.sparse import SparseW

    g = torch.Generator().manual_seed(0)
    n = 5
    ring = 0.5 * torch.eye(n) + 0.25 * (torch.eye(n).roll(1, 0) + torch.eye(n).roll(-1, 0))
    W = SparseMix.from_sparse_w(SparseW.from_dense(ring[None].numpy()), (1,))
    st = LoraState([torch.randn(1, n, 2, 3, generator=g, dtype=torch.float64)],
                   [torch.randn(1, n, 3, 2, generator=g, dtype=torch.float64)])
    assert int(off_diagonal_nonzeros(W)) == int(off_diagonal_nonzeros(ring)) == 2 * n
    m = synchronous()
    au = RoundAudit(None, t=3)
    au.before_gossip(st, ("A", "B"), None)
    st, _, sent = m.mix({}, st, ("A", "B"), W, 3)
    out = au.after_gossip(st, W, sent, m.name)
    assert float(out["audit_gossip_over"]) == 0 and float(out["audit_bytes"]) == float(sent)
    au = RoundAudit(None, t=4)
    au.before_gossip(st, ("A",), None)
    st, _, sent = m.mix({}, st, ("A",), ring[None].double(), 4, server=True)
    out = au.after_gossip(st, ring[None].double(), sent, m.name, server=True)
    assert float(out["audit_bytes"]) == float(sent) == 2 * n * 6 * 8


def test_clock_drift_rounds_are_audited():
    a = rows(methods=["adf-lora"], gossip={"clock_drift": 0.3}, rounds=8)
    assert (a.phase_frac_A.between(0, 1)).all() and ((a.phase_frac_A % 1) != 0).any()
    assert (a.audit_frozen_move == 0).all() and (a.audit_step_err <= 1e-12).all()
    assert (a.audit_gossip_over == 0).all() and (a.audit_bytes == a.bytes_sent).all()


def test_glue_run_is_audited_and_step_audit_says_adamw(tiny, tmp_path):
    from adflora_analysis.glue.runner import run_glue
    from adflora_analysis.theory import run_checks

    cfg = dict(task="rotten_tomatoes", model=str(tiny), n_clients=4, rounds=2, local_steps=1,
               batch_size=8, max_length=32, max_train_examples=120, max_eval_examples=16,
               eval_every=2, lr=5e-3, methods=["adf-lora"], switch_interval=2, threads=1)
    from adflora_analysis.glue.config import GlueConfig

    run_glue(load_config(GlueConfig, data=cfg), tmp_path / "run")
    import pandas as pd

    m = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    a = m[m.layer == "all"]
    assert "audit_step_err" not in a
    assert (a.audit_frozen_move == 0).all() and (a.audit_gossip_over == 0).all()
    assert (a.audit_bytes == a.bytes_sent).all()
    res = {r.check: r for r in run_checks(tmp_path / "run", entry_points=False)
           if r.check.endswith("-audit")}
    assert res["step-audit"].status == "n/a" and "AdamW steps" in res["step-audit"].note
    assert {res[c].status for c in ("frozen-audit", "gossip-audit", "bytes-audit")} == {"held"}


def test_step_tolerance_scales_with_the_state_to_step_ratio():
    """A1's tolerance is STEP_TOL K ε κ per round, κ = ||X_before|| / ||Δ_replay||: a relative
    error of 8e-7 at κ = 1e9 (a step near a stationary point, round-off of the state) holds;
    the same error at κ = 1 does not, and a step 0.95 x η·g is caught even when late rounds sit
    at a stationary point."""
    from adflora_analysis.theory.audits import STEP_TOL, check_step_audit

    clean = rows()
    assert (clean.audit_step_cond >= 0).all() and (clean.audit_step_cond > 1).any()
    a = clean.copy()
    late = a["round"] == a["round"].max()
    a.loc[late, "audit_step_err"] = 8e-7
    a.loc[late, "audit_step_cond"] = 1e9
    r = check_step_audit(ctx_of(a))
    assert r.status == "held", r.note
    assert r.bound == pytest.approx(STEP_TOL * SMALL["local_steps"] * 2.22e-16 * 1e9, rel=0.01)
    a.loc[late, "audit_step_cond"] = 1.0
    assert check_step_audit(ctx_of(a)).status == "violated"
    with mut.step_scaled(0.95):
        b = rows()
    b.loc[b["round"] == b["round"].max(), "audit_step_cond"] = 1e12
    r = check_step_audit(ctx_of(b))
    assert r.status == "violated" and "0.95 × the replayed SGD step" in r.note, r.note


def test_gossip_and_bytes_audits_declare_synchronous_gossip(tmp_path):
    """A3/A4 rest on the declared premise: under stale gossip the registry answers for them
    (``n/a (stale gossip: ...)``, as for checks 2-6), never the audits' own fallback."""
    from adflora_analysis.synthetic.runner import run_study
    from adflora_analysis.theory import REGISTRY, run_checks

    assert REGISTRY["gossip-audit"].requires == REGISTRY["bytes-audit"].requires == (
        "synchronous-gossip",)
    cfg = load_config(SyntheticConfig, data=dict(
        n_clients=4, rounds=6, local_steps=2, rank=2, seeds=2, d_in=5, d_out=4, target_rank=2,
        samples_per_client=12, batch_size=4, constants_every=0, topology_samples=500,
        methods=["adf-lora"], gossip={"staleness": 1}))
    run_study(cfg, tmp_path / "run", progress=False)
    res = {r.check: r for r in run_checks(tmp_path / "run", entry_points=False)}
    for c in ("gossip-audit", "bytes-audit"):
        assert res[c].status == "n/a" and res[c].note.startswith("stale gossip"), res[c].note
        assert res[c].details["premise"] == "synchronous-gossip"
    assert res["frozen-audit"].status == "held"
