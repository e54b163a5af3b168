"""Theory checks for reports: the synthetic layer's checks, as a table and bound curves."""

from __future__ import annotations

import math

import pandas as pd

from adflora_analysis.reports.collect import Run


def report_checks(run: Run) -> tuple[pd.DataFrame, pd.DataFrame | None] | None:
    """``(table, bounds)`` for a synthetic run, None for other kinds.

    ``table``: :func:`checks_table` (status held / violated / finding / underpowered / n/a /
    error, measured, bound, ratio with interval, z with threshold). ``bounds``: check 4b's
    unrolled consensus bound per round (columns method, variant, block, round, bound), for the
    dashed lines of the consensus figure; :func:`check_curves` and :func:`check_overlays` give
    every check's curve and its figure.
    """
    if run.kind != "synthetic":    # GLUE run directories: `adflora synthetic check RUN`
        return None
    from adflora_analysis.errors import AdfloraError
    from adflora_analysis.synthetic.checks import run_checks

    try:
        results = run_checks(run.path)
    except (AdfloraError, KeyError) as e:  # a run without what the checks read
        return pd.DataFrame([{"no": "", "check": "not evaluated", "method": "", "variant": "",
                              "status": "n/a", "held": None, "note": str(e)}]), None
    except Exception as e:  # noqa: BLE001 - rows the checks cannot take (a run killed early)
        # the report still shows the run's figures; the failure is a visible 'error' row
        note = f"the checks failed on this run's rows ({type(e).__name__}: {str(e)[:160]})"
        return pd.DataFrame([{"no": "", "check": "not evaluated", "method": "", "variant": "",
                              "status": "error", "held": None, "note": note}]), None
    _CURVES[str(run.path)] = check_curves(results)
    return checks_table(results), consensus_bounds(results)


_CURVES: dict[str, pd.DataFrame | None] = {}


def saved_note(run: Run) -> str | None:
    """Why the run's saved ``checks.json`` is not what the report shows (stale: the run went
    on after the check, its status or config changed; damaged; unverified old format), read
    only through :func:`adflora_analysis.synthetic.checks.load_saved_checks`; None where there
    is no such file or it still describes the run. The report's verdicts are always computed
    from the run's current rows."""
    if not (run.path / "checks.json").is_file():
        return None
    try:
        from adflora_analysis.synthetic.checks import load_saved_checks
    except ImportError:      # a checks layer without saved verdicts
        return None
    _, reason = load_saved_checks(run.path)
    return reason


def overlay_sections(title: str, runs: list[Run]) -> list:
    """A report section with :func:`check_overlays` of the runs whose checks
    :func:`report_checks` evaluated (empty if none has a curve)."""
    from adflora_analysis.reports.render import Section

    parts = [_CURVES.pop(str(r.path), None) for r in runs]
    parts = [p.assign(variant=p["variant"] if len(runs) == 1 else r.name + ":" + p["variant"])
             for p, r in zip(parts, runs, strict=True) if p is not None]
    fig = check_overlays(pd.concat(parts, ignore_index=True)) if parts else None
    if fig is None:
        return []
    return [Section(f"{title}: theory-check curves", [
        "Every check with a curve: the measured seed mean (solid) and its bound (dashed) per "
        "method, summed over blocks where a check has two (docs/theory.md)."],
        figures={"theory checks": fig})]


def _num(x: float) -> float:
    return x if isinstance(x, int | float) and math.isfinite(x) else float("nan")


def checks_table(results: list) -> pd.DataFrame:
    """One row per result: number, check, method, variant, status, measured, bound, ratio
    (bound ÷ measured) with its interval, z with its threshold, the smallest detectable
    violation (mde), source and note. ``held`` is kept for callers that filter on it."""
    return pd.DataFrame([{
        "no": r.number, "check": r.check, "method": r.method, "variant": r.variant,
        "status": r.status, "measured": _num(r.measured), "bound": _num(r.bound),
        "ratio": _num(r.ratio), "ratio lo": _num(r.ratio_ci[0]), "ratio hi": _num(r.ratio_ci[1]),
        "z": _num(r.z), "threshold": _num(r.threshold), "mde": _num(r.mde),
        "held": r.status == "held" if r.status in ("held", "violated") else None,
        "source": r.source, "note": r.note} for r in results])


def consensus_bounds(results: list) -> pd.DataFrame | None:
    """Check 4b's unrolled bound per method, block and round (the consensus figure's dashed
    lines)."""
    curves = [r.curve[["block", "round", "bound"]].assign(method=r.method, variant=r.variant)
              for r in results if r.number == "4b" and not r.curve.empty]
    return pd.concat(curves, ignore_index=True) if curves else None


def check_curves(results: list) -> pd.DataFrame | None:
    """Every check's curve (measured and bound per round, seed means) in one table with
    columns number, check, method, variant, round, measured, bound (and block where the check
    has one), for :func:`check_overlays`."""
    parts = []
    for r in results:
        c = r.curve
        if c.empty or not {"round", "measured", "bound"} <= set(c):
            continue
        c = c.assign(number=r.number, check=r.check, method=r.method, variant=r.variant)
        if "block" in c:
            c = c.groupby(["number", "check", "method", "variant", "round"],
                          as_index=False)[["measured", "bound"]].sum()
        parts.append(c[["number", "check", "method", "variant", "round", "measured",
                        "bound"]])
    return pd.concat(parts, ignore_index=True) if parts else None


def check_overlays(curves: pd.DataFrame | None):
    """One figure, a panel per check with a curve: the measured seed mean (solid) and its
    bound (dashed) per method against the round (log scale where positive). None if empty."""
    if curves is None or curves.empty:
        return None
    import matplotlib.pyplot as plt
    import seaborn as sns

    keys = list(dict.fromkeys(zip(curves["number"], curves["check"], strict=True)))
    cols = 3
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    methods = list(dict.fromkeys(curves["method"]))
    pal = dict(zip(methods, sns.color_palette(n_colors=len(methods)), strict=True))
    for ax, (num, name) in zip(axes.flat, keys, strict=False):
        part = curves[(curves["number"] == num) & (curves["check"] == name)]
        for (m, v), g in part.groupby(["method", "variant"], sort=False):
            g = g.sort_values("round")
            lab = m if v == "base" else f"{m} [{v}]"
            ax.plot(g["round"], g["measured"], color=pal[m], lw=1.2, label=lab)
            ax.plot(g["round"], g["bound"], color=pal[m], lw=1.0, ls="--")
        if (part[["measured", "bound"]] > 0).all().all():
            ax.set_yscale("log")
        ax.set_title(f"check {num}: {name}", fontsize=9)
        ax.set_xlabel("round")
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    fig.suptitle("theory checks: measured (solid) and bound (dashed), seed means")
    fig.tight_layout()
    return fig
