"""Speed of the topology layer (a script, not a test): prints its figures.

    python benchmarks/topology.py

1. Spectral gap of a random 4-regular graph (Metropolis weights) with n = 20,000 clients
   through the sparse path (target: under 10 s on 2 cores), and the dense / sparse time ratio
   at n = 3,000.
2. Monte Carlo p for the encounter model, n = 10, q = 0.1, 20,000 samples (target: under 2 s).
"""

from __future__ import annotations

import os
import platform
import time

import numpy as np

from adflora_analysis.topology import (
    build_graph,
    consensus_rate,
    make_sampler,
    mixing_matrix,
    second_moment_rate,
    spectral_summary,
)


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def main() -> None:
    print(f"# topology benchmark  (python {platform.python_version()}, "
          f"{os.cpu_count()} cores, numpy {np.__version__})")

    g, t_graph = timed(build_graph, "random-regular", 20_000, seed=0, degree=4)
    W, t_w = timed(mixing_matrix, g, "metropolis", sparse=True)
    s, t_eig = timed(spectral_summary, W, method="sparse")
    total = t_w + t_eig
    print(f"[1] random 4-regular, n = 20000, metropolis, sparse path: gap = {s.gap:.6f} "
          f"(lambda2 = {s.lambda2:.6f}, lambda_n = {s.lambda_n:.6f})")
    print(f"    graph {t_graph:.2f} s (networkx, not counted) | weights {t_w:.2f} s | "
          f"eigsh {t_eig:.2f} s | weights + gap {total:.2f} s "
          f"[target < 10 s: {'OK' if total < 10 else 'MISSED'}]")

    g = build_graph("random-regular", 3_000, seed=0, degree=4)
    Ws = mixing_matrix(g, "metropolis", sparse=True)
    Wd = Ws.toarray()
    sp_s, t_sparse = timed(spectral_summary, Ws, method="sparse")
    de_s, t_dense = timed(spectral_summary, Wd, method="dense")
    print(f"    n = 3000: dense {t_dense:.2f} s, sparse {t_sparse:.3f} s, ratio dense/sparse = "
          f"{t_dense / t_sparse:.1f}x, |gap_dense - gap_sparse| = {abs(de_s.gap - sp_s.gap):.1e}")

    s10 = make_sampler("encounter", 10, q=0.1, weights="metropolis")
    r, t_mc = timed(consensus_rate, s10, samples=20_000, seed=0)
    rho, t_rho = timed(second_moment_rate, s10, samples=20_000, seed=0)
    print(f"[2] encounter n = 10, q = 0.1, metropolis, 20000 samples: p = {r.p:.4f} "
          f"± {r.stderr:.4f} in {t_mc:.2f} s [target < 2 s: {'OK' if t_mc < 2 else 'MISSED'}]")
    for rule in ("max-degree", "pairwise", "uniform"):
        rr, tt = timed(consensus_rate, make_sampler("encounter", 10, q=0.1, weights=rule),
                       samples=20_000, seed=0)
        print(f"    rule {rule:<10}: p = {rr.p:.4f} ± {rr.stderr:.4f} in {tt:.2f} s")
    print(f"    exact second-moment rate (same sampler) = {rho:.4f} vs 1 - p = {1 - r.p:.4f} "
          f"in {t_rho:.2f} s")


if __name__ == "__main__":
    main()
