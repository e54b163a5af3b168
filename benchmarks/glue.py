"""GLUE runner benchmark: federation overhead and memory per client (not a timed test).

1. Throughput. 10 clients x K local steps x R rounds through the runner (``run_jobs`` ->
   ``run_rounds`` -> :class:`GlueProblem`: adapter copy in/out by name, a fresh AdamW per client
   per round, gossip, per-layer consensus/cross-term metrics, JSONL rows) against the same number
   of plain single-adapter peft training steps (one LoRA adapter, one AdamW, A and B trained) on
   the same model and the same batches in the same order. The runner uses method ``lora`` (it
   trains A and B, like the plain loop); ``adf-lora`` (one factor per round) is timed too.
   Evaluation is off in both. Repetitions alternate plain / runner and the median is kept; wall
   and process-CPU times are both reported (the machine may be shared).
2. Memory. Peak RSS (``ru_maxrss``) of fresh processes (method ``lora``, one local step per
   client per round, every batch padded to max_length so activation memory does not depend on
   which rows were drawn, no evaluation) with 10, 25, 50 and 100 clients, each taking the same
   number of local steps in total (100 clients x 1 round, 10 clients x 10 rounds, ...), so that
   the allocator's history is alike and only the number of clients differs. The extra memory
   per client is the least-squares slope of peak RSS against n, compared with one client's
   adapter bytes (the bound: 2x, i.e. no per-client model copies); the largest residual of the
   fit is printed as the noise of a single peak-RSS reading.

    python benchmarks/glue.py                    # packaged MiniLM on Rotten Tomatoes
    python benchmarks/glue.py --model DIR        # any local checkpoint
    python benchmarks/glue.py --tiny             # a tiny RoBERTa built on the fly (fast)

The last line is the throughput ratio runner / plain (>= 0.9 is the target).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _cfg(model: str, n: int, K: int, R: int, method: str, bs: int, max_len: int):
    from adflora_analysis.config import load_config
    from adflora_analysis.glue.config import GlueConfig

    return load_config(GlueConfig, data=dict(
        task="rotten_tomatoes", model=model, n_clients=n, rounds=R, local_steps=K,
        batch_size=bs, max_length=max_len, max_eval_examples=50, methods=[method],
        eval_every=0, checkpoint_every=0, lr=1e-3, threads=1, dropout=0.1))


def _runner_time(study, method: str, R: int) -> tuple[float, float]:
    from adflora_analysis.study.experiment import run_jobs

    jobs = [study.job(method, 0)]
    with tempfile.TemporaryDirectory() as d:
        w, c = time.perf_counter(), time.process_time()
        run_jobs(d, jobs, R, checkpoint_every=0, progress=False)
        return time.perf_counter() - w, time.process_time() - c


def _plain_time(study, R: int) -> tuple[float, float]:
    """One peft adapter, one AdamW, A and B trained: the same batches as the runner's."""
    import torch

    gm, cfg = study.gm, study.cfg
    prob = study.problem("lora", 0)
    prob.activate()
    gm.load_client(gm.initial_state(1, seed=0), 0)
    params = gm.set_trainable(("A", "B"), False)
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    gm.model.train()
    w, c = time.perf_counter(), time.process_time()
    for t in range(R):
        for i in range(cfg.n_clients):
            for k in range(cfg.local_steps):
                rows = prob.clients[i].batch(t * cfg.local_steps + k, cfg.batch_size)
                loss = gm.model(**prob.train.batch(rows, gm.device)).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
    out = time.perf_counter() - w, time.process_time() - c
    gm.set_trainable((), False)
    return out


def throughput(model: str, K: int, R: int, reps: int, bs: int, max_len: int) -> dict:
    import torch

    from adflora_analysis.glue.runner import GlueStudy

    torch.set_num_threads(1)
    study = GlueStudy(_cfg(model, 10, K, R, "lora", bs, max_len))
    steps = 10 * K * R
    _plain_time(study, 1)  # warm-up
    _runner_time(study, "lora", 1)
    res: dict[str, list[tuple[float, float]]] = {"plain": [], "lora": [], "adf-lora": []}
    for _ in range(reps):
        res["plain"].append(_plain_time(study, R))
        res["lora"].append(_runner_time(study, "lora", R))
        res["adf-lora"].append(_runner_time(study, "adf-lora", R))
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
           for k, v in res.items()}
    return {"steps": steps, "median_wall_s": {k: v[0] for k, v in med.items()},
            "median_cpu_s": {k: v[1] for k, v in med.items()},
            "steps_per_s_wall": {k: steps / v[0] for k, v in med.items()},
            "ratio_wall": med["plain"][0] / med["lora"][0],
            "ratio_cpu": med["plain"][1] / med["lora"][1],
            "ratio_wall_adf": med["plain"][0] / med["adf-lora"][0],
            "adapter_bytes": study.gm.adapter_bytes()}


def memory_child(model: str, n: int, rounds: int, bs: int, max_len: int) -> None:
    """Run ``rounds`` rounds with n clients (method lora, K = 1, no evaluation); print peak
    RSS."""
    import torch

    from adflora_analysis.glue.runner import GlueStudy
    from adflora_analysis.study.experiment import run_jobs

    torch.set_num_threads(1)
    cfg = _cfg(model, n, 1, rounds, "lora", bs, max_len)
    study = GlueStudy(cfg)
    # fixed batch shapes: with dynamic padding, 100 clients' 200 batches reach longer rows than
    # 10 clients' 20 and the activation peak would grow for reasons unrelated to clients
    study.train.pad_to = max_len
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as d:
        run_jobs(d, study.jobs(), rounds, checkpoint_every=0, progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"n": n, "rounds": rounds, "peak_rss_kib": peak,
                      "rss_before_rounds_kib": before,
                      "adapter_bytes": study.gm.adapter_bytes()}))


MEMORY_CLIENTS = (10, 25, 50, 100)


def memory(model: str, bs: int, max_len: int, steps: int, env: dict | None = None) -> dict:
    """Peak RSS for each n in MEMORY_CLIENTS at ``steps`` local steps in total; slope in bytes
    per client."""
    import numpy as np

    peaks, ab = {}, None
    for n in MEMORY_CLIENTS:
        R = max(1, round(steps / n))
        r = subprocess.run([sys.executable, __file__, "--memory-child", str(n), "--model", model,
                            "--rounds", str(R), "--batch-size", str(bs),
                            "--max-length", str(max_len)],
                           capture_output=True, text=True, check=True,
                           env={**os.environ, **(env or {})})
        row = json.loads(r.stdout.strip().splitlines()[-1])
        peaks[(n, R)] = row["peak_rss_kib"] * 1024
        ab = row["adapter_bytes"]
    ns = np.array([n for n, _ in peaks], dtype=float)
    ys = np.array(list(peaks.values()), dtype=float)
    slope, icpt = np.polyfit(ns, ys, 1)
    resid = ys - (slope * ns + icpt)
    return {"peak_rss_mib": {f"{n} x {R} rounds": v / 2**20 for (n, R), v in peaks.items()},
            "adapter_bytes": ab, "per_client": float(slope),
            "max_residual_mib": float(np.abs(resid).max() / 2**20),
            "two_point": float((ys[-1] - ys[0]) / (ns[-1] - ns[0]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--tiny", action="store_true", help="build and use a tiny RoBERTa")
    ap.add_argument("--local-steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--memory-steps", type=int, default=100,
                    help="local steps in total per memory run (every client count)")
    ap.add_argument("--malloc-variant", action="store_true",
                    help="also measure memory with MALLOC_MMAP_THRESHOLD_=131072 (glibc)")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    from adflora_analysis.glue.model import quiet_transformers

    quiet_transformers()
    if a.memory_child:
        memory_child(a.model, a.memory_child, a.rounds, a.batch_size, a.max_length)
        return
    model = a.model
    if a.tiny:
        from adflora_analysis.glue.tiny import build_tiny_roberta

        model = str(build_tiny_roberta(Path(tempfile.mkdtemp()) / "tiny"))
    if not a.skip_memory:
        # glibc's dynamic mmap threshold lets freed activation buffers fragment the heap; a
        # fixed threshold (the optional variant) shows the live memory more directly
        variants = [("default malloc", None)]
        if a.malloc_variant:
            variants.append(("MALLOC_MMAP_THRESHOLD_=131072", {"MALLOC_MMAP_THRESHOLD_": "131072"}))
        for label, env in variants:
            m = memory(model, a.batch_size, a.max_length, a.memory_steps, env)
            ab = m["adapter_bytes"]
            peaks = ", ".join(f"{k}: {v:.1f}" for k, v in m["peak_rss_mib"].items())
            print(f"memory [{label}]: peak RSS (MiB) by clients x rounds, {a.memory_steps} "
                  f"local steps each: {peaks}")
            v = m["per_client"]
            print(f"  extra per client (slope of the fit; largest residual "
                  f"{m['max_residual_mib']:.1f} MiB; 10 -> 100 two-point "
                  f"{m['two_point'] / ab:.2f} x): {v / 1024:.1f} KiB = {v / ab:.2f} x the "
                  f"adapter ({ab / 1024:.1f} KiB) [target <= 2x: "
                  f"{'ok' if v / ab <= 2 else 'EXCEEDED'}]")
    if a.skip_throughput:
        return
    t = throughput(model, a.local_steps, a.rounds, a.reps, a.batch_size, a.max_length)
    print(f"throughput: {t['steps']} local steps (10 clients x K={a.local_steps} x "
          f"R={a.rounds}), median of {a.reps}")
    for k in ("plain", "lora", "adf-lora"):
        print(f"  {k:9s} wall {t['median_wall_s'][k]:7.2f} s  cpu {t['median_cpu_s'][k]:7.2f} s"
              f"  ({t['steps_per_s_wall'][k]:.2f} steps/s)")
    print(f"runner/plain (cpu time): {t['ratio_cpu']:.3f}; adf-lora runner/plain (wall): "
          f"{t['ratio_wall_adf']:.3f}")
    print(f"throughput ratio runner/plain (wall, method lora): {t['ratio_wall']:.3f}")


if __name__ == "__main__":
    main()
