"""Property tests (hypothesis) of the topology layer on random graphs."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adflora_analysis.topology import (
    build_graph,
    consensus_rate,
    make_sampler,
    mixing_matrix,
    second_moment_rate,
    spectral_summary,
    validate,
)

SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
SYMMETRIC_RULES = ("metropolis", "max-degree", "lazy-metropolis")


@st.composite
def random_graphs(draw, n_min=3, n_max=16):
    n = draw(st.integers(n_min, n_max))
    family = draw(st.sampled_from(["erdos-renyi", "watts-strogatz", "random-geometric"]))
    seed = draw(st.integers(0, 10_000))
    if family == "erdos-renyi":
        return build_graph(family, n, seed=seed, p=draw(st.floats(0.05, 1.0)))
    if family == "watts-strogatz":
        k = draw(st.integers(0, n - 1))
        return build_graph(family, n, seed=seed, k=k, p=draw(st.floats(0.0, 1.0)))
    return build_graph(family, n, seed=seed, radius=draw(st.floats(0.05, 1.5)))


@SETTINGS
@given(random_graphs())
def test_rules_are_stochastic_as_they_should_be(g):
    for rule in SYMMETRIC_RULES:
        W = mixing_matrix(g, rule)
        rep = validate(W)  # for_theory: raises unless doubly stochastic
        assert rep.symmetric and rep.nonnegative
        assert rep.connected == nx.is_connected(g)
    rep = validate(mixing_matrix(g, "uniform"), for_theory=False)
    assert rep.row_stochastic
    degrees = {d for _, d in g.degree()}
    if len(degrees) == 1:  # regular graph: uniform = max-degree = metropolis
        assert rep.doubly_stochastic


@SETTINGS
@given(random_graphs())
def test_static_p_is_one_minus_squared_contraction(g):
    for rule in SYMMETRIC_RULES:
        W = mixing_matrix(g, rule)
        delta = spectral_summary(W).gap
        r = consensus_rate(W)
        assert r.method == "exact" and r.stderr == 0.0
        assert r.p == pytest.approx(1 - (1 - delta) ** 2, abs=1e-10)
        assert -1e-12 <= r.p <= 1.0
        assert (delta > 1e-9) == nx.is_connected(g)  # positive diagonal: aperiodic
        # the exact second-moment rate never beats the bound (static symmetric: equal)
        assert second_moment_rate(W) == pytest.approx(1 - r.p, abs=1e-10)


@SETTINGS
@given(random_graphs(n_min=6, n_max=40), st.sampled_from(SYMMETRIC_RULES + ("uniform",)))
def test_dense_and_sparse_spectra_agree(g, rule):
    W = mixing_matrix(g, rule, sparse=True)
    s = spectral_summary(W, method="sparse")
    d = spectral_summary(W.toarray(), method="dense")
    assert s.symmetric == d.symmetric
    assert abs(s.gap - d.gap) < 1e-8
    assert abs(s.lambda2 - d.lambda2) < 1e-8 and abs(s.lambda_n - d.lambda_n) < 1e-8


@SETTINGS
@given(st.integers(2, 4), st.floats(0.01, 1.0),
       st.sampled_from(["metropolis", "max-degree", "lazy-metropolis", "uniform", "pairwise"]))
def test_bound_holds_against_exact_second_moment_rate(n, q, rule):
    s = make_sampler("encounter", n, q=q, weights=rule)
    r = consensus_rate(s)
    assert r.method == "enumeration"
    assert 0.0 <= r.p <= 1.0
    assert second_moment_rate(s) <= 1 - r.p + 1e-10


@SETTINGS
@given(st.integers(3, 7), st.integers(1, 4), st.integers(0, 10_000))
def test_bound_holds_for_random_non_symmetric_sequences(n, length, seed):
    # products of random pair averages: doubly stochastic, not symmetric, not exchangeable
    rng = np.random.default_rng(seed)
    mats = []
    for _ in range(length):
        W = np.eye(n)
        for _ in range(rng.integers(1, 2 * n)):
            i, j = rng.choice(n, 2, replace=False)
            avg = 0.5 * (W[i] + W[j])
            W[i] = avg
            W[j] = avg
        mats.append(W)
    s = make_sampler("list", n, matrices=mats)
    assert validate(s.expected()).doubly_stochastic
    r = consensus_rate(s)
    assert r.p <= 1.0 + 1e-12
    assert second_moment_rate(s) <= 1 - r.p + 1e-10
