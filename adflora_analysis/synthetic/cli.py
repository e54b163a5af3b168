"""``adflora synthetic``: run a synthetic study, then check the theory on it.

    adflora synthetic run synthetic/bounds.toml --out runs/bounds [key=value ...]
    adflora synthetic run --resume runs/bounds
    adflora synthetic check runs/bounds [--json] [--strict] [--checks FILE.py]
    adflora synthetic mutate [--bugs NAME,...] [--seeds N] [--out DIR]
"""

from __future__ import annotations

import json
import math
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
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object instead of text: "
                                 "the run's directory, status and row count (with --dry-run: "
                                 "the resolved config and the jobs)."),
    track: opt.Track = None,
    logdir: opt.Logdir = None,
) -> None:
    """Run every method (and variant) of CONFIG on all its seeds, batched, into --out, or
    continue one with --resume DIR.

    Example: adflora synthetic run synthetic/bounds.toml --out runs/bounds seeds=5

    Under torchrun (torchrun --standalone --nproc-per-node=P -m adflora_analysis synthetic run
    ...) the clients are split over the P processes; results match the in-process run.
    """
    ran = opt.run_command("synthetic", args, out, resume, overwrite, progress=progress,
                          dry_run=dry_run, as_json=as_json, track=track, logdir=logdir)
    if ran is None:
        return
    df, where = ran
    n = df[["method", "seed", "round"]].drop_duplicates().shape[0] if len(df) else 0
    if as_json:
        from adflora_analysis.rundir import RunDir

        typer.echo(json.dumps({"run_dir": str(where), "status": RunDir(where).status,
                               "method_seed_rounds": n, "rows": len(df)}))
    elif sys.stdout.isatty():
        typer.echo(f"wrote {where} ({n} method-seed-rounds)")


@app.command("mutate")
def mutate(
    bugs: list[str] = typer.Option(None, "--bugs", metavar="NAME[,NAME...]",
                                   help="Planted bugs to run (repeatable or "
                                   "comma-separated; default: all). Names: see "
                                   "docs/theory.md, 'Mutation harness'."),
    seeds: int = typer.Option(4, "--seeds", metavar="N",
                              help="Seeds of the small study each bug runs."),
    out: Path = typer.Option(None, "--out", metavar="DIR",
                             help="Directory for the run directories (one per "
                             "bug, plus clean); a temporary one, removed after, when omitted."),
) -> None:
    """Mutation harness: run a small study clean and under each planted bug, evaluate every
    check, print the table bug x check -> status. Exit 1 if a bug is caught by nothing or the
    clean run has an unexpected violation.

    Example: adflora synthetic mutate --bugs step-x1.5,gossip-twice --seeds 4
    """
    import tempfile

    from adflora_analysis.synthetic.mutations import (
        format_table,
        notes,
        run_harness,
        select_bugs,
        summary,
    )

    chosen = select_bugs(bugs)
    if seeds < 2:
        raise AdfloraError(f"--seeds {seeds} is too few for the statistical checks",
                           "use --seeds 4 (or more)")
    with tempfile.TemporaryDirectory(prefix="adflora-mutate-") as tmp:
        runs = run_harness(chosen, seeds, Path(out) if out else Path(tmp))
    typer.echo(format_table(runs))
    for line in notes(runs):
        typer.echo(line)
    missed, clean = summary(runs)
    if missed:
        typer.echo(f"caught by nothing: {', '.join(missed)}")
    if clean:
        typer.echo(f"clean run: unexpected violations of {', '.join(clean)}")
    if missed or clean:
        raise typer.Exit(1)


def _positive(name: str, value: float, example: str) -> None:
    """Refuse a non-positive or non-finite option value in one line."""
    if not (math.isfinite(value) and value > 0):
        raise AdfloraError(f"{name} {value} must be a positive finite number",
                           f"use e.g. {name} {example}")


@app.command("check")
def check(
    run_dir: str = typer.Argument(..., help="A run directory written by `synthetic run`."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object: the run's state "
                                 "(status, complete, rounds covered, config hash) and the "
                                 "results."),
    strict: bool = typer.Option(False, "--strict",
                                help="Exit 1 if a check that should hold is violated, or a "
                                "violation the study declares ([[expect]]) did not occur."),
    z: float = typer.Option(3.0, help="One-sided normal level of every test, in standard "
                            "errors (the t threshold for the run's seeds is printed)."),
    effect: float = typer.Option(0.2, help="Relative violation a test must be able to detect "
                                 "with 80% power; otherwise it says underpowered."),
    checks: list[str] = typer.Option(None, "--checks", help="Python file registering user "
                                     "checks (repeatable); entry points of group "
                                     "adflora_analysis.checks are loaded too. They run in a "
                                     "child process: a failure, hang or exit is that check's "
                                     "error."),
    check_timeout: float = typer.Option(60.0, "--check-timeout", metavar="SECONDS",
                                        help="Time limit of each user check (and of "
                                        "importing each --checks file)."),
    save: bool = typer.Option(True, "--save/--no-save", help="Write checks.json and "
                              "check_curves.parquet into the run directory."),
) -> None:
    """Evaluate the theory checks (docs/theory.md) on a finished synthetic or GLUE run.

    Example: adflora synthetic check runs/bounds --json --checks my_checks.py
    """
    from adflora_analysis.rundir import load_run, require_complete
    from adflora_analysis.theory import check_run, expectation_unmet, format_results

    _positive("--z", z, "3")
    _positive("--effect", effect, "0.1")
    _positive("--check-timeout", check_timeout, "60")
    rd = load_run(run_dir)
    if rd.kind not in (None, "synthetic", "glue", "lm"):
        raise AdfloraError(f"{run_dir!r} holds a {rd.kind} run; the checks read synthetic "
                           "and GLUE runs", "pass a directory written by `adflora synthetic "
                           "run` or `adflora glue run`")
    banner = require_complete(rd, strict=strict, what="the checks")
    if banner:
        typer.echo(f"warning: {banner}", err=True)
    from adflora_analysis.progress import status

    with status(f"checks: evaluating the theory checks on {run_dir}"):
        results, state = check_run(run_dir, z=z, effect=effect, check_files=checks or [],
                                   check_timeout=check_timeout)
    save_error, saved = None, False
    if save:
        from adflora_analysis.theory import save_results

        if state["status"] == "running" or rd.status != state["status"]:
            typer.echo(f"note: checks.json not saved: run {run_dir!r} is "
                       f"{'still running' if state['status'] == 'running' else 'changing'} "
                       "(its rows grow); check it again when it has finished", err=True)
        else:
            try:
                save_results(run_dir, results, state=state, z=z, effect=effect)
                saved = True
            except AdfloraError as e:   # read-only, full disk: after the results are printed
                save_error = e
    if as_json:
        typer.echo(json.dumps({"run": {**state, "note": banner}, "z": z, "effect": effect,
                               "saved": saved, "results": [r.to_dict() for r in results]},
                              indent=1))
    else:
        typer.echo(format_results(results))
        counts = {s: sum(r.status == s for r in results) for s in
                  ("held", "violated", "finding", "underpowered", "n/a", "error")}
        typer.echo(f"\n{len(results)} results: " + ", ".join(f"{v} {k}" for k, v in
                                                              counts.items() if v)
                   + f"; {sum(r.unexpected_violation for r in results)} unexpected"
                   + (f"; {unmet} declared violation(s) held (expectation unmet)"
                      if (unmet := sum(expectation_unmet(r) for r in results)) else ""))
    errors: dict[str, list] = {}                 # one line per failed check
    for r in results:
        if r.status == "error":
            errors.setdefault(r.check, []).append(r)
    for rs in errors.values():
        more = (f"; failed on {len(rs) - 1} more method/variant(s), see the table"
                if len(rs) > 1 else "")
        typer.echo(f"error: {rs[0].note}{more} (hint: fix the check; the other checks ran"
                   + (" and were written)" if saved else ")"), err=True)
    if save_error is not None:
        raise save_error
    if errors:
        raise typer.Exit(2)
    if strict and any(r.unexpected_violation or expectation_unmet(r) for r in results):
        raise typer.Exit(1)
