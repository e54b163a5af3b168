"""Which topology measure predicts consensus? Fits of measured outcomes against δ, p and the
effective number of neighbours (``synthetic/topology_measures.toml``, docs/topology.md).

:func:`measures_table` reads a synthetic run directory (``meta.json`` for each variant's
topology constants, ``metrics.parquet`` for what was measured) into one row per variant;
:func:`measure_fit` regresses the log of each outcome on the log of each measure across
variants (``log y = a + b log x``) and reports R², the slope and Spearman's rank correlation:
the measure with the highest R² predicts the outcome best. Both return pandas DataFrames (the
reports can plot them).

>>> import pandas as pd
>>> df = pd.DataFrame({"p": [0.1, 0.2, 0.4, 0.8], "spectral_gap": [0.3, 0.1, 0.5, 0.2],
...                    "effective_neighbours": [2.0, 3.0, 5.0, 9.0],
...                    "consensus_floor": [1.0, 0.5, 0.25, 0.125], "grad_norm_sq": 1.0})
>>> fit = measure_fit(df, measures=("p", "spectral_gap", "effective_neighbours"),
...                   outcomes=("consensus_floor",))
>>> best = fit.sort_values("r2", ascending=False).iloc[0]
>>> best["measure"], float(best["r2"]), float(best["slope"])
('p', 1.0, -1.0)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["MEASURES", "OUTCOMES", "measure_fit", "measure_fit_by_n", "measures_table"]

MEASURES = ("spectral_gap", "p", "effective_neighbours", "excess_variance")
"""Topology measures compared (columns of :func:`measures_table`). ``excess_variance`` is
1/n_W(γ) − 1/n: the stationary variance of the gossiped random walk of Vogels et al. above that
of exact averaging (0 for W = J), in units of the no-gossip variance."""

OUTCOMES = ("consensus_floor", "grad_norm_sq")
"""Measured outcomes: the consensus error Ξ_A + Ξ_B (mean over the last ``tail`` rounds, all
seeds) and the final ‖∇f(x̄)‖² (mean over seeds)."""


def measures_table(run_dir: str | Path, tail: int = 12, method: str | None = None
                   ) -> pd.DataFrame:
    """One row per variant of a synthetic run: its labels, n, the topology measures of
    ``meta.json`` and the measured outcomes.

    Parameters
    ----------
    run_dir : a finished ``adflora synthetic run`` directory.
    tail : rounds at the end averaged for the consensus floor.
    method : the method whose rows are used (default: the first in the run).
    """
    from adflora_analysis.rundir import load_run

    run = load_run(run_dir)            # read through the run directory's reading API
    meta, m = run.meta, run.table("metrics")
    m = m[m["layer"] == "all"]
    method = method or str(m["method"].iloc[0])
    m = m[m["method"] == method]
    last = int(m["round"].max())
    rows = []
    for label, v in meta["variants"].items():
        topo = v["topology"]
        g = m[m["variant"] == label] if "variant" in m else m
        if g.empty:
            continue
        end = g[g["round"] > last - tail]
        ne = topo.get("effective_neighbours")
        rows.append({"variant": label, "graph": topo.get("graph"), "n": topo["n"],
                     "q": topo.get("q"), **{k: topo.get(k) for k in MEASURES[:3]},
                     "excess_variance": None if ne is None else 1.0 / ne - 1.0 / topo["n"],
                     "consensus_floor": float((end["xi_A"] + end["xi_B"]).mean()),
                     "grad_norm_sq": float(g[g["round"] == last]["grad_norm_sq"].mean())})
    return pd.DataFrame(rows)


def measure_fit(df: pd.DataFrame, measures: tuple[str, ...] = MEASURES,
                outcomes: tuple[str, ...] = OUTCOMES) -> pd.DataFrame:
    """Log-log least squares of each outcome on each measure, across the rows of ``df``.

    Returns one row per (outcome, measure): ``r2`` (of log y on log x), ``slope`` b, ``spearman``
    (rank correlation of x and y), ``points`` used (rows with finite, positive x and y).
    """
    from scipy.stats import spearmanr

    out = []
    for y_name in outcomes:
        for x_name in measures:
            x = pd.to_numeric(df[x_name], errors="coerce").to_numpy(float)
            y = pd.to_numeric(df[y_name], errors="coerce").to_numpy(float)
            ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
            lx, ly = np.log(x[ok]), np.log(y[ok])
            if ok.sum() < 3 or np.ptp(lx) == 0:
                out.append({"outcome": y_name, "measure": x_name, "r2": np.nan,
                            "slope": np.nan, "spearman": np.nan, "points": int(ok.sum())})
                continue
            b, a = np.polyfit(lx, ly, 1)
            resid = ly - (a + b * lx)
            tot = float(((ly - ly.mean()) ** 2).sum())
            r2 = 1.0 - float((resid ** 2).sum()) / tot if tot > 0 else np.nan
            rho = float(spearmanr(x[ok], y[ok]).statistic)
            out.append({"outcome": y_name, "measure": x_name, "r2": round(r2, 12),
                        "slope": round(float(b), 12), "spearman": rho,
                        "points": int(ok.sum())})
    return pd.DataFrame(out)


def measure_fit_by_n(df: pd.DataFrame, measures: tuple[str, ...] = MEASURES,
                     outcomes: tuple[str, ...] = OUTCOMES) -> pd.DataFrame:
    """:func:`measure_fit` within each number of clients ``n`` (column ``n`` first); an n with
    fewer than 3 usable rows gets NaN fits.

    >>> df = pd.DataFrame({"n": [4, 4, 4, 8, 8, 8], "p": [0.1, 0.2, 0.4, 0.1, 0.2, 0.4],
    ...                    "consensus_floor": [1.0, 0.5, 0.25, 2.0, 1.0, 0.5]})
    >>> fit = measure_fit_by_n(df, measures=("p",), outcomes=("consensus_floor",))
    >>> fit[["n", "r2", "slope"]].to_numpy().tolist()
    [[4.0, 1.0, -1.0], [8.0, 1.0, -1.0]]
    """
    parts = [measure_fit(g, measures, outcomes).assign(n=n) for n, g in df.groupby("n")]
    out = pd.concat(parts, ignore_index=True)
    return out[["n", *[c for c in out.columns if c != "n"]]]
