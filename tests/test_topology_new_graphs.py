"""Topologies from recent work, each checked against the property its paper states, with a
planted defect for each check (docs/topology.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats as st

from adflora_analysis.cli import main
from adflora_analysis.errors import AdfloraError
from adflora_analysis.topology import measures as M
from adflora_analysis.topology.config import (
    TopologyConfig,
    build_sampler,
    topology_constants,
    w_bytes,
)
from adflora_analysis.topology.equitopo import (
    circulant_norm,
    equi_offsets,
    equistatic_degree,
    equistatic_first_row,
    equistatic_matrix,
)
from adflora_analysis.topology.rates import consensus_rate
from adflora_analysis.topology.samplers import EquiStaticSampler, make_sampler


def _product(s, rounds):
    P = np.eye(s.n)
    for t in range(rounds):
        P = s.sample(t, None) @ P
    return P


@pytest.mark.parametrize("k,n", [(1, 8), (2, 9), (2, 27), (3, 16), (4, 25)])
def test_k_peer_exponential_exact_consensus(k, n):
    """n a power of k + 1: exact averaging after τ = log_(k+1) n rounds (and not before)."""
    s = make_sampler("k-peer-exponential", n, k=k)
    tau = round(np.log(n) / np.log(k + 1))
    assert s.period == tau
    np.testing.assert_allclose(_product(s, tau), np.full((n, n), 1 / n), atol=1e-14)
    if tau > 1:
        assert not np.allclose(_product(s, tau - 1), 1 / n)
    for t in range(tau):
        W = s.sample(t, None)
        assert np.allclose(W.sum(0), 1) and np.allclose(W.sum(1), 1)
        assert np.count_nonzero(W - np.diag(np.diag(W)), axis=1).max() == k   # k peers


def test_k_peer_exponential_generalises_one_peer():
    a = make_sampler("k-peer-exponential", 12, k=1)
    b = make_sampler("one-peer-exponential", 12)
    assert a.period == b.period
    for t in range(a.period):
        np.testing.assert_array_equal(a.sample(t, None), b.sample(t, None))
    # not a power of k + 1: no exact consensus after one period (the planted counter-case)
    s = make_sampler("k-peer-exponential", 10, k=2)
    assert not np.allclose(_product(s, s.period), 0.1)


@pytest.mark.parametrize("n", [3, 6, 11])
def test_equidyn_rate_is_n_independent(n):
    """p = 1/2 + 1/(2(n − 1)) exactly (enumerating the n − 1 shifts)."""
    r = consensus_rate(make_sampler("equidyn", n))
    assert r.method == "enumeration"
    assert r.p == pytest.approx(0.5 + 0.5 / (n - 1), abs=1e-12)


def test_equidyn_rate_at_scale():
    s = make_sampler("equidyn", 5000)
    e = M.exchangeable_p(s, samples=64)
    assert abs(e.value - (0.5 + 0.5 / 4999)) <= 4 * e.stderr + 1e-12
    # contrast: the one-peer exponential graph's random-phase p decays with n
    assert consensus_rate(make_sampler("one-peer-exponential", 64)).p < 0.2


def test_new_graphs_in_configs():
    for cfg in (TopologyConfig(graph="k-peer-exponential", weights="pairwise",
                               params={"k": 2}),
                TopologyConfig(graph="equidyn", weights="pairwise")):
        s = build_sampler(cfg, 9, seed=0)
        c = topology_constants(s, samples=500)
        assert c["connected"] and c["p"] > 0 and c["effective_neighbours"] > 1


# ---------------------------------------------------------------- Base-(k+1) graph (Takezawa)
def consensus_error(mats) -> float:
    """max |W^(τ−1) ⋯ W^0 − J| over one period: 0 (to round-off) iff exact finite-time consensus."""
    n = mats[0].shape[0]
    P = np.eye(n)
    for W in mats:
        P = W @ P
    return float(np.abs(P - 1.0 / n).max())


def round_defects(W: np.ndarray, k: int) -> list[str]:
    """What is wrong with one round W^t of a Base-(k+1) graph (empty when nothing is)."""
    out = []
    if not (np.allclose(W.sum(0), 1, atol=1e-13) and np.allclose(W.sum(1), 1, atol=1e-13)):
        out.append("not doubly stochastic")
    if (W < 0).any():
        out.append("negative weight")
    if not np.allclose(W, W.T, atol=1e-15):
        out.append("not symmetric")
    off = W - np.diag(np.diag(W))
    if np.count_nonzero(off, axis=1).max() > k:
        out.append("a client has more than k peers")
    return out


def base_mats(n: int, k: int) -> list[np.ndarray]:
    s = make_sampler("base-k", n, k=k)
    return [s.sample(t, None) for t in range(s.period)]


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("n", [5, 6, 12, 25, 2, 3, 7, 10, 17, 31, 48])
def test_base_k_exact_consensus_any_n(n, k):
    """Takezawa et al. (NeurIPS 2023): exact averaging after one period for any n, every round
    doubly stochastic with at most k peers a client; the edge-list form is the same matrix."""
    s = make_sampler("base-k", n, k=k)
    mats = base_mats(n, k)
    assert consensus_error(mats) < 1e-13
    for t, W in enumerate(mats):
        assert round_defects(W, k) == []
        np.testing.assert_array_equal(s.sample_sparse(t).dense()[0], W)
    np.testing.assert_array_equal(s.sample(s.period + 1, None), mats[1 % s.period])  # repeats


def test_base_k_periods_match_authors_code():
    """Periods of the authors' code (github.com/yukiTakezawa/BaseGraph, ``BaseGraph(n, k)``, run
    offline for n = 2..59, k = 1..4: all equal to ours); a few of them, and the power-of-(k+1)
    case, which is the k-peer hyper-hypercube with log_(k+1) n rounds."""
    assert [make_sampler("base-k", n, k=1).period for n in range(2, 18)] == [
        1, 3, 2, 5, 4, 5, 3, 7, 6, 7, 5, 7, 6, 7, 4, 9]
    assert [make_sampler("base-k", n, k=2).period for n in range(2, 18)] == [
        1, 1, 2, 3, 2, 4, 3, 2, 4, 5, 3, 5, 5, 4, 4, 5]
    assert make_sampler("base-k", 64, k=3).period == 3


def test_base_k_planted_defects_are_caught():
    """Each check above fails on a plausible bug: a perturbed weight, a dropped round, an
    extra peer."""
    mats = [W.copy() for W in base_mats(12, 2)]
    assert consensus_error(mats) < 1e-13
    bad = [W.copy() for W in mats]
    i, j = np.argwhere(bad[1] - np.diag(np.diag(bad[1])) > 0)[0]
    eps = 1e-3                                 # move weight onto the diagonal, symmetrically:
    bad[1][i, j] -= eps                        # still doubly stochastic and symmetric,
    bad[1][j, i] -= eps
    bad[1][i, i] += eps
    bad[1][j, j] += eps
    assert round_defects(bad[1], 2) == []
    assert consensus_error(bad) > 1e-5         # ... but no longer exact consensus
    assert consensus_error(mats[:-1]) > 1e-3   # one round short of a period
    extra = mats[0].copy()
    a, b = 0, int(np.argmin(extra[0]))         # a non-neighbour of client 0
    extra[a, b] = extra[b, a] = 0.01
    extra[a, a] -= 0.01
    extra[b, b] -= 0.01
    assert "a client has more than k peers" in round_defects(extra, 1)


def test_base_k_at_scale_sparse():
    """n = 10,000, k = 2, edge lists only: one period maps any vector to its mean."""
    s = make_sampler("base-k", 10_000, k=2)
    x = np.random.default_rng(0).standard_normal((1, 10_000))
    y = x
    for t in range(s.period):
        W = s.sample_sparse(t)
        assert np.allclose(W.row_sums(), 1) and np.allclose(W.col_sums(), 1)
        assert np.bincount(W.dst, minlength=10_000).max() <= 2
        y = W.matvec(y)
    assert np.abs(y - x.mean()).max() < 1e-12
    assert np.abs(s.sample_sparse(0).matvec(x) - x.mean()).max() > 0.1   # one round is not


# ---------------------------------------------------------------- EquiStatic (Song et al.)
def bound_violations(n: int, eps: float, delta: float, seeds: int, draw=equi_offsets) -> int:
    """Seeds whose W at M = equistatic_degree(n, eps, delta) offsets has ‖W − J‖₂ > eps."""
    M_ = equistatic_degree(n, eps, delta)
    bad = 0
    for seed in range(seeds):
        u = draw(n, M_, np.random.default_rng(seed))
        bad += circulant_norm(equistatic_first_row(n, u)) > eps
    return bad


def allowed(seeds: int, delta: float) -> int:
    """Violations the theorem allows (at most Binomial(seeds, δ)), at the 99.9% quantile."""
    return int(st.binom.ppf(0.999, seeds, delta))


@pytest.mark.parametrize("n", [16, 100, 1000, 20_000])
def test_equistatic_bound_over_seeds_and_n(n):
    """Song et al. (NeurIPS 2022): with M >= 8 ln(2n/δ)/(3ε²) uniform offsets,
    ‖W − J‖₂ <= ε w.p. >= 1 − δ — a consensus rate 1 − ε² independent of n, at degree
    Θ(ln n). Checked over 20 seeds (ε = 0.5, δ = 0.1) and against the dense norm."""
    assert bound_violations(n, 0.5, 0.1, 20) <= allowed(20, 0.1)
    if n <= 100:
        s = make_sampler("equistatic", n, eps=0.5, delta=0.1, seed=3)
        assert len(s.offsets) == equistatic_degree(n, 0.5, 0.1)
        assert s.consensus_norm() == pytest.approx(np.linalg.norm(s.W - 1 / n, 2), abs=1e-12)
        r = consensus_rate(s)
        assert r.method == "exact" and r.p == pytest.approx(1 - s.consensus_norm() ** 2, abs=1e-9)
        assert s.doubly_stochastic and not s.symmetric
        u = make_sampler("equistatic", n, M=5, undirected=True, seed=3)
        assert u.symmetric and u.doubly_stochastic
        assert u.consensus_norm() == pytest.approx(np.linalg.norm(u.W - 1 / n, 2), abs=1e-12)
        np.testing.assert_allclose(equistatic_matrix(n, u.offsets, undirected=True), u.W)


def test_equistatic_planted_non_uniform_offsets_are_caught():
    """The check is not vacuous: offsets drawn from {1, ..., n/8} only (not 'equi') violate the
    bound on (almost) every seed, far above what δ allows."""
    def local(n, M_, rng):
        return rng.integers(1, n // 8 + 1, size=M_)

    assert bound_violations(1000, 0.5, 0.1, 20, draw=local) > allowed(20, 0.1)
    assert bound_violations(1000, 0.5, 0.1, 20) <= allowed(20, 0.1)


def test_equistatic_sampler_forms_and_bad_input():
    s = make_sampler("equistatic", 3000, M=12, seed=1)        # sparse W above 2,048 clients
    assert isinstance(s, EquiStaticSampler) and s._W is None
    sw = s.sample_sparse(0)
    assert np.allclose(sw.row_sums(), 1) and np.allclose(sw.col_sums(), 1)
    assert np.bincount(sw.dst, minlength=3000).max() <= 12
    small = make_sampler("equistatic", 40, M=6, seed=1)
    np.testing.assert_allclose(small.sample_sparse(0).dense()[0], small.sample(0), atol=1e-15)
    again = make_sampler("equistatic", 40, M=6, seed=1)
    np.testing.assert_array_equal(again.offsets, small.offsets)   # same seed, same graph
    for kind, params in (("equistatic", {"M": 0}), ("equistatic", {"eps": 2.0}),
                         ("base-k", {"k": 0}), ("equidyn", {"eta": 1.5})):
        with pytest.raises(AdfloraError):
            make_sampler(kind, 10, **params)


# ---------------------------------------------------------------- EquiDyn weights
@pytest.mark.parametrize("eta", [None, 0.5, 1.0])
@pytest.mark.parametrize("n", [3, 6, 11])
def test_equidyn_rate_for_eta(n, eta):
    """W = (1 − η)I + ηA(u): p = 1 − (1 − η)² − η²(n − 2)/n (by enumerating the n − 1 offsets);
    the default η = n/(2(n − 1)) is W = (I + P_u)/2."""
    s = make_sampler("equidyn", n, eta=eta)
    e = n / (2 * (n - 1)) if eta is None else eta
    r = consensus_rate(s)
    assert r.method == "enumeration"
    assert r.p == pytest.approx(1 - (1 - e) ** 2 - e ** 2 * (n - 2) / n, abs=1e-12)
    W = s.sample(0, np.random.default_rng(0))
    assert np.allclose(W.sum(0), 1) and np.allclose(W.sum(1), 1)
    if eta is None:
        assert sorted(set(W[W > 0].round(15).tolist())) == [0.5]


def test_equidyn_eta_one_decays_with_n():
    """Planted contrast: with η = 1 the rate is 2/n, so the n-independence check above would
    fail for it."""
    assert consensus_rate(make_sampler("equidyn", 40, eta=1.0)).p == pytest.approx(2 / 40)
    assert consensus_rate(make_sampler("equidyn", 40)).p == pytest.approx(0.5 + 0.5 / 39)


# ---------------------------------------------------------------- configs and the CLI
def test_new_samplers_in_configs_and_inspect(capsys):
    for cfg in (TopologyConfig(graph="base-k", weights="pairwise", params={"k": 2}),
                TopologyConfig(graph="equistatic", params={"M": 4})):
        s = build_sampler(cfg, 12, seed=0)
        c = topology_constants(s, samples=200)
        assert c["connected"] and c["p"] > 0 and c["effective_neighbours"] > 1
    for args in (["--graph", "base-k", "--param", "k=2"],
                 ["--graph", "equistatic", "--param", "M=4"]):
        with pytest.raises(SystemExit) as exc:
            main(["topology", "inspect", *args, "--n", "12", "--json", "--samples", "200"])
        out, err = capsys.readouterr()
        assert int(exc.value.code or 0) == 0, err
        d = json.loads(out)
        assert d["n"] == 12 and d["p"] > 0 and d["effective_neighbours"] > 1
    assert d["p_method"] == "exact"
    assert w_bytes(TopologyConfig(graph="base-k", params={"k": 2}), 100_000) < 1e8
    assert w_bytes(TopologyConfig(graph="equistatic"), 100_000) < 1e9
    with pytest.raises(SystemExit) as exc:
        main(["topology", "inspect", "--graph", "base-k", "--param", "k=0", "--n", "12"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("error: base-k needs")


# ---------------------------------------------------------------- δ of large static graphs
@pytest.mark.parametrize("maxiter", [400, 1])
def test_symmetric_extremes_closed_forms(maxiter):
    """λ2 and λn of a metropolis ring (1/3 + 2/3 cos(2π/n), −1/3) and of a random 4-regular
    graph (dense eigvalsh), by Lanczos and, with ``maxiter=1``, by the shift-invert fallback."""
    import networkx as nx
    import scipy.sparse as sp

    from adflora_analysis.topology.weights import mixing_matrix

    n = 1000
    ring = sp.csr_array(mixing_matrix(nx.cycle_graph(n), "metropolis", sparse=True))
    lam2, lamn = M.symmetric_extremes(ring, maxiter=maxiter)
    assert lam2 == pytest.approx(1 / 3 + 2 / 3 * np.cos(2 * np.pi / n), abs=1e-10)
    assert lamn == pytest.approx(-1 / 3, abs=1e-10)
    g = nx.random_regular_graph(4, 400, seed=1)
    W = sp.csr_array(mixing_matrix(g, "metropolis", sparse=True))
    ev = np.linalg.eigvalsh(W.toarray())
    lam2, lamn = M.symmetric_extremes(W, maxiter=maxiter)
    assert lam2 == pytest.approx(ev[-2], abs=1e-9) and lamn == pytest.approx(ev[0], abs=1e-9)
    # planted: a lazier ring has a different λn, and the check sees it
    assert M.symmetric_extremes(sp.csr_array((ring + sp.identity(n)) / 2), maxiter=maxiter)[
        1] != pytest.approx(-1 / 3, abs=1e-3)
