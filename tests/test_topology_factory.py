"""One topology factory: one sampler dispatch, weight rules written once (dense and edge list),
seeds handled by a decorator, and sparse draws equal to the dense ones."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

from adflora_analysis.errors import AdfloraError
from adflora_analysis.seeding import numpy_rng
from adflora_analysis.topology import samplers as smp
from adflora_analysis.topology.config import TopologyConfig, build_sampler
from adflora_analysis.topology.graphs import build_graph, seeded
from adflora_analysis.topology.samplers import make_sampler
from adflora_analysis.topology.sparse import SparseW, check_dense_fits
from adflora_analysis.topology.weights import (
    GRAPH_RULES,
    adjacency,
    edge_weights,
    weights_from_adjacency,
)


@pytest.mark.parametrize("cfg,n", [
    (TopologyConfig(graph="ring", weights="metropolis"), 6),
    (TopologyConfig(graph="random-regular", weights="max-degree", params={"degree": 3}), 8),
    (TopologyConfig(graph="encounter", weights="uniform", q=0.3), 6),
    (TopologyConfig(graph="matching", weights="pairwise", params={"graph": "ring"}), 6),
    (TopologyConfig(graph="one-peer-exponential", weights="pairwise"), 6),
    (TopologyConfig(graph="torus", weights="server"), 6),
])
def test_build_sampler_is_make_sampler(cfg, n):
    """The config path and the function path give the same W^t (one dispatch)."""
    from adflora_analysis.seeding import int_seed

    s1 = build_sampler(cfg, n, seed=3)
    kind = cfg.graph if cfg.graph in ("encounter", "matching", "one-peer-exponential") \
        and cfg.weights != "server" else "static"
    params = dict(cfg.params)
    if kind == "static":
        params.update(graph=cfg.graph, weights=cfg.weights)
    elif kind == "encounter":
        params.update(q=cfg.q, weights=cfg.weights)
    s2 = make_sampler(kind, n, seed=int_seed(3, "topology-graph"), **params)
    for t in range(3):
        a = s1.sample(t, numpy_rng(0, "topology", t))
        b = s2.sample(t, numpy_rng(0, "topology", t))
        assert np.array_equal(a, b)


def test_seeded_decorator():
    g1 = build_graph("random-regular", 12, seed=5, degree=3)
    g2 = build_graph("random-regular", 12, seed=5, degree=3)
    g3 = build_graph("random-regular", 12, seed=6, degree=3)
    assert sorted(g1.edges()) == sorted(g2.edges()) != sorted(g3.edges())
    # a numpy Generator is turned into an int seed: same generator state, same graph
    a = build_graph("random-regular", 12, seed=np.random.default_rng(1), degree=3)
    b = build_graph("random-regular", 12, seed=np.random.default_rng(1), degree=3)
    assert sorted(a.edges()) == sorted(b.edges())
    # deterministic kinds never see the seed; random ones are marked
    assert smp._static.takes_seed and not hasattr(smp.SAMPLERS["one-peer-exponential"],
                                                  "takes_seed")
    make_sampler("one-peer-exponential", 8, seed=3)      # accepted, not passed

    @seeded
    def f(n, seed=None):
        return seed
    assert f(1, seed=None) is None and f(1, seed=np.int64(4)) == 4


def test_renamed_weights_keyword():
    s = make_sampler("encounter", 5, q=0.2, weights="max-degree")
    assert s.rule == "max-degree"
    with pytest.raises(AdfloraError, match="takes no parameter 'rule'"):
        make_sampler("encounter", 5, q=0.2, rule="max-degree")


@pytest.mark.parametrize("rule", GRAPH_RULES)
def test_weight_rule_written_once(rule):
    """The edge-list form of each rule equals the dense form; a wrong rule does not."""
    for k in range(10):
        g = nx.gnp_random_graph(9, 0.35, seed=k)
        a = adjacency(g)
        dense = weights_from_adjacency(a, rule)
        i, j = np.nonzero(a)
        sw = edge_weights(rule, 9, i, j)
        np.testing.assert_allclose(sw.dense()[0], dense, atol=1e-15)
    g = nx.Graph([(0, 1), (0, 2), (0, 3), (3, 4)])  # degrees 3, 1, 1, 2, 1: rules differ
    i, j = np.nonzero(adjacency(g))
    for other in set(GRAPH_RULES) - {rule}:           # the planted defect: the wrong rule
        assert not np.allclose(edge_weights(other, 5, i, j).dense()[0],
                               weights_from_adjacency(adjacency(g), rule))


@pytest.mark.parametrize("kind,params", [
    ("encounter", {"q": 0.3, "weights": "metropolis"}),
    ("encounter", {"q": 0.5, "weights": "lazy-metropolis"}),
    ("encounter", {"q": 0.2, "weights": "uniform"}),
    ("matching", {}),
    ("matching", {"graph": "ring"}),
    ("one-peer-exponential", {}),
    ("static", {"graph": "torus", "weights": "metropolis"}),
])
def test_sparse_draw_equals_dense_draw(kind, params):
    s = make_sampler(kind, 12, seed=0, **params)
    assert s.sparse
    for t in range(5):
        dense = s.sample(t, numpy_rng(1, "topology", t))
        sw = s.sample_sparse(t, numpy_rng(1, "topology", t))
        np.testing.assert_allclose(sw.dense()[0], dense, rtol=0, atol=1e-15)


def test_pairwise_has_no_sparse_form():
    s = make_sampler("encounter", 5, q=0.3, weights="pairwise")
    assert not s.sparse
    with pytest.raises(AdfloraError, match="no sparse form"):
        s.sample_sparse(0, np.random.default_rng(0))


def test_pair_index_inverse():
    for n in (2, 3, 7, 50, 301):
        iu, ju = np.triu_indices(n, 1)
        i, j = smp._pair_of_index(np.arange(len(iu)), n)
        assert np.array_equal(i, iu) and np.array_equal(j, ju)
    n = 100_000                        # spot checks where float round-off bites
    e = np.array([0, n - 2, n - 1, n * (n - 1) // 2 - 1, 4_999_900_000, 123_456_789])
    i, j = smp._pair_of_index(e, n)
    start = i * (2 * n - i - 1) // 2
    assert np.all((0 <= i) & (i < j) & (j < n)) and np.array_equal(start + j - i - 1, e)


def test_large_n_encounter_law(monkeypatch):
    """The geometric-skip draw (large n) has the law of one Bernoulli(q) per pair."""
    monkeypatch.setattr(smp, "PAIR_DRAW_LIMIT", 10)
    n, q = 40, 0.1
    s = make_sampler("encounter", n, q=q, weights="metropolis")
    sw = s.sample_sparse_batch(np.random.default_rng(0), 400)
    m = n * (n - 1) // 2
    counts = np.bincount(sw.batch, minlength=400) / 2          # undirected encounters
    assert abs(counts.mean() - q * m) < 4 * np.sqrt(q * (1 - q) * m / 400)
    # every pair equally likely: first and last pairs met about as often as any
    pair = np.minimum(sw.dst, sw.src) * n + np.maximum(sw.dst, sw.src)
    freq = np.bincount(pair, minlength=n * n)[np.triu_indices(n, 1)[0] * n
                                               + np.triu_indices(n, 1)[1]] / 2 / 400
    assert abs(freq.mean() - q) < 0.01 and freq.max() < 0.3
    # no duplicate encounter within a round, no self-loop
    key = sw.batch * n * n + sw.dst * n + sw.src
    assert len(np.unique(key)) == len(key) and np.all(sw.dst != sw.src)
    dense = s.sample_batch(np.random.default_rng(0), 3)
    assert np.allclose(dense.sum(1), 1) and np.allclose(dense.sum(2), 1)


def test_sparse_w_algebra():
    rng = np.random.default_rng(0)
    W = rng.random((3, 6, 6)) * (rng.random((3, 6, 6)) < 0.4)
    sw = SparseW.from_dense(W)
    assert np.array_equal(sw.dense(), W)
    U = np.eye(6) - 1 / 6
    np.testing.assert_allclose(sw.frob_dev(), [np.sum((w @ U) ** 2) for w in W])
    x = rng.random((3, 6))
    np.testing.assert_allclose(sw.matvec(x), np.einsum("bij,bj->bi", W, x))
    np.testing.assert_allclose(sw.rmatvec(x), np.einsum("bji,bj->bi", W, x))
    np.testing.assert_allclose(sw.row_sums(), W.sum(2))
    np.testing.assert_allclose(sw.col_sums(), W.sum(1))
    assert np.array_equal(sw.messages(), [np.count_nonzero(w - np.diag(np.diag(w))) for w in W])


def test_refusal_before_allocating():
    with pytest.raises(AdfloraError, match=r"needs 80\.0 GB"):
        check_dense_fits(100_000)
    s = make_sampler("encounter", 100_000, q=1e-4, weights="metropolis")   # no n x n here
    with pytest.raises(AdfloraError, match="needs 80.0 GB"):
        s.sample(0, np.random.default_rng(0))
    with pytest.raises(AdfloraError, match="W = J"):
        make_sampler("static", 100_000, graph="ring", weights="server")
    sw = s.sample_sparse(0, np.random.default_rng(0))               # the sparse draw works
    assert sw.n == 100_000 and abs(sw.nnz_off / 100_000 - 1e-4 * 99_999) < 0.5
