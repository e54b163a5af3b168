"""``adflora synthetic``: run a synthetic study, then check the theory on it.

    adflora synthetic run synthetic/bounds.toml --out runs/bounds [key=value ...]
    adflora synthetic run --resume runs/bounds
    adflora synthetic check runs/bounds [--json] [--strict]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from adflora_analysis import run_options as opt
from adflora_analysis.errors import AdfloraError

app = typer.Typer(help="Synthetic quadratic LoRA testbed: run studies and check the theory.",
                  no_args_is_help=True)


@app.command("run")
def run(
    args: list[str] = typer.Argument(None, metavar="[CONFIG] [KEY=VALUE]...",
                                     help="Study TOML, or a shipped config by name (e.g. "
                                     "bounds; see adflora configs list), then key=value "
                                     "overrides (e.g. seeds=5 topology.q=0.2)."),
    out: opt.Out = None,
    resume: opt.Resume = None,
    overwrite: opt.Overwrite = False,
    progress: opt.Progress = None,
    dry_run: opt.DryRun = False,
) -> None:
    """Run every method (and variant) of CONFIG on all its seeds, batched, into --out, or
    continue one with --resume DIR.

    Example: adflora synthetic run synthetic/bounds.toml --out runs/bounds seeds=5

    Under torchrun (torchrun --standalone --nproc-per-node=P -m adflora_analysis synthetic run
    ...) the clients are split over the P processes; results match the in-process run.
    """
    from adflora_analysis.config import load_config
    from adflora_analysis.configs import resolve_config
    from adflora_analysis.distributed import make_backend, shutdown
    from adflora_analysis.rundir import CONFIG, run_target
    from adflora_analysis.synthetic.config import SyntheticConfig
    from adflora_analysis.synthetic.runner import run_study

    no_out = dry_run and out is None and resume is None   # a dry run needs no --out
    if no_out:
        out = Path("unused")
    config, overrides, where, mode = run_target(args, out, resume, overwrite)
    source = resolve_config(config) if config else where / CONFIG
    cfg = load_config(SyntheticConfig, source, overrides)
    if dry_run:
        from adflora_analysis.dryrun import describe

        typer.echo(describe("synthetic", cfg, None if no_out else where, mode), nl=False)
        return
    backend = make_backend(cfg.n_clients, cfg.backend, cfg.exchange, cfg.dist_timeout_s)
    df = run_study(cfg, where, resume=mode == "resume", overwrite=mode == "overwrite",
                   progress=progress, backend=backend)
    shutdown(backend)
    if backend.rank == 0 and sys.stdout.isatty():
        n = df[["method", "seed", "round"]].drop_duplicates().shape[0] if len(df) else 0
        typer.echo(f"wrote {where} ({n} method-seed-rounds)")


@app.command("check")
def check(
    run_dir: str = typer.Argument(..., help="A run directory written by `synthetic run`."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of results."),
    strict: bool = typer.Option(False, "--strict",
                                help="Exit 1 if a check that should hold is violated."),
    z: float = typer.Option(3.0, help="One-sided normal level of every test, in standard "
                            "errors (the t threshold for the run's seeds is printed)."),
    effect: float = typer.Option(0.2, help="Relative violation a test must be able to detect "
                                 "with 80% power; otherwise it says underpowered."),
    checks: list[str] = typer.Option(None, "--checks", help="Python file registering user "
                                     "checks (repeatable); entry points of group "
                                     "adflora_analysis.checks are loaded too."),
    save: bool = typer.Option(True, "--save/--no-save", help="Write checks.json and "
                              "check_curves.parquet into the run directory."),
) -> None:
    """Evaluate the theory checks (docs/theory.md) on a finished synthetic or GLUE run.

    Example: adflora synthetic check runs/bounds --json --checks my_checks.py
    """
    from adflora_analysis.rundir import CHECK_OUTPUTS, RunDir, load_run, require_complete
    from adflora_analysis.synthetic.checks import format_results, run_checks

    if z <= 0:
        raise AdfloraError(f"--z {z} must be positive", "use e.g. --z 3")
    rd = load_run(run_dir)
    if rd.kind not in (None, "synthetic", "glue"):
        raise AdfloraError(f"{run_dir!r} holds a {rd.kind} run; the checks read synthetic "
                           "and GLUE runs", "pass a directory written by `adflora synthetic "
                           "run` or `adflora glue run`")
    banner = require_complete(rd, strict=strict, what="the checks")
    if banner:
        typer.echo(f"warning: {banner}", err=True)
    if effect <= 0:
        raise AdfloraError(f"--effect {effect} must be positive", "use e.g. --effect 0.1")
    from adflora_analysis.progress import status

    with status(f"checks: evaluating the theory checks on {run_dir}"):
        results = run_checks(run_dir, z=z, effect=effect, check_files=checks or [])
    if save:
        from adflora_analysis.synthetic.checks import save_results

        save_results(run_dir, results)
        RunDir(run_dir).record(*CHECK_OUTPUTS)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in results], indent=1))
    else:
        typer.echo(format_results(results))
        counts = {s: sum(r.status == s for r in results) for s in
                  ("held", "violated", "finding", "underpowered", "n/a", "error")}
        typer.echo(f"\n{len(results)} results: " + ", ".join(f"{v} {k}" for k, v in
                                                              counts.items() if v)
                   + f"; {sum(r.unexpected_violation for r in results)} unexpected")
    errors = [r for r in results if r.status == "error"]
    for r in errors:
        typer.echo(f"error: {r.note} (hint: fix the check; the other checks ran and were "
                   "written)", err=True)
    if errors:
        raise typer.Exit(2)
    if strict and any(r.unexpected_violation for r in results):
        raise typer.Exit(1)
