"""The project's adf-lora round equals the minimal independent implementation of
``benchmarks/minimal_round.py`` (issue 25 item 2): the same data rows, the same seeded minibatch
draws and the same W^t give the same factors to float32 round-off, with the bookkeeping on or off,
for a dense W^t (small n) and a sparse one (n >= 1,024, edge lists)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from adflora_analysis.config import load_config
from adflora_analysis.core import get_method, mixing_schedule, run_rounds
from adflora_analysis.seeding import torch_generator
from adflora_analysis.synthetic.config import SyntheticConfig
from adflora_analysis.synthetic.problem import QuadraticProblem
from adflora_analysis.topology import build_sampler

_spec = importlib.util.spec_from_file_location(
    "minimal_round", Path(__file__).resolve().parents[1] / "benchmarks" / "minimal_round.py")
minimal = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(minimal)


def cfg_of(n: int, checks: str) -> SyntheticConfig:
    return load_config(SyntheticConfig, data={
        "n_clients": n, "rounds": 2, "local_steps": 3, "lr": 0.05, "rank": 2,
        "switch_interval": 1, "seeds": [3], "methods": ["adf-lora"], "d_in": 8, "d_out": 6,
        "target_rank": 2, "noise_kind": "minibatch", "samples_per_client": 10,
        "batch_size": 4, "dtype": "float32", "constants_every": 0, "topology_samples": 100,
        "client_storage": "rows", "checks": checks,
        "topology": {"graph": "encounter", "weights": "metropolis", "q": min(1.0, 4 / n)}})


@pytest.mark.parametrize("n, checks", [(24, "none"), (24, "all"), (1100, "none"),
                                       (1100, "all")])
def test_project_round_equals_minimal(n, checks):
    cfg = cfg_of(n, checks)
    prob = QuadraticProblem(cfg)
    st0 = prob.initial_state()
    sampler = build_sampler(cfg.topology, n, seed=cfg.seed_list[0])
    sched = mixing_schedule(sampler, cfg.seed_list, dtype=torch.float32)
    Ws = [sched(t) for t in range(cfg.rounds)]
    assert (n >= 1024) == (not isinstance(Ws[0], torch.Tensor))   # both gossip forms covered
    A, B = st0.A[0][0].clone(), st0.B[0][0].clone()                # (n, r, di), (n, do, r)
    XR = torch.cat([prob.X, prob.R], -1)[0, :, 0]                  # (n, m, di + do)
    seed, m, b, K = cfg.seed_list[0], cfg.samples_per_client, cfg.batch_size, cfg.local_steps
    # compared as each round comes: gossip writes the next round into the same tensors
    for t, r in enumerate(run_rounds(prob, get_method("adf-lora"), st0, Ws.__getitem__,
                                     rounds=cfg.rounds, switch_interval=1)):
        # the theory's minibatch model: b rows per client and step, i.i.d. with replacement,
        # drawn from the stream (seed, "minibatch", t) for (K, n, L, b)
        idx = torch.randint(0, m, (K, n, 1, b), generator=torch_generator(seed, "minibatch", t))
        W = Ws[t]
        edges = minimal.edges_of(W[0] if isinstance(W, torch.Tensor) else W)
        A, B = minimal.minimal_round(A, B, XR, idx[:, :, 0], edges, lr=cfg.lr, s=prob.s,
                                     block=r.trained[0])
        assert r.trained == (("B",) if t == 0 else ("A",))
        for mine, theirs in ((r.state.A[0][0], A), (r.state.B[0][0], B)):
            err = (mine.double() - theirs.double()).abs().max() / theirs.double().abs().max()
            assert err < 1e-6, (t, float(err))
        assert float(B.abs().max()) > 0     # B moved: a vacuous pass is not possible


def test_a_planted_difference_is_seen():
    """The comparison can fail: a different step size moves the factors beyond 1e-6."""
    cfg = cfg_of(24, "none")
    prob = QuadraticProblem(cfg)
    st0 = prob.initial_state()
    sched = mixing_schedule(build_sampler(cfg.topology, 24, seed=3), [3], dtype=torch.float32)
    r = next(run_rounds(prob, get_method("adf-lora"), st0.clone(), sched, rounds=1,
                        switch_interval=1))
    idx = torch.randint(0, 10, (3, 24, 1, 4), generator=torch_generator(3, "minibatch", 0))
    XR = torch.cat([prob.X, prob.R], -1)[0, :, 0]
    _, B = minimal.minimal_round(st0.A[0][0], st0.B[0][0], XR, idx[:, :, 0],
                                 minimal.edges_of(sched(0)[0]), lr=cfg.lr * (1 + 1e-4),
                                 s=prob.s, block="B")
    err = (r.state.B[0][0].double() - B.double()).abs().max() / B.double().abs().max()
    assert err > 1e-6
