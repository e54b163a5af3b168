"""Seaborn figures of run tables. Each function returns a Figure, or None when the data it
needs is absent; seeds become bands (mean and 90% interval), methods the hue."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

plt.rcParams["figure.max_open_warning"] = 0  # a report holds its figures until it writes them

BAND = ("pi", 90)
METHOD_ORDER = ["adf-lora", "rolora", "ffa-lora", "lora"]


def _hue_order(df: pd.DataFrame, col: str = "method") -> list[str]:
    present = list(dict.fromkeys(df[col]))
    return [m for m in METHOD_ORDER if m in present] + [m for m in present
                                                         if m not in METHOD_ORDER]


def _totals(metrics: pd.DataFrame) -> pd.DataFrame:
    return metrics[metrics["layer"] == "all"] if "layer" in metrics else metrics


def _variants(df: pd.DataFrame) -> list[tuple[str | None, pd.DataFrame]]:
    """One (label, rows) pair per study variant (a single unlabelled pair without variants)."""
    if "variant" in df and df["variant"].nunique() > 1:
        return [(str(v), g) for v, g in df.groupby("variant", sort=False)]
    return [(None, df)]


def _positive(df: pd.DataFrame, col: str) -> pd.DataFrame:
    """Rows whose ``col`` is above round-off (1e-14 of the column's largest value): log axes
    cannot show zeros, and a block that is identical on every client (a shared frozen A) has a
    consensus error of pure floating-point noise (~1e-32) that would squash the axis."""
    top = df[col].abs().max()
    return df[df[col] > (1e-14 * top if top > 0 else 0)]


def consensus(metrics: pd.DataFrame, bounds: pd.DataFrame | None = None) -> plt.Figure | None:
    """Ξ_A and Ξ_B per round on a log scale, one row of panels per study variant; ``bounds``
    (columns method, round, block, bound, optionally variant) are overlaid as dashed lines."""
    df = _totals(metrics)
    if df.empty or "xi_A" not in df:
        return None
    parts = _variants(df)
    fig, axes = plt.subplots(len(parts), 2, figsize=(11, 3.6 * len(parts)), squeeze=False)
    order = _hue_order(df)
    palette = dict(zip(order, sns.color_palette(n_colors=len(order)), strict=True))
    for row, (label, part) in zip(axes, parts, strict=True):
        for ax, block in zip(row, ("A", "B"), strict=True):
            col = f"xi_{block}"
            data = _positive(part, col)
            if not data.empty:
                sns.lineplot(data=data, x="round", y=col, hue="method", hue_order=order,
                             palette=palette, errorbar=BAND, ax=ax)
            if bounds is not None and not bounds.empty:
                b_all = bounds[bounds["block"] == block]
                if label is not None and "variant" in b_all:
                    b_all = b_all[b_all["variant"].astype(str) == label]
                for m, b in b_all.groupby("method"):
                    b = b[b["bound"] > 0]
                    ax.plot(b["round"], b["bound"], ls="--", lw=1.2,
                            color=palette.get(m, "k"), label=f"{m} bound")
            ax.set_yscale("log")
            ax.set_title(f"Ξ_{block}" + (f" [{label}]" if label else "")
                         + " (dashed: unrolled bound, check 4)")
            ax.set_ylabel(f"Ξ_{block}")
            if ax.get_legend() is not None:
                ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def frozen_block(metrics: pd.DataFrame, methods=("adf-lora", "rolora")) -> plt.Figure | None:
    """Ξ_A and Ξ_B per round, one panel per method, with the rounds in which each factor is
    frozen shaded: ADF-LoRA gossips the frozen factor (its Ξ contracts), RoLoRA does not (its Ξ
    stays where the last training phase left it)."""
    df = _totals(metrics)
    if df.empty or "trained" not in df:
        return None
    df = df[df["method"].isin(methods) & df["trained"].isin(["A", "B"])]
    if "variant" in df and df["variant"].nunique() > 1:  # one variant: the first listed
        df = df[df["variant"] == df["variant"].iloc[0]]
    present = [m for m in methods if m in set(df["method"])]
    if not present:
        return None
    long = df.melt(id_vars=["method", "seed", "round", "trained"], value_vars=["xi_A", "xi_B"],
                   var_name="block", value_name="Ξ")
    long["block"] = long["block"].str.replace("xi_", "Ξ_")
    long = _positive(long, "Ξ")
    fig, axes = plt.subplots(1, len(present), figsize=(6 * len(present), 3.8), squeeze=False,
                             sharey=True)
    shade = {"B": ("#9ecae1", "A frozen"), "A": ("#fdd0a2", "B frozen")}
    for ax, m in zip(axes[0], present, strict=True):
        ref = df[df["method"] == m].drop_duplicates("round").sort_values("round")
        rounds, trained = ref["round"].to_numpy(), ref["trained"].to_numpy()
        starts = np.flatnonzero(np.r_[True, trained[1:] != trained[:-1]])
        ends = np.r_[starts[1:], len(rounds)]
        seen = set()
        for a, b in zip(starts, ends, strict=True):
            color, label = shade[trained[a]]
            ax.axvspan(rounds[a] - 0.5, rounds[b - 1] + 0.5, color=color, alpha=0.35, lw=0,
                       label=None if label in seen else label)
            seen.add(label)
        sns.lineplot(data=long[long["method"] == m], x="round", y="Ξ", hue="block",
                     hue_order=["Ξ_A", "Ξ_B"], errorbar=BAND, ax=ax)
        ax.set_yscale("log")
        ax.set_title(f"{m}: consensus error per factor (shaded: frozen stretches)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def per_round(metrics: pd.DataFrame, col: str, title: str, log: bool = True
              ) -> plt.Figure | None:
    """One metric of the ``all`` rows per round, methods as hue, seeds as bands, one panel per
    study variant."""
    df = _totals(metrics)
    if df.empty or col not in df or df[col].isna().all():
        return None
    df = _positive(df, col) if log else df.dropna(subset=[col])
    if df.empty:
        return None
    parts = _variants(df)
    ncol = min(3, len(parts))
    nrow = -(-len(parts) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(6.5 * ncol, 3.5 * nrow), squeeze=False,
                             sharey=True)
    order = _hue_order(df)
    for ax, (label, part) in zip(axes.flat, parts, strict=False):
        sns.lineplot(data=part, x="round", y=col, hue="method", hue_order=order,
                     errorbar=BAND, ax=ax)
        if log:
            ax.set_yscale("log")
        ax.set_title(title + (f" [{label}]" if label else ""), fontsize=10)
    for ax in list(axes.flat)[len(parts):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def evaluation(evals: pd.DataFrame) -> plt.Figure | None:
    """Evaluation metric per round: mean over clients (solid, seed bands) and the averaged
    adapter (dashed), one panel per metric."""
    if evals is None or evals.empty:
        return None
    df = evals[evals["client"].astype(str).isin(["mean", "averaged"])].copy()
    if df.empty:
        return None
    df["model"] = df["client"].astype(str).map({"mean": "mean of clients",
                                                "averaged": "averaged adapter"})
    metrics = list(dict.fromkeys(df["metric"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 3.6), squeeze=False)
    for ax, m in zip(axes[0], metrics, strict=True):
        sns.lineplot(data=df[df["metric"] == m], x="round", y="value", hue="method",
                     hue_order=_hue_order(df), style="model", errorbar=BAND, ax=ax)
        ax.set_title(m)
    fig.tight_layout()
    return fig


def sweep(sweep_df: pd.DataFrame) -> plt.Figure | None:
    """Expected consensus rate p against encounter probability q, per combination rule, with
    static reference graphs as horizontal lines."""
    if sweep_df is None or sweep_df.empty or "q" not in sweep_df:
        return None
    enc = sweep_df[sweep_df["q"].notna()]
    fig, ax = plt.subplots(figsize=(7, 4))
    rule = "rule" if "rule" in enc else None
    if not enc.empty:
        sns.lineplot(data=enc, x="q", y="p", hue=rule, marker="o", ax=ax)
    static = sweep_df[sweep_df["q"].isna()]
    name_col = "graph" if "graph" in static else None
    for i, (_, r) in enumerate(static.iterrows()):
        ax.axhline(r["p"], ls=":", color=sns.color_palette("muted")[i % 10], lw=1)
        ax.text(enc["q"].min() if not enc.empty else 0.01, r["p"],
                f" {r[name_col] if name_col else 'static'}", va="bottom", fontsize=8)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.05)
    ax.set_title("expected consensus rate p against encounter probability q")
    fig.tight_layout()
    return fig


def final_vs(metrics: pd.DataFrame, by: str, col: str, title: str) -> plt.Figure | None:
    """Final-round value of ``col`` against a study variable ``by`` (e.g. switch_interval,
    heterogeneity, p), per method with seed bands."""
    df = _totals(metrics)
    if df.empty or by not in df or col not in df or df[by].nunique() < 2:
        return None
    last = df[df["round"] == df.groupby(["method", by])["round"].transform("max")]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    sns.lineplot(data=last, x=by, y=col, hue="method", hue_order=_hue_order(last),
                 marker="o", errorbar=BAND, ax=ax)
    if (last[col] > 0).all():
        ax.set_yscale("log")
    xs = last[by].dropna()
    if len(xs) and (xs > 0).all() and xs.max() / xs.min() >= 10:
        ax.set_xscale("log")
    ax.set_title(title)
    fig.tight_layout()
    return fig
