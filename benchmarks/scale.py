"""The engine at n = 1,000 .. 100,000 clients (a script, not a test): prints its table.

    python benchmarks/scale.py                 # n = 1e3, 1e4, 1e5; encounter and 4-regular
    python benchmarks/scale.py --n 1000 --rounds 3 --graphs encounter

Setting (issue 14): d_in = d_out = 64, r = 4, K = 5 local SGD steps, float32, one seed,
adf-lora (A and B alternate, both gossiped), W^t from the encounter model with q = 10/(n − 1)
(about 10 peers a round, metropolis weights) or a random 4-regular graph (metropolis). Each
(n, graph, gossip path) runs in a fresh subprocess, so its peak RSS (``ru_maxrss``) is its own.

The problem is a lean quadratic, ``f_i(A, B) = ½‖B A − U_i V_iᵀ‖²_F`` with rank-4 client
targets stored as factors (U_i: d_out x 4, V_i: d_in x 4) and Gaussian gradient noise: every
gradient and the loss are O(n d r) and its data are 2 KiB a client. The testbed's own
``QuadraticProblem`` keeps per-client d x d sufficient statistics (S_i, C_i, targets; 2.5 GB at
n = 10,000 with d = 64), which is what does not fit at n = 100,000 on this machine; see
``synthetic/scale_100k.toml`` for the testbed itself at n = 100,000 with d = 16.

Columns: ``s/round`` (the round loop: local steps, gossip, every consensus metric; W^t drawn
beforehand), ``draw s`` (drawing one W^t), ``peak RSS``, ``bytes/client`` = (peak RSS − RSS
after imports) / n, and that over the state's own bytes per client (A and B, 2 KiB).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

D, R, R_STAR, K, LR, NOISE = 64, 4, 4, 5, 0.05, 1e-3


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class LowRankQuadratic:
    """f_i(A, B) = ½‖B A − U_i V_iᵀ‖²_F per client, one layer, batch of one seed (see the
    module docstring). State A: (1, n, r, d), B: (1, n, d, r)."""

    def __init__(self, n: int, seed: int = 0, dtype=None):
        import torch

        self.torch = torch
        self.n, self.dtype = n, dtype or torch.float32
        g = torch.Generator().manual_seed(seed)
        U0 = torch.randn(D, R_STAR, generator=g) / math.sqrt(D)
        V0 = torch.randn(D, R_STAR, generator=g) / math.sqrt(D)
        self.U = (U0 + 0.3 * torch.randn(1, n, D, R_STAR, generator=g) / math.sqrt(D)).to(
            self.dtype)
        self.V = (V0 + 0.3 * torch.randn(1, n, D, R_STAR, generator=g) / math.sqrt(D)).to(
            self.dtype)
        self.seed = seed

    def initial_state(self):
        from adflora_analysis.core.state import LoraState

        torch = self.torch
        g = torch.Generator().manual_seed(self.seed + 1)
        A = ((torch.rand(1, 1, R, D, generator=g) * 2 - 1) / math.sqrt(D)).expand(
            1, self.n, R, D).to(self.dtype).contiguous()
        B = torch.zeros(1, self.n, D, R, dtype=self.dtype)
        return LoraState([A], [B], ["layer0"])

    def _grads(self, A, B, blocks):
        out = {}
        if "B" in blocks:   # (BA − UVᵀ)Aᵀ = B(AAᵀ) − U(VᵀAᵀ)
            out["B"] = B @ (A @ A.transpose(-1, -2)) - self.U @ (self.V.transpose(-1, -2)
                                                                  @ A.transpose(-1, -2))
        if "A" in blocks:   # Bᵀ(BA − UVᵀ) = (BᵀB)A − (BᵀU)Vᵀ
            Bt = B.transpose(-1, -2)
            out["A"] = (Bt @ B) @ A - (Bt @ self.U) @ self.V.transpose(-1, -2)
        return out

    def local_update(self, state, blocks, t, disp=None):
        from adflora_analysis.core.state import LoraState

        torch = self.torch
        g = torch.Generator().manual_seed(1_000_003 * self.seed + t)
        A, B = state.A[0], state.B[0]
        for _ in range(K):
            grads = self._grads(A, B, blocks)
            if "A" in grads:
                A = A - LR * (grads["A"] + NOISE * torch.randn(A.shape, generator=g,
                                                               dtype=A.dtype))
            if "B" in grads:
                B = B - LR * (grads["B"] + NOISE * torch.randn(B.shape, generator=g,
                                                               dtype=B.dtype))
        new = LoraState([A], [B], list(state.layers))
        if disp is not None:
            disp.add_states(state, new, blocks)
        return new, {}

    def evaluate(self, state, t):
        A, B = state.A[0].double().mean(1), state.B[0].double().mean(1)   # (1, r, d), (1, d, r)
        U, V = self.U.double(), self.V.double()
        quad = ((B.transpose(-1, -2) @ B) * (A @ A.transpose(-1, -2))).sum((-2, -1))
        cross = ((B.transpose(-1, -2).unsqueeze(1) @ U) * (A.unsqueeze(1) @ V)).sum((-3, -2, -1))
        const = ((U.transpose(-1, -2) @ U) * (V.transpose(-1, -2) @ V)).sum((-3, -2, -1))
        return {"loss": 0.5 * quad - cross / self.n + 0.5 * const / self.n}

    def state_dict(self):
        return {}

    def load_state_dict(self, d):
        pass


def run_one(n: int, graph: str, sparse: bool, rounds: int) -> dict:
    """One configuration in this process; returns its row."""
    import torch

    from adflora_analysis.core import get_method, mixing_schedule, run_rounds
    from adflora_analysis.core.sparse import SparseMix
    from adflora_analysis.topology import TopologyConfig, build_sampler

    torch.set_num_threads(1)
    base = _rss_bytes()
    cfg = (TopologyConfig(graph="encounter", q=10 / (n - 1)) if graph == "encounter" else
           TopologyConfig(graph="random-regular", params={"degree": 4}))
    t0 = time.perf_counter()
    sampler = build_sampler(cfg, n, seed=0)
    t_graph = time.perf_counter() - t0
    prob = LowRankQuadratic(n)
    state = prob.initial_state()
    sched = mixing_schedule(sampler, [0], dtype=torch.float32, sparse=sparse)
    t0 = time.perf_counter()
    Ws = [sched(t) for t in range(rounds)]
    t_draw = (time.perf_counter() - t0) / rounds
    assert isinstance(Ws[0], SparseMix) == sparse
    state_bytes = sum(x.element_size() * x[0, 0].numel() for x in (*state.A, *state.B))
    times = []
    t0 = time.perf_counter()
    for res in run_rounds(prob, get_method("adf-lora"), state, Ws.__getitem__, rounds=rounds):
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        loss = float(res.scalar["loss"][0])
    per_round = sum(times[1:]) / max(1, len(times) - 1) if len(times) > 1 else times[0]
    peak = _rss_bytes()
    return {"n": n, "graph": graph, "gossip": "sparse" if sparse else "dense",
            "rounds": rounds, "s_per_round": per_round, "first_round_s": times[0],
            "draw_s": t_draw, "graph_build_s": t_graph, "peak_rss_gb": peak / 1e9,
            "bytes_per_client": (peak - base) / n, "state_bytes_per_client": state_bytes,
            "loss": loss}


def refuse_if_too_big(n: int, sparse: bool, budget_gb: float) -> str | None:
    """A one-line refusal when the dense W^t (float64 draw + float32 copy) would not fit."""
    if sparse:
        return None
    need = n * n * 12 / 1e9
    return (f"dense W^t at n = {n} needs {need:.1f} GB (> {budget_gb:.0f} GB budget): skipped"
            if need > budget_gb else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="*", default=[1000, 10_000, 100_000])
    ap.add_argument("--graphs", nargs="*", default=["encounter", "random-regular"])
    ap.add_argument("--rounds", type=int, default=0, help="0: 5 / 3 / 3 rounds by n")
    ap.add_argument("--dense-budget-gb", type=float, default=4.0)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        n, graph, sparse, rounds = json.loads(args.one)
        print(json.dumps(run_one(n, graph, sparse, rounds)))
        return
    print(f"# scale benchmark: d_in = d_out = {D}, r = {R}, K = {K}, float32, adf-lora, "
          f"{os.cpu_count()} cores (shared), 1 torch thread")
    print(f"{'n':>7} {'graph':<15} {'gossip':<6} {'s/round':>8} {'draw s':>7} "
          f"{'peak RSS':>9} {'B/client':>9} {'x state':>7}")
    rows = []
    for n in args.n:
        for graph in args.graphs:
            for sparse in (True, False):
                msg = refuse_if_too_big(n, sparse, args.dense_budget_gb)
                if msg:
                    print(f"{n:>7} {graph:<15} dense  {msg}")
                    continue
                rounds = args.rounds or (5 if n <= 1000 else 3)
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
                      f"{row['draw_s']:>7.3f} {row['peak_rss_gb']:>7.2f}GB "
                      f"{row['bytes_per_client']:>9.0f} "
                      f"{row['bytes_per_client'] / row['state_bytes_per_client']:>7.1f}",
                      flush=True)
    for graph in args.graphs:
        sp = sorted((r for r in rows if r["graph"] == graph and r["gossip"] == "sparse"),
                    key=lambda r: r["n"])
        for a, b in zip(sp, sp[1:], strict=False):
            slope = (b["peak_rss_gb"] - a["peak_rss_gb"]) * 1e9 / (b["n"] - a["n"])
            print(f"growth {graph}, sparse: n x{b['n'] / a['n']:.0f} -> s/round "
                  f"x{b['s_per_round'] / a['s_per_round']:.2f}; marginal memory "
                  f"{slope:.0f} B/client = {slope / a['state_bytes_per_client']:.1f}x the "
                  f"state's {a['state_bytes_per_client']} B")


if __name__ == "__main__":
    main()
