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


# ---------------------------------------------------------------- rows storage of the testbed
def _rows_cfg(storage: str, **over):
    from adflora_analysis.config import load_config
    from adflora_analysis.synthetic.config import SyntheticConfig

    data = {"n_clients": 7, "rounds": 4, "local_steps": 2, "lr": 0.05, "rank": 2, "seeds": 2,
            "methods": ["adf-lora", "lora"], "d_in": 9, "d_out": 6, "n_layers": 2,
            "target_rank": 2, "samples_per_client": 4, "batch_size": 3, "constants_every": 2,
            "topology": {"graph": "ring"}, "client_storage": storage, **over}
    return load_config(SyntheticConfig, data=data)


def _client_mismatch(a, b, seed: int = 0) -> list[str]:
    """Names of the per-client quantities where problem ``b`` differs from ``a`` (gradients
    and loss of every client at random points, the data's constants)."""
    g = torch.Generator().manual_seed(seed)
    S, n, L, r, di, do = 2, a.n, a.L, a.r, a.cfg.d_in, a.cfg.d_out
    A = torch.randn(S, n, L, r, di, generator=g, dtype=torch.float64)
    B = torch.randn(S, n, L, do, r, generator=g, dtype=torch.float64)
    bad = []

    def same(x, y):
        return torch.allclose(x.double(), y.double(), rtol=1e-10, atol=1e-12)

    stats = {}
    for name, p in (("a", a), ("b", b)):
        Sig, C = p.Sig, p.C
        if not isinstance(Sig, torch.Tensor):
            Sig = Sig.to(torch.float64)
        else:
            Sig, C = Sig.double(), C.double()
        stats[name] = (p.full_grads(A, B, Sig, C), p._loss(A, B, Sig, C, p.c0))
    for k in ("A", "B"):
        if not same(stats["a"][0][k], stats["b"][0][k]):
            bad.append(f"grad_{k}")
    if not same(stats["a"][1], stats["b"][1]):
        bad.append("loss")
    for k in ("lam_sigma", "norm_C", "c0", "Sig_bar64", "C_bar64", "f_star"):
        if not same(getattr(a, k), getattr(b, k)):
            bad.append(k)
    return bad


def test_rows_storage_equals_statistics():
    """client_storage = "rows" (no d x d matrix per client) gives the statistics form's
    per-client gradients, losses and constants, and the same metrics in every row of a study
    (two methods, minibatch noise, constants measured), to float round-off."""
    from adflora_analysis.synthetic.problem import QuadraticProblem
    from adflora_analysis.synthetic.runner import study_rows

    a = QuadraticProblem(_rows_cfg("statistics"))
    b = QuadraticProblem(_rows_cfg("rows"))
    assert _client_mismatch(a, b) == []
    ca = a.measure_constants(a.initial_state(), 0)
    cb = b.measure_constants(b.initial_state(), 0)
    for k, v in ca.items():
        torch.testing.assert_close(cb[k], v, rtol=1e-9, atol=1e-12, msg=k)
    key = ["method", "seed", "round", "layer"]
    da = study_rows(_rows_cfg("statistics")).sort_values(key).reset_index(drop=True)
    db = study_rows(_rows_cfg("rows")).sort_values(key).reset_index(drop=True)
    assert list(da.columns) == list(db.columns) and len(da) == len(db) == 2 * 2 * 4 * 3
    num = [c for c in da.columns if da[c].dtype.kind == "f"]
    assert {"loss", "local_loss", "zeta_sq", "sigma_sq_max", "L_hull", "xi_A"} <= set(num)
    for c in num:
        np.testing.assert_allclose(db[c].to_numpy(), da[c].to_numpy(), rtol=1e-8, atol=1e-11,
                                   err_msg=c)


def test_rows_storage_catches_planted_defects(monkeypatch):
    """The comparison above is not blind: two clients' rows swapped, or the rows normalized as
    if m were one more, are caught (the averaged statistics do not see the swap)."""
    from adflora_analysis.synthetic import rows
    from adflora_analysis.synthetic.problem import QuadraticProblem

    a = QuadraticProblem(_rows_cfg("statistics"))
    b = QuadraticProblem(_rows_cfg("rows"))
    b.XR[:, [0, 1]] = b.XR[:, [1, 0]].clone()        # X, R and Sig are views of XR
    assert {"grad_A", "grad_B", "loss"} <= set(_client_mismatch(a, b))
    assert "Sig_bar64" not in _client_mismatch(a, b)
    init = rows.Rows.__init__

    def off_by_one(self, X, R):
        init(self, X, R)
        self.m += 1

    monkeypatch.setattr(rows.Rows, "__init__", off_by_one)
    c = QuadraticProblem(_rows_cfg("rows"))
    assert {"grad_A", "grad_B", "loss"} <= set(_client_mismatch(a, c))


def test_rows_storage_keeps_no_d_squared_per_client():
    """Every per-client tensor of the rows form is O(m d): its bytes per client stay below the
    rows' own m (d_in + d_out) numbers plus a few scalars, at d >> m; the statistics form
    (planted: the check is run on it) holds d^2 per client and fails the same bound."""
    from adflora_analysis.synthetic.problem import QuadraticProblem

    over = {"d_in": 32, "d_out": 32, "n_layers": 1, "seeds": 1, "rank": 2, "n_clients": 5,
            "dtype": "float32"}
    cfg = _rows_cfg("rows", **over)
    bound = 4 * cfg.samples_per_client * 64 + 8 * 8
    assert QuadraticProblem(cfg).stored_bytes_per_client() <= bound
    assert QuadraticProblem(_rows_cfg("statistics", **over)).stored_bytes_per_client() \
        > 10 * bound


def test_scale_benchmark_refuses_in_one_line_before_allocating():
    """benchmarks/scale.py refuses a configuration from the estimate alone: a dense W^t over
    its budget, or a run over the available memory; one that fits is not refused."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "scale.py"
    spec = importlib.util.spec_from_file_location("scale_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    dense = bench.refusal(100_000, "encounter", False, 2, 4.0, mem_avail=1e12)
    assert dense.startswith("dense W^t at n = 100000 needs 120.0 GB") and "\n" not in dense
    short = bench.refusal(100_000, "encounter", True, 2, 4.0, mem_avail=1e9)
    assert short.startswith("needs about") and "GB of memory, 1.0 GB available" in short
    assert bench.refusal(100_000, "random-regular", True, 2, 4.0, mem_avail=64e9) is None
