"""Benchmark of the torch.distributed gossip backend (issue 5). Prints its figures.

1. Bytes sent per round per rank by the all-gather and the neighbor exchange, n = 10 and 100
   clients, encounter model q = 0.1 (metropolis), LoRA-sized blocks (r = 8, d = 768, 12 layers
   of query/value: RoBERTa-base-like), P = 2 processes, measured by the backend's counters.
2. Wall time per round of the synthetic testbed (bounds-like config) at P = 1 and P = 2.

Run: python benchmarks/distributed.py   (launches torchrun itself; gloo on CPU)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

ROUNDS = 20


def worker(n: int, exchange: str, out: str) -> None:
    import numpy as np
    import torch
    import torch.distributed as dist

    from adflora_analysis.core.gossip import mixing_schedule
    from adflora_analysis.distributed import TorchDistBackend, init_distributed
    from adflora_analysis.topology import make_sampler

    init_distributed()
    b = TorchDistBackend(n, exchange)
    sl = b.client_slice(n)
    r, d, layers = 8, 768, 24
    X = torch.randn(1, sl.stop - sl.start, layers * r, d)  # A blocks of every layer, stacked
    sampler = make_sampler("encounter", n, q=0.1, weights="metropolis")
    mix = mixing_schedule(sampler, [0], dtype=torch.float32)
    dist.barrier()
    t0 = time.perf_counter()
    for t in range(ROUNDS):
        X = b.mix(mix(t), X)
    dist.barrier()
    wall = (time.perf_counter() - t0) / ROUNDS
    sent = torch.tensor([b.bytes_sent / ROUNDS], dtype=torch.float64)
    allsent = [torch.zeros_like(sent) for _ in range(b.world_size)]
    dist.all_gather(allsent, sent)
    if b.rank == 0:
        with open(out, "w") as f:
            json.dump({"n": n, "exchange": exchange, "bytes_per_round_per_rank":
                       float(np.mean([s.item() for s in allsent])), "s_per_round": wall}, f)
    dist.destroy_process_group()


def torchrun(args: list[str], nproc: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc-per-node={nproc}", *args], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    tmp = tempfile.mkdtemp()
    print("gossip exchange, P = 2, encounter q = 0.1, block = 24 x (8 x 768) float32 / client")
    print(f"{'n':>5} {'exchange':>10} {'MB/round/rank':>14} {'s/round':>9}")
    for n in (10, 100):
        for ex in ("allgather", "neighbor"):
            out = os.path.join(tmp, f"{n}-{ex}.json")
            torchrun([__file__, "worker", str(n), ex, out], 2)
            r = json.load(open(out))
            print(f"{n:>5} {ex:>10} {r['bytes_per_round_per_rank'] / 1e6:>14.2f} "
                  f"{r['s_per_round']:>9.4f}")
    cfg = os.path.join(os.path.dirname(__file__), "..", "synthetic", "bounds.toml")
    if os.path.exists(cfg):
        print("\nsynthetic bounds.toml (1 method, 4 seeds, 40 rounds): wall time per round")
        times = {}
        for P in (1, 2):
            outdir = os.path.join(tmp, f"syn{P}")
            t0 = time.perf_counter()
            torchrun(["-m", "adflora_analysis", "synthetic", "run", cfg, "--out", outdir,
                      "methods=['adf-lora']", "seeds=4", "rounds=40"], P)
            times[P] = (time.perf_counter() - t0) / 40
            print(f"  P = {P}: {times[P]:.4f} s/round (including start-up)")
        print(f"  ratio P=2 / P=1: {times[2] / times[1]:.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        main()
