"""Throughput of the torch.distributed backend at P = 1 vs P = 2 processes (issue 14, item 6).

Prints the seconds per round at P = 1 and P = 2 and their ratio (speed-up = t(P=1) / t(P=2)),
measured in one run of this script, one torch thread per process (P = 1: one process with one
thread; P = 2: two processes with one thread each; gloo, CPU):

1. **Synthetic testbed at n = 10,000**: the testbed's own ``QuadraticProblem`` in the setting
   of ``benchmarks/scale.py`` (``client_storage = "rows"``, m = 16, d_in = d_out = 64, r = 4,
   K = 5, float32, adf-lora, encounter with about 10 peers a round: a sparse W^t,
   :class:`~adflora_analysis.core.sparse.SparseMix`), every metric and theory-check column of a
   round. Under torchrun each process holds and steps its clients only; the inner-step
   bookkeeping, ``evaluate`` and the consensus metrics come from per-process partial sums and
   maxima (small all-reduces, never a gathered state). P = 1 is the in-process run; P = 2 runs
   under torchrun with the default exchange (``auto`` = neighbor for a sparse W^t) and with
   ``allgather``. W^t is drawn beforehand in every process (``draw s``: one draw, replicated
   work), and every process generates every client's data (``build s``, same streams as
   in-process) before keeping its own. Also the bytes each rank sends per round and
   ``cpu s/rd``, the CPU time per round of the (slowest) process: on shared cores the wall
   time mostly measures the other jobs. The loss and product consensus of the last round are
   printed for each run: they agree to float round-off.
2. **GLUE runner**: ``glue_runs/smoke.toml`` (offline MiniLM, 10 clients, encounter q = 0.1)
   with adf-lora for a few rounds, through the CLI (``adflora glue run`` / under torchrun).
   Seconds per round from the times the progress lines arrive (from round 1 to the last line
   before round R-1, which evaluates), so start-up and the evaluation are left out.

The machine's load is printed before and after (``uptime``): on shared cores the ratio is what
this run saw, not a property of the code alone.

Run: python benchmarks/distributed.py [--n 10000] [--rounds 6] [--glue-rounds 14]
[--skip-synthetic] [--skip-glue]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))     # scale.bench_config: the same setting


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1"}


def synthetic_worker(n: int, rounds: int, exchange: str, out: str) -> None:
    """One synthetic run (in-process, or one rank under torchrun); rank 0 writes its row."""
    import torch
    from scale import bench_config

    from adflora_analysis.core import get_method, mixing_schedule, run_rounds
    from adflora_analysis.core.sparse import SparseMix
    from adflora_analysis.distributed import make_backend, shutdown
    from adflora_analysis.synthetic.problem import QuadraticProblem
    from adflora_analysis.topology import build_sampler

    torch.set_num_threads(1)
    backend = make_backend(n, "auto", exchange)
    cfg = bench_config(n, "encounter", rounds)
    sampler = build_sampler(cfg.topology, n, seed=0)
    sched = mixing_schedule(sampler, cfg.seed_list, dtype=torch.float32)
    t0 = time.perf_counter()
    Ws = [sched(t) for t in range(rounds)]
    draw = (time.perf_counter() - t0) / rounds
    assert isinstance(Ws[0], SparseMix)
    t0 = time.perf_counter()
    prob = QuadraticProblem(cfg, cfg.seed_list, backend=backend)
    build = time.perf_counter() - t0
    times, cpu, loss = [], [], None
    t0, c0 = time.perf_counter(), time.process_time()
    for res in run_rounds(prob, get_method("adf-lora"), prob.initial_state(), Ws.__getitem__,
                          rounds=rounds, switch_interval=cfg.switch_interval, backend=backend):
        loss = float(res.scalar["loss"][0])
        pc = float(res.layer["product_consensus"][0, 0])
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
    sent = getattr(backend, "bytes_sent", 0) / rounds
    row = {"P": backend.world_size, "exchange": exchange if backend.world_size > 1 else "-",
           "s_per_round": sum(times[1:]) / (len(times) - 1),
           "cpu_per_round": sum(cpu[1:]) / (len(cpu) - 1), "draw_s": draw, "build_s": build,
           "bytes_per_round_rank": sent, "loss": loss, "product_consensus": pc}
    if backend.world_size > 1:
        import torch.distributed as dist

        t = torch.tensor([row["s_per_round"], sent, row["cpu_per_round"]], dtype=torch.float64)
        parts = [torch.zeros_like(t) for _ in range(backend.world_size)]
        dist.all_gather(parts, t)
        row["s_per_round"] = max(float(p[0]) for p in parts)   # the slowest rank
        row["bytes_per_round_rank"] = sum(float(p[1]) for p in parts) / len(parts)
        row["cpu_per_round"] = max(float(p[2]) for p in parts)
    if backend.rank == 0:
        Path(out).write_text(json.dumps(row))
    shutdown(backend)


def _torchrun(nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}"]


def synthetic(n: int, rounds: int, tmp: Path) -> list[dict]:
    rows = []
    for P, ex in ((1, "auto"), (2, "auto"), (2, "allgather")):
        out = tmp / f"syn-{P}-{ex}.json"
        args = [__file__, "synthetic-worker", str(n), str(rounds), ex, str(out)]
        cmd = (_torchrun(P) + args) if P > 1 else [sys.executable, *args]
        r = subprocess.run(cmd, capture_output=True, text=True, env=_env())
        if r.returncode != 0:
            raise SystemExit(f"synthetic P={P} {ex} failed:\n{r.stderr[-3000:]}")
        rows.append(json.loads(out.read_text()))
    return rows


def glue(rounds: int, tmp: Path) -> dict[int, float]:
    """Seconds per round of the smoke config with adf-lora at P = 1 and 2 (progress lines)."""
    cfg = ROOT / "glue_runs" / "smoke.toml"
    over = [f"rounds={rounds}", "methods=['adf-lora']", f"eval_every={rounds}",
            "checkpoint_every=0", "max_eval_examples=50", "threads=1"]
    out = {}
    for P in (1, 2):
        args = ["-m", "adflora_analysis", "glue", "run", str(cfg), "--out",
                str(tmp / f"glue{P}"), *over]
        cmd = (_torchrun(P) + args) if P > 1 else [sys.executable, *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, env=_env())
        seen: dict[int, float] = {}
        tail = []
        for line in proc.stderr:
            tail = [*tail[-40:], line]
            m = re.search(r"round (\d+) done", line)
            if m:
                seen[int(m.group(1))] = time.perf_counter()
        if proc.wait() != 0 or len(seen) < 2:
            raise SystemExit(f"GLUE P={P} failed:\n{''.join(tail)}")
        a, b = min(seen), max(k for k in seen if k < rounds - 1)   # the last round evaluates
        out[P] = (seen[b] - seen[a]) / (b - a)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--glue-rounds", type=int, default=14)
    ap.add_argument("--skip-glue", action="store_true")
    ap.add_argument("--skip-synthetic", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    load = lambda: subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()  # noqa: E731
    print(f"# load before: {load()}  ({os.cpu_count()} cores, shared)")
    rows = [] if args.skip_synthetic else synthetic(args.n, args.rounds, tmp)
    if rows:
        print(f"# synthetic testbed (QuadraticProblem, rows storage): n = {args.n}, d = 64, "
              f"r = 4, K = 5, float32, adf-lora, sparse encounter ~10 peers, {args.rounds} "
              f"rounds (first left out), 1 thread per process")
        print(f"{'P':>2} {'exchange':>10} {'s/round':>8} {'cpu s/rd':>9} {'build s':>8} "
              f"{'draw s':>7} {'MB/round/rank':>14} {'loss':>12} {'prod. cons.':>12}")
    for r in rows:
        print(f"{r['P']:>2} {r['exchange']:>10} {r['s_per_round']:>8.3f} "
              f"{r['cpu_per_round']:>9.3f} {r['build_s']:>8.2f} {r['draw_s']:>7.3f} "
              f"{r['bytes_per_round_rank'] / 1e6:>14.2f} {r['loss']:>12.7g} "
              f"{r['product_consensus']:>12.6g}")
    for r in rows[1:]:
        base, base_cpu = rows[0]["s_per_round"], rows[0]["cpu_per_round"]
        print(f"speed-up synthetic P=2 ({r['exchange']}) / P=1: wall "
              f"{base / r['s_per_round']:.2f}x, CPU time of the slowest rank "
              f"{base_cpu / r['cpu_per_round']:.2f}x")
    if not args.skip_glue:
        print(f"\n# GLUE smoke.toml, adf-lora, {args.glue_rounds} rounds, 1 thread per process")
        g = glue(args.glue_rounds, tmp)
        for P, s in g.items():
            print(f"P = {P}: {s:.3f} s/round")
        print(f"speed-up GLUE P=2 / P=1: {g[1] / g[2]:.2f}x")
    print(f"# load after: {load()}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "synthetic-worker":
        synthetic_worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        main()
