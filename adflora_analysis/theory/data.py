"""What the checks read: a run directory's rows and meta, as per-(variant, method) contexts."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from adflora_analysis.errors import AdfloraError
from adflora_analysis.theory.stats import EFFECT_DEFAULT, Z_DEFAULT


@dataclass
class RunData:
    """A run directory's ``metrics``, ``meta.json``, ``constants`` and ``mixing`` tables."""

    metrics: pd.DataFrame
    meta: dict[str, Any]
    constants: pd.DataFrame | None
    mixing: pd.DataFrame | None
    path: Path | None = None

    def variant_meta(self, variant: str) -> dict[str, Any]:
        v = self.meta.get("variants") or {}
        return v.get(variant, self.meta)


def check_data(run_dir: str | Path) -> RunData:
    """The tables the checks read from a synthetic or GLUE run directory (through the one
    run-directory owner, :func:`adflora_analysis.rundir.load_run`): ``metrics`` (the Parquet
    file, or ``metrics.jsonl`` of an unfinished run), ``meta.json``, ``constants`` and
    ``mixing``."""
    from adflora_analysis.rundir import load_run

    run = load_run(run_dir)
    d = run.path
    if not (d / "meta.json").exists():
        raise AdfloraError(f"{str(d)!r} is not a run directory (no meta.json)",
                           "pass the directory that `adflora synthetic run --out` or "
                           "`adflora glue run --out` wrote")
    df = run.table("metrics")
    if df is None or df.empty:
        raise AdfloraError(f"{str(d)!r} has no metric rows", "run the study first")
    if "variant" not in df:
        df["variant"] = "base"
    if "seed" not in df:
        df["seed"] = 0
    if "layer" not in df:
        df["layer"] = "all"
    meta = dict(run.meta)
    cfg = run.config
    for key in ("checks", "measure_every", "expect"):  # what the run computed, and the
        # violations its study declared (config.toml)
        if key in cfg and key not in meta:
            meta[key] = cfg[key]
    return RunData(df, meta, run.table("constants"), run.table("mixing"), d)


class Series:
    """One (variant, method) slice of the metrics as (seed, round) arrays (layer "all")."""

    def __init__(self, df: pd.DataFrame):
        a = df[df.layer == "all"]
        # a GLUE run has one job per seed: identical rounds are required
        a = a.sort_values(["seed", "round"])
        self.seeds = sorted(a.seed.unique())
        self.rounds = np.array(sorted(a["round"].unique()))
        self.S, self.R = len(self.seeds), len(self.rounds)
        if len(a) != self.S * self.R:
            raise AdfloraError("metrics are ragged (a seed is missing rounds)",
                               "check only finished runs")
        self.df = a
        first = a[a.seed == self.seeds[0]]
        self.trained = [tuple(x) if not isinstance(x, str) else tuple(x) for x in first.trained]
        self.mixed = [tuple(x) if not isinstance(x, str) else tuple(x) for x in first.mixed]
        self.layers = df[df.layer != "all"]

    def has(self, col: str) -> bool:
        return col in self.df and self.df[col].notna().any()

    def mat(self, col: str) -> np.ndarray:
        """(S, R) float array of column ``col``; a missing column is one clear error."""
        if col not in self.df:
            raise AdfloraError(f"column {col!r} is not in the metrics",
                               "re-run the study with this version, or check a column "
                               "that the run wrote")
        return self.df[col].to_numpy(dtype=float).reshape(self.S, self.R)


def exchangeable(topology: dict[str, Any] | None) -> bool:
    """Whether the sampler's law is invariant under relabelling the clients (encounter model,
    random matchings on the complete graph), so that E[W^T W] = aI + bJ and the gossip
    contraction is an identity: E[Xi(WX) | X] = (1 - p) Xi(X)."""
    t = topology or {}
    if "exchangeable" in t:
        return bool(t["exchangeable"])
    return t.get("kind") == "encounter" or (t.get("kind") == "matching"
                                            and t.get("graph") in (None, "complete"))


@dataclass
class Context:
    """What a check receives for one (variant, method): the series, the run's meta for the
    variant, the topology constants and the other methods' series (for comparisons).

    ``p``/``p_se``: the consensus rate and its Monte Carlo standard error; ``rho``/``rho_se``:
    the second-moment rate (= 1 - p exactly, with p's error, for an exchangeable or static
    sampler; else the topology layer's estimate from the same draws); ``lr``: (R,) step of each
    round (the ``eta`` column, or the configured constant ``lr``).
    """

    run: Series
    data: RunData
    vmeta: dict[str, Any]
    method: str
    variant: str
    runs: dict[str, Series]
    z: float = Z_DEFAULT
    effect: float = EFFECT_DEFAULT
    p: float = math.nan
    p_se: float = 0.0
    rho: float | None = None
    rho_se: float | None = None
    exchangeable: bool = False
    static: bool = False
    kind: str = "synthetic"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def lr(self) -> np.ndarray:
        if self.run.has("eta"):
            return self.run.mat("eta")[0]
        lr = self.vmeta.get("lr")
        if lr is None:
            raise AdfloraError("the run records no step size (lr)", "re-run with this version")
        return np.full(self.run.R, float(lr))

    @property
    def K(self) -> int:
        return int(self.vmeta.get("local_steps") or self.run.df["local_steps"].iloc[0])

    @property
    def n(self) -> int:
        return int(self.vmeta.get("n_clients") or self.run.df["n_clients"].iloc[0])


def contexts(data: RunData, *, z: float = Z_DEFAULT, effect: float = EFFECT_DEFAULT
             ) -> list[Context]:
    """One :class:`Context` per (variant, method) of a run, in row order."""
    out = []
    df = data.metrics
    from adflora_analysis.rundir import kind_of

    kind = kind_of(data.meta) or "synthetic"
    for variant in list(dict.fromkeys(df.variant)):
        vmeta = {**data.variant_meta(variant)}
        vmeta.setdefault("seeds", data.meta.get("seeds"))
        dv = df[df.variant == variant]
        for k in ("lr", "local_steps", "n_clients", "clock_drift"):
            if vmeta.get(k) is None and k in dv:
                vmeta[k] = dv[k].iloc[0]
        topo = vmeta.get("topology") or data.meta.get("topology") or {}
        p = vmeta.get("p", topo.get("p"))
        p = float(p) if p is not None else math.nan
        p_se = float(vmeta.get("p_stderr") or topo.get("p_stderr") or 0.0)
        exch = exchangeable(topo)
        static = topo.get("kind") == "static"
        rho = vmeta.get("second_moment_rate", topo.get("second_moment_rate"))
        rho_se = vmeta.get("second_moment_rate_stderr", topo.get("second_moment_rate_stderr"))
        if (exch or static) and math.isfinite(p):
            rho, rho_se = 1 - p, p_se          # an identity for these samplers
        runs = {m: Series(g) for m, g in dv.groupby("method", sort=False)}
        for m, r in runs.items():
            out.append(Context(r, data, vmeta, str(m), str(variant), runs, z, effect, p, p_se,
                               None if rho is None else float(rho),
                               None if rho_se is None else float(rho_se), exch, static,
                               kind))
    return out


def async_gossip(vmeta: dict) -> tuple[int, float]:
    """(staleness τ, participation π) of a variant from its meta (``gossip`` or
    ``async_rate``; (0, 1.0) for synchronous gossip).

    >>> async_gossip({}), async_gossip({"gossip": {"staleness": 2, "participation": 0.8}})
    ((0, 1.0), (2, 0.8))
    """
    g = vmeta.get("gossip") or vmeta.get("async_rate") or {}
    return int(g.get("staleness") or 0), float(g.get("participation") or 1.0)
