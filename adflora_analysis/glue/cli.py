"""``adflora glue``: decentralized LoRA fine-tuning on GLUE with consensus and cross-term logging.

Examples::

    adflora glue run glue_runs/smoke.toml --out runs/smoke
    adflora glue run glue_runs/paper.toml --out runs/paper rounds=50 topology.q=0.2
    adflora glue run --resume runs/sst2
    adflora glue tasks
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from adflora_analysis import run_options as opt

app = typer.Typer(help="GLUE runner: ADF-LoRA and baselines on RoBERTa/MiniLM over simulated "
                  "clients, logging consensus and cross-term errors.", no_args_is_help=True)


@app.command("run")
def run(
    args: list[str] = typer.Argument(None, metavar="[CONFIG] [KEY=VALUE]...",
                                     help="A glue_runs/*.toml file or a shipped config "
                                     "name (e.g. smoke), then key=value overrides "
                                     "(e.g. rounds=20 topology.q=0.2)."),
    out: opt.Out = None,
    resume: opt.Resume = None,
    overwrite: opt.Overwrite = False,
    data_dir: str = typer.Option(None, "--data-dir", help="Local GLUE files (TSV/CSV/JSONL in "
                                 "GLUE's column layout, or a datasets save_to_disk folder)."),
    quiet: bool = typer.Option(False, "--quiet", help="No per-evaluation lines on stderr."),
    progress: opt.Progress = None,
    dry_run: opt.DryRun = False,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as a JSON object "
                                 "(run directory and one record per job) instead of a table "
                                 "(with --dry-run: the resolved config and the jobs)."),
    track: opt.Track = None,
    logdir: opt.Logdir = None,
) -> None:
    """Run a GLUE study (every variant x method x seed) into --out, or resume one with --resume.

    Example: adflora glue run glue_runs/smoke.toml --out runs/smoke rounds=10
    """
    opt.run_command("glue", args, out, resume, overwrite, progress=progress,
                          dry_run=dry_run, as_json=as_json, track=track, logdir=logdir,
                          extra=(f"data_dir={_toml_str(data_dir)}",) if data_dir else (),
                          log=not quiet, show=opt.print_summary)


def _toml_str(s: str) -> str:
    import json

    return json.dumps(s)


@app.command("tasks")
def tasks(as_json: bool = typer.Option(False, "--json", help="Print a JSON array (one "
                                       "object per task).")) -> None:
    """List the tasks, their text columns, labels and metrics.

    Example: adflora glue tasks
    """
    from adflora_analysis.glue.tasks import TASKS

    if as_json:
        import json

        print(json.dumps([{"name": t.name, "text": list(t.text),
                           "labels": list(t.label_names) if t.label_names else None,
                           "metrics": list(t.metrics), "validation": list(t.val_splits)}
                          for t in TASKS.values()], indent=1))
        return
    for t in TASKS.values():
        labels = ", ".join(t.label_names) if t.label_names else "regression score"
        print(f"{t.name:16s} text: {' + '.join(t.text):22s} labels: {labels:42s} "
              f"metrics: {', '.join(t.metrics)}; validation: {', '.join(t.val_splits)}")


@app.command("fixture")
def fixture(
    task: str = typer.Argument(..., help="qnli or mnli"),
    folder: Path = typer.Argument(..., help="Where to write <split>.tsv files."),
    n_train: int = typer.Option(2000, help="Training rows."),
    n_val: int = typer.Option(400, help="Rows per validation split."),
    seed: int = typer.Option(0, help="Seed of the generator."),
) -> None:
    """Write generated sentence pairs in QNLI/MNLI column layout (usable with --data-dir).

    Example: adflora glue fixture qnli data/qnli
    """
    from adflora_analysis.glue.fixtures import write_fixture
    from adflora_analysis.glue.tasks import get_task

    name = get_task(task).name
    write_fixture(name, folder, n_train, n_val, seed)
    print(f"wrote {name} fixture to {folder}", file=sys.stderr)
