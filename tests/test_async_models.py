"""The three asynchrony models of issue 20 item 6 (docs/theory.md §9): push-sum conserves mass and
de-biases on a column-stochastic W that is not doubly stochastic; AD-PSGD's problem sees the
τ-old state; check 7 holds on clean runs of every model and catches a wrong rate; bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from adflora_analysis.core.loop import run_rounds
from adflora_analysis.core.methods import get_method
from adflora_analysis.core.mixers import MODELS, ad_psgd, make_mixer, push_sum, stale_read
from adflora_analysis.core.state import LoraState
from adflora_analysis.errors import AdfloraError


def _row_stochastic(n: int, g: torch.Generator) -> torch.Tensor:
    """A random row-stochastic W with unequal column sums (so Wᵀ is column stochastic and not
    doubly stochastic), on a random connected support (a ring plus random edges)."""
    ring = torch.eye(n).roll(1, 0) + torch.eye(n).roll(-1, 0)
    support = ((torch.rand(n, n, generator=g, dtype=torch.float64) < 0.3).double() + ring
               + torch.eye(n)).clamp(max=1)
    W = support * torch.rand(n, n, generator=g, dtype=torch.float64).add(0.1)
    return W / W.sum(1, keepdim=True)


def _state(n: int, g: torch.Generator, batch: int = 2) -> LoraState:
    return LoraState([torch.randn(batch, n, 2, 3, generator=g, dtype=torch.float64)],
                     [torch.randn(batch, n, 3, 2, generator=g, dtype=torch.float64)], ["l0"])


def _mass(state: LoraState, carry: dict, b: str = "A") -> torch.Tensor:
    """Σ_i x_i plus the mass in transit, x = w z: (batch, 2, 3)."""
    w = carry["w"][b]
    tot = (w * state.block(b)[0]).sum(-3)
    for msgs in carry["transit"]:
        if b in msgs:
            tot = tot + msgs[b][0][0].sum(-3)
    return tot


@pytest.mark.parametrize("tau,pi", [(0, 1.0), (2, 1.0), (1, 0.7), (3, 0.6)])
def test_push_sum_conserves_mass_and_de_biases_on_a_column_stochastic_W(tau, pi):
    n, g = 7, torch.Generator().manual_seed(tau * 10 + int(pi * 10))
    Ws = [_row_stochastic(n, g).expand(2, n, n) for _ in range(200)]
    P = Ws[0][0].T
    assert torch.allclose(P.sum(0), torch.ones(n, dtype=P.dtype))        # column stochastic
    assert (P.sum(1) - 1).abs().max() > 0.05                             # not doubly
    st = _state(n, g)
    mean0 = st.A[0].mean(-3).clone()
    m = push_sum(tau, pi, seeds=[3, 4])
    carry = m.init(st)
    for t, W in enumerate(Ws):
        st, carry, sent = m.mix(carry, st, ("A",), W, t)
        torch.testing.assert_close(_mass(st, carry), mean0 * n, rtol=0, atol=1e-11)
        wsum = carry["w"]["A"].sum(-3) + sum(msgs["A"][1].sum(-3) for msgs in carry["transit"]
                                             if "A" in msgs)
        torch.testing.assert_close(wsum, torch.full_like(wsum, float(n)), rtol=0, atol=1e-11)
        assert sent.shape == (2,) and bool((sent > 0).all() if pi == 1 else (sent >= 0).all())
    # de-biased: every client's z is the initial average, not the Perron-weighted one
    torch.testing.assert_close(st.A[0], mean0.unsqueeze(-3).expand_as(st.A[0]), rtol=0,
                               atol=1e-9)
    # ... while averaging with the same W^t (row stochastic, not doubly) drifts off the mean
    st2 = _state(n, torch.Generator().manual_seed(tau * 10 + int(pi * 10)))
    for W in Ws[:200]:
        st2 = st2.map_blocks(lambda X, W=W: torch.einsum("bij,bjkl->bikl", W, X), ("A",))
    assert (st2.A[0].mean(-3) - mean0).abs().max() > 1e-3


def test_push_sum_on_a_symmetric_W_without_delay_is_synchronous_gossip():
    n, g = 6, torch.Generator().manual_seed(1)
    W = torch.full((2, n, n), 1.0 / n, dtype=torch.float64) * 0.5 + 0.5 * torch.eye(n)
    a, b = _state(n, g), None
    b = a.clone()
    m, s = push_sum(), stale_read()
    ca, cb = m.init(a), s.init(b)
    for t in range(5):
        a, ca, _ = m.mix(ca, a, ("A", "B"), W, t)
        b, cb, _ = s.mix(cb, b, ("A", "B"), W, t)
    torch.testing.assert_close(a.A[0], b.A[0], rtol=0, atol=1e-14)
    torch.testing.assert_close(a.B[0], b.B[0], rtol=0, atol=1e-14)


class _Recorder:
    """A problem whose local step is A <- A - 0.1 * (A - target) and that records the A it was
    asked to update (per round)."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def local_update(self, state, blocks, t, disp=None, **kw):
        self.seen.append(state.A[0].clone())
        for b in blocks:
            for li, X in enumerate(state.block(b)):
                step = -0.1 * (X - 1.0)
                if disp is not None:
                    disp.add(b, li, step)
                X.add_(step)
        return state, {}

    def evaluate(self, state, t):
        return {}


@pytest.mark.parametrize("tau", [1, 2, 3])
def test_ad_psgd_computes_the_update_at_the_tau_old_state(tau):
    n, g = 5, torch.Generator().manual_seed(tau)
    st = _state(n, g)
    W = (0.5 * torch.eye(n) + 0.5 / n).double().expand(2, n, n)
    start = [st.clone()]                            # start[t]: the model at the start of round t
    prob = _Recorder()
    for res in run_rounds(prob, get_method("lora"), st, lambda t: W, rounds=8,
                          mixer=ad_psgd(tau)):
        start.append(res.state.clone())
    for t, seen in enumerate(prob.seen):
        old = start[max(t - tau, 0)].A[0]
        torch.testing.assert_close(seen, old, rtol=0, atol=0)
        if t >= tau + 1:   # and not the current model
            assert not torch.equal(seen, start[t].A[0])
    # the model after round t = W (current + Δ(stale)), Δ(Y) = -0.1 (Y - 1)
    for t in range(len(prob.seen)):
        cur, old = start[t].A[0], start[max(t - tau, 0)].A[0]
        want = torch.einsum("bij,bjkl->bikl", W, cur - 0.1 * (old - 1.0))
        torch.testing.assert_close(start[t + 1].A[0], want, rtol=0, atol=1e-14)
    # planted defect: a mixer that ignores the staleness feeds the current model
    prob0 = _Recorder()
    list(run_rounds(prob0, get_method("lora"), start[0].clone(), lambda t: W, rounds=8,
                    mixer=ad_psgd(0)))
    assert not all(torch.equal(a, b) for a, b in zip(prob0.seen, prob.seen, strict=True))


def test_ad_psgd_without_delay_is_stale_read_without_delay():
    n, g = 6, torch.Generator().manual_seed(5)
    W = (0.6 * torch.eye(n) + 0.4 / n).double().expand(2, n, n)
    st = _state(n, g)
    runs = [[r.state.clone() for r in run_rounds(_Recorder(), get_method("adf-lora"), st.clone(),
                                                 lambda t: W, rounds=6, mixer=m)]
            for m in (ad_psgd(0, 0.7, seeds=[0, 1]), stale_read(0, 0.7, seeds=[0, 1]))]
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a.A[0], b.A[0]) and torch.equal(a.B[0], b.B[0])


def test_drift_of_the_consensus_value_per_model():
    from adflora_analysis.topology import make_sampler
    from adflora_analysis.topology.async_rates import simulate_models

    s = make_sampler("encounter", 10, q=0.1)
    # 150 rounds: the consensus error is ~1e-20 of Ξ₀, so what is left is the drift itself
    drift = {m: simulate_models(s, model=m, staleness=2, paths=2000, rounds=150)["drift"]
             for m in MODELS}
    assert 0.003 < drift["stale-read"] < 0.012          # the 0.64 % of Ξ₀
    assert drift["ad-psgd"] < 1e-14 and drift["push-sum"] < 1e-14


def _run(tmp_path, model: str, tau: int, pi: float):
    from adflora_analysis.config import load_config
    from adflora_analysis.synthetic.config import SyntheticConfig
    from adflora_analysis.synthetic.runner import run_study
    from adflora_analysis.theory import check_data
    from adflora_analysis.theory.data import contexts

    cfg = load_config(SyntheticConfig, data={
        "n_clients": 6, "rounds": 50, "seeds": 8, "d_in": 4, "d_out": 4, "methods": ["adf-lora"],
        "switch_interval": 25, "topology": {"graph": "ring"},
        "gossip": {"staleness": tau, "participation": pi, "model": model}})
    run_study(cfg, tmp_path / model, progress=False)
    return next(iter(contexts(check_data(tmp_path / model))))


@pytest.mark.parametrize("model,tau,pi", [("ad-psgd", 3, 1.0), ("push-sum", 0, 1.0),
                                          ("push-sum", 2, 1.0)])
def test_check_7_holds_for_each_model_and_catches_a_wrong_rate(tmp_path, model, tau, pi):
    from adflora_analysis.theory.async_rate import check_async_rate
    from adflora_analysis.topology import make_sampler
    from adflora_analysis.topology.async_rates import async_consensus_rate

    ctx = _run(tmp_path, model, tau, pi)
    pred = ctx.vmeta["async_rate"]
    assert pred["model"] == model and ctx.vmeta["gossip"]["model"] == model
    assert pred["method"] == ("simulated" if model == "push-sum" and tau else "exact")
    res = check_async_rate(ctx)
    assert res and all(r.status == "held" for r in res), [r.note for r in res]
    assert all(model in r.details["model"] for r in res)
    assert all(("simulation" in r.note) == (pred["method"] == "simulated") for r in res)
    # planted defects. A static ring is not exchangeable, so the check is one-sided (a start
    # off the slowest mode may decay faster than the asymptotic ρ): a rate 20 % too fast is
    # caught, and for push-sum with delay the synchronous rate (the delay ignored)
    ring = make_sampler("static", 6, graph="ring")
    sync = async_consensus_rate(ring).rate
    wrongs = [0.8 * pred["rate"]]
    if pred["method"] == "simulated":
        assert pred["rate"] - sync > 0.15
        wrongs.append(sync)
    for wrong in wrongs:
        ctx.vmeta["async_rate"] = {**pred, "rate": wrong}
        bad = check_async_rate(ctx)
        assert any(r.status == "violated" for r in bad), (wrong, [r.note for r in bad])


def test_predictions_say_whether_they_are_derived_or_simulated():
    from adflora_analysis.topology import make_sampler
    from adflora_analysis.topology.async_rates import async_consensus_rate, model_consensus_rate

    s = make_sampler("encounter", 10, q=0.1)
    sync08 = async_consensus_rate(s, participation=0.8).rate
    for model in ("ad-psgd", "push-sum"):
        r = model_consensus_rate(s, model=model, staleness=0, participation=0.8)
        assert r.rate == sync08 and r.method == "exact-reduced"
    r = model_consensus_rate(s, model="ad-psgd", staleness=4, participation=0.8)
    assert r.rate == sync08 and r.staleness == 4
    r = model_consensus_rate(s, model="push-sum", staleness=2, samples=2000)
    assert r.method == "simulated" and r.stderr > 0
    # the simulation reproduces a derived rate: stale-read at τ = 2 (exact 0.7239)
    from adflora_analysis.topology.async_rates import simulate_models

    sim = simulate_models(s, model="stale-read", staleness=2, paths=4000, rounds=40)
    exact = async_consensus_rate(s, staleness=2).rate
    assert abs(sim["rate"] - exact) < 4 * sim["stderr"] + 0.002


def test_make_mixer_names_each_model_and_refuses_an_unknown_one():
    from adflora_analysis.core import asynchronous

    assert asynchronous is stale_read                     # the former name still imports
    assert [make_mixer(m, 1, 1.0).name.split("(")[0] for m in MODELS] == list(MODELS)
    with pytest.raises(AdfloraError, match="unknown gossip.model 'adpsgd'"):
        make_mixer("adpsgd", 1)
    with pytest.raises(AdfloraError, match="staleness"):
        push_sum(-1)


@pytest.mark.parametrize("n,line,expect", [
    (4, 'model = "sgp"', "unknown gossip.model 'sgp'"),
    (4, "staleness = -1", "gossip.staleness = -1 must be an integer >= 0"),
    (2000, 'model = "push-sum"', "'push-sum' needs a dense W^t"),
])
def test_bad_gossip_config_is_one_error_line(tmp_path, n, line, expect):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'n_clients = {n}\nrounds = 3\nmethods = ["adf-lora"]\n[gossip]\n{line}\n')
    p = subprocess.run([sys.executable, "-m", "adflora_analysis", "synthetic", "run",
                        str(cfg), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert lines[0].startswith("error: ") and expect in lines[0] and "(hint: " in lines[0]
    assert not (tmp_path / "out").exists()


def test_the_shipped_study_lists_the_three_models_side_by_side():
    from adflora_analysis.config import load_config
    from adflora_analysis.configs import SHIPPED
    from adflora_analysis.study.runconfig import expand_study
    from adflora_analysis.synthetic.config import SyntheticConfig

    cfg = load_config(SyntheticConfig, SHIPPED / "synthetic" / "async_models.toml")
    variants = expand_study(cfg)
    grid = {(v.gossip.model, v.gossip.staleness, v.gossip.participation) for _, v in variants}
    assert grid == {(m, t, p) for m in MODELS for t in (1, 2, 4) for p in (1.0, 0.8)}
    assert np.isfinite(len(variants)) and len(variants) == 18


@pytest.mark.parametrize("model", ["ad-psgd", "push-sum"])
def test_glue_runner_builds_and_runs_each_model(tiny, model):
    from adflora_analysis.config import load_config
    from adflora_analysis.glue import get_task, partition_indices
    from adflora_analysis.glue.config import GlueConfig
    from adflora_analysis.glue.data import encode, load_movie_reviews
    from adflora_analysis.glue.model import GlueModel
    from adflora_analysis.glue.problem import GlueProblem
    from adflora_analysis.study.schedule_config import schedule_and_mixer

    cfg = load_config(GlueConfig, data={"n_clients": 3, "rounds": 3, "gossip": {
        "model": model, "staleness": 1}})
    _, mixer, cols = schedule_and_mixer(cfg, None, [0], method="adf-lora")
    assert mixer.name == f"{model}(staleness=1,participation=1)"
    assert cols["gossip_model"] == model
    gm = GlueModel(str(tiny), 2, rank=4, lora_alpha=8, dropout=0.1)
    task = get_task("rotten_tomatoes")
    df = load_movie_reviews(task).train.sample(60, random_state=0).reset_index(drop=True)
    parts = partition_indices(df["label"].to_numpy(), 3, "paper", seed=0)
    prob = GlueProblem(gm, encode(gm.tokenizer, task, df, 32), parts, method="adf-lora",
                       seed=0, local_steps=2, batch_size=4, lr=1e-2)
    st = gm.initial_state(3, seed=0)
    for X in st.B:
        X.normal_(generator=torch.Generator().manual_seed(1)).mul_(0.1)
    W = torch.tensor([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.25, 0.25, 0.5]])
    start = [st.clone()]
    for res in run_rounds(prob, get_method("adf-lora"), st, lambda t: W, rounds=3,
                          mixer=mixer):
        start.append(res.state.clone())
        assert all(bool(torch.isfinite(x).all()) for x in res.state.A + res.state.B)
        assert float(res.scalar["bytes_sent"]) > 0
    # the frozen factor only mixes: its clients' mean is kept by both models (W symmetric)
    frozen = "A" if res.trained == ("B",) else "B"
    torch.testing.assert_close(start[-1].block(frozen)[0].mean(0),
                               start[0].block(frozen)[0].mean(0), rtol=0, atol=1e-6)
    assert not torch.equal(start[-1].block(res.trained[0])[0], start[0].block(res.trained[0])[0])
