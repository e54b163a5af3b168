"""The report's opening verdict: per method which families of theory checks held, each
comparison of a method with adf-lora (difference, 95 % interval over seeds, significant or
not), and a warning wherever compared methods ran at different settings."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from adflora_analysis.reports.figures import method_order, natural_key

#: Check families by the check's leading number (docs/theory.md).
FAMILIES = {"1": "mixing matrix", "2": "gossip contraction", "3": "frozen-block consensus",
            "4": "consensus bound", "5": "stationarity", "6": "cross term",
            "7": "stale gossip rate", "5a": "descent audit (logs)",
            "5b": "descent audit (logs)", "5c": "descent audit (logs)", "A": "audits (states)"}
#: A family's verdict is the first of these its checks have (n/a and error rows aside).
PRECEDENCE = ("violated", "finding", "underpowered", "held")
#: Settings that must agree for a comparison of methods to be like for like.
SETTINGS = ("switch_interval", "lr", "rank", "local_steps", "n_clients", "heterogeneity")
#: Methods whose blocks alternate, so their switching interval T matters.
ALTERNATING = {"adf-lora", "rolora"}
MAX_COMPARISONS = 12


def family(number: object) -> str:
    """The family name of a check number ("4b" -> "consensus bound"); the descent audit of the
    logs (5a-5c) is not the stationarity check (5), and the audits of the states are A1-A4.

    >>> family("4b"), family("5"), family("5a"), family("A3"), family("user")
    ('consensus bound', 'stationarity', 'descent audit (logs)', 'audits (states)', 'user')
    """
    s = str(number)
    if s in FAMILIES:
        return FAMILIES[s]
    if s[:1] == "A" and s[1:].isdigit():
        return FAMILIES["A"]
    lead = s.rstrip("abcdefghijklmnopqrstuvwxyz") or s
    return FAMILIES.get(lead, s)


def family_verdicts(checks: pd.DataFrame) -> dict[str, dict[str, str]]:
    """Per method, per check family: held / violated / finding / underpowered (the worst of
    its checks; families with only n/a or error rows are left out).

    >>> t = pd.DataFrame({"no": ["4", "4b", "2"], "method": ["rolora"] * 3,
    ...                   "status": ["held", "underpowered", "held"]})
    >>> family_verdicts(t)
    {'rolora': {'gossip contraction': 'held', 'consensus bound': 'underpowered'}}
    """
    out: dict[str, dict[str, str]] = {}
    if not {"no", "method", "status"} <= set(checks):
        return out
    df = checks[checks["status"].isin(PRECEDENCE) & (checks["method"].astype(str) != "")]
    for m in method_order(df["method"]):
        part = df[df["method"] == m]
        fams: dict[str, list[str]] = {}
        for no in sorted(part["no"].astype(str).unique(), key=natural_key):
            fams.setdefault(family(no), []).extend(part[part["no"].astype(str) == no]
                                                   ["status"])
        out[m] = {f: next(v for v in PRECEDENCE if v in st) for f, st in fams.items()}
    return out


def verdict_line(method: str, fams: dict[str, str]) -> str:
    """One line: a method and its families grouped by verdict.

    >>> verdict_line("lora", {"mixing matrix": "held", "cross term": "violated"})
    'lora: violated: cross term; held: mixing matrix.'
    """
    parts = []
    for v in PRECEDENCE:
        names = [f for f, s in fams.items() if s == v]
        if names:
            parts.append(f"{v}: {', '.join(names)}")
    return f"{method}: " + "; ".join(parts) + "."


def paired_interval(diff: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of per-seed differences and its two-sided t interval (NaN bounds for one seed).

    >>> m, lo, hi = paired_interval(np.array([1.0, 2.0, 3.0]))
    >>> m, round(lo, 3), round(hi, 3)
    (2.0, -0.484, 4.484)
    """
    d = np.asarray(diff, dtype=float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return math.nan, math.nan, math.nan
    m = float(d.mean())
    if d.size < 2:
        return m, math.nan, math.nan
    from scipy.stats import t

    half = float(t.ppf(0.5 + level / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size))
    return m, m - half, m + half


def comparison_line(what: str, method: str, ref: str, diff: np.ndarray) -> str:
    """``method − ref`` of ``what``: the mean difference over seeds (paired), its 95 %
    interval and whether it is significant at the seeds run.

    >>> print(comparison_line("loss", "rolora", "adf-lora", np.array([0.5, -0.4, 0.1])))
    ... # doctest: +NORMALIZE_WHITESPACE
    loss, rolora − adf-lora: +0.0667 (95% interval -1.05 to 1.19, 3 seeds, paired): not
    significant.
    >>> print(comparison_line("loss", "rolora", "adf-lora", np.array([0.5])))
    loss, rolora − adf-lora: +0.5 (one seed: no test).
    """
    d = np.asarray(diff, dtype=float)
    d = d[np.isfinite(d)]
    m, lo, hi = paired_interval(d)
    head = f"{what}, {method} − {ref}: {m:+.3g}"
    if d.size < 2:
        return head + " (one seed: no test)."
    sig = "not significant" if lo <= 0 <= hi else "significant"
    return (f"{head} (95% interval {lo:.3g} to {hi:.3g}, {d.size} seeds, paired): {sig}.")


def setting_warnings(metrics: pd.DataFrame, methods: list[str], where: str = "") -> list[str]:
    """A warning per setting in which the compared methods differ (e.g. adf-lora at T = 5
    and rolora at T = 1); T is compared only between methods that alternate blocks.

    >>> m = pd.DataFrame({"method": ["adf-lora", "rolora", "lora"],
    ...                   "switch_interval": [5, 1, 1]})
    >>> setting_warnings(m, ["adf-lora", "rolora", "lora"])
    ['Warning: methods compared at different settings: switch_interval adf-lora = 5, rolora = 1.']
    """
    out = []
    for key in SETTINGS:
        if key not in metrics:
            continue
        who = [m for m in methods if key != "switch_interval" or m in ALTERNATING
               or m not in {"lora", "ffa-lora"}]
        vals = {m: sorted({str(v) for v in metrics.loc[metrics["method"] == m, key].dropna()},
                          key=natural_key) for m in who}
        vals = {m: v for m, v in vals.items() if v}
        if len({tuple(v) for v in vals.values()}) > 1:
            out.append("Warning: methods compared at different settings"
                       + (f" ({where})" if where else "") + f": {key} "
                       + ", ".join(f"{m} = {'/'.join(v)}" for m, v in vals.items()) + ".")
    return out


def _final_per_seed(df: pd.DataFrame, col: str) -> pd.DataFrame:
    """Final-round ``col`` per method and seed (totals over layers)."""
    df = df[df["layer"] == "all"] if "layer" in df else df
    df = df.dropna(subset=[col])
    last = df[df["round"] == df.groupby("method")["round"].transform("max")]
    seed = last["seed"] if "seed" in last else pd.Series(0, index=last.index)
    return last.assign(seed=seed).groupby(["method", "seed"])[col].mean().unstack("method")


def method_comparisons(metrics: pd.DataFrame, cols: dict[str, str], ref: str = "adf-lora",
                       where: str = "") -> list[str]:
    """Comparison lines of every method with ``ref`` for each ``cols`` (column -> words),
    paired by seed at the final round, then the setting warnings."""
    methods = method_order(metrics["method"])
    if ref not in methods or len(methods) < 2:
        return []
    lines = []
    for col, what in cols.items():
        if col not in metrics or metrics[col].isna().all():
            continue
        fin = _final_per_seed(metrics, col)
        if ref not in fin:
            continue
        for m in methods:
            if m != ref and m in fin:
                lines.append(comparison_line(what + (f" [{where}]" if where else ""), m, ref,
                                             (fin[m] - fin[ref]).to_numpy()))
    return lines + setting_warnings(metrics, methods, where)


def verdict_lines(checks: pd.DataFrame | None, studies: list[tuple[str, pd.DataFrame,
                                                                     dict[str, str]]]
                  ) -> list[str]:
    """The verdict: a line per method (check families by verdict), then each comparison with
    adf-lora and warnings. ``studies``: (name, metrics-like table, columns to compare)."""
    lines = []
    if checks is not None and not checks.empty:
        for m, fams in family_verdicts(checks).items():
            lines.append("Claims, " + verdict_line(m, fams))
    if not lines:
        lines.append("Claims: no theory checks evaluated in these runs.")
    comps: list[str] = []
    for name, df, cols in studies:
        if df is None or df.empty or "method" not in df:
            continue
        if "variant" in df and df["variant"].nunique() > 1:
            for v in sorted(df["variant"].astype(str).unique(), key=natural_key):
                comps += method_comparisons(df[df["variant"].astype(str) == v], cols,
                                            where=f"{name}, {v}")
        else:
            comps += method_comparisons(df, cols, where=name)
    warn = list(dict.fromkeys(c for c in comps if c.startswith("Warning")))
    comps = [c for c in comps if not c.startswith("Warning")]
    if len(comps) > MAX_COMPARISONS:
        comps = comps[:MAX_COMPARISONS] + [f"… {len(comps) - MAX_COMPARISONS} more "
                                           "comparisons: see the final-round tables."]
    return lines + comps + warn
