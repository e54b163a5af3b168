"""Tests of the lead's method core: block schedules, gossip, metric identities, frozen blocks,
resume. Small shapes only (runs in a few seconds)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adflora_analysis.core import (
    DisplacementStats,
    LoraState,
    Problem,
    consensus_error,
    cross_term,
    get_method,
    gossip,
    gossip_,
    phase,
    product_consensus,
    run_rounds,
)
from adflora_analysis.errors import AdfloraError

# the package re-exports functions named like these modules; take the modules themselves
gossip_mod = importlib.import_module("adflora_analysis.core.gossip")
metrics_mod = importlib.import_module("adflora_analysis.core.metrics")


def _ds_matrix(n: int, rng: np.random.Generator, terms: int = 4) -> np.ndarray:
    """A random doubly stochastic matrix (Birkhoff: a convex mix of permutations)."""
    w = rng.dirichlet(np.ones(terms))
    return sum(wi * np.eye(n)[rng.permutation(n)] for wi in w)


# --------------------------------------------------------------------------- schedules
@pytest.mark.parametrize("T", [1, 2, 3, 5])
def test_phase_blocks_of_T_rounds_B_first(T):
    s = "".join(phase(t, T) for t in range(4 * T))
    assert s == ("B" * T + "A" * T) * 2


def test_phase_rejects_T_below_one():
    with pytest.raises(AdfloraError, match="at least 1"):
        phase(0, 0)


def test_method_schedules():
    adf, ro, ffa, lora = (get_method(m) for m in ("adf-lora", "rolora", "ffa-lora", "lora"))
    assert [adf.trained_blocks(t, 2) for t in range(4)] == [("B",), ("B",), ("A",), ("A",)]
    assert all(adf.mixed_blocks(t, 2) == ("A", "B") for t in range(6))
    assert [ro.mixed_blocks(t, 1) for t in range(3)] == [("B",), ("A",), ("B",)]
    assert [ro.trained_blocks(t, 1) for t in range(3)] == [("B",), ("A",), ("B",)]
    assert all(ffa.trained_blocks(t) == ("B",) == ffa.mixed_blocks(t) for t in range(5))
    assert all(lora.trained_blocks(t) == ("A", "B") == lora.mixed_blocks(t) for t in range(5))
    assert adf.default_switch_interval == 5 and ro.default_switch_interval == 1


def test_unknown_method_lists_valid_names():
    with pytest.raises(AdfloraError) as e:
        get_method("adflora")
    msg = str(e.value)
    for m in ("adf-lora", "rolora", "ffa-lora", "lora"):
        assert m in msg
    assert "did you mean 'adf-lora'" in msg


# --------------------------------------------------------------------------- gossip
@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 8), seed=st.integers(0, 10_000))
def test_gossip_preserves_mean_and_contracts(n, seed):
    rng = np.random.default_rng(seed)
    W = torch.tensor(_ds_matrix(n, rng))
    X = torch.tensor(rng.normal(size=(n, 3, 2)))
    Y = gossip(W, X)
    torch.testing.assert_close(Y.mean(0), X.mean(0))
    # ||(W - J) X|| <= ||W - J||_2 ||(I - J) X||  and ||W - J||_2 <= 1 for doubly stochastic W
    assert consensus_error(Y, 0) <= consensus_error(X, 0) * (1 + 1e-12) + 1e-15


def test_gossip_batched_over_seeds_matches_loop():
    rng = np.random.default_rng(0)
    Ws = torch.tensor(np.stack([_ds_matrix(5, rng) for _ in range(3)]))
    X = torch.tensor(rng.normal(size=(3, 5, 2, 4)))
    Y = gossip(Ws, X)
    for s in range(3):
        torch.testing.assert_close(Y[s], torch.einsum("ij,j...->i...", Ws[s], X[s]))


@pytest.mark.parametrize("chunk", [1, 7, 40, 2**18])
def test_gossip_in_place_chunks_match_one_matmul(monkeypatch, chunk):
    """Chunked in-place gossip (rows or columns of each block at a time, also on a strided view
    as the synthetic state's per-layer tensors are) equals one batched matmul."""
    rng = np.random.default_rng(3)
    Ws = torch.tensor(np.stack([_ds_matrix(6, rng) for _ in range(2)]))
    stacked = torch.tensor(rng.normal(size=(2, 6, 3, 5, 4)))      # (S, n, L, a, b)
    X = stacked.unbind(2)[1]                                       # a non-contiguous view
    ref = torch.stack([torch.einsum("ij,jab->iab", Ws[k], X[k]) for k in range(2)])
    monkeypatch.setattr(gossip_mod, "_CHUNK_ELEMS", chunk)
    ptr = X.data_ptr()
    out = gossip_(Ws, X)
    assert out is X and X.data_ptr() == ptr
    torch.testing.assert_close(stacked[:, :, 1], ref)


def test_gossip_rejects_a_block_without_client_axis():
    with pytest.raises(ValueError, match=r"not \(\*batch, 3, a, b\)"):
        gossip(torch.eye(3), torch.zeros(3, 4))


# --------------------------------------------------------------------------- metrics
@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 7), r=st.integers(1, 3), seed=st.integers(0, 10_000),
       shared_A=st.booleans())
def test_cross_term_identities(n, r, seed, shared_A):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(2, n, r, 4, generator=g, dtype=torch.float64)
    if shared_A:
        A = A[:, :1].expand_as(A).clone()
    B = torch.randn(2, n, 3, r, generator=g, dtype=torch.float64)
    C = cross_term(A, B)
    # definition: ||mean_i B_i A_i - B_bar A_bar||
    direct = (torch.einsum("snor,snri->soi", B, A) / n
              - B.mean(1) @ A.mean(1)).pow(2).sum((-2, -1)).sqrt()
    torch.testing.assert_close(C, direct, atol=1e-10, rtol=1e-9)
    # Cauchy-Schwarz
    bound = (consensus_error(A) * consensus_error(B)).sqrt()
    assert torch.all(C <= bound * (1 + 1e-9) + 1e-12)
    if shared_A:
        assert torch.all(C < 1e-12)
    pc = product_consensus(A, B)
    P = torch.einsum("snor,snri->snoi", B, A)
    ref = (P - P.mean(1, keepdim=True)).pow(2).sum((-2, -1)).mean(1)
    torch.testing.assert_close(pc, ref)


@pytest.mark.parametrize("chunk", [1, 50])
def test_metrics_chunked_over_clients_equal_one_pass(monkeypatch, chunk):
    g = torch.Generator().manual_seed(5)
    A = torch.randn(2, 7, 3, 6, generator=g)          # float32 in, float64 out
    B = torch.randn(2, 7, 5, 3, generator=g)
    ref = {f.__name__: f(A, B) for f in (cross_term, product_consensus)}
    ref["xi"] = consensus_error(A)
    monkeypatch.setattr(metrics_mod, "METRICS_BUDGET", chunk)   # the metrics' chunk budget
    for f in (cross_term, product_consensus):
        torch.testing.assert_close(f(A, B), ref[f.__name__], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(consensus_error(A, budget=chunk), ref["xi"], rtol=1e-12,
                               atol=1e-12)          # core/reduce's one implementation
    Ad = A.double()
    two_pass = (Ad - Ad.mean(1, keepdim=True)).pow(2).sum((-2, -1)).mean(1)
    torch.testing.assert_close(consensus_error(A), two_pass, rtol=1e-12, atol=0)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 9), seed=st.integers(0, 10_000), offset=st.sampled_from([0.0, 1e6]))
def test_displacement_stats_merge_groups_like_two_pass(n, seed, offset):
    """Clients reported one at a time or in random groups give the two-pass consensus error,
    also when the displacements share a large common part (no cancellation)."""
    rng = np.random.default_rng(seed)
    D = torch.tensor(rng.normal(size=(2, n, 3, 4))) + offset
    ref = (D - D.mean(1, keepdim=True)).pow(2).sum((1, 2, 3)) / n
    cuts = sorted(rng.choice(np.arange(1, n), size=min(n - 1, rng.integers(0, 3)),
                             replace=False).tolist()) if n > 1 else []
    stats = DisplacementStats()
    for part in torch.tensor_split(D, cuts, dim=1):
        stats.add("B", 0, part)
    got = stats.consensus("B", n_layers=1, batch_shape=(2,))[:, 0]
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12 * (1 + offset) ** 2 * 1e-6)
    assert stats.count("B", 0) == n
    assert torch.equal(stats.consensus("A", n_layers=2, batch_shape=(2,)),
                       torch.zeros(2, 2, dtype=torch.float64))


def test_displacement_stats_stay_on_the_state_device():
    """Counts, sums and the zeros of an unreported block live where the state lives (the
    'meta' device stands in for a GPU: mixing it with CPU tensors raises like CUDA does)."""
    stats = DisplacementStats()
    stats.add("A", 0, torch.zeros(2, 4, 3, 5, device="meta"))
    for b in ("A", "B"):
        out = stats.consensus(b, n_layers=1, batch_shape=(2,), device="meta")
        assert out.device.type == "meta" and out.shape == (2, 1)


class _SilentProblem(Problem):
    """Updates its clients but never reports their displacement."""

    def local_update(self, state, blocks, t, disp=None):
        return state.map_blocks(lambda X: X + 1, blocks)

    def evaluate(self, state, t):
        return {}


def test_loop_refuses_a_problem_that_hides_its_displacement():
    with pytest.raises(RuntimeError, match="must call disp.add"):
        next(run_rounds(_SilentProblem(), get_method("lora"), _toy_state(), _mixing(),
                        rounds=1))


# --------------------------------------------------------------------------- the loop
class _ToyProblem(Problem):
    """Deterministic per-client drift: every trained block moves by a client-specific amount."""

    def local_update(self, state, blocks, t, disp=None):
        def step(X):
            n = X.shape[-3]
            shift = torch.arange(n, dtype=X.dtype).reshape(*([1] * (X.ndim - 3)), n, 1, 1)
            return X + 0.1 * (shift + t)
        new = state.map_blocks(step, blocks)
        if disp is not None:
            disp.add_states(state, new, blocks)
        return new

    def evaluate(self, state, t):
        return {"loss": state.A[0].sum((-3, -2, -1)).double()}


def _toy_state(S=2, n=4, layers=2):
    g = torch.Generator().manual_seed(0)
    A = [torch.randn(S, n, 2, 3, generator=g, dtype=torch.float64) for _ in range(layers)]
    B = [torch.zeros(S, n, 3, 2, dtype=torch.float64) for _ in range(layers)]
    return LoraState(A, B)


def _mixing(S=2, n=4):
    rng = np.random.default_rng(1)
    Ws = {t: torch.tensor(np.stack([_ds_matrix(n, rng) for _ in range(S)])) for t in range(12)}
    return lambda t: Ws[t]


def test_ffa_lora_keeps_A_bit_identical():
    st0 = _toy_state()
    A0 = [a.clone() for a in st0.A]
    for res in run_rounds(_ToyProblem(), get_method("ffa-lora"), st0, _mixing(), rounds=6):
        for a, a0 in zip(res.state.A, A0, strict=True):
            assert torch.equal(a, a0)
        assert res.trained == ("B",) and res.mixed == ("B",)


def test_rolora_never_mixes_the_frozen_block():
    st0 = _toy_state()
    prev = st0.clone()
    for res in run_rounds(_ToyProblem(), get_method("rolora"), st0, _mixing(), rounds=6,
                          switch_interval=2):
        frozen = "A" if res.trained == ("B",) else "B"
        assert res.mixed == res.trained
        for x, y in zip(res.state.block(frozen), prev.block(frozen), strict=True):
            assert torch.equal(x, y)
        prev = res.state.clone()   # the loop updates its state in place


def test_adf_lora_mixes_the_frozen_block_and_round_metrics():
    st0 = _toy_state()
    prev = st0.clone()
    for res in run_rounds(_ToyProblem(), get_method("adf-lora"), st0, _mixing(), rounds=6,
                          switch_interval=2):
        frozen = "A" if res.trained == ("B",) else "B"
        assert res.mixed == ("A", "B")
        xf = res.layer[f"xi_{frozen}"]
        xf_local = res.layer[f"xi_{frozen}_local"]
        # the frozen block is not moved by the local update: its local Xi is the previous Xi
        torch.testing.assert_close(xf_local, torch.stack(
            [consensus_error(x) for x in prev.block(frozen)], -1))
        assert torch.all(xf <= xf_local * (1 + 1e-12) + 1e-15)
        assert torch.all(res.layer[f"disp_{frozen}"] == 0)
        prev = res.state.clone()


def test_resume_equals_uninterrupted_run(tmp_path):
    from adflora_analysis.study.experiment import Job, run_jobs

    def build():
        return _ToyProblem(), _toy_state(), _mixing()

    jobs = [Job(m, get_method(m), [0, 1], build, switch_interval=2) for m in ("adf-lora",
                                                                             "rolora")]
    full = run_jobs(tmp_path / "full", jobs, 8, checkpoint_every=2, progress=False)
    run_jobs(tmp_path / "cut", jobs, 8, checkpoint_every=2, progress=False, stop_after=11)
    resumed = run_jobs(tmp_path / "cut", jobs, 8, checkpoint_every=2, progress=False,
                       resume=True)
    key = ["job", "seed", "round", "layer"]
    a = full.sort_values(key).reset_index(drop=True)
    b = resumed.sort_values(key).reset_index(drop=True)
    assert len(a) == len(b) == 2 * 8 * 2 * 3
    import pandas as pd

    pd.testing.assert_frame_equal(a, b)
