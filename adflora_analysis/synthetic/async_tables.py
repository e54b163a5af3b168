"""Tables of the issue-12 studies (adaptive switching interval; stale and partial gossip), as
DataFrames for the reports and the closing notes.

- :func:`adaptive_table`: per (q, schedule, method) the final ‖∇f(x̄)‖² (mean of the last
  ``last`` rounds per seed), the time-averaged cross term C, the mean length T of the
  completed phases, each with its standard error over seeds, the best fixed T per (q, method)
  marked, and whether each schedule is within noise (2 s.e. of the difference) of it.
- :func:`async_table`: per (asynchrony model, τ, π, method) the predicted consensus rate
  (``meta.json``; derived or simulated), the fitted frozen-block rate ± s.e. (check 7's fit;
  adf-lora only), final ‖∇f‖² and C (``synthetic/async.toml``, ``synthetic/async_models.toml``).
- :func:`drift_table`: per (model, τ, π) the drift of a frozen block's consensus value from the
  initial average (direct simulation, no training).
- :func:`phase_ribbon`: which block each method trains at each round (seed 0), for a figure.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd


def _per_seed(df: pd.DataFrame, last: int) -> pd.DataFrame:
    """Per (variant, method, seed): final grad norm, time-averaged C, mean phase length."""
    a = df[df.layer == "all"].sort_values("round")

    def one(g: pd.DataFrame) -> pd.Series:
        return pd.Series({"grad_final": g.grad_norm_sq.to_numpy()[-last:].mean(),
                          "C": g.cross_term.mean(), "T_mean": mean_phase_length(g.phase)})

    return a.groupby(["variant", "method", "seed"]).apply(one, include_groups=False) \
        .reset_index()


def mean_phase_length(phase) -> float:
    """Mean length (rounds) of the completed phases of one phase sequence; the last phase, cut
    by the run's end, counts only when it is the only one (then the length is a lower bound).

    >>> mean_phase_length(list("BBBBBAAAAABB"))
    5.0
    >>> mean_phase_length(list("BBB"))
    3.0
    """
    ph = np.asarray(phase)
    starts = np.flatnonzero(np.r_[True, ph[1:] != ph[:-1]])
    lengths = np.diff(np.r_[starts, len(ph)])
    return float(lengths[:-1].mean() if len(lengths) > 1 else lengths[0])


def _metrics(run_dir: str | Path) -> pd.DataFrame:
    from adflora_analysis.rundir import load_run

    return load_run(Path(run_dir)).table("metrics")


def _mean_se(per: pd.DataFrame, keys: list[str], cols: list[str]) -> pd.DataFrame:
    g = per.groupby(keys)[cols]
    out = g.mean()
    se = g.std(ddof=1) / np.sqrt(g.count())
    return out.join(se.add_suffix("_se")).reset_index()


def adaptive_table(run_dir: str | Path, last: int = 10) -> pd.DataFrame:
    """The adaptive-T table of ``synthetic/adaptive_t.toml`` (variants ``T=k``, ``topology``,
    ``feedback`` swept over ``topology.q``). Columns: q, schedule, method, grad_final, C,
    T_mean (each with ``_se``), best_fixed (the fixed T with the lowest grad_final at this q
    and method), is_best, within_noise (|grad_final − best's| <= 2 s.e. of the difference),
    diff_paired ± diff_paired_se (grad_final − best's, paired by seed) and within_noise_paired
    (|diff_paired| <= 2 s.e.; 0 for the best itself)."""
    df = _metrics(run_dir)
    per = _per_seed(df, last)
    qs = df[df.layer == "all"].groupby("variant").q.first()
    per["q"] = per.variant.map(qs)
    per["schedule"] = per.variant.str.split(", ").str[-1]
    t = _mean_se(per, ["q", "schedule", "method"], ["grad_final", "C", "T_mean"])
    fixed = t[t.schedule.str.startswith("T=")]
    best = fixed.loc[fixed.groupby(["q", "method"]).grad_final.idxmin()]
    best = best.set_index(["q", "method"])[["schedule", "grad_final", "grad_final_se"]]
    t = t.join(best.rename(columns=lambda c: "best_" + c), on=["q", "method"])
    t["best_fixed"] = t.pop("best_schedule")
    t["is_best"] = t.schedule == t.best_fixed
    d = (t.grad_final - t.best_grad_final).abs()
    t["within_noise"] = d <= 2 * np.sqrt(t.grad_final_se ** 2 + t.best_grad_final_se ** 2)
    # paired by seed (every schedule runs the same seeds: same data and initialisation)
    ref = per.merge(t[["q", "method", "best_fixed"]].drop_duplicates(),
                    left_on=["q", "method", "schedule"],
                    right_on=["q", "method", "best_fixed"])[["q", "method", "seed", "grad_final"]]
    pair = per.merge(ref, on=["q", "method", "seed"], suffixes=("", "_best"))
    pair["diff_paired"] = pair.grad_final - pair.grad_final_best
    g = pair.groupby(["q", "schedule", "method"]).diff_paired
    t = t.join(pd.DataFrame({"diff_paired": g.mean(),
                             "diff_paired_se": g.std(ddof=1) / np.sqrt(g.count())}),
               on=["q", "schedule", "method"])
    t["within_noise_paired"] = t.diff_paired.abs() <= 2 * t.diff_paired_se.fillna(0)
    return t.drop(columns=["best_grad_final", "best_grad_final_se"])


def async_table(run_dir: str | Path, last: int = 10) -> pd.DataFrame:
    """The async table of ``synthetic/async.toml`` and ``synthetic/async_models.toml``: per
    variant (asynchrony ``model``: stale-read, ad-psgd or push-sum; staleness τ, participation
    π) and method: predicted (``async_rate`` of meta.json; the second-moment rate for the
    synchronous variant; ``prediction``: how it was obtained, e.g. ``exact-reduced`` or
    ``simulated``) and fitted rate (adf-lora's frozen blocks, first τ + 1 rounds of each
    stretch dropped) with standard errors, grad_final and C with theirs."""
    from adflora_analysis.theory.async_rate import frozen_series
    from adflora_analysis.theory.data import check_data, contexts
    from adflora_analysis.theory.frozen import fit_geometric_rate

    data = check_data(run_dir)
    per = _per_seed(data.metrics, last)
    t = _mean_se(per, ["variant", "method"], ["grad_final", "C"])
    rows = []
    for ctx in contexts(data):
        pred = ctx.vmeta.get("async_rate") or {}
        g = ctx.vmeta.get("gossip") or {}
        tau = int(pred.get("staleness", g.get("staleness", 0)))
        rate = pred.get("rate", ctx.rho if ctx.rho is not None else 1 - ctx.p)
        rate_se = pred.get("stderr", ctx.rho_se if ctx.rho_se is not None else ctx.p_se)
        fit, fit_se = math.nan, math.nan
        if ctx.method == "adf-lora":
            series = frozen_series(ctx, "A", tau + 1) + frozen_series(ctx, "B", tau + 1)
            if series:
                fit, fit_se = fit_geometric_rate(series)
        rows.append({"variant": ctx.variant, "method": ctx.method,
                     "model": g.get("model", "stale-read") if g else "synchronous",
                     "staleness": tau, "participation": float(g.get("participation", 1.0)),
                     "predicted_rate": rate, "predicted_rate_se": rate_se,
                     "prediction": pred.get("method", "second-moment"),
                     "fitted_rate": fit, "fitted_rate_se": fit_se})
    return pd.DataFrame(rows).merge(t, on=["variant", "method"])


def drift_table(sampler, staleness=(1, 2, 4), participation=(1.0, 0.8), *,
                paths: int = 2000, rounds: int = 150, seed: int = 0) -> pd.DataFrame:
    """Per (model, τ, π): the drift of a frozen block's consensus value from the initial
    average, E[(z̄_end − z̄_0)²] / E Ξ₀ after ``rounds`` rounds of gossip alone, by direct
    simulation (:func:`~adflora_analysis.topology.async_rates.simulate_models`; 0 up to
    rounding for a model that conserves the mean), with the simulated rate beside it.

    >>> import numpy as np
    >>> t = drift_table(np.full((3, 3), 1 / 3), staleness=(1,), participation=(1.0,),
    ...                 paths=20, rounds=20)
    >>> list(t.model), bool((t.drift < 1e-20).all())
    (['stale-read', 'ad-psgd', 'push-sum'], True)
    """
    from adflora_analysis.topology.async_rates import MODELS, simulate_models

    rows = [simulate_models(sampler, model=m, staleness=t, participation=p, paths=paths,
                            rounds=rounds, seed=seed)
            for t in staleness for p in participation for m in MODELS]
    return pd.DataFrame(rows)[["model", "staleness", "participation", "drift", "rate",
                               "stderr"]]


def phase_ribbon(run_dir: str | Path, seed: int | None = None) -> pd.DataFrame:
    """(variant, method, round, phase) of one seed (the first by default): which factor each
    method trains at each round, for a ribbon figure."""
    df = _metrics(run_dir)
    a = df[df.layer == "all"]
    s = a.seed.min() if seed is None else seed
    return a[a.seed == s][["variant", "method", "round", "phase"]].reset_index(drop=True)
