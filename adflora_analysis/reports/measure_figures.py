"""Report section of a topology-measures study (issue 14; docs/topology.md): which measure of
the topology (spectral gap δ, consensus rate p, effective number of neighbours n_W of Vogels
et al. 2022, its excess variance 1/n_W − 1/n) predicts the measured consensus floor and the
final ‖∇f‖².

The rows come from every synthetic run of the report whose variants carry the measures
(:func:`adflora_analysis.topology.fit.measures_table`), so a study run in parts (e.g. split by n)
is fitted as one. The figure puts each outcome against each measure on log-log axes with the
least-squares line of :func:`~adflora_analysis.topology.fit.measure_fit`; it is read back after
drawing (:func:`verify_measures`) and the section says what the check found.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from adflora_analysis.reports.figures import styled, subplots
from adflora_analysis.reports.render import Section, figure_check_line
from adflora_analysis.topology.fit import (
    MEASURES,
    OUTCOMES,
    measure_fit,
    measure_fit_by_n,
    measures_table,
)

LABELS = {"spectral_gap": "spectral gap δ", "p": "consensus rate p",
          "effective_neighbours": "effective neighbours n_W",
          "excess_variance": "1/n_W − 1/n", "consensus_floor": "consensus floor Ξ_A + Ξ_B",
          "grad_norm_sq": "final ‖∇f‖²"}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
MIN_ROWS = 4


def measures_rows(run_dirs: list, metas: list[dict], skipped: list[str] | None = None
                  ) -> pd.DataFrame | None:
    """One row per variant over the runs whose ``meta.json`` variants carry the effective
    number of neighbours (column ``run`` added); None when fewer than :data:`MIN_ROWS` rows or
    a single topology (nothing to compare). A run without ``metrics.parquet`` (one that did
    not finish) is left out, its name appended to ``skipped``; a ``meta.json`` that lacks what
    the table reads is one :class:`AdfloraError` naming it."""
    from adflora_analysis.errors import AdfloraError

    parts = []
    for d, meta in zip(run_dirs, metas, strict=True):
        variants = (meta or {}).get("variants") or {}
        if not any("effective_neighbours" in (v.get("topology") or {})
                   for v in variants.values()):
            continue
        if not (Path(d) / "metrics.parquet").is_file():
            if skipped is not None:
                skipped.append(Path(d).name)
            continue
        try:
            parts.append(measures_table(d).assign(run=Path(d).name))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise AdfloraError(f"{str(Path(d) / 'meta.json')!r} or its metrics lack what the "
                               f"topology-measures table reads ({type(e).__name__}: "
                               f"{str(e)[:80]})", "it was not written by adflora or was "
                               "altered: run the study again") from None
    if not parts:
        return None
    df = pd.concat(parts, ignore_index=True)
    if len(df) < MIN_ROWS or df[["graph", "n"]].drop_duplicates().shape[0] < 2:
        return None
    return df


@styled
def measures_figure(df: pd.DataFrame, fit: pd.DataFrame) -> Figure:
    """Outcomes (rows) against measures (columns), log-log: a colour per graph, a marker per
    n, the fitted line and R² of each panel. Each panel's points carry the gid
    ``measures:<outcome>:<measure>`` (what :func:`verify_measures` reads back)."""
    graphs = sorted(df["graph"].astype(str).unique())
    ns = sorted(df["n"].unique())
    cmap = matplotlib.colormaps["tab10" if len(graphs) <= 10 else "tab20"]
    color = {g: cmap(i % cmap.N) for i, g in enumerate(graphs)}
    marker = {n: MARKERS[i % len(MARKERS)] for i, n in enumerate(ns)}
    fig, axes = subplots(len(OUTCOMES), len(MEASURES), figsize=(3.2 * len(MEASURES),
                                                                    3.0 * len(OUTCOMES)),
                             squeeze=False)
    fit = fit.set_index(["outcome", "measure"])
    for i, y in enumerate(OUTCOMES):
        for j, x in enumerate(MEASURES):
            ax = axes[i, j]
            d = _usable(df, x, y)
            for (g, n), part in d.groupby(["graph", "n"]):
                ax.scatter(part[x], part[y], color=color[str(g)], marker=marker[n], s=26)
            pts = ax.plot(d[x], d[y], ls="none", marker="", gid=f"measures:{y}:{x}")[0]
            pts.set_visible(False)        # the drawn points as one artist, for the read-back
            r = fit.loc[(y, x)]
            if np.isfinite(r["r2"]) and len(d) > 1:
                lx = np.log(d[x].to_numpy(float))
                ly = np.log(d[y].to_numpy(float))
                b, a = np.polyfit(lx, ly, 1)
                xs = np.linspace(lx.min(), lx.max(), 20)
                ax.plot(np.exp(xs), np.exp(a + b * xs), color="0.3", lw=1, ls="--")
                ax.set_title(f"R² = {r['r2']:.2f}, slope {r['slope']:.2f}", fontsize="medium")
            ax.set_xscale("log")
            ax.set_yscale("log")
            if i == len(OUTCOMES) - 1:
                ax.set_xlabel(LABELS[x])
            if j == 0:
                ax.set_ylabel(LABELS[y])
    handles = [Line2D([], [], color=color[g], marker="o", ls="none", label=g) for g in graphs]
    handles += [Line2D([], [], color="0.4", marker=marker[n], ls="none", label=f"n = {n:,}")
                for n in ns]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5),
               frameon=False)
    fig.tight_layout()
    return fig


def _usable(df: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Rows with finite, positive x and y (those :func:`measure_fit` uses)."""
    xv = pd.to_numeric(df[x], errors="coerce")
    yv = pd.to_numeric(df[y], errors="coerce")
    ok = np.isfinite(xv) & np.isfinite(yv) & (xv > 0) & (yv > 0)
    return df[ok].assign(**{x: xv[ok], y: yv[ok]})


def verify_measures(fig: Figure, df: pd.DataFrame) -> list[str]:
    """Each panel's points equal the table's (measure, outcome) pairs; one problem per panel
    that differs or is missing."""
    problems = []
    drawn = {line.get_gid(): np.asarray(line.get_xydata(), dtype=float)
             for ax in fig.axes for line in ax.lines if line.get_gid()}
    for y in OUTCOMES:
        for x in MEASURES:
            want = _usable(df, x, y)[[x, y]].to_numpy(dtype=float)
            got = drawn.get(f"measures:{y}:{x}")
            if got is None or got.shape != want.shape or not np.allclose(
                    got[np.lexsort(got.T[::-1])], want[np.lexsort(want.T[::-1])]):
                problems.append(f"{LABELS[y]} against {LABELS[x]}: drawn ≠ table")
    return problems


def best_measures(fit: pd.DataFrame) -> dict[str, tuple[str, float]]:
    """The measure with the highest R² per outcome: ``{outcome: (measure, r2)}``.

    >>> fit = pd.DataFrame({"outcome": ["y", "y"], "measure": ["p", "spectral_gap"],
    ...                     "r2": [0.4, 0.9]})
    >>> best_measures(fit)
    {'y': ('spectral_gap', 0.9)}
    """
    out = {}
    for y, g in fit.dropna(subset=["r2"]).groupby("outcome"):
        r = g.loc[g["r2"].idxmax()]
        out[str(y)] = (str(r["measure"]), float(r["r2"]))
    return out


def _would_draw(metas: list[dict]) -> bool:
    """Whether the runs' ``meta.json`` variants alone (finished or not) hold enough
    topologies for the measures section (:data:`MIN_ROWS` variants, two (graph, n))."""
    topos = [(v.get("topology") or {}) for meta in metas
             for v in ((meta or {}).get("variants") or {}).values()]
    topos = [t for t in topos if "effective_neighbours" in t]
    return len(topos) >= MIN_ROWS and len({(str(t.get("graph")), str(t.get("n")))
                                           for t in topos}) >= 2


def measures_sections(run_dirs: list, metas: list[dict]) -> list[Section]:
    """The topology-measures section over every run that has the measures (none otherwise):
    the variants' measures and outcomes, the pooled fit and the fit within each n, and the
    figure with its read-back check."""
    skipped: list[str] = []
    df = measures_rows(run_dirs, metas, skipped)
    if df is None:
        if not (skipped and _would_draw(metas)):
            return []
        return [Section("Which topology measure predicts consensus", [
            f"Not drawn: {', '.join(skipped)} did not finish (no metrics.parquet), and the "
            "topology-measures fit needs finished runs."])]
    fit = measure_fit(df)
    by_n = measure_fit_by_n(df)
    fig = measures_figure(df, fit)
    best = best_measures(fit)
    lines = [
        f"{len(df)} variants ({df['graph'].nunique()} graphs, n = "
        f"{', '.join(f'{n:,}' for n in sorted(df['n'].unique()))}) from "
        f"{df['run'].nunique()} run(s). Consensus floor = mean of Ξ_A + Ξ_B over the last 12 "
        "rounds (all seeds); final ‖∇f‖² at the last round (mean over seeds). Each outcome is "
        "regressed on each measure in log-log (R², slope, Spearman's ρ): the highest R² "
        "predicts it best. n_W is the effective number of neighbours at γ = 0.95 (Vogels, "
        "Hendrikx and Jaggi 2022); 1/n_W − 1/n its excess variance over exact averaging.",
        "Best pooled predictor: " + "; ".join(
            f"{LABELS[y]}: {LABELS[m]} (R² = {r2:.3f})" for y, (m, r2) in best.items()) + ".",
        figure_check_line(verify_measures(fig, df), "points of every panel")]
    if skipped:
        lines.append(f"Left out: {', '.join(skipped)} (did not finish: no metrics.parquet).")
    keep = ["run", "variant", "graph", "n", *MEASURES, *OUTCOMES]
    return [Section("Which topology measure predicts consensus", lines,
                    figures={"outcomes against topology measures": fig},
                    tables={"fit across all variants": fit,
                            "fit within each n": by_n,
                            "variants": df[[c for c in keep if c in df]]})]
