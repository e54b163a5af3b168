"""Sparse gossip at scale: the sparse path equals the dense product, its bookkeeping equals the
dense bookkeeping, and nothing on it builds an n x n array."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adflora_analysis.core.gossip import SPARSE_MIN_N, gossip, messages, mixing_schedule
from adflora_analysis.core.sparse import SparseMix, mixing_stats
from adflora_analysis.errors import AdfloraError
from adflora_analysis.topology import sparse as tsparse
from adflora_analysis.topology.samplers import make_sampler

SAMPLERS = [
    ("encounter", {"q": 0.3, "weights": "metropolis"}),
    ("encounter", {"q": 0.3, "weights": "uniform"}),          # not symmetric, not doubly st.
    ("matching", {}),
    ("one-peer-exponential", {}),                              # not symmetric
    ("static", {"graph": "random-regular", "degree": 4, "weights": "metropolis"}),
]


@pytest.mark.parametrize("kind,params", SAMPLERS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sparse_gossip_equals_dense(kind, params, dtype):
    s = make_sampler(kind, 14, seed=0, **params)
    dense = mixing_schedule(s, [0, 1, 2], dtype=dtype, sparse=False)
    sparse = mixing_schedule(s, [0, 1, 2], dtype=dtype, sparse=True)
    X = torch.randn(3, 14, 4, 5, dtype=dtype, generator=torch.Generator().manual_seed(0))
    tol = 1e-13 if dtype == torch.float64 else 2e-6
    for t in range(4):
        Wd, Ws = dense(t), sparse(t)
        assert isinstance(Ws, SparseMix) and Ws.batch_shape == (3,)
        torch.testing.assert_close(Ws.dense(), Wd, rtol=0, atol=tol)
        torch.testing.assert_close(gossip(Ws, X), gossip(Wd, X), rtol=0, atol=10 * tol)
        assert torch.equal(messages(Ws), messages(Wd))
        assert torch.equal(messages(Ws, server=True), messages(Wd, server=True))
        st_d, st_s = mixing_stats(Wd), mixing_stats(Ws)
        for k in st_d:
            torch.testing.assert_close(st_s[k], st_d[k], rtol=0, atol=10 * tol, msg=k)


def test_sparse_stats_catch_planted_defects():
    """A dropped edge breaks the row sums and the symmetry; the stats see both."""
    s = make_sampler("encounter", 12, q=0.5, weights="metropolis")
    sw = s.sample_sparse(0, np.random.default_rng(0))
    ok = mixing_stats(SparseMix.from_sparse_w(sw, (1,)))
    assert float(ok["row_err"]) < 1e-12 and float(ok["asym"]) < 1e-12
    bad = tsparse.SparseW(sw.n, sw.diag, sw.batch[1:], sw.dst[1:], sw.src[1:], sw.weight[1:])
    st = mixing_stats(SparseMix.from_sparse_w(bad, (1,)))
    w0 = float(sw.weight[0])
    assert abs(float(st["row_err"]) - w0) < 1e-12 and abs(float(st["asym"]) - w0) < 1e-12
    assert float(st["mean_degree"]) == pytest.approx(float(ok["mean_degree"]) - 1 / 12)
    # the gossip of the broken W differs from the intact one
    X = torch.randn(1, 12, 2, 2, dtype=torch.float64)
    assert not torch.allclose(gossip(SparseMix.from_sparse_w(bad, (1,)), X),
                              gossip(SparseMix.from_sparse_w(sw, (1,)), X))


def test_auto_choice():
    small = make_sampler("encounter", 50, q=0.2)
    assert isinstance(mixing_schedule(small, [0])(0), torch.Tensor)
    big = make_sampler("encounter", SPARSE_MIN_N, q=0.01)
    assert isinstance(mixing_schedule(big, [0])(0), SparseMix)
    pw = make_sampler("encounter", SPARSE_MIN_N, q=0.001, weights="pairwise")
    with pytest.raises(AdfloraError, match="no sparse form"):
        mixing_schedule(pw, [0], sparse=True)


def test_no_dense_matrix_on_the_sparse_path(monkeypatch):
    """With every dense W refused, a round's gossip, messages and validity stats still run."""
    monkeypatch.setattr(tsparse, "DENSE_BYTES_LIMIT", 0)
    n = 3000
    for kind, params in [("encounter", {"q": 10 / n}), *SAMPLERS[2:]]:
        s = make_sampler(kind, n, seed=0, **params)
        W = mixing_schedule(s, [0, 1], dtype=torch.float32)(0)
        X = torch.ones(2, n, 3, 2)
        torch.testing.assert_close(gossip(W, X), X)           # doubly stochastic: 1 stays 1
        assert messages(W).shape == (2,)
        assert float(mixing_stats(W)["row_err"].max()) < 1e-6
        with pytest.raises(AdfloraError, match="needs"):
            W.dense()


def test_run_rounds_sparse_equals_dense():
    """The synthetic round loop with sparse W^t gives the dense run's metrics."""
    from adflora_analysis.config import load_config
    from adflora_analysis.core import get_method, run_rounds
    from adflora_analysis.synthetic.config import SyntheticConfig
    from adflora_analysis.synthetic.problem import QuadraticProblem
    from adflora_analysis.topology import build_sampler

    cfg = load_config(SyntheticConfig, data={
        "n_clients": 12, "rounds": 4, "local_steps": 2, "lr": 0.05, "rank": 2, "seeds": 2,
        "methods": ["adf-lora"], "d_in": 6, "d_out": 5, "target_rank": 2,
        "constants_every": 0, "topology": {"graph": "encounter", "q": 0.3}})
    sampler = build_sampler(cfg.topology, 12, seed=0)
    out = {}
    for sparse in (False, True):
        prob = QuadraticProblem(cfg, cfg.seed_list)
        mix = mixing_schedule(sampler, cfg.seed_list, sparse=sparse)
        rows = list(run_rounds(prob, get_method("adf-lora"), prob.initial_state(), mix,
                               rounds=4))
        out[sparse] = rows[-1]
    for k, v in out[False].layer.items():
        torch.testing.assert_close(out[True].layer[k], v, rtol=1e-9, atol=1e-12, msg=k)
    for k in ("loss", "grad_norm_sq", "bytes_sent"):
        torch.testing.assert_close(out[True].scalar[k], out[False].scalar[k], rtol=1e-9,
                                   atol=1e-12, msg=k)
