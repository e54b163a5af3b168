"""Topologies from recent work, each checked against the property its paper states."""

from __future__ import annotations

import numpy as np
import pytest

from adflora_analysis.topology import measures as M
from adflora_analysis.topology.config import TopologyConfig, build_sampler, topology_constants
from adflora_analysis.topology.rates import consensus_rate
from adflora_analysis.topology.samplers import make_sampler


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
