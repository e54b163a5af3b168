"""The one run sequence: a testbed's config into a run directory (docs/architecture.md §8).

Every kind (:mod:`.testbed`) runs through :func:`run_testbed`, in this order:

1. ``--resume`` with ``--overwrite`` refused; a torch.distributed run needs one ``n_clients``;
2. the testbed's ``needs`` (device, memory, disk) before the run directory is touched;
3. the run directory claimed (lock; new/empty, ``resume`` of the same config, or ``overwrite``
   of a toolkit run), and on resume the config and world size compared once;
4. the testbed's ``build`` (data, models, jobs) and ``fits``; a refusal of a new run removes
   what it wrote;
5. ``config.toml`` and ``meta.json`` written once (a resume only stamps ``resumed_utc``): the
   testbed's entries plus, for every kind, the topology's ``p`` and the gossip entries
   (:func:`gossip_meta`: ``gossip``, ``async_rate``, ``switch_schedule``) at the top and per
   variant, which the theory checks read;
6. the testbed's tables written before the first round (also on resume);
7. the jobs through :func:`~adflora_analysis.study.experiment.run_jobs` (rows, checkpoints,
   resume, divergence, progress, tracking, status);
8. the testbed's ``summary`` (written as ``summary.csv``) or the metrics table returned.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pandas as pd

from adflora_analysis.core.backend import LOCAL, Backend
from adflora_analysis.errors import AdfloraError
from adflora_analysis.rundir import claim, init_run_dir, make_meta
from adflora_analysis.study.experiment import run_jobs
from adflora_analysis.study.runconfig import FederationConfig, expand_study
from adflora_analysis.study.testbed import BuildContext, Built, Testbed, get_testbed

ASYNC_RATE_SAMPLES = 4000
"""Monte Carlo samples of the stale-gossip rate at most (fewer with ``topology_samples``)."""


def topology_meta(cfg: FederationConfig, seed: int | None = None) -> tuple[Any, dict[str, Any]]:
    """(sampler, constants) of the config's topology drawn from ``seed`` (default: the first
    seed): p with its stderr, second-moment rate, spectral gap, ... with
    ``cfg.topology_samples`` Monte Carlo samples (4000 where the config has no such key)."""
    from adflora_analysis.topology import build_sampler, topology_constants

    seed = cfg.seed_list[0] if seed is None else seed
    sampler = build_sampler(cfg.topology, cfg.n_clients, seed=seed)
    samples = getattr(cfg, "topology_samples", ASYNC_RATE_SAMPLES)
    return sampler, topology_constants(sampler, samples=samples, seed=seed)


def gossip_meta(cfg: FederationConfig, sampler: Any = None) -> dict[str, Any]:
    """``meta.json`` entries of stale/partial gossip and adaptive schedules, for every kind:
    ``gossip`` (the ``[gossip]`` table), ``async_rate`` (the predicted decay factor of E Xi
    before the run, :func:`adflora_analysis.topology.async_rates.model_consensus_rate`, from
    ``sampler`` or the first seed's), ``switch_schedule``; nothing for the defaults.

    >>> from adflora_analysis.study.runconfig import FederationConfig
    >>> gossip_meta(FederationConfig(n_clients=4, rounds=3))
    {}
    """
    out: dict[str, Any] = {}
    if cfg.switch_schedule != "periodic":
        out["switch_schedule"] = {"kind": cfg.switch_schedule, "eps": cfg.switch_eps,
                                  "min": cfg.switch_min, "max": cfg.switch_max}
    g = cfg.gossip
    if not g.is_default:
        from adflora_analysis.topology import build_sampler
        from adflora_analysis.topology.async_rates import model_consensus_rate

        if sampler is None:
            sampler = build_sampler(cfg.topology, cfg.n_clients, seed=cfg.seed_list[0])
        samples = min(getattr(cfg, "topology_samples", ASYNC_RATE_SAMPLES), ASYNC_RATE_SAMPLES)
        out["gossip"] = {"staleness": g.staleness, "participation": g.participation}
        if g.model != "stale-read":   # [gossip] model (issue 20): stale-read meta unchanged
            out["gossip"]["model"] = g.model
        out["async_rate"] = model_consensus_rate(
            sampler, model=g.model, staleness=g.staleness, participation=g.participation,
            samples=samples, seed=cfg.seed_list[0]).as_dict()
    return out


def run_meta(tb: Testbed, cfg: FederationConfig, built: Built,
             backend: Backend = LOCAL) -> dict[str, Any]:
    """``meta.json`` of a new run: the testbed's entries, then kind, seeds, versions, world size
    and, at the top (the first variant) and under ``variants`` (each), the gossip entries."""
    fields = tb.meta(cfg, built, backend) if tb.meta else {}
    fields.setdefault("status", "running")
    meta = make_meta(cfg.seed_list, kind=tb.kind, **fields, world_size=backend.world_size)
    variants = expand_study(cfg)
    samplers = getattr(built, "samplers", None) or {}
    per = {label: gossip_meta(v, samplers.get(label)) for label, v in variants}
    vm = meta.get("variants")
    for i, (label, _) in enumerate(variants):
        if i == 0:
            meta.update(per[label])
        if isinstance(vm, dict) and isinstance(vm.get(label), dict):
            vm[label].update(per[label])
    return meta


def run_testbed(kind: str | Testbed, cfg: FederationConfig, out: str | Path, *,
                resume: bool = False, overwrite: bool = False, progress: bool | None = None,
                stop_after: int | None = None, backend: Backend = LOCAL,
                callbacks: list[Any] | None = None, **options: Any) -> pd.DataFrame:
    """Run (or resume) the study ``cfg`` of testbed ``kind`` into ``out``; return the
    testbed's summary (or the metrics table when it has none; an empty table on the ranks > 0
    of a torch.distributed run that has a summary).

    ``out`` must be new or empty, or an earlier run of the same config with ``resume``, or an
    earlier toolkit run with ``overwrite`` (which removes only what its manifest lists; see
    :func:`adflora_analysis.rundir.claim`). ``stop_after`` (testing) stops after that many
    rounds in total, as a kill would; ``callbacks``:
    :class:`~adflora_analysis.tracking.Callback` objects; ``options`` go to the testbed's
    ``build`` (e.g. ``log``, a preloaded model ``gm``).
    """
    tb = kind if isinstance(kind, Testbed) else get_testbed(kind)
    if resume and overwrite:
        raise AdfloraError("--resume and --overwrite exclude each other",
                           "continue the run with --resume, or replace it with --overwrite")
    if not isinstance(cfg, tb.config):
        raise AdfloraError(f"a {tb.kind} run needs a {tb.config.__name__}, not a "
                           f"{type(cfg).__name__}", f"load the config with {tb.config.__name__}")
    mode = "resume" if resume else "overwrite" if overwrite else "new"
    import torch

    threads = torch.get_num_threads()
    if tb.threads is not None:
        torch.set_num_threads(tb.threads(cfg))
    try:
        return _sequence(tb, cfg, Path(out), mode, progress=progress, stop_after=stop_after,
                         backend=backend, callbacks=callbacks, options=options)
    finally:
        if tb.threads is not None:
            torch.set_num_threads(threads)


def _sequence(tb: Testbed, cfg: FederationConfig, out: Path, mode: str, *,
              progress: bool | None, stop_after: int | None, backend: Backend,
              callbacks: list[Any] | None, options: dict[str, Any]) -> pd.DataFrame:
    writer = backend.rank == 0
    variants = expand_study(cfg)
    if backend.world_size > 1 and {v.n_clients for _, v in variants} != {cfg.n_clients}:
        raise AdfloraError("a torch.distributed run needs one n_clients for every variant",
                           "run variants with other client counts separately")
    if tb.needs is not None:
        tb.needs(cfg, out, backend)   # before the run directory is touched
    config = cfg.as_dict()
    with claim(out, tb.kind, mode, writer=writer) as run:
        if mode == "resume":
            run.check_resume(config, backend.world_size, defaults=tb.config().as_dict())
        try:
            built = tb.build(cfg, BuildContext(run, backend, mode, options))
            if tb.fits is not None:
                tb.fits(cfg, built, out)
        except AdfloraError:
            if writer and mode != "resume":   # leave the folder as it was: no half-made run
                run.remove_own_files()
            raise
        if writer:
            if mode == "resume":
                run.update_meta(resumed_utc=dt.datetime.now(dt.UTC).isoformat(
                    timespec="seconds"))
            else:
                init_run_dir(run, config, run_meta(tb, cfg, built, backend))
            for name, df in built.files.items():
                if name.endswith(".csv"):
                    run.write_csv(name, df)
                else:
                    run.write_parquet(name, df)
        df = run_jobs(run, built.jobs, cfg.rounds, checkpoint_every=cfg.checkpoint_every,
                      resume=mode == "resume", on_round=built.on_round, progress=progress,
                      stop_after=stop_after, backend=backend, callbacks=callbacks)
        if tb.summary is None:
            return df
        if not writer:
            return pd.DataFrame()
        summary = tb.summary(out)
        if not summary.empty:
            run.write_csv("summary.csv", summary)
        return summary
