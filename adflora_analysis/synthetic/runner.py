"""Run a synthetic study into a run directory (docs/architecture.md §6, §8).

Seeds differ in data, initialisation, gradient noise and the W^t draws of time-varying samplers;
a *static random* graph (random-regular, Erdős–Rényi, Watts–Strogatz, random geometric) is drawn
once per variant from its first seed and shared by all seeds of the batch, so its p in
``meta.json`` applies to every seed (the GLUE runner, one seed per job, draws one per seed).

A study is a :class:`SyntheticConfig`; its ``sweep``/``variants`` expand it into *variants*
(e.g. T = 1, 2, 5, 10, 20), each a fully validated config. Every (variant, method) pair is one
:class:`~adflora_analysis.experiment.Job` that runs **all seeds as one batch** through the shared
round loop. Files written (besides what :func:`~adflora_analysis.experiment.run_jobs` writes):

- ``config.toml``: the resolved config;
- ``meta.json``: seeds, versions, git revision, and per variant the topology constants
  (``p``, ``p_stderr``, ``p_method``, ``second_moment_rate``, spectral gap, ...), f* per seed
  and the effective T per method; top-level ``p``, ``p_stderr``, ``second_moment_rate`` are
  the first variant's (the common case of a single variant);
- ``metrics.jsonl`` / ``metrics.parquet``: tidy rows (core/rows.py) with extra columns
  ``variant``, ``switch_interval``, ``graph``, ``weights``, ``q``, ``heterogeneity``, ``lr``,
  ``n_clients``, ``local_steps``;
- ``mixing.parquet``: per variant, seed and round, how far the W^t of the run (the same for
  every method: W^t depends only on (seed, t)) is from doubly stochastic (``row_err``,
  ``col_err``), its smallest entry, asymmetry and mean degree (theory check 1);
- ``constants.parquet``: every ``constants_every`` rounds, L by Hessian power iteration at the
  clients and the averaged model, the analytic point and hull bounds (:mod:`.constants`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from adflora_analysis.config import to_dict
from adflora_analysis.core.backend import LOCAL, Backend
from adflora_analysis.core.gossip import mixing_schedule
from adflora_analysis.core.methods import get_method
from adflora_analysis.errors import AdfloraError
from adflora_analysis.experiment import (
    Job,
    check_resume_config,
    check_resume_world_size,
    run_jobs,
)
from adflora_analysis.runconfig import expand_study
from adflora_analysis.rundir import init_run_dir, make_meta
from adflora_analysis.synthetic.config import SyntheticConfig


def expand_variants(cfg: SyntheticConfig) -> list[tuple[str, SyntheticConfig]]:
    """The (label, config) variants of a study: :func:`adflora_analysis.runconfig.expand_study`
    (``sweep`` and ``variants``, values kept typed; no sweep and no variants: one variant,
    label "base")."""
    return expand_study(cfg)


def effective_T(cfg: SyntheticConfig, method: str) -> int:
    """T a method runs with: the config's ``switch_interval`` or the method's default."""
    return cfg.switch_for(method)


def mixing_validity(sampler, seeds: list[int], rounds: int) -> dict[str, Any]:
    """How far every W^t a run uses (all seeds and rounds, the same stream as the run) is from
    doubly stochastic, nonnegative and symmetric (theory check 1); also written per seed and
    round to ``mixing.parquet``."""
    import pandas as pd

    sched = mixing_schedule(sampler, seeds)
    rows = []
    for t in range(rounds):
        for r in _mixing_rows(sched(t), seeds):
            rows.append({"round": t, **r})
    df = pd.DataFrame(rows)
    return df, {"max_row_err": float(df.row_err.max()), "max_col_err": float(df.col_err.max()),
                "min_entry": float(df.min_entry.min()), "max_asym": float(df.asym.max()),
                "mean_degree": float(df.mean_degree.mean()), "matrices": len(df)}


def _mixing_rows(W: torch.Tensor, seeds: list[int]) -> list[dict]:
    W = W.double()
    n = W.shape[-1]
    row = (W.sum(-1) - 1).abs().amax(-1)
    col = (W.sum(-2) - 1).abs().amax(-1)
    mn = W.flatten(-2).amin(-1)
    asym = (W - W.transpose(-1, -2)).abs().flatten(-2).amax(-1)
    off = (W.abs() > 0) & ~torch.eye(n, dtype=torch.bool)
    deg = off.sum(-1).double().mean(-1)
    return [{"seed": int(s), "row_err": float(row[i]), "col_err": float(col[i]),
             "min_entry": float(mn[i]), "asym": float(asym[i]), "mean_degree": float(deg[i])}
            for i, s in enumerate(seeds)]


def topology_meta(cfg: SyntheticConfig) -> dict[str, Any]:
    """Constants of the config's topology (p with its stderr, second-moment rate, ...)."""
    from adflora_analysis.topology import build_sampler, topology_constants

    sampler = build_sampler(cfg.topology, cfg.n_clients, seed=cfg.seed_list[0])
    return sampler, topology_constants(sampler, samples=cfg.topology_samples,
                                       seed=cfg.seed_list[0])


def build_jobs(variants: list[tuple[str, SyntheticConfig]], samplers: dict[str, Any],
               backend: Backend = LOCAL) -> list[tuple[Job, SyntheticConfig]]:
    """One job per (variant, method), with its variant's config; all seeds of a job run as
    one batch (of this process's clients, under torch.distributed)."""
    from adflora_analysis.synthetic.problem import QuadraticProblem

    jobs = []
    multi = len(variants) > 1
    for label, vcfg in variants:
        seeds = vcfg.seed_list
        for m in vcfg.methods:
            T = effective_T(vcfg, m)

            def build(vcfg=vcfg, label=label, seeds=seeds):
                problem = QuadraticProblem(vcfg, seeds, backend)
                mixing = mixing_schedule(samplers[label], seeds, dtype=problem.dtype,
                                         device=vcfg.device)
                return problem, problem.initial_state(), mixing

            topo = vcfg.topology
            extra = {"variant": label, "switch_interval": T, "graph": topo.graph,
                     "weights": topo.weights, "q": topo.q, "heterogeneity": vcfg.heterogeneity,
                     "lr": vcfg.lr, "n_clients": vcfg.n_clients,
                     "local_steps": vcfg.local_steps}
            key = f"{label}/{m}" if multi else m
            jobs.append((Job(key, get_method(m), seeds, build, switch_interval=T, extra=extra,
                             server=topo.weights == "server"), vcfg))
    return jobs


def run_study(cfg: SyntheticConfig, out: str | Path, *, resume: bool = False,
              progress: bool | None = None, stop_after: int | None = None,
              backend: Backend = LOCAL):
    """Run every variant x method of ``cfg`` into ``out``; return the metrics table.

    A non-finite value stops the run with :class:`DivergenceError` naming the round and method;
    the rows written so far stay (and ``meta.json`` records ``status = "diverged"``). Under
    torch.distributed (``backend``), every process runs this with its clients and rank 0 alone
    writes files.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.n_threads())
    try:
        return _run_study(cfg, Path(out), resume=resume, progress=progress,
                          stop_after=stop_after, backend=backend)
    finally:
        torch.set_num_threads(threads)


def _run_study(cfg: SyntheticConfig, out: Path, *, resume: bool, progress: bool | None,
               stop_after: int | None, backend: Backend = LOCAL):
    writer = backend.rank == 0
    config = to_dict(cfg)
    variants = expand_variants(cfg)
    rounds = {v.rounds for _, v in variants}
    if len(rounds) != 1:
        raise AdfloraError("variants must share the number of rounds", "sweep other keys")
    if backend.world_size > 1 and {v.n_clients for _, v in variants} != {cfg.n_clients}:
        raise AdfloraError("a torch.distributed run needs one n_clients for every variant",
                           "run variants with other client counts separately")
    samplers, vmeta, mix_tables = {}, {}, []
    for label, vcfg in variants:
        samplers[label], tc = topology_meta(vcfg)
        mdf, mix_summary = mixing_validity(samplers[label], vcfg.seed_list, vcfg.rounds)
        mdf.insert(0, "variant", label)
        mix_tables.append(mdf)
        from adflora_analysis.synthetic.problem import QuadraticProblem

        fstar = QuadraticProblem(vcfg, vcfg.seed_list).f_star.tolist() if vcfg.n_clients * \
            vcfg.d_in * vcfg.d_in * len(vcfg.seed_list) <= 5e7 else None
        vmeta[label] = {"topology": tc, "p": tc["p"], "p_stderr": tc["p_stderr"],
                        "second_moment_rate": tc["second_moment_rate"], "f_star": fstar,
                        "switch_interval": {m: effective_T(vcfg, m) for m in vcfg.methods},
                        "lr": vcfg.lr, "local_steps": vcfg.local_steps,
                        "n_clients": vcfg.n_clients, "noise_kind": vcfg.noise_kind,
                        "heterogeneity": vcfg.heterogeneity, "methods": list(vcfg.methods),
                        "mixing_validity": mix_summary}
    first = vmeta[variants[0][0]]
    if resume:
        check_resume_config(out, config)
        check_resume_world_size(out, backend.world_size)
    elif writer:
        meta = make_meta(cfg.seed_list, study="synthetic", p=first["p"],
                         p_stderr=first["p_stderr"],
                         second_moment_rate=first["second_moment_rate"],
                         topology=first["topology"], variants=vmeta, status="running",
                         optimizer="sgd, fresh every round (no state to gossip)",
                         world_size=backend.world_size)
        init_run_dir(out, config, meta)
        for stale in ("checks.json", "check_curves.parquet"):  # of an earlier run here
            (out / stale).unlink(missing_ok=True)
        import pandas as pd

        from adflora_analysis import fileio

        fileio.write_parquet(out / "mixing.parquet", pd.concat(mix_tables, ignore_index=True))
    pairs = build_jobs(variants, samplers, backend)
    jobs = [j for j, _ in pairs]
    by_key = {j.key: v for j, v in pairs}

    def on_round(job: Job, problem, res) -> dict[str, list[dict]]:
        from adflora_analysis.synthetic.constants import measure

        tables = {}
        vcfg = by_key[job.key]
        ce = vcfg.constants_every
        if ce and ((res.t + 1) % ce == 0 or res.t == 0 or res.t == vcfg.rounds - 1):
            vals = measure(problem, res.state, res.t)
            tables["constants"] = [{"method": job.method.name, "variant": job.extra["variant"],
                                    "seed": int(s), **{k: float(v[i]) for k, v in vals.items()}}
                                   for i, s in enumerate(job.seeds)]
        return tables

    return run_jobs(out, jobs, cfg.rounds, checkpoint_every=cfg.checkpoint_every,
                    resume=resume, on_round=on_round, progress=progress,
                    stop_after=stop_after, backend=backend)


def study_rows(cfg: SyntheticConfig):
    """Run every variant x method of ``cfg`` in memory, writing nothing; return the metrics
    table: the rows :func:`run_study` writes to ``metrics.parquet`` (one per variant, method,
    seed, round and layer; layer ``all`` holds totals), without its other tables (no topology
    constants, ``mixing``, ``constants`` or checkpoints).

    >>> from adflora_analysis.config import load_config
    >>> cfg = load_config(SyntheticConfig, data={"n_clients": 4, "rounds": 3, "seeds": 2,
    ...                   "methods": ["adf-lora"], "d_in": 4, "d_out": 4,
    ...                   "topology": {"graph": "ring"}})
    >>> df = study_rows(cfg)
    >>> len(df), sorted(df.layer.unique()), int(df["round"].max())
    (12, ['all', 'layer0'], 2)
    >>> bool((df.query("layer == 'all' and round == 0").xi_A < 1e-12).all())  # A frozen, shared
    True
    """
    import pandas as pd

    from adflora_analysis.core.loop import run_rounds
    from adflora_analysis.core.rows import round_rows
    from adflora_analysis.topology import build_sampler

    variants = expand_variants(cfg)
    samplers = {label: build_sampler(v.topology, v.n_clients, seed=v.seed_list[0])
                for label, v in variants}
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.n_threads())
    rows: list[dict] = []
    try:
        for job, vcfg in build_jobs(variants, samplers):
            problem, state, mixing = job.build()
            for res in run_rounds(problem, job.method, state, mixing, rounds=vcfg.rounds,
                                  switch_interval=job.switch_interval, server=job.server):
                rows += round_rows(res, job.method.name, job.seeds,
                                   {"job": job.key, **job.extra})
    finally:
        torch.set_num_threads(threads)
    return pd.DataFrame(rows)


def read_meta(run_dir: str | Path) -> dict[str, Any]:
    p = Path(run_dir) / "meta.json"
    if not p.exists():
        raise AdfloraError(f"{str(run_dir)!r} has no meta.json", "pass a synthetic run directory")
    return json.loads(p.read_text())
