"""``adflora export``: a run's tables in other tools' formats.

``adflora export tensorboard RUN_DIR [--logdir D]`` writes TensorBoard event files (with
:mod:`adflora_analysis.tbevents`, so neither tensorflow nor tensorboard is needed to write
them; ``pip install adflora-analysis[tensorboard]`` to view them):

- one TensorBoard run per (variant,) method and seed (``D/<method>/seed<k>``), so methods
  overlay in every chart; its scalars per round (0-based, as in the files): every metric of the
  ``all`` rows under its name and of each layer under ``layers/<layer>/<metric>``, and the GLUE
  evaluation under ``eval/<mean|averaged>/<metric>``;
- the theory-check verdicts as a text table (run ``checks``, tag ``theory checks``).

Then: ``tensorboard --logdir D``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from adflora_analysis.errors import AdfloraError

app = typer.Typer(help="Export a run to other tools (TensorBoard).", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Export a run to other tools (TensorBoard)."""   # a group even with one command

#: Row columns that identify or describe a row rather than measure something.
ID_COLUMNS = {"round", "seed", "switch_interval", "q", "heterogeneity", "lr", "n_clients",
              "local_steps", "variant", "job", "method", "layer", "phase", "trained", "mixed",
              "graph", "weights", "task", "run", "client", "split", "metric", "value"}


def _numeric(df) -> list[str]:
    import pandas as pd

    return [c for c in df.columns if c not in ID_COLUMNS
            and pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]


def _run_name(keys: dict) -> str:
    parts = [str(keys["variant"])] if keys.get("variant") is not None else []
    return "/".join([*parts, str(keys["method"]), f"seed{keys['seed']}"]).replace(" ", "_")


def export_tensorboard(run_dir: str | Path, logdir: str | Path | None = None) -> Path:
    """Write ``run_dir``'s metrics, evaluation and check verdicts as TensorBoard event files
    under ``logdir`` (default ``RUN_DIR/tensorboard``); returns ``logdir``. A ``logdir`` that
    already holds event files is refused (a second export would draw every curve twice)."""
    import pandas as pd

    from adflora_analysis.reports.collect import collect_run
    from adflora_analysis.tbevents import EventWriter

    run = collect_run(run_dir)
    if run.metrics is None or run.metrics.empty:
        raise AdfloraError(f"{str(run_dir)!r} has no metrics to export",
                           "pass a synthetic or GLUE run directory")
    logdir = Path(logdir) if logdir is not None else run.path / "tensorboard"
    if logdir.exists() and any(logdir.rglob("events.out.tfevents.*")):
        raise AdfloraError(f"{str(logdir)!r} already holds TensorBoard event files",
                           "pass another --logdir, or delete that folder first")
    m = run.metrics
    multi = "variant" in m and m["variant"].nunique() > 1
    keys = (["variant"] if multi else []) + ["method", "seed"]
    ev = run.eval
    ev_groups = {}
    if ev is not None and not ev.empty:
        ev = ev[ev["client"].astype(str).isin(["mean", "averaged"])]
        ekeys = [k for k in keys if k in ev]
        for k, g in ev.groupby(ekeys, sort=False):
            ev_groups[k if isinstance(k, tuple) else (k,)] = g
    for k, g in m.groupby(keys, sort=False):
        k = k if isinstance(k, tuple) else (k,)
        names = dict(zip(keys, k, strict=True))
        cols = _numeric(g)
        per_round: dict[int, dict[str, float]] = {}
        for layer, lg in (g.groupby("layer", sort=False) if "layer" in g else [("all", g)]):
            prefix = "" if layer == "all" else f"layers/{layer}/"
            lg = lg.dropna(axis=1, how="all")
            for t, row in lg.set_index("round")[[c for c in cols if c in lg]].iterrows():
                d = per_round.setdefault(int(t), {})
                d.update({prefix + c: float(v) for c, v in row.items() if pd.notna(v)})
        e = ev_groups.get(k)
        if e is not None:
            for r in e.itertuples(index=False):
                split = getattr(r, "split", "validation")
                tag = f"eval/{r.client}/{r.metric}" + (
                    "" if split in (None, "validation") else f"/{split}")
                per_round.setdefault(int(r.round), {})[tag] = float(r.value)
        with EventWriter(logdir / _run_name(names)) as w:
            for t in sorted(per_round):
                w.scalars(t, per_round[t])
    table = _checks_markdown(run)
    if table:
        with EventWriter(logdir / "checks") as w:
            w.text(0, "theory checks", table)
    return logdir


def _checks_markdown(run) -> str | None:
    """The check verdicts as a Markdown table (None where no check applies)."""
    from adflora_analysis.reports.checks import report_checks

    got = report_checks(run)
    if got is None or got[0].empty:
        return None
    df = got[0]
    cols = [c for c in ("no", "check", "method", "variant", "status", "measured", "bound",
                        "note") if c in df]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in df[cols].itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v)
                                       for v in r) + " |")
    return "\n".join(lines)


@app.command("tensorboard")
def tensorboard(
    run_dir: Path = typer.Argument(..., help="A run directory (synthetic or GLUE)."),
    logdir: Path = typer.Option(None, "--logdir", help="Where to write the event files "
                                "(default RUN_DIR/tensorboard)."),
) -> None:
    """Write RUN_DIR's scalars (per method, seed and layer), evaluation and check verdicts as
    TensorBoard event files; then view them with tensorboard --logdir D.

    Example: adflora export tensorboard runs/bounds --logdir tb/bounds
    """
    from adflora_analysis.progress import status

    with status(f"export: TensorBoard events of {run_dir}"):
        out = export_tensorboard(run_dir, logdir)
    typer.echo(f"wrote {out} (view: tensorboard --logdir {out})")
