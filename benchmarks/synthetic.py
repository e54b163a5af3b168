"""Speed of the synthetic engine, like with like (not a test: ``python benchmarks/synthetic.py``).

Setting (issue 25): adf-lora, d_in = d_out = 64, r = 4, m = 16 rows a client, minibatch b = 8,
K = 5, float32, ``client_storage = "rows"``, encounter sampler with about 10 peers, one torch
thread. Sections, in order:

1. The machine: measured dense float32 matmul peak (GFLOP/s) and memory bandwidth (GB/s, a
   256 MB copy), one thread.
2. The engine against a per-client Python loop at n = 100, in both pairings: the method alone
   (engine with ``checks = "none"`` vs the loop of K autograd steps and neighbour sums) and the
   full bookkeeping (engine with every column vs the same loop that also computes, per client,
   the bookkeeping columns: consensus at every inner step, every client's full gradient and
   minibatch variance for the descent terms, the gradients' consensus, and evaluate's local
   loss, zeta^2 and sigma^2).
3. The float32 bookkeeping (n >= 1,024, ``exact_bookkeeping`` off) against float64: the
   largest relative difference of every bookkeeping column over a few rounds.
4. A cProfile of one full-bookkeeping round at n = 10,000 (``--profile-n``), top entries.
5. Last lines, the table: n = 1e3, 1e4, 1e5 x (project with the full bookkeeping, project with
   checks off, the minimal independent round of ``benchmarks/minimal_round.py``, the FLOP
   limit: the minimal round's matmul FLOPs at the measured peak, and the memory limit: its
   compulsory traffic at the measured bandwidth), s/round, and the ratios. Each time is the
   median of ``--reps`` repeats, the three codes interleaved so that load from other processes
   falls on all of them alike. Growth: the time at 1e5 over the time at 1e4.

Options: ``--quick`` (n = 1e3 and 1e4 only, fewer repeats), ``--sizes``, ``--reps``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from minimal_round import edges_of, minimal_round  # noqa: E402

from adflora_analysis.config import load_config  # noqa: E402
from adflora_analysis.core import get_method, gossip, mixing_schedule, run_rounds  # noqa: E402
from adflora_analysis.seeding import torch_generator  # noqa: E402
from adflora_analysis.synthetic.bookkeeping import SCHEDULED, Columns  # noqa: E402
from adflora_analysis.synthetic.config import SyntheticConfig  # noqa: E402
from adflora_analysis.synthetic.problem import QuadraticProblem  # noqa: E402
from adflora_analysis.topology import build_sampler  # noqa: E402

FULL, NONE = Columns(None, 1), Columns(frozenset(), 1)


def matmul_peak(dtype=torch.float32, size: int = 1024, reps: int = 10) -> float:
    """Best-of dense matmul GFLOP/s on this machine (current thread count)."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * size ** 3 / (time.perf_counter() - t) / 1e9)
    return best


def bandwidth(mb: int = 256, reps: int = 5) -> float:
    """Best-of copy bandwidth in GB/s (bytes read + written)."""
    x = torch.empty(mb * 2**20 // 4)
    y = torch.empty_like(x)
    x.fill_(1.0)
    y.copy_(x)
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        y.copy_(x)
        best = max(best, 2 * x.numel() * 4 / (time.perf_counter() - t) / 1e9)
    return best


def scale_cfg(n: int, rounds: int = 3, seeds: int = 1) -> SyntheticConfig:
    return load_config(SyntheticConfig, data={
        "n_clients": n, "rounds": rounds, "local_steps": 5, "lr": 0.02, "rank": 4,
        "switch_interval": 5, "seeds": seeds, "methods": ["adf-lora"], "d_in": 64, "d_out": 64,
        "target_rank": 4, "noise_kind": "minibatch", "samples_per_client": 16,
        "batch_size": 8, "dtype": "float32", "constants_every": 0, "topology_samples": 200,
        "client_storage": "rows",
        "topology": {"graph": "encounter", "weights": "metropolis", "q": min(1.0, 10 / n)}})


class Setting:
    """One problem at size n, its W^t, and the inputs of the minimal round (shared data)."""

    def __init__(self, n: int, rounds: int):
        self.n, self.rounds = n, rounds
        self.cfg = scale_cfg(n, rounds)
        self.prob = QuadraticProblem(self.cfg)
        self.state0 = self.prob.initial_state()
        sampler = build_sampler(self.cfg.topology, n, seed=0)
        sched = mixing_schedule(sampler, self.cfg.seed_list, dtype=torch.float32)
        self.Ws = [sched(t) for t in range(rounds)]   # sampling W^t: the topology layer's cost
        self.XR = torch.cat([self.prob.X, self.prob.R], -1)[0, :, 0].contiguous()
        c = self.cfg
        self.idx = [torch.randint(0, c.samples_per_client, (c.local_steps, n, c.batch_size),
                                  generator=torch_generator(0, "minibatch", t))
                    for t in range(rounds)]
        self.edges = [edges_of(W[0] if isinstance(W, torch.Tensor) else W) for W in self.Ws]

    def project(self, cols: Columns) -> float:
        """s/round of run_rounds with the bookkeeping ``cols``."""
        self.prob.columns = cols
        st = self.state0.clone()
        t0 = time.perf_counter()
        for _ in run_rounds(self.prob, get_method("adf-lora"), st, self.Ws.__getitem__,
                            rounds=self.rounds, switch_interval=5):
            pass
        return (time.perf_counter() - t0) / self.rounds

    def minimal(self) -> float:
        A, B = self.state0.A[0][0].clone(), self.state0.B[0][0].clone()
        t0 = time.perf_counter()
        for t in range(self.rounds):
            A, B = minimal_round(A, B, self.XR, self.idx[t], self.edges[t], lr=self.cfg.lr,
                                 s=self.prob.s, block="B")
        return (time.perf_counter() - t0) / self.rounds

    def limits(self, peak: float, bw: float) -> tuple[float, float]:
        """The minimal round's matmul FLOPs at the peak, and its compulsory memory traffic
        (rows gathered, factors read and written each step, gossip's gathered neighbours) at
        the bandwidth, in s/round."""
        from torch.utils.flop_counter import FlopCounterMode

        A, B = self.state0.A[0][0].clone(), self.state0.B[0][0].clone()
        with FlopCounterMode(display=False) as fc:
            minimal_round(A, B, self.XR, self.idx[0], self.edges[0], lr=self.cfg.lr,
                          s=self.prob.s, block="B")
        c, n = self.cfg, self.n
        blk = c.rank * (c.d_in + c.d_out) * 4                # one client's A and B, bytes
        nnz = int(self.edges[0][0].numel())
        traffic = (c.local_steps * n * (c.batch_size * (c.d_in + c.d_out) * 4 + 2 * blk)
                   + nnz * blk + 2 * n * blk)
        return fc.get_total_flops() / (peak * 1e9), traffic / (bw * 1e9)


# ---------------------------------------------------------------------- per-client loops


def loop_round(Xs, Rs, A, B, W, K, lr, s, b, idx, book: bool = False):
    """adf-lora's B phase written per client with autograd, then gossip by neighbour sums;
    ``book``: also the bookkeeping columns, per client (see module doc). Returns A, B and
    the bookkeeping sums (a dict; empty without ``book``)."""
    n, m = len(A), Xs[0].shape[0]
    newB = [bb.clone() for bb in B]
    cols: dict[str, float] = {}

    def full_grad(x, r, a, bb):
        bb = bb.detach().clone().requires_grad_(True)
        e = x @ (s * bb @ a).T - r
        (g,) = torch.autograd.grad((e ** 2).sum() / (2 * m), bb)
        per = (s * s) * ((e.detach() ** 2).sum(1) * ((x @ a.T) ** 2).sum(1))  # ||g_j||^2
        return g, float((per.mean() - (g ** 2).sum()).clamp_min(0)) / b

    for k in range(K):
        if book:    # at x^{t,k}: consensus, every client's full gradient, the mean's gradient
            Bbar = sum(newB) / n
            cols["xi_inner"] = cols.get("xi_inner", 0.0) + sum(
                float(((x - Bbar) ** 2).sum()) for x in newB) / n
            gs = [full_grad(Xs[i], Rs[i], A[i], newB[i]) for i in range(n)]
            gbar = sum(g for g, _ in gs) / n
            cols["sn_gbar_sq"] = cols.get("sn_gbar_sq", 0.0) + float((gbar ** 2).sum())
            cols["V"] = cols.get("V", 0.0) + sum(v for _, v in gs) / n
        step = []
        for i in range(n):
            bb = newB[i].clone().requires_grad_(True)
            x, r = Xs[i][idx[k, i]], Rs[i][idx[k, i]]
            loss = ((x @ (s * bb @ A[i]).T - r) ** 2).sum() / (2 * b)
            (g,) = torch.autograd.grad(loss, bb)
            step.append(g)
        if book:
            gm = sum(step) / n
            cols["gamma_B"] = cols.get("gamma_B", 0.0) + sum(
                float(((g - gm) ** 2).sum()) for g in step) / n
        newB = [newB[i] - lr * step[i] for i in range(n)]
    outA, outB = [], []
    for i in range(n):
        accA, accB = torch.zeros_like(A[i]), torch.zeros_like(newB[i])
        for j in range(n):
            w = float(W[i, j])
            if w != 0.0:
                accA += w * A[j]
                accB += w * newB[j]
        outA.append(accA)
        outB.append(accB)
    if book:        # evaluate: local loss, zeta^2 at the mean, sigma^2 at the clients' points
        Ab, Bb = sum(outA) / n, sum(outB) / n
        gi = []
        for i in range(n):
            e = Xs[i] @ (s * outB[i] @ outA[i]).T - Rs[i]
            cols["local_loss"] = cols.get("local_loss", 0.0) + float((e ** 2).sum()) / (2 * m * n)
            gi.append(full_grad(Xs[i], Rs[i], Ab, Bb)[0])
            cols["sigma_sq"] = cols.get("sigma_sq", 0.0) + full_grad(
                Xs[i], Rs[i], outA[i], outB[i])[1] / n
        gm = sum(gi) / n
        cols["zeta_sq"] = sum(float(((g - gm) ** 2).sum()) for g in gi) / n
    return outA, outB, cols


def bench_loop_vs_engine(n: int = 100, rounds: int = 3) -> None:
    cfg = scale_cfg(n, rounds)
    prob = QuadraticProblem(cfg)
    state = prob.initial_state()
    state.B = [b + 0.01 for b in state.B]
    sched = mixing_schedule(build_sampler(cfg.topology, n, seed=0), [0], dtype=torch.float32)
    Ws = [sched(t) for t in range(rounds)]
    K, lr, s, bsz = cfg.local_steps, cfg.lr, prob.s, cfg.batch_size

    def engine(cols: Columns) -> float:
        """local update of B + gossip of A and B + evaluate (the loop's work), best of 3."""
        prob.columns = cols
        best = float("inf")
        for _ in range(3):
            st, t0 = state.clone(), time.perf_counter()
            for t in range(rounds):
                st, _ = prob.local_update(st, ("B",), t)
                st = st.map_blocks(lambda X, W=Ws[t]: gossip(W, X), ("A", "B"))
                prob.evaluate(st, t)
            best = min(best, (time.perf_counter() - t0) / rounds)
        return best

    Xs = [prob.X[0, i, 0] for i in range(n)]
    Rs = [prob.R[0, i, 0] for i in range(n)]
    A0 = [state.A[0][0, i] for i in range(n)]
    B0 = [state.B[0][0, i] for i in range(n)]

    def loop(book: bool) -> float:
        g = torch.Generator().manual_seed(0)
        A, B = A0, B0
        t0 = time.perf_counter()
        for t in range(rounds):
            idx = torch.randint(0, cfg.samples_per_client, (K, n, bsz), generator=g)
            A, B, _ = loop_round(Xs, Rs, A, B, Ws[t][0], K, lr, s, bsz, idx, book)
        return (time.perf_counter() - t0) / rounds

    for book, cols, what in ((False, NONE, "method alone (checks off)"),
                             (True, FULL, "full bookkeeping")):
        te, tl = engine(cols), loop(book)
        print(f"n={n}, {what}: per-client loop {tl:.4f} s/round, engine {te:.5f} s/round "
              f"-> engine {tl / te:.1f}x faster")


# ---------------------------------------------------------------------- float32 bookkeeping


def bench_float32_error(n: int = 4096, rounds: int = 4) -> None:
    """Largest relative difference of each bookkeeping column, float32 passes vs float64."""
    cfg = scale_cfg(n, rounds)
    sched = mixing_schedule(build_sampler(cfg.topology, n, seed=0), [0], dtype=torch.float32)
    out = {}
    for exact in (True, False):
        prob = QuadraticProblem(cfg)
        prob.exact_bookkeeping = exact
        rows = []
        for r in run_rounds(prob, get_method("adf-lora"), prob.initial_state(), sched,
                            rounds=rounds, switch_interval=2):
            rows.append({k: v.clone() for k, v in r.scalar.items()})
        out[exact] = rows
    worst = {}
    for a, b in zip(out[True], out[False], strict=True):
        for k in a:
            if k in SCHEDULED or k in ("L_hull",):
                den = float(a[k].abs().max())
                err = float((a[k] - b[k]).abs().max()) / den if den else 0.0
                worst[k] = max(worst.get(k, 0.0), err)
    print(f"float32 bookkeeping passes vs float64 (n={n}, {rounds} rounds, both blocks "
          "trained), max relative difference per column:")
    print("  " + ", ".join(f"{k} {v:.1e}" for k, v in sorted(worst.items())))


# ---------------------------------------------------------------------- table


def profile_round(n: int, top: int = 15) -> None:
    st = Setting(n, 2)
    st.project(FULL)    # warm-up
    pr = cProfile.Profile()
    pr.enable()
    st.project(FULL)
    pr.disable()
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(top)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    print(f"cProfile of the full-bookkeeping round at n={n} (2 rounds, by own time):")
    print("\n".join(lines[:top + 6]))
    st.prob.columns = NONE
    pr = cProfile.Profile()
    pr.enable()
    st.project(NONE)
    pr.disable()
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(10)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    print(f"cProfile of the checks-off round at n={n} (2 rounds, by own time):")
    print("\n".join(lines[:16]))


def table(sizes: list[int], reps: int, peak: float, bw: float) -> None:
    rows = []
    for n in sizes:
        rounds = 1 if n >= 100_000 else 2 if n >= 10_000 else 4
        st = Setting(n, rounds)
        st.project(NONE)           # warm-up (allocator, first-touch)
        st.minimal()
        t = {"full": [], "off": [], "min": []}
        for _ in range(reps):
            t["full"].append(st.project(FULL))
            t["off"].append(st.project(NONE))
            t["min"].append(st.minimal())
        med = {k: statistics.median(v) for k, v in t.items()}
        flop, mem = st.limits(peak, bw)
        rows.append((n, med, flop, mem, t))
        del st
    print(f"machine: {os.cpu_count()} cores, {torch.get_num_threads()} torch thread, "
          f"load average {os.getloadavg()[0]:.1f} (shared, loaded); median of {reps} "
          "interleaved repeats")
    from adflora_analysis.resources import _HEAP_KEPT
    print("allocator: large blocks from the kept heap from n >= 1,024 on "
          f"({'on' if _HEAP_KEPT and _HEAP_KEPT[0] else 'off'}; set by the problem, "
          "resources.reuse_large_allocations, and so also under the minimal round measured "
          "in the same process)")
    print("| n | project full s/round | checks off | minimal | FLOP limit | memory limit | "
          "full / minimal | off / minimal |")
    print("|---|---|---|---|---|---|---|---|")
    for n, med, flop, mem, _ in rows:
        print(f"| {n:,} | {med['full']:.4f} | {med['off']:.4f} | {med['min']:.4f} | "
              f"{flop:.5f} | {mem:.5f} | {med['full'] / med['min']:.2f}x | "
              f"{med['off'] / med['min']:.2f}x |")
    by = {n: med for n, med, *_ in rows}
    if 10_000 in by and 100_000 in by:
        g = {k: by[100_000][k] / by[10_000][k] for k in ("full", "off", "min")}
        print(f"growth 1e4 -> 1e5: full {g['full']:.1f}x, checks off {g['off']:.1f}x, "
              f"minimal {g['min']:.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", type=str, default="")
    ap.add_argument("--reps", type=int, default=0)
    ap.add_argument("--profile-n", type=int, default=10_000)
    ap.add_argument("--skip", type=str, default="",
                    help="comma list of sections to skip: loop,error,profile")
    args = ap.parse_args()
    torch.set_num_threads(1)
    skip = set(args.skip.split(","))
    sizes = ([int(float(x)) for x in args.sizes.split(",")] if args.sizes
             else [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000])
    reps = args.reps or (3 if args.quick else 5)
    peak, bw = matmul_peak(), bandwidth()
    print(f"measured: float32 matmul peak {peak:.1f} GFLOP/s, copy bandwidth {bw:.1f} GB/s "
          "(one thread)")
    if "loop" not in skip:
        bench_loop_vs_engine()
    if "error" not in skip:
        bench_float32_error()
    if "profile" not in skip:
        profile_round(args.profile_n)
    table(sizes, reps, peak, bw)


if __name__ == "__main__":
    main()
