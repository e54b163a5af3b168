"""``--dry-run`` of ``adflora synthetic run`` and ``adflora glue run``: the resolved config
(after overrides) and the jobs the run would do, as TOML (jobs in comments, so the output can
be saved and run as a config); nothing is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _seeds(seeds: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``'0-2, 5'``.

    >>> _seeds([0, 1, 2, 5])
    '0-2, 5'
    """
    parts, i = [], 0
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        parts.append(str(seeds[i]) if i == j else f"{seeds[i]}-{seeds[j]}")
        i = j + 1
    return ", ".join(parts)


def job_table(kind: str, cfg: Any) -> list[dict[str, Any]]:
    """The jobs a run of ``cfg`` would do, in order: key, method, variant, T, seeds and the
    estimated seconds (None where there is no estimate).

    ``kind``: ``"synthetic"`` (one job per variant and method, all seeds batched) or
    ``"glue"`` (one job per variant, method and seed). The keys are the runners' own; nothing
    here imports torch (a job's T under a non-periodic ``switch_schedule`` is its name).
    """
    from adflora_analysis.study.runconfig import expand_study

    variants = expand_study(cfg)
    multi = len(variants) > 1
    if kind == "synthetic":
        from adflora_analysis.resources import synthetic_seconds

        jobs = []
        for label, v in variants:
            each = synthetic_seconds(v) / max(1, len(v.methods))
            for m in v.methods:
                T = v.switch_for(m) if v.switch_schedule == "periodic" else v.switch_schedule
                jobs.append({"key": f"{label}/{m}" if multi else m, "method": m,
                             "variant": label, "T": T, "seeds": list(v.seed_list),
                             "seconds": each})
        return jobs
    return [{"key": f"{label + '/' if multi else ''}{m}/seed={s}", "method": m,
             "variant": label, "T": v.switch_for(m), "seeds": [s], "seconds": None}
            for label, v in variants for m in v.methods for s in v.seed_list]


def dry_run_json(kind: str, cfg: Any, where: Path | None, mode: str) -> str:
    """``--dry-run --json``: the run directory, mode, resolved config and jobs (with their
    estimated seconds, null where there is none) as one JSON object and a newline."""
    import json

    return json.dumps({"kind": kind, "run_dir": None if where is None else str(where),
                       "mode": mode, "config": cfg.as_dict(), "jobs": job_table(kind, cfg)},
                      default=str) + "\n"


def _duration(seconds: float) -> str:
    """``0.04`` -> ``'< 0.1 s'``, ``95`` -> ``'1.6 min'``, ``7200`` -> ``'2.0 h'``.

    >>> _duration(0.04), _duration(28.7), _duration(95), _duration(7200), _duration(3e5)
    ('< 0.1 s', '28.7 s', '1.6 min', '2.0 h', '3.5 days')
    """
    if seconds < 0.1:
        return "< 0.1 s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 86_400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} days"


def describe(kind: str, cfg: Any, where: Path | None, mode: str) -> str:
    """The ``--dry-run`` text: a header, the resolved config as TOML, the jobs as comments,
    then each job's estimated time (synthetic: a flop count at
    :data:`~adflora_analysis.resources.CPU_FLOPS`; GLUE: none without loading the model)."""
    from adflora_analysis.config import dump_toml

    jobs = job_table(kind, cfg)
    target = f"{where} ({mode})" if where is not None else "(no --out given)"
    lines = [f"# adflora {kind} run --dry-run: nothing is written. Run directory: {target}",
             "# The resolved config (after overrides):", dump_toml(cfg.as_dict()).rstrip(), "",
             f"# {len(jobs)} job(s) of {cfg.rounds} rounds"
             + (", the seeds of a job batched:" if kind == "synthetic" else ", one seed each:")]
    width = max(len(j["key"]) for j in jobs) if jobs else 0
    for k, j in enumerate(jobs, 1):
        lines.append(f"#   job {k}/{len(jobs)}  {j['key']:{width}s}  T = {j['T']}  "
                     f"seeds {_seeds(j['seeds'])}")
    if kind == "synthetic":
        from adflora_analysis.resources import CPU_FLOPS

        total = sum(j["seconds"] for j in jobs)
        lines.append(f"# Estimated time: {_duration(total)} in all (a rough flop count at "
                     f"{CPU_FLOPS / 1e9:g} GFLOP/s; this machine may differ), per job:")
        for k, j in enumerate(jobs, 1):
            lines.append(f"#   time {k}/{len(jobs)}  {j['key']:{width}s}  "
                         f"{_duration(j['seconds'])}")
    else:
        lines.append("# Estimated time: none without loading the model (the first evaluation "
                     "line of the run gives its pace)")
    return "\n".join(lines) + "\n"
