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
    """The jobs a run of ``cfg`` would do, in order: key, method, variant, T, seeds.

    ``kind``: ``"synthetic"`` (one job per variant and method, all seeds batched) or
    ``"glue"`` (one job per variant, method and seed). The keys are the runners' own.
    """
    from adflora_analysis.runconfig import expand_study

    variants = expand_study(cfg)
    if kind == "synthetic":
        from adflora_analysis.synthetic.runner import build_jobs

        return [{"key": job.key, "method": job.method.name, "variant": job.extra["variant"],
                 "T": job.switch_interval, "seeds": job.seeds}
                for job, _ in build_jobs(variants, {})]
    from adflora_analysis.glue.runner import job_key

    multi = len(variants) > 1
    return [{"key": job_key(m, s, label if multi else None), "method": m, "variant": label,
             "T": v.switch_for(m), "seeds": [s]}
            for label, v in variants for m in v.methods for s in v.seed_list]


def describe(kind: str, cfg: Any, where: Path | None, mode: str) -> str:
    """The ``--dry-run`` text: a header, the resolved config as TOML, the jobs as comments."""
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
    return "\n".join(lines) + "\n"
