"""The command-line options every ``run`` command shares (``synthetic run``, ``glue run``),
declared once so the runners present one interface: where the run goes (``--out``,
``--resume DIR``, ``--overwrite``), how it reports progress, and ``--dry-run``; and how their
positional arguments (``CONFIG [KEY=VALUE]...``) and those options become a run target
(:func:`split_args`, :func:`run_target`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from adflora_analysis.errors import AdfloraError
from adflora_analysis.rundir import CONFIG, Mode, check_out_path

Out = Annotated[Path | None, typer.Option(
    "--out", help="Run directory to create (new or empty).")]
Resume = Annotated[Path | None, typer.Option(
    "--resume", help="Continue the run in this directory (its config.toml is used; a CONFIG "
    "or overrides that differ are refused, naming the keys).")]
Overwrite = Annotated[bool, typer.Option(
    "--overwrite", help="Replace the earlier run in --out (removes only the files adflora "
    "wrote there).")]
Progress = Annotated[bool | None, typer.Option(
    "--progress/--no-progress", help="A live bar (default: only on a terminal; otherwise a "
    "line per job start/end and every tenth of the rounds; --no-progress: the job lines only).")]
DryRun = Annotated[bool, typer.Option(
    "--dry-run", help="Print the resolved config (after overrides) and the jobs it would run; "
    "write nothing.")]
Track = Annotated[list[str] | None, typer.Option(
    "--track", metavar="tensorboard|mlflow", help="Log every round live (repeatable): "
    "tensorboard (event files in <run>/tb or --logdir), mlflow (an offline file store in "
    "<run>/mlruns; needs the extra adflora-analysis[mlflow]).")]
Logdir = Annotated[Path | None, typer.Option(
    "--logdir", help="Where --track tensorboard writes (default <run>/tb).")]


def print_summary(summary: Any, where: Path, as_json: bool) -> None:
    """A run's summary table (pandas) on stdout, as text or as one JSON object
    ``{"run_dir", "summary": [records]}``; then ``wrote DIR`` on stderr (GLUE and lm runs)."""
    if as_json:
        import json

        records = json.loads(summary.to_json(orient="records")) if not summary.empty else []
        print(json.dumps({"run_dir": str(where), "summary": records}))
    elif not summary.empty:
        import pandas as pd

        with pd.option_context("display.width", 200, "display.max_columns", 30):
            print(summary.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {where}", file=sys.stderr)


def split_args(args: list[str]) -> tuple[str | None, list[str]]:
    """The CONFIG (first argument that is not ``key=value``) and the overrides.

    >>> split_args(["bounds", "seeds=3", "lr=0.1"]), split_args(["seeds=3"])
    (('bounds', ['seeds=3', 'lr=0.1']), (None, ['seeds=3']))
    """
    config, overrides = None, []
    for a in args:
        if config is None and not overrides and ("=" not in a or Path(a).is_file()):
            config = a
        elif "=" in a:
            overrides.append(a)
        else:
            raise AdfloraError(f"unexpected argument {a!r}",
                               "give one CONFIG file followed by key=value overrides")
    return config, overrides


def run_target(args: list[str], out: str | Path | None, resume: str | Path | None,
               overwrite: bool = False) -> tuple[str | None, list[str], Path, Mode]:
    """``(CONFIG or None, overrides, run directory, mode)`` of ``adflora synthetic|glue run
    [CONFIG] [KEY=VALUE]...``: one way to resume for every runner. ``--resume DIR`` reads the
    config back from ``DIR/config.toml`` (CONFIG None; a CONFIG or overrides given as well must
    match it, which the runner checks); otherwise CONFIG and ``--out`` are needed.

    >>> run_target(["c.toml", "lr=0.1"], "runs/a", None)
    ('c.toml', ['lr=0.1'], PosixPath('runs/a'), 'new')
    >>> run_target(["lr=0.1"], "runs/a", None)
    Traceback (most recent call last):
    ...
    adflora_analysis.errors.AdfloraError: no CONFIG given (hint: give a study TOML or a \
shipped config name (adflora configs list), or --resume DIR)
    """
    config, overrides = split_args(list(args or []))
    for p in (out, resume):
        if p is not None:
            check_out_path(p)
    if resume is not None:
        if overwrite:
            raise AdfloraError("--resume and --overwrite exclude each other",
                               "continue the run with --resume, or replace it with --overwrite")
        if out is not None and Path(out) != Path(resume):
            raise AdfloraError("--out and --resume name different directories",
                               "pass only --resume DIR")
        if not (Path(resume) / CONFIG).is_file():
            raise AdfloraError(f"{str(resume)!r} is not a run directory (no config.toml)",
                               "pass the directory a run wrote with --out")
        return config, overrides, Path(resume), "resume"
    if config is None:
        raise AdfloraError("no CONFIG given", "give a study TOML or a shipped config name "
                           "(adflora configs list), or --resume DIR")
    if out is None:
        raise AdfloraError("no --out directory given", "add --out runs/NAME")
    return config, overrides, Path(out), "overwrite" if overwrite else "new"


def run_command(kind: str, args: list[str], out: Path | None, resume: Path | None,
                overwrite: bool, *, progress: bool | None, dry_run: bool, as_json: bool,
                track: list[str] | None, logdir: Path | None, extra: tuple[str, ...] = (),
                check: Any = None, show: Any = None, **options: Any) -> tuple[Any, Path] | None:
    """The one body of ``adflora KIND run``: the run target, a finished run's ``--resume``
    (one line, nothing written), the config of the kind's testbed (``extra``: overrides the
    command adds, e.g. ``--data-dir``), ``--dry-run`` (after ``check(cfg)``: the kind's
    checks that need no weights), then the backend, trackers and the run sequence
    (:func:`adflora_analysis.study.sequence.run_testbed`; ``options`` go to the testbed),
    and on rank 0 ``show(result, where, as_json)`` (e.g. :func:`print_summary`). Returns
    (what the run returned, its directory) on rank 0; None otherwise."""
    from adflora_analysis.cli import resume_done
    from adflora_analysis.config import load_config
    from adflora_analysis.configs import resolve_config
    from adflora_analysis.study.testbed import get_testbed

    tb = get_testbed(kind, validate=False)   # the run sequence validates it
    no_out = dry_run and out is None and resume is None   # a dry run needs no --out
    config, overrides, where, mode = run_target(args, Path("unused") if no_out else out,
                                                resume, overwrite)
    if (mode == "resume" and not dry_run and not extra
            and resume_done(where, kind, config, overrides)):
        return None
    cfg = load_config(tb.config, resolve_config(config) if config else where / CONFIG,
                      [*overrides, *extra])
    if dry_run:
        from adflora_analysis.dryrun import describe, dry_run_json

        if check is not None:
            check(cfg)
        show = dry_run_json if as_json else describe
        typer.echo(show(kind, cfg, None if no_out else where, mode), nl=False)
        return None
    from adflora_analysis.distributed import make_backend, shutdown
    from adflora_analysis.study.sequence import run_testbed
    from adflora_analysis.tracking import make_trackers

    trackers = make_trackers(track, logdir=logdir)
    backend = make_backend(cfg.n_clients, cfg.backend, cfg.exchange, cfg.dist_timeout_s)
    result = run_testbed(kind, cfg, where, resume=mode == "resume", overwrite=mode == "overwrite",
                         progress=progress, backend=backend, callbacks=trackers, **options)
    shutdown(backend)
    if backend.rank != 0:
        return None
    if show is not None:
        show(result, where, as_json)
    return result, where
