"""Run a synthetic study into a run directory (docs/architecture.md §6, §8).

Seeds differ in data, initialisation, gradient noise and the W^t draws of time-varying samplers;
a *static random* graph (random-regular, Erdős–Rényi, Watts–Strogatz, random geometric) is drawn
once per variant from its first seed and shared by all seeds of the batch, so its p in
``meta.json`` applies to every seed (the GLUE runner, one seed per job, draws one per seed).

A study is a :class:`SyntheticConfig`; its ``sweep``/``variants`` expand it into *variants*
(e.g. T = 1, 2, 5, 10, 20), each a fully validated config. Every (variant, method) pair is one
:class:`~.study.experiment.Job` that runs **all seeds as one batch** through the shared
round loop. Files written (besides what :func:`~.study.experiment.run_jobs` writes):

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

import sys
import time
from pathlib import Path
from typing import Any

import torch

from adflora_analysis.config import to_dict
from adflora_analysis.core.backend import LOCAL, Backend
from adflora_analysis.core.gossip import mixing_schedule
from adflora_analysis.core.methods import get_method
from adflora_analysis.errors import AdfloraError
from adflora_analysis.study.callbacks import Callbacks, RoundInfo, RunInfo
from adflora_analysis.study.experiment import Job
from adflora_analysis.study.runconfig import expand_study
from adflora_analysis.study.schedule_config import schedule_and_mixer, topology_schedule
from adflora_analysis.study.sequence import topology_meta
from adflora_analysis.study.testbed import BuildContext, Built
from adflora_analysis.synthetic.config import SyntheticConfig


def expand_variants(cfg: SyntheticConfig) -> list[tuple[str, SyntheticConfig]]:
    """The (label, config) variants of a study: :func:`~.study.runconfig.expand_study`
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


def _mixing_rows(W, seeds: list[int]) -> list[dict]:
    """Rows of theory check 1 for a dense (S, n, n) W^t or a sparse one (O(edges))."""
    from adflora_analysis.core.sparse import mixing_stats

    st = {k: v.tolist() for k, v in mixing_stats(W).items()}
    return [{"seed": int(s), **{k: float(v[i]) for k, v in st.items()}}
            for i, s in enumerate(seeds)]


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
                                         device=vcfg.device,
                                         sparse=None if vcfg.gossip.is_default else False)
                return problem, problem.initial_state(), mixing

            topo = vcfg.topology
            extra = {"variant": label, "switch_interval": T, "graph": topo.graph,
                     "weights": topo.weights, "q": topo.q, "heterogeneity": vcfg.heterogeneity,
                     "lr": vcfg.lr, "n_clients": vcfg.n_clients,
                     "local_steps": vcfg.local_steps}
            key = f"{label}/{m}" if multi else m
            L = vcfg.n_layers
            schedule, mixer, more = schedule_and_mixer(
                vcfg, samplers.get(label), seeds,
                (8 * L * vcfg.rank * vcfg.d_in, 8 * L * vcfg.rank * vcfg.d_out, L), method=m)
            extra.update(more)
            if schedule is not None:
                extra["switch_interval"] = schedule.interval
            jobs.append((Job(key, get_method(m), seeds, build, switch_interval=T, extra=extra,
                             server=topo.weights == "server", schedule=schedule, mixer=mixer),
                         vcfg))
    return jobs


def run_study(cfg: SyntheticConfig, out: str | Path, *, resume: bool = False,
              overwrite: bool = False, progress: bool | None = None,
              stop_after: int | None = None, backend: Backend = LOCAL,
              callbacks: list[Any] | None = None):
    """Run every variant x method of ``cfg`` into ``out``; return the metrics table.

    The run sequence of every kind (:func:`adflora_analysis.study.sequence.run_testbed` with
    the ``synthetic`` testbed, :mod:`.testbed`). ``out`` must be new or empty, or an earlier
    run of the same config with ``resume``, or an earlier toolkit run with ``overwrite``
    (which removes only what its manifest lists); see :func:`adflora_analysis.rundir.claim`.
    The device and a memory/disk estimate (:mod:`adflora_analysis.resources`) are checked
    before anything is allocated.

    A non-finite value stops the run with :class:`DivergenceError` naming the round and method;
    the rows written so far stay (and ``meta.json`` records ``status = "diverged"``). Under
    torch.distributed (``backend``), every process runs this with its clients and rank 0 alone
    writes files. ``callbacks``: :class:`~adflora_analysis.tracking.Callback` objects called
    every round (:func:`~adflora_analysis.study.experiment.run_jobs`).
    """
    from adflora_analysis.study.sequence import run_testbed

    return run_testbed("synthetic", cfg, out, resume=resume, overwrite=overwrite,
                       progress=progress, stop_after=stop_after, backend=backend,
                       callbacks=callbacks)


def _variant_meta(variants: list[tuple[str, SyntheticConfig]]):
    """Per variant: its sampler, its ``meta.json`` entry and its mixing-validity rows (the
    gossip entries are the run sequence's, :func:`~adflora_analysis.study.sequence.
    gossip_meta`)."""
    from adflora_analysis.synthetic.problem import QuadraticProblem

    samplers, vmeta, mix_tables = {}, {}, []
    for label, vcfg in variants:
        samplers[label], tc = topology_meta(vcfg)
        mdf, mix_summary = mixing_validity(samplers[label], vcfg.seed_list, vcfg.rounds)
        mdf.insert(0, "variant", label)
        mix_tables.append(mdf)
        fstar = QuadraticProblem(vcfg, vcfg.seed_list).f_star.tolist() if vcfg.n_clients * \
            vcfg.d_in * vcfg.d_in * len(vcfg.seed_list) <= 5e7 else None
        vmeta[label] = {"topology": tc, "p": tc["p"], "p_stderr": tc["p_stderr"],
                        "second_moment_rate": tc["second_moment_rate"], "f_star": fstar,
                        "switch_interval": {m: effective_T(vcfg, m) for m in vcfg.methods},
                        "lr": vcfg.lr, "local_steps": vcfg.local_steps,
                        "n_clients": vcfg.n_clients, "noise_kind": vcfg.noise_kind,
                        "heterogeneity": vcfg.heterogeneity, "methods": list(vcfg.methods),
                        "mixing_validity": mix_summary}
        g = vcfg.gossip
        if g.speed_spread:
            from adflora_analysis.synthetic.problem import steps_per_client

            vmeta[label]["local_steps_per_client"] = steps_per_client(
                vcfg.local_steps, g.speed_spread, vcfg.seed_list, vcfg.n_clients).tolist()
    return samplers, vmeta, mix_tables


def _refuse_what_does_not_fit(variants: list[tuple[str, SyntheticConfig]], out: Path) -> None:
    """Device and memory/disk estimate of the study, before anything is allocated."""
    from adflora_analysis.resources import (
        Need,
        check_device,
        say_if_beyond_a_day,
        synthetic_need,
        synthetic_seconds,
    )

    need = Need()
    for _, vcfg in variants:
        check_device(vcfg.device)
        one = synthetic_need(vcfg)
        need.add_variant(one)
    need.refuse_if_over(out)
    note = say_if_beyond_a_day(sum(synthetic_seconds(v) for _, v in variants))
    if note and variants[0][1].device == "cpu":
        print(note, file=sys.stderr)


def needs(cfg: SyntheticConfig, out: Path, backend: Backend = LOCAL) -> None:
    """What the study needs, refused before the run directory is touched: one number of
    rounds, the device, memory and disk, an adaptive schedule that would ever switch."""
    variants = expand_variants(cfg)
    if len({v.rounds for _, v in variants}) != 1:
        raise AdfloraError("variants must share the number of rounds", "sweep other keys")
    _refuse_what_does_not_fit(variants, out)
    for _, vcfg in variants:  # an adaptive schedule that would never switch: before any file
        if vcfg.switch_schedule == "topology":
            topology_schedule(vcfg, None)  # raises before any file is written


def build(cfg: SyntheticConfig, ctx: BuildContext) -> Built:
    """The testbed's jobs (one per variant and method, all seeds batched), their round hook
    (the ``constants`` table every ``constants_every`` rounds), ``mixing.parquet`` and the
    per-variant meta (``Built.state``)."""
    import pandas as pd

    variants = expand_variants(cfg)
    samplers, vmeta, mix_tables = _variant_meta(variants)
    pairs = build_jobs(variants, samplers, ctx.backend)
    by_key = {j.key: v for j, v in pairs}

    def on_round(job: Job, problem, res) -> dict[str, list[dict]]:
        tables = {}
        vcfg = by_key[job.key]
        ce = vcfg.constants_every
        if ce and ((res.t + 1) % ce == 0 or res.t == 0 or res.t == vcfg.rounds - 1):
            vals = problem.measure_constants(res.state, res.t)
            tables["constants"] = [{"method": job.method.name,
                                    "variant": job.extra["variant"], "seed": int(s),
                                    **{k: float(v[i]) for k, v in vals.items()}}
                                   for i, s in enumerate(job.seeds)]
        return tables

    # mixing.parquet also on resume: a kill before its rename must not leave the run without it
    return Built([j for j, _ in pairs], on_round,
                 files={"mixing.parquet": pd.concat(mix_tables, ignore_index=True)},
                 state={"variants": vmeta, "first": variants[0][0]}, samplers=samplers)


def meta(cfg: SyntheticConfig, built: Built, backend: Backend = LOCAL) -> dict[str, Any]:
    """``meta.json`` entries of a synthetic run: the first variant's topology constants at the
    top, every variant's facts under ``variants``."""
    vmeta = built.state["variants"]
    first = vmeta[built.state["first"]]
    return {"p": first["p"], "p_stderr": first["p_stderr"],
            "second_moment_rate": first["second_moment_rate"], "topology": first["topology"],
            "variants": vmeta, "status": "running",
            "optimizer": "sgd, fresh every round (no state to gossip)"}


def study_rows(cfg: SyntheticConfig, callbacks: list[Any] | None = None):
    """Run every variant x method of ``cfg`` in memory, writing nothing; return the metrics
    table: the rows :func:`run_study` writes to ``metrics.parquet`` (one per variant, method,
    seed, round and layer; layer ``all`` holds totals), without its other tables (no topology
    constants, ``mixing``, ``constants`` or checkpoints). ``callbacks`` are called as by
    :func:`~adflora_analysis.study.experiment.run_jobs` (with ``RunInfo.path`` None); one that
    raises ends the study with its :class:`~adflora_analysis.tracking.CallbackError`.

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
    cbs = Callbacks(callbacks)
    pairs = build_jobs(variants, samplers)
    status = "failed"
    try:
        cbs.run_start(RunInfo(None, to_dict(cfg), [j.key for j, _ in pairs], cfg.rounds))
        for job, vcfg in pairs:
            problem, state, mixing = job.build()
            t0 = time.perf_counter()
            for res in run_rounds(problem, job.method, state, mixing, rounds=vcfg.rounds,
                                  switch_interval=job.switch_interval, server=job.server,
                                  schedule=job.schedule, mixer=job.mixer):
                new = round_rows(res, job.method.name, job.seeds,
                                 {"job": job.key, **job.extra})
                rows += new
                if cbs:
                    now = time.perf_counter()
                    cbs.round_end(RoundInfo(job.key, job.method.name, list(job.seeds), res.t,
                                            new, {}, time.time(), now - t0, dict(job.extra)))
                    t0 = now
        status = "done"
    finally:
        torch.set_num_threads(threads)
        cbs.run_end(status, quiet=status != "done")
    return pd.DataFrame(rows)
