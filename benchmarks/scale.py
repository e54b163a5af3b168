"""The engine at n = 1,000 .. 100,000 clients (a script, not a test): prints its table.

    python benchmarks/scale.py                 # n = 1e3, 1e4, 1e5; encounter and 4-regular
    python benchmarks/scale.py --n 1000 --rounds 3 --graphs encounter

Setting (issue 14): the testbed's own ``QuadraticProblem`` with ``client_storage = "rows"``
(docs/architecture.md §6: each client keeps its m = 16 rows, no d x d statistics), d_in = d_out
= 64, r = r* = 4, K = 5 local SGD steps on minibatches of 8 rows, float32, one seed, adf-lora
(the first rounds train B, both factors gossiped), every metric and theory-check column the
study writes (constants_every = 0). W^t from the encounter model with q = 10/(n − 1) (about 10
peers a round, metropolis weights) or a random 4-regular graph (metropolis). Each (n, graph,
gossip path) runs in a fresh subprocess, so its peak RSS (``ru_maxrss``) is its own; a
configuration whose memory estimate (:func:`adflora_analysis.resources.synthetic_need`, dense
W^t included) exceeds the available memory is refused in one line before anything is allocated.

Columns: ``s/round`` (the round loop: local steps with their bookkeeping, gossip, every metric;
mean of the rounds after the first; W^t drawn beforehand) and ``cpu s/rd``, the process's CPU
time for it (on a shared machine the wall time mostly measures the other jobs), ``build s``
(the problem's data), ``draw s`` (one W^t), ``peak RSS``, ``B/client`` = (peak RSS − RSS after
imports) / n, that over the state's own bytes per client (A and B: 2 KiB), and ``data B/c``
(the problem's stored per-client tensors). The growth lines give each ratio per 10x in n.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

D, R, K = 64, 4, 5


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def bench_config(n: int, graph: str, rounds: int):
    """The benchmark's synthetic study at ``n`` clients on ``graph``."""
    from adflora_analysis.config import load_config
    from adflora_analysis.synthetic.config import SyntheticConfig

    topo = ({"graph": "encounter", "q": 10 / (n - 1)} if graph == "encounter" else
            {"graph": "random-regular", "params": {"degree": 4}})
    return load_config(SyntheticConfig, data={
        "n_clients": n, "rounds": rounds, "local_steps": K, "lr": 0.02, "rank": R,
        "switch_interval": 5, "seeds": 1, "methods": ["adf-lora"], "d_in": D, "d_out": D,
        "target_rank": R, "heterogeneity": 0.3, "noise_kind": "minibatch",
        "samples_per_client": 16, "batch_size": 8, "dtype": "float32", "constants_every": 0,
        "topology_samples": 200, "client_storage": "rows", "topology": topo})


def run_one(n: int, graph: str, sparse: bool, rounds: int) -> dict:
    """One configuration in this process; returns its row."""
    import torch

    from adflora_analysis.core import get_method, mixing_schedule, run_rounds
    from adflora_analysis.core.sparse import SparseMix
    from adflora_analysis.synthetic.problem import QuadraticProblem
    from adflora_analysis.topology import build_sampler

    torch.set_num_threads(1)
    base = _rss_bytes()
    cfg = bench_config(n, graph, rounds)
    t0 = time.perf_counter()
    sampler = build_sampler(cfg.topology, n, seed=0)
    t_graph = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    prob = QuadraticProblem(cfg, cfg.seed_list)
    t_build, cpu_build = time.perf_counter() - t0, time.process_time() - c0
    state = prob.initial_state()
    sched = mixing_schedule(sampler, cfg.seed_list, dtype=torch.float32, sparse=sparse)
    t0 = time.perf_counter()
    Ws = [sched(t) for t in range(rounds)]
    t_draw = (time.perf_counter() - t0) / rounds
    assert isinstance(Ws[0], SparseMix) == sparse
    state_bytes = sum(x.element_size() * x[0, 0].numel() for x in (*state.A, *state.B))
    times, cpu = [], []
    t0, c0 = time.perf_counter(), time.process_time()
    for res in run_rounds(prob, get_method("adf-lora"), state, Ws.__getitem__, rounds=rounds,
                          switch_interval=cfg.switch_interval):
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        loss = float(res.scalar["loss"][0])
        t0, c0 = time.perf_counter(), time.process_time()

    def mean_after_first(v: list[float]) -> float:
        return sum(v[1:]) / (len(v) - 1) if len(v) > 1 else v[0]

    peak = _rss_bytes()
    return {"n": n, "graph": graph, "gossip": "sparse" if sparse else "dense",
            "rounds": rounds, "s_per_round": mean_after_first(times), "round_s": times,
            "cpu_s_per_round": mean_after_first(cpu), "round_cpu_s": cpu,
            "build_s": t_build, "build_cpu_s": cpu_build, "draw_s": t_draw,
            "graph_build_s": t_graph,
            "peak_rss_gb": peak / 1e9, "bytes_per_client": (peak - base) / n,
            "state_bytes_per_client": state_bytes,
            "data_bytes_per_client": prob.stored_bytes_per_client(), "loss": loss}


def refusal(n: int, graph: str, sparse: bool, rounds: int, dense_budget_gb: float,
            mem_avail: float | None = None) -> str | None:
    """One line when the configuration would not fit, from the estimate alone (nothing is
    allocated): the dense W^t (float64 draw + float32 copy) over ``dense_budget_gb``, or the
    run's memory estimate over the available memory."""
    import psutil

    from adflora_analysis.resources import synthetic_need

    if not sparse and n * n * 12 > dense_budget_gb * 1e9:
        return (f"dense W^t at n = {n} needs {n * n * 12 / 1e9:.1f} GB "
                f"(> {dense_budget_gb:.0f} GB budget): skipped")
    need = synthetic_need(bench_config(n, graph, rounds)).memory
    if not sparse:
        need["W^t"] = n * n * 12
    total = sum(need.values())
    have = psutil.virtual_memory().available if mem_avail is None else mem_avail
    if total > have:
        return f"needs about {total / 1e9:.1f} GB of memory, {have / 1e9:.1f} GB available: skipped"
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="*", default=[1000, 10_000, 100_000])
    ap.add_argument("--graphs", nargs="*", default=["encounter", "random-regular"])
    ap.add_argument("--rounds", type=int, default=0, help="0: 4 / 3 / 2 rounds by n")
    ap.add_argument("--dense-budget-gb", type=float, default=4.0)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        n, graph, sparse, rounds = json.loads(args.one)
        print(json.dumps(run_one(n, graph, sparse, rounds)))
        return
    print(f"# scale benchmark: QuadraticProblem (client_storage = rows, m = 16), d_in = d_out = "
          f"{D}, r = {R}, K = {K}, float32, adf-lora, {os.cpu_count()} cores (shared), "
          f"1 torch thread, load average {os.getloadavg()[0]:.1f} at start")
    print(f"{'n':>7} {'graph':<15} {'gossip':<6} {'s/round':>8} {'cpu s/rd':>8} {'build s':>8} "
          f"{'draw s':>7} {'peak RSS':>9} {'B/client':>9} {'x state':>7} {'data B/c':>8}",
          flush=True)
    rows = []
    for n in args.n:
        for graph in args.graphs:
            for sparse in (True, False):
                rounds = args.rounds or (4 if n <= 1000 else 3 if n <= 10_000 else 2)
                msg = refusal(n, graph, sparse, rounds, args.dense_budget_gb)
                if msg:
                    print(f"{n:>7} {graph:<15} {'sparse' if sparse else 'dense':<6} {msg}",
                          flush=True)
                    continue
                env = {**os.environ, "OMP_NUM_THREADS": "1"}
                out = subprocess.run([sys.executable, __file__, "--one",
                                      json.dumps([n, graph, sparse, rounds])],
                                     capture_output=True, text=True, env=env)
                if out.returncode != 0:
                    print(f"{n:>7} {graph:<15} failed: {out.stderr.strip().splitlines()[-1]}")
                    continue
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"{n:>7} {graph:<15} {row['gossip']:<6} {row['s_per_round']:>8.3f} "
                      f"{row['cpu_s_per_round']:>8.3f} {row['build_s']:>8.2f} "
                      f"{row['draw_s']:>7.3f} "
                      f"{row['peak_rss_gb']:>7.2f}GB {row['bytes_per_client']:>9.0f} "
                      f"{row['bytes_per_client'] / row['state_bytes_per_client']:>7.1f} "
                      f"{row['data_bytes_per_client']:>8.0f}", flush=True)
                print("#   " + json.dumps(row), flush=True)
    for graph in args.graphs:
        sp = sorted((r for r in rows if r["graph"] == graph and r["gossip"] == "sparse"),
                    key=lambda r: r["n"])
        for a, b in zip(sp, sp[1:], strict=False):
            slope = (b["peak_rss_gb"] - a["peak_rss_gb"]) * 1e9 / (b["n"] - a["n"])
            print(f"growth {graph}, sparse: n x{b['n'] / a['n']:.0f} -> s/round "
                  f"x{b['s_per_round'] / a['s_per_round']:.2f} (CPU "
                  f"x{b['cpu_s_per_round'] / a['cpu_s_per_round']:.2f}), build "
                  f"x{b['build_s'] / a['build_s']:.2f}; marginal memory {slope:.0f} B/client = "
                  f"{slope / a['state_bytes_per_client']:.1f}x the state's "
                  f"{a['state_bytes_per_client']} B")


if __name__ == "__main__":
    main()
