"""Adaptive switching schedules and stale / partial gossip (issue 12): the schedules' decisions,
the mixer's update against its formula, masked training, bad input, exact resume."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from adflora_analysis.config import load_config
from adflora_analysis.core.loop import RoundResult
from adflora_analysis.core.mixers import active_clients, asynchronous, participating
from adflora_analysis.core.schedules import feedback, interval_for_rate, topology_aware
from adflora_analysis.core.state import LoraState
from adflora_analysis.errors import AdfloraError
from adflora_analysis.synthetic.config import SyntheticConfig

SMALL = {"n_clients": 5, "rounds": 8, "seeds": 2, "d_in": 4, "d_out": 4,
         "methods": ["adf-lora", "rolora"]}


# ---------------------------------------------------------------- schedules
def test_topology_interval_is_the_smallest_contracting_T():
    for p in (0.03, 0.1, 0.37, 0.9):
        for eps in (0.5, 0.1, 0.01):
            T = interval_for_rate(p, eps)
            assert (1 - p) ** T <= eps + 1e-12
            assert T == 1 or (1 - p) ** (T - 1) > eps
    assert topology_aware(1.0, 0.1).interval == 1
    with pytest.raises(AdfloraError, match="never switch"):
        topology_aware(0.0, 0.1)


def _result(t: int, xi_frozen: float, xi_start: float, loss: float, phase: str) -> RoundResult:
    frozen = "A" if phase == "B" else "B"
    layer = {f"xi_{frozen}": torch.tensor([[xi_frozen]]),
             f"xi_{frozen}_local": torch.tensor([[xi_start]])}
    return RoundResult(t, None, (phase,), ("A", "B"), None, layer,
                       {"loss": torch.tensor([loss])}, phase)


def _drive(s, xi0: float, rate: float, loss_fn, rounds: int) -> str:
    st, out, start_xi = s.init(), "", xi0
    for t in range(rounds):
        ph = s.phase(st, t)
        out += ph
        k = t - st["start"] + 1
        st = s.update(st, _result(t, start_xi * rate ** k, start_xi, loss_fn(t), ph))
    return out


def test_feedback_switches_when_the_frozen_block_has_contracted():
    s = feedback(eps=0.1, t_min=1, t_max=50, stall=0.0)
    # Xi falls by 0.5 a round: 0.5^4 = 0.0625 <= 0.1 < 0.5^3, so phases of 4 rounds
    assert _drive(s, 1.0, 0.5, lambda t: 1.0, 12) == "BBBBAAAABBBB"
    # planted defect: a frozen block that does not contract -> only t_max switches it
    s = feedback(eps=0.1, t_min=1, t_max=5, stall=0.0)
    assert _drive(s, 1.0, 1.0, lambda t: 1.0, 10) == "BBBBBAAAAA"
    # t_min holds the phase even when Xi is already tiny
    s = feedback(eps=0.1, t_min=3, t_max=9, stall=0.0)
    assert _drive(s, 1.0, 1e-3, lambda t: 1.0, 6) == "BBBAAA"


def test_feedback_switches_when_progress_stalls():
    s = feedback(eps=0.01, t_min=1, t_max=50, stall=0.5)
    # loss falls fast for 3 rounds, then flat: stall detected in the 4th round of the phase
    loss = [10, 5, 2.5, 2.4, 2.4, 2.4]
    got = _drive(s, 1.0, 1.0, lambda t: loss[min(t, 5)], 6)
    assert got.startswith("BBBBA") or got.startswith("BBBA"), got
    s = feedback(eps=0.01, t_min=1, t_max=50, stall=0.0)   # disabled: no switch
    assert _drive(s, 1.0, 1.0, lambda t: loss[min(t, 5)], 6) == "BBBBBB"


def test_bad_schedule_and_gossip_keys_are_one_line_errors():
    for bad, msg in (({"gossip": {"staleness": -1}}, "staleness"),
                     ({"gossip": {"participation": 0.0}}, "participation"),
                     ({"gossip": {"participation": 1.5}}, "participation"),
                     ({"switch_min": 5, "switch_max": 3}, "switch_min"),
                     ({"gossip": {"staleness": 8}}, "not smaller than rounds"),
                     ({"switch_schedule": "feedback", "switch_min": 8}, "never switch"),
                     ({"switch_eps": 1.0}, "switch_eps")):
        with pytest.raises(AdfloraError, match=msg):
            load_config(SyntheticConfig, data={**SMALL, **bad})


def test_cli_refuses_a_never_switching_topology_schedule_and_writes_nothing(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('n_clients = 4\nrounds = 3\nd_in = 4\nd_out = 4\nmethods = ["adf-lora"]\n'
                   'switch_schedule = "topology"\nswitch_eps = 0.001\n'
                   '[topology]\ngraph = "ring"\n')
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "adflora_analysis", "synthetic", "run", str(cfg),
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "never switch" in r.stderr
    assert not out.exists() or not any(out.iterdir())


# ---------------------------------------------------------------- mixers
def _state(S: int, n: int, seed: int = 0) -> LoraState:
    g = torch.Generator().manual_seed(seed)
    return LoraState([torch.randn(S, n, 2, 3, generator=g, dtype=torch.float64)],
                     [torch.randn(S, n, 3, 2, generator=g, dtype=torch.float64)], ["l0"])


def _W(S: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    M = torch.rand(S, n, n, generator=g, dtype=torch.float64)
    M = (M + M.transpose(-1, -2)) / (2 * n)
    return M + torch.diag_embed(1 - M.sum(-1))       # symmetric, doubly stochastic


def test_stale_mixer_matches_its_formula_over_rounds():
    S, n, tau = 2, 5, 2
    st = _state(S, n)
    m = asynchronous(staleness=tau)
    carry = m.init(st)
    pre = [st.A[0].clone()] * tau            # the blocks before round 0 stand in for t < 0
    for t in range(6):
        st.A[0].add_(0.1 * (t + 1))         # a "local update"
        cur = st.A[0].clone()
        W = _W(S, n, t)
        D = W.diagonal(dim1=-2, dim2=-1)
        off = W - torch.diag_embed(D)
        want = D[..., None, None] * cur + torch.einsum("sij,sjab->siab", off, pre[-tau])
        st, carry, sent = m.mix(carry, st, ("A",), W, t)
        assert torch.allclose(st.A[0], want, atol=1e-13)
        pre.append(cur)
        # planted defect: mixing the neighbours' *current* blocks is detectably different
        fresh = torch.einsum("sij,sjab->siab", W, cur)
        assert not torch.allclose(fresh, want, atol=1e-6)
    assert len(carry["history"]) == tau


def test_partial_participation_freezes_idle_clients_and_keeps_W_doubly_stochastic():
    S, n = 3, 6
    act = active_clients([0, 1, 2], n, 4, 0.5)
    W = participating(_W(S, n, 1), act)
    ones = torch.ones(S, n, dtype=torch.float64)
    assert torch.allclose(W.sum(-1), ones) and torch.allclose(W.sum(-2), ones)
    assert (W >= 0).all()
    idle = ~act
    eye = torch.eye(n, dtype=torch.float64).expand(S, n, n)
    assert torch.equal(W[idle], eye[idle])
    # the mixer puts an idle client's locally updated blocks back
    st = _state(S, n)
    m = asynchronous(participation=0.5, seeds=[0, 1, 2])
    carry = m.init(st)
    before = st.clone()
    st.A[0].add_(1.0)
    st.B[0].add_(1.0)
    st, carry, _ = m.mix(carry, st, ("A", "B"), _W(S, n, 1), 4)
    assert torch.equal(st.A[0][idle], before.A[0][idle])
    assert torch.equal(st.B[0][idle], before.B[0][idle])
    assert not torch.allclose(st.A[0][act], before.A[0][act])
    # the mask is the (seed, "participation", t) stream: same for a seed whatever its batch
    assert torch.equal(active_clients([1], n, 4, 0.5)[0], act[1])
    assert 0.2 < active_clients(range(50), 40, 0, 0.5).double().mean() < 0.8


def test_defaults_are_the_synchronous_mixer():
    assert asynchronous(0, 1.0).name == "synchronous"
    with pytest.raises(AdfloraError, match="staleness"):
        asynchronous(-1)
    with pytest.raises(AdfloraError, match="participation"):
        asynchronous(0, 0.0)


# ---------------------------------------------------------------- runs
@pytest.mark.parametrize("extra", [
    {"gossip": {"staleness": 2, "participation": 0.7}},
    {"switch_schedule": "feedback", "switch_max": 3},
])
def test_resume_with_stale_copies_and_schedule_state_is_exact(tmp_path, extra):
    from adflora_analysis.synthetic.runner import run_study

    cfg = load_config(SyntheticConfig, data={**SMALL, "checkpoint_every": 2, **extra})
    full = run_study(cfg, tmp_path / "full", progress=False)
    run_study(cfg, tmp_path / "part", progress=False, stop_after=5)
    resumed = run_study(cfg, tmp_path / "part", progress=False, resume=True)
    key = ["job", "seed", "round", "layer"]
    a = full.sort_values(key).reset_index(drop=True)
    b = resumed.sort_values(key).reset_index(drop=True)
    cols = [c for c in a.columns if c not in ("wall_s", "time_s")]
    import pandas as pd

    pd.testing.assert_frame_equal(a[cols], b[cols], check_exact=True)


def test_staleness_slows_consensus_and_participation_cuts_messages():
    from adflora_analysis.synthetic.runner import study_rows

    base = {**SMALL, "rounds": 12, "methods": ["adf-lora"]}
    rows = {}
    for name, extra in (("sync", {}), ("stale", {"gossip": {"staleness": 3}}),
                        ("partial", {"gossip": {"participation": 0.5}})):
        df = study_rows(load_config(SyntheticConfig, data={**base, **extra}))
        rows[name] = df[df.layer == "all"]
    sent = {k: float(v.bytes_sent.sum()) for k, v in rows.items()}
    assert sent["stale"] == sent["sync"]             # τ delays messages, it does not drop them
    assert sent["partial"] < 0.7 * sent["sync"]
    assert math.isfinite(rows["stale"].grad_norm_sq.iloc[-1])


# ---------------------------------------------------------------- predicted rate and check 7
def test_predicted_rate_reduces_to_the_second_moment_rate_and_grows_with_staleness():
    import numpy as np

    from adflora_analysis.topology import make_sampler, second_moment_rate
    from adflora_analysis.topology.async_rates import async_consensus_rate, masked

    ring = make_sampler("static", 6, graph="ring")
    r0 = async_consensus_rate(ring)
    assert r0.method == "exact" and abs(r0.rate - second_moment_rate(ring)) < 1e-10
    rates = [async_consensus_rate(ring, staleness=t).rate for t in (0, 1, 2, 4)]
    assert all(a < b < 1 for a, b in zip(rates, rates[1:], strict=False))
    enc = make_sampler("encounter", 6, q=0.3)          # support enumerated: exact
    ex = async_consensus_rate(enc, method="full")
    assert ex.method == "exact" and abs(ex.rate - second_moment_rate(enc)) < 1e-9
    red = async_consensus_rate(enc)                    # the exchangeable reduction, exact
    assert red.method == "exact-reduced" and abs(red.rate - ex.rate) < 1e-9
    enc = make_sampler("encounter", 10, q=0.2)         # Monte Carlo
    mc = async_consensus_rate(enc, samples=3000, method="full")
    assert mc.method == "monte-carlo" and abs(mc.rate - second_moment_rate(enc)) < 0.01
    assert async_consensus_rate(enc, participation=0.5).rate > mc.rate + 0.05
    W = masked(np.full((3, 4, 4), 0.25), np.array([[1, 1, 0, 1]] * 3, bool))
    assert np.allclose(W.sum(-1), 1) and np.allclose(W.sum(-2), 1)


def test_check_7_holds_with_the_predicted_rate_and_catches_one_that_ignores_staleness(tmp_path):
    from adflora_analysis.synthetic.runner import run_study
    from adflora_analysis.theory import check_data
    from adflora_analysis.theory.async_rate import check_async_rate
    from adflora_analysis.theory.data import contexts

    cfg = load_config(SyntheticConfig, data={
        "n_clients": 6, "rounds": 50, "seeds": 8, "d_in": 4, "d_out": 4, "methods": ["adf-lora"],
        "switch_interval": 25, "topology": {"graph": "ring"}, "gossip": {"staleness": 3}})
    run_study(cfg, tmp_path / "run", progress=False)
    data = check_data(tmp_path / "run")
    ctx = next(iter(contexts(data)))
    res = check_async_rate(ctx)
    assert res and all(r.status == "held" for r in res), [r.note for r in res]
    # planted defect: a prediction that ignores the staleness (the synchronous rate)
    from adflora_analysis.topology import make_sampler, second_moment_rate

    ring = make_sampler("static", 6, graph="ring")
    sync = second_moment_rate(ring)
    good = dict(ctx.vmeta["async_rate"])
    ctx.vmeta["async_rate"] = {**good, "rate": sync, "stderr": 0.0}
    bad = check_async_rate(ctx)
    assert any(r.status == "violated" for r in bad), [r.note for r in bad]
    # planted defect: the rate of a wrong staleness (τ = 1 for a τ = 3 run)
    from adflora_analysis.topology.async_rates import async_consensus_rate

    ctx.vmeta["async_rate"] = {**good, "rate": async_consensus_rate(ring, staleness=1).rate}
    bad = check_async_rate(ctx)
    assert any(r.status == "violated" for r in bad), [r.note for r in bad]
    ctx.vmeta["async_rate"] = good
    # check 3 (1 - p) does not apply to a stale run: n/a, pointing at check 7 ...
    # (premises are declared at registration and tested by the registry: run_check)
    from adflora_analysis.theory import REGISTRY
    from adflora_analysis.theory.frozen import check_frozen
    from adflora_analysis.theory.registry import run_check

    three = run_check(REGISTRY["frozen-block"], ctx)
    assert three and all(r.status == "n/a" and "check 7" in r.note for r in three)
    # so do checks 2, 4 (1 - p per step) and 5/5a (x̄ takes the averaged step): n/a
    others = [r for n in ("gossip-contraction", "consensus", "stationarity", "descent-audit")
              for r in run_check(REGISTRY[n], ctx)]
    assert [(r.number, r.status) for r in others] == [("2", "n/a"), ("4", "n/a"), ("5", "n/a"),
                                                      ("5a", "n/a")]
    # ... planted defect: the same run read as synchronous gossip is judged against 1 - p and
    # fails (the staleness slows the frozen block far below 1 - p)
    ctx.vmeta = {k: v for k, v in ctx.vmeta.items() if k not in ("gossip", "async_rate")}
    assert any(r.status == "violated" for r in check_frozen(ctx))


def test_checks_of_synchronous_gossip_are_not_applicable_under_partial_participation(tmp_path):
    """Checks 2, 4, 5 say n/a on a partial-gossip run; the same run read as synchronous (the
    defect the n/a guards against) makes check 2 (a masked W^t contracts slower than 1 - p)
    and the descent audit 5a (idle clients' steps are discarded) read `violated`."""
    from adflora_analysis.synthetic.runner import run_study
    from adflora_analysis.theory import check_data, run_checks

    cfg = load_config(SyntheticConfig, data={
        "n_clients": 10, "rounds": 40, "seeds": 6, "d_in": 6, "d_out": 6, "methods": ["lora"],
        "constants_every": 0, "gossip": {"participation": 0.6},
        "topology": {"graph": "encounter", "weights": "metropolis", "q": 0.2}})
    run_study(cfg, tmp_path / "run", progress=False)
    st = {r.number: r.status for r in run_checks(tmp_path / "run")}
    assert (st["2"], st["4"], st["5"]) == ("n/a", "n/a", "n/a")
    data = check_data(tmp_path / "run")
    for m in (data.meta, *(data.meta.get("variants") or {}).values()):
        m.pop("gossip", None)
        m.pop("async_rate", None)
    planted = {r.number: r.status for r in run_checks(tmp_path / "run", data=data)}
    assert planted["2"] == planted["5a"] == "violated"


@pytest.mark.slow
def test_stale_partial_gossip_under_torch_distributed_matches_in_process(tmp_path):
    """2 processes (gloo): the stale copies are each process's own clients, exchanged by the
    backend like current blocks; the participation masks are drawn for all clients everywhere."""
    import pandas as pd
    from _dist import in_process_and_torchrun

    args = ["synthetic", "run", "synthetic/bounds.toml", "seeds=2", "rounds=8",
            "methods=['adf-lora','rolora']", "constants_every=0", "gossip.staleness=2",
            "gossip.participation=0.7"]
    a, b, num = in_process_and_torchrun(args, tmp_path)
    assert len(a) == len(b) > 0
    pd.testing.assert_frame_equal(a[num].reset_index(drop=True), b[num].reset_index(drop=True),
                                  rtol=1e-5, atol=1e-12)
    assert (a.xi_A.to_numpy() > 0).any()


def test_speed_spread_gives_each_client_its_own_number_of_steps():
    from adflora_analysis.synthetic.problem import QuadraticProblem, steps_per_client

    K = steps_per_client(4, 0.8, [0, 1], 5)
    assert K.shape == (2, 5) and len(set(K.flatten().tolist())) > 1
    cfg = load_config(SyntheticConfig, data={**SMALL, "gossip": {"speed_spread": 0.8},
                                             "noise_kind": "none"})
    prob = QuadraticProblem(cfg, [0, 1])
    st = prob.initial_state()
    st.B[0].normal_(generator=torch.Generator().manual_seed(0))
    before = st.clone()
    new, _ = prob.local_update(st, ("B",), 0)
    moved = (new.B[0] - before.B[0]).flatten(2).norm(dim=-1)            # (S, n)
    # planted check: with noise-free gradients, more steps move a client further along its own
    # descent; clients with equal K_i and data would move equally, here the order follows K_i
    ref = QuadraticProblem(load_config(SyntheticConfig, data={**SMALL, "noise_kind": "none"}),
                           [0, 1])
    same, _ = ref.local_update(before.clone(), ("B",), 0)
    base = (same.B[0] - before.B[0]).flatten(2).norm(dim=-1)
    k = prob.steps.double()
    assert torch.equal(prob.steps, steps_per_client(cfg.local_steps, 0.8, [0, 1], 5))
    lo, hi = k == k.min(), k == k.max()
    assert (moved[lo] / base[lo]).mean() < (moved[hi] / base[hi]).mean()
    with pytest.raises(AdfloraError, match="speed_spread"):
        load_config(SyntheticConfig, data={**SMALL, "gossip": {"speed_spread": -1}})


def test_tables_for_the_reports(tmp_path):
    from adflora_analysis.synthetic.async_tables import adaptive_table, async_table, phase_ribbon
    from adflora_analysis.synthetic.runner import run_study

    cfg = load_config(SyntheticConfig, data={
        **SMALL, "rounds": 12, "seeds": 3, "methods": ["adf-lora"], "topology_samples": 500,
        "sweep": {"topology.q": [0.3]}, "gossip": {"staleness": 1},
        "variants": [{"label": "T=1", "switch_interval": 1},
                     {"label": "T=4", "switch_interval": 4},
                     {"label": "topology", "switch_schedule": "topology"}]})
    run_study(cfg, tmp_path / "run", progress=False)
    t = adaptive_table(tmp_path / "run")
    assert set(t.schedule) == {"T=1", "T=4", "topology"} and t.is_best.sum() == 1
    assert t.set_index("schedule").T_mean["T=4"] == 4.0
    a = async_table(tmp_path / "run")
    assert (a.staleness == 1).all() and (a.predicted_rate > 0).all()
    assert a.grad_final.notna().all()
    r = phase_ribbon(tmp_path / "run")
    assert "".join(r[r.variant.str.endswith("T=4")].phase) == "BBBBAAAABBBB"


def test_stale_partial_mixer_with_a_sparse_W_equals_the_dense_one(monkeypatch):
    """From 1,024 clients W^t comes as a SparseMix: stale (τ = 2) and partial (π = 0.6) gossip
    runs on it in O(edges) (no dense W built) with the dense run's numbers, round by round."""
    from adflora_analysis.core.sparse import SparseMix
    from adflora_analysis.seeding import numpy_rng
    from adflora_analysis.topology import make_sampler
    from adflora_analysis.topology.sparse import SparseW

    S, n = 2, 6
    sampler = make_sampler("encounter", n, q=0.4, weights="metropolis")
    Ws = [torch.stack([torch.as_tensor(sampler.sample(t, numpy_rng(s, "w", t)))
                       for s in range(S)]) for t in range(4)]
    g = torch.Generator().manual_seed(3)
    st = LoraState([torch.randn(S, n, 2, 3, generator=g, dtype=torch.float64)],
                   [torch.randn(S, n, 3, 2, generator=g, dtype=torch.float64)], ["l0"])
    dense, sparse = asynchronous(2, 0.6, seeds=[0, 1]), asynchronous(2, 0.6, seeds=[0, 1])
    a, b = st.clone(), st.clone()
    ca, cb = dense.init(a), sparse.init(b)

    def no_dense(self):
        raise AssertionError("the sparse path built a dense W")

    for t, W in enumerate(Ws):
        a, ca, sa = dense.mix(ca, a, ("A", "B"), W, t)
        sp = SparseMix.from_sparse_w(SparseW.from_dense(W.numpy()), (S,), dtype=torch.float64)
        with monkeypatch.context() as mp:
            mp.setattr(SparseMix, "dense", no_dense)
            b, cb, sb = sparse.mix(cb, b, ("A", "B"), sp, t)
        for x, y in zip(a.A + a.B, b.A + b.B, strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=1e-14)
        assert torch.equal(sa, sb)
    assert not torch.equal(a.A[0], st.A[0])          # gossip did something
