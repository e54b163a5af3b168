"""Theory checks for reports: the synthetic layer's checks, as a table and bound curves."""

from __future__ import annotations

import math

import matplotlib
import pandas as pd

from adflora_analysis.reports.collect import Run


def report_checks(run: Run) -> tuple[pd.DataFrame, pd.DataFrame | None] | None:
    """``(table, bounds)`` for a synthetic or GLUE run (the checks read both kinds; on GLUE
    the ones whose columns it lacks say n/a), None for other kinds.

    ``table``: :func:`checks_table` (status held / violated / finding / underpowered / n/a /
    error, measured, bound, ratio with interval, z with threshold). ``bounds``: check 4b's
    unrolled consensus bound per round (columns method, variant, block, round, bound), for the
    dashed lines of the consensus figure; :func:`check_curves` and :func:`check_overlays` give
    every check's curve and its figure.
    """
    if run.kind not in ("synthetic", "glue", "lm"):
        return None
    from adflora_analysis.errors import AdfloraError
    from adflora_analysis.theory import run_checks

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
    run.check_curves = check_curves(results)
    return checks_table(results), consensus_bounds(results)


def saved_note(run: Run) -> str | None:
    """Why the run's saved ``checks.json`` is not what the report shows (stale: the run went
    on after the check, its status or config changed; damaged; unverified old format), read
    only through :func:`adflora_analysis.theory.load_saved_checks`; None where there
    is no such file or it still describes the run. The report's verdicts are always computed
    from the run's current rows."""
    if not (run.path / "checks.json").is_file():
        return None
    try:
        from adflora_analysis.theory import load_saved_checks
    except ImportError:      # a checks layer without saved verdicts
        return None
    _, reason = load_saved_checks(run.path)
    return reason


def overlay_sections(title: str, runs: list[Run]) -> list:
    """A report section with :func:`check_overlays` of the runs whose checks
    :func:`report_checks` evaluated (empty if none has a curve)."""
    from adflora_analysis.reports.render import Section

    parts = [r.check_curves for r in runs]
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
    """One figure, a panel per check with a curve: the measured seed mean (the method's line
    style and marker) and its bound (thin, no marker) per method against the round (log scale
    where positive). Each method keeps its colour, marker and line style of every other
    figure; study variants (e.g. T) are shades of it, in numeric order. None if empty."""
    if curves is None or curves.empty:
        return None
    from adflora_analysis.reports import figures as F

    with matplotlib.rc_context(F.rc()):
        return _check_overlays(curves, F)


def _check_overlays(curves: pd.DataFrame, F):
    from matplotlib.lines import Line2D

    keys = list(dict.fromkeys(zip(curves["number"], curves["check"], strict=True)))
    keys.sort(key=lambda k: F.natural_key(k[0]))
    fig, panels = F._grid(len(keys), h=3.1)
    cols = F.preset().max_cols if len(keys) > 1 else 1
    variants = sorted({str(v) for v in curves["variant"]}, key=F.natural_key)
    methods = F.method_order(curves["method"])
    for i, (ax, (num, name)) in enumerate(zip(panels, keys, strict=True)):
        part = curves[(curves["number"] == num) & (curves["check"] == name)]
        for m in methods:
            for k, v in enumerate(variants):
                g = part[(part["method"] == m) & (part["variant"].astype(str) == v)]
                if g.empty:
                    continue
                g = g.sort_values("round")
                kw = F.line_kw(m)
                kw["color"] = F.shade(kw["color"], k, len(variants))
                ax.plot(g["round"], g["measured"], **kw,
                        markevery=max(1, len(g) // 8))
                ax.plot(g["round"], g["bound"], **{**F.BOUND_KW, "color": kw["color"]})
        if (part[["measured", "bound"]] > 0).all().all():
            ax.set_yscale("log")
        ax.set_title(f"check {num}: {name}")
        ax.set_xlabel("round")
        ax.xaxis.get_major_locator().set_params(integer=True)
        if i % cols == 0:
            ax.set_ylabel("measured, bound")
    handles = [Line2D([], [], **F.line_kw(m), label=m) for m in methods]
    if len(variants) > 1:
        handles += [Line2D([], [], color=F.shade("#333333", k, len(variants)), lw=4,
                           label=v) for k, v in enumerate(variants)]
    handles += [Line2D([], [], color="#333", **F.BOUND_KW, label="bound"),
                Line2D([], [], color="none", label="lines: seed means")]
    fig.suptitle("theory checks: measured (marked line) and bound (thin), seed means")
    F._legend(fig, [], None, handles)
    return fig


STATUS_ORDER = ("violated", "error", "finding", "underpowered", "held", "n/a")


def compact_checks(checks: pd.DataFrame) -> pd.DataFrame:
    """The theory checks on one page: a row per check (and variant where several), a column
    per method, each cell ``status (ratio)``; the worst status where a cell has several rows.

    >>> t = pd.DataFrame({"no": ["2", "2"], "check": ["g", "g"], "method": ["lora", "rolora"],
    ...                   "variant": ["base", "base"], "status": ["held", "violated"],
    ...                   "ratio": [1.234, 0.5]})
    >>> compact_checks(t).to_dict("records")
    [{'check': '2 g', 'rolora': 'violated (0.5)', 'lora': 'held (1.23)'}]
    """
    from adflora_analysis.reports.figures import method_order, natural_key

    if not {"no", "check", "method", "status"} <= set(checks):
        return pd.DataFrame()
    df = checks[checks["method"].astype(str) != ""]
    if df.empty:
        return pd.DataFrame()
    many = "variant" in df and df["variant"].nunique() > 1
    rows = []
    keys = ["no", "check"] + (["variant"] if many else [])
    for key, g in df.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = {"check": f"{key[0]} {key[1]}".strip()}
        if many:
            row["variant"] = str(key[2])
        for m, c in g.groupby("method", sort=False):
            worst = min(c["status"], key=lambda s: STATUS_ORDER.index(s)
                        if s in STATUS_ORDER else len(STATUS_ORDER))
            r = c[c["status"] == worst]["ratio"] if "ratio" in c else pd.Series(dtype=float)
            r = r.dropna()
            row[m] = worst + (f" ({r.iloc[0]:.3g})" if len(r) else "")
        rows.append(row)
    out = pd.DataFrame(rows)
    out = out.iloc[sorted(range(len(out)), key=lambda i: natural_key(
        " ".join(str(out.iloc[i][k]) for k in out.columns[:2 if many else 1])))]
    lead = ["check"] + (["variant"] if many else [])
    return out[lead + method_order(c for c in out.columns if c not in lead)].fillna("").reset_index(
        drop=True)
