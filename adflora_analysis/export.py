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

import contextlib
import re
import shutil
import sys
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


#: top-level folders of the export itself, never given to a method or variant
RESERVED = ("checks", "notes")


def safe_part(name: object) -> str:
    """``name`` (a method, variant, seed from the run's rows: data) as one safe path part:
    kept as is when it is already a plain name (letters, digits, ``_.=+-``; not starting with
    a dot); otherwise sanitized, cut to 80 characters, and given 8 hex digits of its SHA-256,
    so two names never share a folder (``x y`` and ``x_y``).

    >>> safe_part("adf-lora"), safe_part("x y"), safe_part("x_y")
    ('adf-lora', 'x_y-887fcea6', 'x_y')
    >>> safe_part("../../../escape")
    '_._.._.._escape-aaec11ca'
    """
    import hashlib

    s = str(name)
    clean = re.sub(r"[^A-Za-z0-9_.=+-]+", "_", s)[:80]
    if clean == s and s and not s.startswith("."):
        return s
    clean = "_" + clean[1:] if clean.startswith(".") else clean
    return f"{clean}-{hashlib.sha256(s.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def run_names(groups: list[dict]) -> list[str]:
    """The TensorBoard run folder (relative to the logdir) of each group of keys
    (``variant``, ``method``, ``seed``): ``[<variant>/]<method>/seed<k>``, every part
    :func:`safe_part`, none a folder of the export itself (:data:`RESERVED`), all distinct.

    >>> run_names([{"method": "x y", "seed": 0}, {"method": "x_y", "seed": 0},
    ...            {"method": "checks", "seed": 1}])
    ['x_y-887fcea6/seed0', 'x_y/seed0', 'checks-961f787b/seed1']
    """
    import hashlib

    out: list[str] = []
    for keys in groups:
        parts = [safe_part(keys["variant"])] if keys.get("variant") is not None else []
        parts += [safe_part(keys["method"]), safe_part(f"seed{keys['seed']}")]
        if parts[0] in RESERVED:
            parts[0] += "-" + hashlib.sha256(parts[0].encode()).hexdigest()[:8]
        out.append("/".join(parts))
    if len(set(out)) != len(out):
        dup = next(n for n in out if out.count(n) > 1)
        raise AdfloraError(f"two groups of rows map to the TensorBoard run {dup!r}",
                           "the run's rows were altered: their method, variant and seed "
                           "names collide")
    return out


def _inside(root: Path, path: Path) -> Path:
    """``path`` if, resolved, it lies inside the resolved ``root`` (else one line)."""
    p = path.resolve()
    if p != root and root not in p.parents:
        raise AdfloraError(f"refusing to write {str(path)!r}: it lies outside --logdir "
                           f"{str(root)!r}", "a symbolic link in the logdir points out of it: "
                           "pass an empty --logdir")
    return path


def partial_note(run) -> str | None:
    """The note an export of a run that did not finish carries (None for a finished run)."""
    from adflora_analysis.reports.api import partial_banner

    return partial_banner([run])


def export_tensorboard(run_dir: str | Path, logdir: str | Path | None = None) -> Path:
    """Write ``run_dir``'s metrics, evaluation and check verdicts as TensorBoard event files
    under ``logdir`` (default ``RUN_DIR/tensorboard``); returns ``logdir``. A ``logdir`` that
    already holds event files is refused (a second export would draw every curve twice).

    Folder names built from the rows are sanitized (:func:`run_names`) and every path is
    checked to lie inside the resolved ``logdir``. A run that did not finish is exported with
    a one-line warning on stderr and the same note as a text (run ``notes``, tag
    ``partial run``). All or nothing: a failure (a full disk: one line) or an interrupt
    removes the event files this export wrote."""
    from adflora_analysis.reports.collect import collect_run
    from adflora_analysis.reports.outputs import interruptible
    from adflora_analysis.rundir import os_error

    run = collect_run(run_dir)
    if run.metrics is None or run.metrics.empty:
        raise AdfloraError(f"{str(run_dir)!r} has no metrics to export",
                           "pass a synthetic or GLUE run directory")
    logdir = Path(logdir) if logdir is not None else run.path / "tensorboard"
    try:
        _check_logdir(logdir, run.path)
    except OSError as e:   # a name too long, a path through a file, ...
        raise os_error(logdir, e) from None
    note = partial_note(run)
    with interruptible("export"):
        try:
            groups = _event_groups(run)
        except (TypeError, ValueError) as e:   # rows of the wrong types (NaN rounds, ...)
            raise AdfloraError(f"the metrics or eval rows of {str(run.path)!r} are damaged "
                               f"({type(e).__name__}: {str(e)[:80]})",
                               "they were not written by adflora: run the study again") \
                from None
        names = run_names([g[0] for g in groups])
        table = _checks_markdown(run)
        try:
            root = logdir.resolve()
            targets = [_inside(root, logdir / n) for n in names]
            _inside(root, logdir / "checks")
            _inside(root, logdir / "notes")
            if note:
                print(f"warning: {note}", file=sys.stderr)
            _write_events(logdir, list(zip(targets, [g[1] for g in groups], strict=True)),
                          table, note)
        except OSError as e:
            raise os_error(logdir, e) from None
    return logdir


def _check_logdir(logdir: Path, run_dir: Path) -> None:
    """Refuse a logdir that is a link inside the run directory, a dangling link, a file, or
    one that already holds event files."""
    if logdir.is_symlink() and logdir.parent.resolve() == run_dir.resolve():
        raise AdfloraError(f"{str(logdir)!r} is a symbolic link (inside the run directory)",
                           "a run directory holds only its own files: pass --logdir")
    if logdir.is_symlink() and not logdir.exists():
        raise AdfloraError(f"--logdir {str(logdir)!r} is a symbolic link to a missing folder",
                           "pass a real folder path")
    if logdir.exists() and not logdir.is_dir():
        raise AdfloraError(f"--logdir {str(logdir)!r} is a file, not a folder",
                           "pass a folder path")
    if logdir.exists() and any(logdir.rglob("events.out.tfevents.*")):
        raise AdfloraError(f"{str(logdir)!r} already holds TensorBoard event files",
                           "pass another --logdir, or delete that folder first")


def _event_groups(run) -> list[tuple[dict, dict[int, dict[str, float]]]]:
    """Per (variant,) method and seed: its keys and its scalars per round."""
    import pandas as pd

    m = run.metrics
    multi = "variant" in m and m["variant"].nunique() > 1
    keys = (["variant"] if multi else []) + ["method", "seed"]
    missing = [k for k in keys if k not in m]
    if missing or "round" not in m:
        raise AdfloraError(f"the metrics of {str(run.path)!r} have no "
                           f"{(missing or ['round'])[0]!r} column",
                           "pass a synthetic or GLUE run directory")
    ev = run.eval
    ev_groups = {}
    if ev is not None and not ev.empty and {"client", "metric", "value", "round"} <= set(ev):
        ev = ev[ev["client"].astype(str).isin(["mean", "averaged"])]
        ekeys = [k for k in keys if k in ev]
        for k, g in ev.groupby(ekeys, sort=False):
            ev_groups[k if isinstance(k, tuple) else (k,)] = g
    out = []
    for k, g in m.groupby(keys, sort=False):
        k = k if isinstance(k, tuple) else (k,)
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
        out.append((dict(zip(keys, k, strict=True)), per_round))
    return out


def _write_events(logdir: Path, runs: list[tuple[Path, dict[int, dict[str, float]]]],
                  table: str | None, note: str | None) -> None:
    """Write every event file; on any failure remove those written (and the folders made)."""
    from adflora_analysis.tbevents import EventWriter

    made = [d for d in (logdir, *(p for t, _ in runs for p in (t, *t.parents)))
            if not d.exists()]
    written: list[Path] = []
    try:
        for target, per_round in runs:
            with EventWriter(target) as w:
                for t in sorted(per_round):
                    w.scalars(t, per_round[t])
            written.append(w.path)
        for sub, tag, text in (("checks", "theory checks", table), ("notes", "partial run",
                                                                      note)):
            if text:
                with EventWriter(logdir / sub) as w:
                    w.text(0, tag, text)
                written.append(w.path)
    except BaseException:
        for f in written:
            f.unlink(missing_ok=True)
        for d in sorted({*made, logdir / "checks", logdir / "notes"},
                        key=lambda q: -len(q.parts)):
            with contextlib.suppress(OSError):
                if d.is_dir() and not d.is_symlink() and not any(d.iterdir()):
                    d.rmdir()
        raise


def _checks_markdown(run) -> str | None:
    """The check verdicts as a Markdown table (None where no check applies)."""
    from adflora_analysis.reports.checks import report_checks, saved_note

    got = report_checks(run)
    if got is None or got[0].empty:
        return None
    note = saved_note(run)
    df = got[0]
    cols = [c for c in ("no", "check", "method", "variant", "status", "measured", "bound",
                        "note") if c in df]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in df[cols].itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v)
                                       for v in r) + " |")
    if note:
        lines = [f"Saved verdicts not shown: {note}. These are computed from the run's "
                 "current rows.", "", *lines]
    return "\n".join(lines)


@app.command("tensorboard")
def tensorboard(
    run_dir: Path = typer.Argument(..., help="A run directory (synthetic or GLUE)."),
    logdir: Path = typer.Option(None, "--logdir", help="Where to write the event files "
                                "(default RUN_DIR/tensorboard)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object: where the "
                                 "event files are."),
) -> None:
    """Write RUN_DIR's scalars (per method, seed and layer), evaluation and check verdicts as
    TensorBoard event files; then view them with tensorboard --logdir D.

    Example: adflora export tensorboard runs/bounds --logdir tb/bounds
    """
    from adflora_analysis.progress import status

    with status(f"export: TensorBoard events of {run_dir}"):
        out = export_tensorboard(run_dir, logdir)
    if as_json:
        import json

        typer.echo(json.dumps({"logdir": str(out), "run": str(run_dir)}))
        return
    view = f"tensorboard --logdir {out}"
    if shutil.which("tensorboard") is None:
        view += " (tensorboard is not installed: pip install 'adflora-analysis[tensorboard]')"
    typer.echo(f"wrote {out} (view: {view})")
