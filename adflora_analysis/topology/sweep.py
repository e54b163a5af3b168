"""The topology study: expected consensus rate p against the encounter probability q.

For n clients, every combination rule of the encounter model over a grid of q (0.01 to 0.5),
next to static reference graphs (ring, 2-D torus, hypercube, complete; Metropolis weights)
and the time-varying references (random matching, one-peer exponential). Output: a tidy table
(one row per topology; ``sweep.parquet`` and ``sweep.csv``), a seaborn figure of p against q
(``sweep.png``), the resolved settings (``config.toml``) and ``meta.json``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from adflora_analysis import fileio
from adflora_analysis.errors import AdfloraError
from adflora_analysis.rundir import init_run_dir, make_meta
from adflora_analysis.seeding import int_seed
from adflora_analysis.topology.config import TopologyConfig, build_sampler, topology_constants
from adflora_analysis.topology.graphs import check_n
from adflora_analysis.topology.rates import consensus_rate, second_moment_rate
from adflora_analysis.topology.samplers import (
    EncounterSampler,
    MatchingSampler,
    OnePeerExponentialSampler,
    Sampler,
)
from adflora_analysis.topology.spectral import spectral_summary
from adflora_analysis.topology.weights import ROW_STOCHASTIC_ONLY

__all__ = ["Q_GRID", "REFERENCE_GRAPHS", "SWEEP_RULES", "plot_sweep", "run_sweep",
           "run_topology_study", "sweep_table"]

Q_GRID = (0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
"""Encounter probabilities of the sweep."""

SWEEP_RULES = ("metropolis", "max-degree", "pairwise", "uniform")
"""Combination rules of the sweep (``uniform`` is row-stochastic only: flagged)."""

REFERENCE_GRAPHS = ("ring", "torus", "hypercube", "complete")
"""Static reference graphs (Metropolis weights)."""

COLUMNS = ("kind", "graph", "rule", "q", "n", "p", "p_stderr", "p_method", "second_moment_rate",
           "spectral_gap", "doubly_stochastic", "flag")


def _row(s: Sampler, samples: int, seed: int, *, graph: str, rule: str, q: float | None,
         flag: str = "") -> dict[str, Any]:
    rate = consensus_rate(s, samples=samples, seed=seed)
    rho = second_moment_rate(s, samples=samples, seed=seed) if s.n <= 64 else math.nan
    gap = spectral_summary(s.expected(samples=samples, seed=seed)).gap
    return {"kind": s.kind, "graph": graph, "rule": rule, "q": math.nan if q is None else q,
            "n": s.n, "p": rate.p, "p_stderr": rate.stderr, "p_method": rate.method,
            "second_moment_rate": rho, "spectral_gap": gap,
            "doubly_stochastic": bool(s.doubly_stochastic), "flag": flag}


def sweep_table(n: int = 10, *, samples: int = 20000, seed: int = 0,
                qs: tuple[float, ...] = Q_GRID, rules: tuple[str, ...] = SWEEP_RULES
                ) -> pd.DataFrame:
    """Tidy table of p (and the second-moment rate) for every encounter rule and q, plus refs.

    Each (rule, q) estimate uses its own seed ``int_seed(seed, "topology-sweep", i, j)``.
    References that do not exist at this n are replaced as follows: the hypercube takes the
    largest power of two <= n (its row's ``n`` says so); the torus is left out if n does not
    split as rows x cols with both >= 2.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`COLUMNS`; ``q`` is NaN for references.
    """
    n = check_n(n)
    rows = []
    for i, rule in enumerate(rules):
        flag = "row-stochastic only" if rule in ROW_STOCHASTIC_ONLY else ""
        for j, q in enumerate(qs):
            s = EncounterSampler(n, q, rule)
            rows.append(_row(s, samples, int_seed(seed, "topology-sweep", i, j),
                             graph="encounter", rule=rule, q=q, flag=flag))
    for name in REFERENCE_GRAPHS:
        m = n
        if name == "hypercube":
            m = 1 << (n.bit_length() - 1)
        try:
            s = build_sampler(TopologyConfig(graph=name, weights="metropolis"), m, seed=seed)
        except AdfloraError:
            continue  # e.g. a torus for prime n
        rows.append(_row(s, samples, seed, graph=name, rule="metropolis", q=None,
                         flag="" if m == n else f"n = {m}"))
    for k, s in enumerate((MatchingSampler(n), OnePeerExponentialSampler(n))):
        rows.append(_row(s, samples, int_seed(seed, "topology-sweep-ref", k),
                         graph=s.kind, rule="pairwise", q=None))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def plot_sweep(df: pd.DataFrame, path: str | Path, n: int | None = None) -> Path:
    """Seaborn figure of p against q (log-x), one line per rule, references as horizontal lines.

    Error bars are ±2 standard errors (often smaller than the markers).
    """
    import matplotlib
    import seaborn as sns

    from adflora_analysis.figstyle import BASE_RC

    # its own style, never a global theme: the caller's rcParams and backend stay as they were
    with sns.axes_style("whitegrid"), matplotlib.rc_context(BASE_RC):
        return _draw_sweep(df, path, n)


def _draw_sweep(df: pd.DataFrame, path: str | Path, n: int | None) -> Path:
    """:func:`plot_sweep`'s drawing (object API, no pyplot), inside its style context."""
    import seaborn as sns
    from matplotlib.figure import Figure

    enc = df[df["graph"] == "encounter"].copy()
    enc["rule"] = [r + (" (row-stochastic only)" if f else "") for r, f in
                   zip(enc["rule"], enc["flag"], strict=True)]
    fig = Figure(figsize=(9.0, 4.8))
    ax = fig.subplots()
    sns.lineplot(data=enc, x="q", y="p", hue="rule", style="rule", markers=True, dashes=True,
                 palette="colorblind", ax=ax)
    for _, r in enc.iterrows():
        ax.errorbar(r["q"], r["p"], yerr=2 * r["p_stderr"], fmt="none", ecolor="gray", lw=0.8)
    refs = df[df["graph"] != "encounter"]
    palette = sns.color_palette("dark", len(refs))
    for color, (_, r) in zip(palette, refs.iterrows(), strict=True):
        label = r["graph"] + (f" ({r['flag']})" if r["flag"] else "")
        ax.axhline(r["p"], ls="--", lw=1, color=color, label=f"{label}: p = {r['p']:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("encounter probability q (per pair and round)")
    ax.set_ylabel("expected consensus rate p")
    n = n if n is not None else int(enc["n"].iloc[0]) if len(enc) else None
    ax.set_title(f"p = 1 − λmax((I−J) E[WᵀW] (I−J)) vs q, n = {n} "
                 "(dashed: reference topologies)", fontsize=9)
    ax.set_ylim(-0.02, 1.05)
    ax.legend(title="encounter rule / reference", fontsize=8, title_fontsize=8,
              loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fileio.save_figure(path, fig)


def check_sweep_args(n: int, samples: int) -> tuple[int, int]:
    """Validated ``(n, samples)`` of a sweep (one-line errors before any work).

    >>> check_sweep_args(10, 20000)
    (10, 20000)
    """
    n = check_n(n)
    if int(samples) < 100:
        raise AdfloraError(f"samples = {samples} is too few for Monte Carlo",
                           "pass samples >= 100")
    return n, int(samples)


def run_sweep(out: str | Path, *, n: int = 10, samples: int = 20000, seed: int = 0,
              qs: tuple[float, ...] = Q_GRID, overwrite: bool = False,
              extra: Callable[[Path], dict[str, Path]] | None = None) -> dict[str, Path]:
    """Run :func:`sweep_table` and write ``sweep.parquet``, ``sweep.csv``, ``sweep.png``,
    ``config.toml`` and ``meta.json`` under ``out``. Returns the paths by name.

    ``out`` is claimed like every run directory (:func:`adflora_analysis.rundir.claim`): new or
    empty, or with ``overwrite`` an earlier toolkit run there, of which only the files its
    manifest lists are removed; the folder is locked while the sweep writes. ``extra(out)``
    writes further files inside the claim (recorded in the manifest)."""
    from adflora_analysis.rundir import LOCK, claim

    n, samples = check_sweep_args(n, samples)
    out = Path(out)
    config = {"n": n, "samples": int(samples), "seed": int(seed), "qs": list(qs),
              "rules": list(SWEEP_RULES), "references": list(REFERENCE_GRAPHS)}
    with claim(out, "sweep", "overwrite" if overwrite else "new") as run:
        before = {p for p in out.rglob("*") if p.is_file()}
        init_run_dir(run, config, make_meta(seed, kind="topology-sweep", status="running"))
        df = sweep_table(n, samples=int(samples), seed=seed, qs=qs)
        paths = {"parquet": fileio.write_parquet(out / "sweep.parquet", df),
                 "csv": fileio.write_csv(out / "sweep.csv", df),
                 "figure": plot_sweep(df, out / "sweep.png", n),
                 "meta": out / "meta.json", "config": out / "config.toml"}
        if extra is not None:
            paths.update(extra(out))
        written = {p for p in out.rglob("*") if p.is_file() and p.name != LOCK} - before
        run.record(*sorted(str(p.relative_to(out)) for p in written))
        run.set_status("done")
    return paths


def run_topology_study(out: str | Path, quick: bool = False, seed: int = 0,
                       overwrite: bool = False) -> dict[str, Path]:
    """The demo's topology study, written under ``out``.

    The sweep at n = 10 (20,000 Monte Carlo draws per point, 2,000 with ``quick``), and
    ``paper_default.json``: the constants of the paper's topology (encounter, q = 0.1,
    Metropolis, n = 10).
    """
    samples = 2000 if quick else 20000

    def paper_default(folder: Path) -> dict[str, Path]:
        cfg = TopologyConfig(graph="encounter", weights="metropolis", q=0.1)
        const = topology_constants(build_sampler(cfg, 10, seed), samples=samples, seed=seed)
        return {"paper_default": fileio.write_json(folder / "paper_default.json", const)}

    return run_sweep(out, n=10, samples=samples, seed=seed, overwrite=overwrite,
                     extra=paper_default)


def p_table(df: pd.DataFrame, qs: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.5)
            ) -> pd.DataFrame:
    """Pivot of p (rule x q) for the encounter rows at the given q values.

    >>> df = pd.DataFrame({"graph": ["encounter"] * 2 + ["ring"], "rule": ["metropolis"] * 3,
    ...                    "q": [0.1, 0.2, np.nan], "p": [0.37, 0.6, 0.1]})
    >>> p_table(df).loc["metropolis"].tolist()
    [0.37, 0.6]
    """
    enc = df[(df["graph"] == "encounter") & np.isin(df["q"], qs)]
    return enc.pivot(index="rule", columns="q", values="p")
