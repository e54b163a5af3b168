"""Topology layer: closed forms, samplers, rates, validation, errors (docs/architecture.md §3)."""

from __future__ import annotations

import math
import sys
from math import comb

import networkx as nx
import numpy as np
import pytest

from adflora_analysis.errors import AdfloraError
from adflora_analysis.seeding import numpy_rng
from adflora_analysis.topology import (
    ENCOUNTER_RULES,
    GRAPHS,
    RULES,
    TopologyConfig,
    build_graph,
    build_sampler,
    consensus_basis,
    consensus_rate,
    load_matrix,
    make_sampler,
    mixing_matrix,
    periodic_rates,
    require_mixing,
    second_moment_rate,
    spectral_gap,
    spectral_summary,
    topology_constants,
    validate,
)

# ---------------------------------------------------------------- closed forms


@pytest.mark.parametrize("n", [3, 5, 8, 13])
def test_ring_metropolis_eigenvalues(n):
    W = mixing_matrix(build_graph("ring", n), "metropolis")
    expected = np.sort(1 / 3 + 2 / 3 * np.cos(2 * np.pi * np.arange(n) / n))
    np.testing.assert_allclose(np.linalg.eigvalsh(W), expected, atol=1e-12)
    s = spectral_summary(W)
    lam = max(abs(expected[-2]), abs(expected[0]))
    assert s.gap == pytest.approx(1 - lam, abs=1e-12)
    assert consensus_rate(W).p == pytest.approx(1 - lam ** 2, abs=1e-12)


@pytest.mark.parametrize("rule", ["metropolis", "max-degree", "server", "uniform"])
def test_complete_graph_mixes_in_one_step(rule):
    W = mixing_matrix(build_graph("complete", 7), rule)
    np.testing.assert_allclose(W, np.full((7, 7), 1 / 7), atol=1e-15)
    assert spectral_gap(W) == 1.0
    r = consensus_rate(W)
    assert (r.p, r.stderr, r.method) == (1.0, 0.0, "exact")
    assert second_moment_rate(W) == 0.0


@pytest.mark.parametrize("d", [1, 2, 3, 4, 5])
def test_hypercube_metropolis_eigenvalues(d):
    n = 2 ** d
    W = mixing_matrix(build_graph("hypercube", n), "metropolis")
    expected = np.sort(np.concatenate([np.full(comb(d, k), 1 - 2 * k / (d + 1))
                                       for k in range(d + 1)]))
    np.testing.assert_allclose(np.linalg.eigvalsh(W), expected, atol=1e-12)
    lam = max(abs(1 - 2 / (d + 1)), abs(1 - 2 * d / (d + 1)))
    assert spectral_gap(W) == pytest.approx(1 - lam, abs=1e-12)


@pytest.mark.parametrize("n", [3, 4, 9])
def test_star_metropolis(n):
    # centre and leaves all get w = 1/n: eigenvalues {1, 1 − 1/n (x n−2), 0}
    W = mixing_matrix(build_graph("star", n), "metropolis")
    expected = np.sort([1.0, 0.0] + [1 - 1 / n] * (n - 2))
    np.testing.assert_allclose(np.linalg.eigvalsh(W), expected, atol=1e-12)
    assert spectral_gap(W) == pytest.approx(1 / n, abs=1e-12)
    assert consensus_rate(W).p == pytest.approx(1 - (1 - 1 / n) ** 2, abs=1e-12)


@pytest.mark.parametrize("g", [0.0, 0.1, 0.37, 0.5, 0.9, 1.0])
def test_lazy_averaging_family_has_gap_g(g):
    n = 6
    W = g * np.full((n, n), 1 / n) + (1 - g) * np.eye(n)
    assert spectral_gap(W) == pytest.approx(g, abs=1e-12)
    assert consensus_rate(W).p == pytest.approx(1 - (1 - g) ** 2, abs=1e-12)
    assert second_moment_rate(W) == pytest.approx((1 - g) ** 2, abs=1e-12)


def test_disconnected_graph_has_no_gap_and_no_rate():
    g = build_graph("two-cliques", 8, bridges=0)
    W = mixing_matrix(g, "metropolis")
    rep = validate(W)
    assert rep.doubly_stochastic and not rep.connected
    assert spectral_gap(W) == 0.0
    assert consensus_rate(W).p == 0.0
    assert second_moment_rate(W) == pytest.approx(1.0)
    with pytest.raises(AdfloraError, match="disconnected: p = 0"):
        require_mixing(W)
    require_mixing(mixing_matrix(build_graph("two-cliques", 8), "metropolis"))


def test_lazy_metropolis_and_max_degree_definitions():
    g = build_graph("path", 5)
    Wm = mixing_matrix(g, "metropolis")
    np.testing.assert_allclose(mixing_matrix(g, "lazy-metropolis"), 0.5 * (np.eye(5) + Wm))
    Wd = mixing_matrix(g, "max-degree")  # d_max = 2
    A = nx.to_numpy_array(g)
    np.testing.assert_allclose(Wd, A / 3 + np.diag(1 - A.sum(1) / 3))
    Wu = mixing_matrix(g, "uniform")
    np.testing.assert_allclose(Wu.sum(1), 1)
    assert not validate(Wu, for_theory=False).doubly_stochastic


def test_sparse_weights_match_dense():
    g = build_graph("random-regular", 60, seed=1, degree=3)
    for rule in ("metropolis", "max-degree", "lazy-metropolis", "uniform"):
        dense = mixing_matrix(g, rule)
        sparse = mixing_matrix(g, rule, sparse=True)
        np.testing.assert_allclose(sparse.toarray(), dense, atol=1e-15)


def test_sparse_spectral_path_agrees_on_a_large_graph():
    W = mixing_matrix(build_graph("random-regular", 1600, seed=0, degree=4), "metropolis",
                      sparse=True)
    s = spectral_summary(W, method="sparse")
    d = spectral_summary(W.toarray(), method="dense")
    assert s.method == "sparse" and d.method == "dense"
    assert abs(s.lambda2 - d.lambda2) < 1e-8 and abs(s.lambda_n - d.lambda_n) < 1e-8
    assert abs(s.gap - d.gap) < 1e-8
    assert spectral_summary(W).method == "sparse"  # auto picks sparse for n > 1500


def test_sparse_path_sees_repeated_eigenvalue_one():
    # Lanczos alone cannot see multiplicities: a disconnected W must still give λ2 = 1
    W = mixing_matrix(build_graph("two-cliques", 40, bridges=0), "metropolis", sparse=True)
    s = spectral_summary(W, method="sparse")
    assert s.lambda2 == pytest.approx(1.0, abs=1e-10) and s.gap == pytest.approx(0, abs=1e-10)
    D = mixing_matrix(build_graph("exponential", 40, sided="one"), "uniform", sparse=True)
    a, b = spectral_summary(D, method="sparse"), spectral_summary(D.toarray(), method="dense")
    assert not a.symmetric and abs(a.gap - b.gap) < 1e-8 and abs(a.lambda2 - b.lambda2) < 1e-8


def test_non_symmetric_gap_uses_sigma2():
    # one-sided exponential graph with uniform weights: a doubly stochastic circulant
    W = mixing_matrix(build_graph("exponential", 8, sided="one"), "uniform")
    rep = validate(W)
    assert rep.doubly_stochastic and not rep.symmetric
    s = spectral_summary(W)
    sv = np.linalg.svd(W, compute_uv=False)
    assert s.gap == pytest.approx(1 - sv[1], abs=1e-12)
    assert consensus_rate(W).p == pytest.approx(1 - sv[1] ** 2, abs=1e-12)


# ---------------------------------------------------------------- samplers and rates


def test_two_clients_encounter_rate_is_q():
    # W = J w.p. q (one edge; lazy: (I + J)/2), I otherwise: E[WᵀW] on 1^⊥ is 1 − q
    for rule in ENCOUNTER_RULES:
        s = make_sampler("encounter", 2, q=0.3, weights=rule)
        p = 0.3 * (0.75 if rule == "lazy-metropolis" else 1.0)
        r = consensus_rate(s)
        assert r.method == "enumeration" and r.p == pytest.approx(p, abs=1e-12)
        mc = consensus_rate(s, method="monte-carlo", samples=4000, seed=1)
        assert abs(mc.p - p) <= 4 * mc.stderr


@pytest.mark.parametrize("rule", ENCOUNTER_RULES)
def test_monte_carlo_within_four_stderr_of_enumeration(rule):
    s = make_sampler("encounter", 4, q=0.25, weights=rule)
    exact = consensus_rate(s)
    assert exact.method == "enumeration" and exact.stderr == 0.0
    mc = consensus_rate(s, method="monte-carlo", samples=20000, seed=3)
    assert mc.method == "monte-carlo" and mc.stderr > 0
    assert abs(mc.p - exact.p) <= 4 * mc.stderr


def test_monte_carlo_general_estimator_against_enumeration():
    # a periodic list is not exchangeable: MC uses the eigen estimator + delta-method stderr
    mats = [mixing_matrix(build_graph(name, 5), "metropolis") for name in ("ring", "path", "star")]
    s = make_sampler("list", 5, matrices=mats)
    exact = consensus_rate(s)
    mc = consensus_rate(s, method="monte-carlo", samples=20000, seed=0)
    assert exact.method == "enumeration"
    assert abs(mc.p - exact.p) <= 4 * mc.stderr


@pytest.mark.parametrize("rule", ["metropolis", "max-degree", "lazy-metropolis", "pairwise"])
def test_second_moment_rate_equals_one_minus_p_for_exchangeable(rule):
    # exchangeable law: E[BBᵀ] = E[BᵀB] = (1 − p) I, so the bound is tight
    s = make_sampler("encounter", 4, q=0.4, weights=rule)
    assert second_moment_rate(s) == pytest.approx(1 - consensus_rate(s).p, abs=1e-10)


def test_second_moment_rate_below_bound_for_time_varying():
    for s in (make_sampler("one-peer-exponential", 6),
              make_sampler("matching", 6, graph="ring"),
              make_sampler("encounter", 4, q=0.3, weights="uniform")):
        rho = second_moment_rate(s, samples=20000, seed=0)
        p = consensus_rate(s, samples=20000, seed=0)
        assert rho <= 1 - p.p + 4 * p.stderr + 1e-12


def test_matching_closed_forms():
    for n in (4, 5, 10):
        s = make_sampler("matching", n)
        # W is a symmetric projection (W² = W), so E[WᵀW] = E[W]
        p = n / (2 * (n - 1)) if n % 2 == 0 else 0.5
        r = consensus_rate(s)
        assert r.method == "enumeration" and r.p == pytest.approx(p, abs=1e-12)
        mats, probs = s.support()
        np.testing.assert_allclose(np.einsum("k,kij->ij", probs, mats), s.expected(), atol=1e-14)


def test_one_peer_exponential_is_exact_averaging_over_a_period():
    s = make_sampler("one-peer-exponential", 16)
    assert s.period == 4 and s.doubly_stochastic and not s.symmetric
    P = np.eye(16)
    for t in range(s.period):
        P = s.sample(t, None) @ P
    np.testing.assert_allclose(P, np.full((16, 16), 1 / 16), atol=1e-14)
    # E[WᵀW] is circulant: eigenvalue at frequency j is mean_k (1 + cos(2π j 2^k / n)) / 2
    j = np.arange(1, 16)[:, None]
    lam = np.mean((1 + np.cos(2 * np.pi * j * 2 ** np.arange(4) / 16)) / 2, axis=1)
    assert consensus_rate(s).p == pytest.approx(1 - lam.max(), abs=1e-12)
    # run in order, a period is exact averaging: block p = 1, per-round decay 0
    assert periodic_rates(s) == {"period": 4, "p_period": 1.0, "rate_per_round": 0.0}
    odd = periodic_rates(make_sampler("one-peer-exponential", 10))
    assert 0 < odd["rate_per_round"] < 1 and odd["p_period"] < 1
    assert topology_constants(s, samples=100)["periodic"]["p_period"] == 1.0


def test_encounter_expected_closed_form_matches_monte_carlo():
    for rule in ("metropolis", "uniform", "lazy-metropolis"):
        s = make_sampler("encounter", 9, q=0.2, weights=rule)
        rng = np.random.default_rng(0)
        mc = s.sample_batch(rng, 40000).mean(0)
        assert np.abs(mc - s.expected()).max() < 0.01


def test_encounter_samples_are_doubly_stochastic_and_seeded():
    rng = numpy_rng(0, "topology", 5)
    for rule in ("metropolis", "max-degree", "lazy-metropolis", "pairwise"):
        s = make_sampler("encounter", 7, q=0.3, weights=rule)
        Ws = s.sample_batch(np.random.default_rng(1), 200)
        np.testing.assert_allclose(Ws.sum(1), 1, atol=1e-12)
        np.testing.assert_allclose(Ws.sum(2), 1, atol=1e-12)
        assert (Ws >= 0).all()
        a = s.sample(5, numpy_rng(0, "topology", 5))
        b = s.sample(5, numpy_rng(0, "topology", 5))
        np.testing.assert_array_equal(a, b)
    assert rng is not None


def test_pairwise_is_sequential_averaging():
    s = make_sampler("encounter", 3, q=1.0, weights="pairwise")
    mats, probs = s.support()
    # q = 1: all 3! orders of the 3 encounters, each a product of pair averages
    assert len(probs[probs > 0]) == 6 and probs.sum() == pytest.approx(1)
    W = mats[np.argmax(probs)]
    assert not np.allclose(W, W.T) and np.allclose(W.sum(0), 1) and np.allclose(W.sum(1), 1)


def test_rate_of_encounter_paper_setting():
    # docs/architecture.md §3: q = 0.1, n = 10, metropolis gives p ≈ 0.36 while each W^t is
    # disconnected
    s = make_sampler("encounter", 10, q=0.1, weights="metropolis")
    r = consensus_rate(s, samples=20000, seed=0)
    assert r.method == "monte-carlo" and abs(r.p - 0.365) < 0.01
    single = s.sample(0, numpy_rng(0, "topology", 0))
    assert spectral_gap(single) == 0.0


# ---------------------------------------------------------------- validation and errors


def test_validate_reports_and_refuses():
    with pytest.raises(AdfloraError, match="not square"):
        validate(np.ones((2, 3)))
    with pytest.raises(AdfloraError, match="NaN"):
        validate(np.array([[0.5, np.nan], [0.5, 0.5]]))
    with pytest.raises(AdfloraError, match="negative"):
        validate(np.array([[1.5, -0.5], [-0.5, 1.5]]))
    W = np.array([[0.5, 0.5, 0], [0.5, 0.5, 0], [0.3, 0.3, 0.4]])
    with pytest.raises(AdfloraError, match=r"worst row sum 1, worst column sum 0\.4"):
        validate(W)
    rep = validate(W, for_theory=False)
    assert rep.row_stochastic and not rep.column_stochastic and not rep.doubly_stochastic
    assert rep.worst_col_sum == pytest.approx(0.4)
    assert "\n" not in str(pytest.raises(AdfloraError, validate, np.ones((2, 3))).value)


def test_build_graph_families():
    for name in GRAPHS:
        if name in ("edgelist", "adjacency"):
            continue
        n = 16
        g = build_graph(name, n, seed=0)
        assert sorted(g.nodes()) == list(range(n)), name
        assert nx.number_of_selfloops(g) == 0
    assert build_graph("exponential", 8, sided="one").is_directed()
    assert build_graph("torus", 12).number_of_edges() == 24  # 3 x 4 torus, 4-regular
    assert build_graph("grid", 12, rows=2).number_of_edges() == 2 * 5 + 6


@pytest.mark.parametrize("call, message", [
    (lambda: build_graph("hypercub", 8), "unknown graph 'hypercub'; valid: .*did you mean"),
    (lambda: build_graph("hypercube", 10), "power of 2"),
    (lambda: build_graph("ring", 1), "too few"),
    (lambda: build_graph("torus", 7), "does not split"),
    (lambda: build_graph("ring", 5, degree=3), "takes no parameter 'degree'"),
    (lambda: build_graph("random-regular", 5, degree=3), "n\\*degree even"),
    (lambda: build_graph("edgelist", 5), "needs path"),
    (lambda: mixing_matrix(build_graph("ring", 5), "metropolis-hastings"), "unknown weight"),
    (lambda: mixing_matrix(build_graph("exponential", 8, sided="one"), "metropolis"),
     "undirected"),
    (lambda: make_sampler("encounter", 5, q=0.0), r"outside \(0, 1\]"),
    (lambda: make_sampler("encounter", 5, q=1.5), r"outside \(0, 1\]"),
    (lambda: make_sampler("encounter", 5), "needs an encounter probability"),
    (lambda: make_sampler("encounter", 5, q=0.1, weights="fastest"), "unknown encounter"),
    (lambda: make_sampler("gossip", 5), "unknown sampler kind"),
    (lambda: make_sampler("static", 1), "too few"),
    (lambda: TopologyConfig(graph="encounter"), "needs an encounter probability"),
    (lambda: TopologyConfig(graph="ring", q=0.1), "only used by graph 'encounter'"),
    (lambda: TopologyConfig(graph="ring", weights="pairwise"), "time-varying"),
    (lambda: TopologyConfig(graph="ring", weights="nope"), "unknown weights"),
    (lambda: second_moment_rate(make_sampler("matching", 70)), "above the limit"),
    (lambda: consensus_rate(make_sampler("matching", 20), method="exact"), "no exact"),
])
def test_errors_are_one_line(call, message):
    with pytest.raises(AdfloraError, match=message) as err:
        call()
    assert "\n" not in str(err.value)


def test_graph_files(tmp_path):
    f = tmp_path / "edges.txt"
    f.write_text("# a path\n0 1\n1 2\n2 3\n")
    g = build_graph("edgelist", 5, path=str(f))  # node 4 isolated
    assert g.number_of_edges() == 3 and not nx.is_connected(g)
    a = tmp_path / "adj.csv"
    a.write_text("0,1,1\n1,0,1\n1,1,0\n")
    assert build_graph("adjacency", 3, path=str(a)).number_of_edges() == 3
    np.save(tmp_path / "adj.npy", nx.to_numpy_array(nx.cycle_graph(4)))
    assert build_graph("adjacency", 4, path=str(tmp_path / "adj.npy")).number_of_edges() == 4
    bad = tmp_path / "bad.txt"
    bad.write_text("0 1 2 3\nfoo\n")
    with pytest.raises(AdfloraError, match="does not parse"):
        build_graph("edgelist", 4, path=str(bad))
    with pytest.raises(AdfloraError, match="does not exist"):
        build_graph("edgelist", 4, path=str(tmp_path / "missing.txt"))
    with pytest.raises(AdfloraError, match="nodes, not n"):
        build_graph("adjacency", 5, path=str(a))


def test_load_matrix(tmp_path):
    W = mixing_matrix(build_graph("ring", 5), "metropolis")
    np.savetxt(tmp_path / "W.csv", W, delimiter=",")
    np.testing.assert_allclose(load_matrix(str(tmp_path / "W.csv")), W)
    (tmp_path / "bad.csv").write_text("0.5,0.5\n0.5\n")
    with pytest.raises(AdfloraError, match="does not parse"):
        load_matrix(str(tmp_path / "bad.csv"))
    np.savetxt(tmp_path / "R.txt", np.array([[1.0, 0.0], [0.5, 0.5]]))
    assert not validate(load_matrix(str(tmp_path / "R.txt")), for_theory=False).doubly_stochastic
    with pytest.raises(AdfloraError, match="not doubly stochastic: worst row sum 1, worst "
                       "column sum 1.5"):
        load_matrix(str(tmp_path / "R.txt"), for_theory=True)


def test_fastest_mixing_needs_cvxpy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cvxpy", None)
    with pytest.raises(AdfloraError, match=r"pip install 'adflora-analysis\[sdp\]'"):
        mixing_matrix(build_graph("path", 4), "fastest-mixing")


def test_fastest_mixing_sdp():
    pytest.importorskip("cvxpy")
    g = build_graph("path", 5)
    W = mixing_matrix(g, "fastest-mixing")
    assert validate(W, tol=1e-6).doubly_stochastic
    # Boyd, Diaconis & Xiao 2004: on a path the fastest chain moves w.p. 1/2 on every edge
    A = nx.to_numpy_array(g)
    np.testing.assert_allclose(W, 0.5 * A + np.diag(1 - 0.5 * A.sum(1)), atol=1e-4)
    assert spectral_gap(W) >= spectral_gap(mixing_matrix(g, "metropolis")) - 1e-6


# ---------------------------------------------------------------- config and constants


def test_build_sampler_conventions(tmp_path):
    s = build_sampler(TopologyConfig(graph="encounter", weights="pairwise", q=0.2), 6)
    assert s.kind == "encounter" and s.rule == "pairwise" and s.q == 0.2
    s = build_sampler(TopologyConfig(graph="encounter", weights="server", q=0.2), 6)
    assert s.is_static and np.allclose(s.sample(3, None), 1 / 6)
    s = build_sampler(TopologyConfig(graph="random-regular", params={"degree": 3}), 10, seed=2)
    s2 = build_sampler(TopologyConfig(graph="random-regular", params={"degree": 3}), 10, seed=2)
    np.testing.assert_array_equal(s.sample(0, None), s2.sample(0, None))
    assert build_sampler(TopologyConfig(graph="matching"), 6).kind == "matching"
    m = build_sampler(TopologyConfig(graph="matching", params={"graph": "ring"}), 6)
    assert not m.exchangeable
    assert build_sampler(TopologyConfig(graph="one-peer-exponential"), 8).period == 3
    np.save(tmp_path / "W.npy", np.full((3, 3), 1 / 3))
    s = build_sampler(TopologyConfig(matrix=str(tmp_path / "W.npy")), 3)
    assert s.is_static and s.n == 3
    with pytest.raises(AdfloraError, match="but n = 4"):
        build_sampler(TopologyConfig(matrix=str(tmp_path / "W.npy")), 4)
    # config round trip through the shared loader (TOML-like dict)
    from adflora_analysis.config import load_config
    cfg = load_config(TopologyConfig, data={"graph": "encounter", "q": 0.1},
                      overrides=["weights=pairwise"])
    assert cfg == TopologyConfig(graph="encounter", weights="pairwise", q=0.1)


def test_topology_constants_fields():
    c = topology_constants(make_sampler("encounter", 7, q=0.3), samples=2000, seed=0)
    for key in ("n", "graph", "weights", "doubly_stochastic", "symmetric", "connected",
                "lambda2", "lambda_n", "spectral_gap", "p", "p_stderr", "second_moment_rate"):
        assert key in c
    assert c["connected"] and c["p"] > 0 and c["p_method"] == "monte-carlo"
    big = topology_constants(make_sampler("matching", 70), samples=200, seed=0)
    assert big["second_moment_rate"] is None


def test_consensus_basis_is_orthonormal():
    U = consensus_basis(7)
    np.testing.assert_allclose(U.T @ U, np.eye(6), atol=1e-13)
    np.testing.assert_allclose(U.sum(0), 0, atol=1e-13)


def test_rules_listed():
    assert set(RULES) >= {"metropolis", "max-degree", "lazy-metropolis", "uniform", "server",
                          "fastest-mixing"}
    assert math.isfinite(spectral_gap(np.eye(2)))
