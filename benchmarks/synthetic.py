"""Speed of the synthetic engine (not a test; run ``python benchmarks/synthetic.py``).

1. n = 1,000 clients, d_in = d_out = 64, r = 4, K = 5, 100 rounds, float32 (adf-lora, encounter
   q = 0.01, minibatch noise): seconds per round of the full round loop (local steps, gossip,
   every metric), and the achieved GFLOP/s (matmul FLOPs counted by torch's FlopCounterMode on one
   round) against this machine's measured dense float32 matmul peak.
2. ``bounds.toml`` with 20 seeds end to end (run directory written), in seconds.
3. The same round update (K minibatch SGD steps per client, then gossip) written as the plain
   per-client Python loop a researcher would write (autograd per client, neighbour sums per
   client), against the vectorized engine at n = 100; the last line is the speed-up ratio.

Options: ``--rounds N`` (default 100), ``--quick`` (10 rounds, fewer repeats).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adflora_analysis.config import load_config  # noqa: E402
from adflora_analysis.core import get_method, gossip, mixing_schedule, run_rounds  # noqa: E402
from adflora_analysis.synthetic.config import SyntheticConfig  # noqa: E402
from adflora_analysis.synthetic.problem import QuadraticProblem  # noqa: E402
from adflora_analysis.topology import build_sampler  # noqa: E402


def matmul_peak(dtype=torch.float32, size: int = 2048, reps: int = 10) -> float:
    """Best-of dense matmul GFLOP/s on this machine."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * size ** 3 / (time.perf_counter() - t) / 1e9)
    return best


def scale_cfg(n: int, rounds: int, seeds: int = 1) -> SyntheticConfig:
    return load_config(SyntheticConfig, data={
        "n_clients": n, "rounds": rounds, "local_steps": 5, "lr": 0.02, "rank": 4,
        "switch_interval": 5, "seeds": seeds, "methods": ["adf-lora"], "d_in": 64, "d_out": 64,
        "target_rank": 4, "noise_kind": "minibatch", "samples_per_client": 64,
        "batch_size": 16, "dtype": "float32", "constants_every": 0,
        "topology": {"graph": "encounter", "weights": "metropolis", "q": min(1.0, 10 / n)}})


def bench_engine(rounds: int) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    cfg = scale_cfg(1000, rounds)
    prob = QuadraticProblem(cfg)
    state = prob.initial_state()
    sampler = build_sampler(cfg.topology, cfg.n_clients, seed=0)
    sched = mixing_schedule(sampler, cfg.seed_list, dtype=torch.float32)
    Ws = {t: sched(t) for t in range(rounds + 1)}   # sampling W^t is the topology layer's cost
    mixing = Ws.__getitem__
    spec = get_method("adf-lora")
    # FLOPs of one round (A phase and B phase cost the same)
    with FlopCounterMode(display=False) as fc:
        next(run_rounds(prob, spec, state.clone(), mixing, rounds=1, switch_interval=5))
    flops = fc.get_total_flops()
    t0 = time.perf_counter()
    for _ in run_rounds(prob, spec, state, mixing, rounds=rounds, switch_interval=5):
        pass
    dt = (time.perf_counter() - t0) / rounds
    peak = matmul_peak()
    print(f"engine n=1000 d=64 r=4 K=5 float32, {rounds} rounds, {torch.get_num_threads()} "
          f"threads: {dt:.4f} s/round")
    print(f"  matmul FLOPs per round {flops / 1e9:.3f} GFLOP -> {flops / dt / 1e9:.2f} GFLOP/s;"
          f" measured dense matmul peak {peak:.1f} GFLOP/s ({100 * flops / dt / 1e9 / peak:.1f}%"
          f" of peak)")


def bench_bounds() -> None:
    from adflora_analysis.synthetic.runner import run_study

    cfg = load_config(SyntheticConfig, ROOT / "synthetic" / "bounds.toml")
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        run_study(cfg, d, progress=False)
        dt = time.perf_counter() - t0
    print(f"bounds.toml: {len(cfg.seed_list)} seeds x {len(cfg.methods)} methods x "
          f"{cfg.rounds} rounds in {dt:.1f} s (on {os.cpu_count()} cores)")


def loop_round(Xs, Rs, A, B, W, t, K, lr, s, b, seed_idx) -> tuple[list, list]:
    """The baseline: one round of adf-lora's B phase written per client with autograd."""
    n = len(A)
    newA, newB = [], []
    for i in range(n):
        a = A[i].clone()
        bb = B[i].clone().requires_grad_(True)
        for k in range(K):
            idx = seed_idx[k, i]
            x, r = Xs[i][idx], Rs[i][idx]
            loss = ((x @ (s * bb @ a).T - r) ** 2).sum() / (2 * b)
            (g,) = torch.autograd.grad(loss, bb)
            with torch.no_grad():
                bb -= lr * g
        newA.append(a)
        newB.append(bb.detach())
    # gossip both factors: each client sums over its neighbours
    outA, outB = [], []
    for i in range(n):
        accA = torch.zeros_like(newA[i])
        accB = torch.zeros_like(newB[i])
        for j in range(n):
            w = float(W[i, j])
            if w != 0.0:
                accA += w * newA[j]
                accB += w * newB[j]
        outA.append(accA)
        outB.append(accB)
    return outA, outB


def bench_loop_vs_engine(n: int = 100, rounds: int = 5) -> float:
    cfg = scale_cfg(n, rounds)
    prob = QuadraticProblem(cfg)
    state = prob.initial_state()
    state.B = [b + 0.01 for b in state.B]
    sampler = build_sampler(cfg.topology, n, seed=0)
    sched = mixing_schedule(sampler, [0], dtype=torch.float32)
    Ws = [sched(t) for t in range(rounds)]
    K, lr, s, bsz = cfg.local_steps, cfg.lr, prob.s, cfg.batch_size
    # engine: local update of B + gossip of A and B (what the loop does); best of 3 repeats
    # after a warm-up round, like the loop below
    def engine_rounds():
        st = state
        for t in range(rounds):
            st, _ = prob.local_update(st, ("B",), t)
            st = st.map_blocks(lambda X, W=Ws[t]: gossip(W, X), ("A", "B"))

    prob.local_update(state, ("B",), 0)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        engine_rounds()
        times.append((time.perf_counter() - t0) / rounds)
    t_engine = min(times)
    # baseline on the same data
    Xs = [prob.X[0, i, 0] for i in range(n)]
    Rs = [prob.R[0, i, 0] for i in range(n)]
    A = [state.A[0][0, i] for i in range(n)]
    B = [state.B[0][0, i] for i in range(n)]
    g = torch.Generator().manual_seed(0)
    loop_round(Xs, Rs, A, B, Ws[0][0], 0, 1, lr, s, bsz,
               torch.randint(0, cfg.samples_per_client, (1, n, bsz), generator=g))  # warm-up
    t0 = time.perf_counter()
    for t in range(rounds):
        idx = torch.randint(0, cfg.samples_per_client, (K, n, bsz), generator=g)
        A, B = loop_round(Xs, Rs, A, B, Ws[t][0], t, K, lr, s, bsz, idx)
    t_loop = (time.perf_counter() - t0) / rounds
    print(f"n={n}: per-client Python loop {t_loop:.4f} s/round, vectorized engine "
          f"{t_engine:.5f} s/round")
    return t_loop / t_engine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0: the runner's automatic choice)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads or scale_cfg(1000, 1).n_threads())
    rounds = 10 if args.quick else args.rounds
    bench_engine(rounds)
    if not args.quick:
        bench_bounds()
    ratio = bench_loop_vs_engine(rounds=3 if args.quick else 5)
    print(f"speed-up of the engine over the per-client loop at n=100: {ratio:.1f}x")


if __name__ == "__main__":
    main()
