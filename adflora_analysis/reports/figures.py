"""Figures of run tables. Each function returns a Figure, or None when the data it needs is
absent.

Conventions, the same in every figure and report:

- one fixed style per method, keyed by its name (:func:`method_style`): colour and marker;
- lines are seed means, bands the 90% interval over seeds (5th-95th percentile);
- a series that is identically zero cannot be drawn on a log axis: it is left out and listed
  in the panel as "≡ 0: method";
- runs compared in one figure (``cmp`` column) differ by line style, labelled by the config
  keys that differ;
- small multiples are facet grids at most three panels wide with one legend per figure.
"""

from __future__ import annotations

import zlib

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

plt.rcParams["figure.max_open_warning"] = 0  # a report holds its figures until it writes them
plt.rcParams.update({"font.size": 10, "axes.titlesize": 10.5, "axes.labelsize": 10,
                     "legend.fontsize": 9.5, "xtick.labelsize": 9, "ytick.labelsize": 9,
                     "axes.spines.top": False, "axes.spines.right": False})

QUANTILES = (0.05, 0.95)
METHOD_ORDER = ["adf-lora", "rolora", "ffa-lora", "lora"]
#: Fixed colour and marker per method name (colour-blind-safe Okabe-Ito colours).
STYLES = {"adf-lora": ("#0072B2", "o"), "rolora": ("#E69F00", "s"),
          "ffa-lora": ("#009E73", "^"), "lora": ("#D55E00", "D")}
_EXTRA = ["#CC79A7", "#56B4E9", "#8c564b", "#7f7f7f", "#bcbd22", "#17becf"]
_EXTRA_MARKERS = ["v", "P", "X", "*", "h", "<"]
BLOCK_COLORS = {"Ξ_A": "#5e3c99", "Ξ_B": "#1b9e77"}   # factors, never a method's colour
DASHES = ["-", "--", ":", "-."]
PANEL_W, PANEL_H, MAX_COLS = 3.6, 2.9, 3
ZERO = 1e-14   # relative to a column's largest value: below it a value is round-off


def method_style(method: str) -> tuple[str, str]:
    """``(colour, marker)`` of a method, the same in every figure (unknown names hash to one).

    >>> method_style("adf-lora")
    ('#0072B2', 'o')
    >>> method_style("my-method") == method_style("my-method")
    True
    """
    if method in STYLES:
        return STYLES[method]
    h = zlib.crc32(method.encode())
    return _EXTRA[h % len(_EXTRA)], _EXTRA_MARKERS[h % len(_EXTRA_MARKERS)]


def _order(values) -> list[str]:
    present = list(dict.fromkeys(str(v) for v in values))
    return [m for m in METHOD_ORDER if m in present] + [m for m in present
                                                         if m not in METHOD_ORDER]


def _totals(metrics: pd.DataFrame) -> pd.DataFrame:
    return metrics[metrics["layer"] == "all"] if "layer" in metrics else metrics


def _variants(df: pd.DataFrame) -> list[tuple[str | None, pd.DataFrame]]:
    """One (label, rows) pair per study variant (a single unlabelled pair without variants)."""
    if "variant" in df and df["variant"].nunique() > 1:
        return [(str(v), g) for v, g in df.groupby("variant", sort=False)]
    return [(None, df)]


def _grid(n: int, ncols: int | None = None, sharey: bool = False, h: float = PANEL_H):
    ncols = min(MAX_COLS, n) if ncols is None else ncols
    nrows = -(-n // ncols)
    width = PANEL_W * ncols + 0.4 if n > 1 else 6.4   # a single panel at a readable width
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, h * nrows + 0.6),
                             squeeze=False, sharex=True, sharey=sharey)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _cmp_dashes(df: pd.DataFrame) -> dict[str, str]:
    if "cmp" not in df:
        return {}
    return {c: DASHES[i % len(DASHES)] for i, c in enumerate(dict.fromkeys(df["cmp"]))}


def _zero_methods(df: pd.DataFrame, col: str) -> list[str]:
    """Methods whose ``col`` is identically zero (to round-off) in ``df``."""
    top = df[col].abs().max()
    if not np.isfinite(top) or df.empty:
        return []
    tiny = ZERO * top if top > 0 else 0.0
    mx = df.groupby("method")[col].apply(lambda v: v.abs().max())
    return _order(m for m, v in mx.items() if v <= tiny)


def _band_lines(ax, df: pd.DataFrame, y: str, log: bool = False, x: str = "round",
                ls: str | None = None) -> list[str]:
    """Mean line and 90% band over seeds per method (and compared run); returns the methods
    left out because they are identically zero on a log axis (noted in the panel)."""
    zero = _zero_methods(df, y) if log else []
    dashes = _cmp_dashes(df)
    keys = ["method"] + (["cmp"] if dashes else [])
    data = df.dropna(subset=[y])
    if log:  # round-off (a block identical on every client: ~1e-32) would squash the axis
        data = data[data[y] > ZERO * data[y].abs().max()]
    n_x = max(1, data[x].nunique())
    for key, g in data.groupby(keys, sort=False):
        m = key[0] if isinstance(key, tuple) else key
        if m in zero:
            continue
        st = g.groupby(x)[y].agg(["mean", lambda v: v.quantile(QUANTILES[0]),
                                  lambda v: v.quantile(QUANTILES[1])])
        st.columns = ["mean", "lo", "hi"]
        color, marker = method_style(m)
        style = ls or (dashes[key[1]] if dashes else "-")
        ax.plot(st.index, st["mean"], color=color, marker=marker, ls=style, lw=1.6, ms=4.5,
                markevery=max(1, n_x // 8) if n_x > 1 else None)
        if g["seed"].nunique() > 1 if "seed" in g else False:
            ax.fill_between(st.index, st["lo"], st["hi"], color=color, alpha=0.18, lw=0)
    if log:
        ax.set_yscale("log")
    if zero:
        ax.text(0.98, 0.04, "≡ 0: " + ", ".join(zero), transform=ax.transAxes, fontsize=9,
                color="#333", va="bottom", ha="right",
                bbox={"facecolor": "white", "edgecolor": "#bbb", "alpha": 0.9, "pad": 2})
    return zero


def _legend(fig, methods: list[str], df: pd.DataFrame | None = None, extra=None) -> None:
    """One legend for the figure, above the panels: a method per entry (colour + marker),
    then compared runs (line style) and ``extra`` handles."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=method_style(m)[0], marker=method_style(m)[1], lw=1.6,
                      label=m) for m in methods]
    for c, ls in (_cmp_dashes(df) if df is not None else {}).items():
        handles.append(Line2D([], [], color="#333", ls=ls, lw=1.6, label=c))
    handles += list(extra or [])
    if handles:
        ncol = len(handles) if len(handles) <= 5 else 4
        y = 1.0 - (0.3 / fig.get_figheight() if fig._suptitle else 0.0)
        fig.legend(handles=handles, loc="upper center", ncol=ncol, frameon=False,
                   bbox_to_anchor=(0.5, y))
        top = 0.05 + 0.28 * (1 + (len(handles) - 1) // ncol) + (0.25 if fig._suptitle else 0)
        fig.tight_layout(rect=(0, 0, 1, 1 - top / fig.get_figheight()))
    else:
        fig.tight_layout()


def _rounds_range(ax, df: pd.DataFrame) -> None:
    lo, hi = df["round"].min(), df["round"].max()
    pad = 0.5 if hi == lo else 0.02 * (hi - lo)
    ax.set_xlim(lo - pad, hi + pad)
    ax.xaxis.get_major_locator().set_params(integer=True)   # rounds are whole numbers


def consensus(metrics: pd.DataFrame, bounds: pd.DataFrame | None = None) -> plt.Figure | None:
    """Ξ_A and Ξ_B per round on a log scale, one row of two panels per study variant;
    ``bounds`` (method, round, block, bound[, variant]) are overlaid dashed where given."""
    df = _totals(metrics)
    if df.empty or "xi_A" not in df:
        return None
    parts = _variants(df)
    fig, axes = _grid(2 * len(parts), ncols=2)
    drawn_bound = False
    for i, (label, part) in enumerate(parts):
        for ax, block in zip(axes[2 * i:2 * i + 2], ("A", "B"), strict=True):
            _band_lines(ax, part, f"xi_{block}", log=True)
            if bounds is not None and not bounds.empty:
                b_all = bounds[bounds["block"] == block]
                if label is not None and "variant" in b_all:
                    b_all = b_all[b_all["variant"].astype(str) == label]
                for m, b in b_all.groupby("method"):
                    # round-off bounds (a block still identical on every client: ~1e-32)
                    # would squash the log axis, as they would for the measured series
                    b = b[b["bound"] > ZERO * b_all["bound"].abs().max()]
                    if not b.empty:
                        ax.plot(b["round"], b["bound"], ls="--", lw=1.1,
                                color=method_style(m)[0])
                        drawn_bound = True
            _rounds_range(ax, df)
            ax.set_title(f"Ξ_{block}" + (f"  [{label}]" if label else ""))
            ax.set_ylabel(f"Ξ_{block}")
    from matplotlib.lines import Line2D

    extra = [Line2D([], [], color="#333", ls="--", lw=1.1,
                    label="unrolled bound (check 4b)")] if drawn_bound else []
    _legend(fig, _order(df["method"]), df, extra)
    return fig


def frozen_block(metrics: pd.DataFrame, methods=("adf-lora", "rolora")) -> plt.Figure | None:
    """Ξ_A and Ξ_B per round, a panel per method and study variant (every variant), with the
    stretches in which each factor is frozen shaded: ADF-LoRA gossips the frozen factor (its Ξ
    contracts), RoLoRA does not (its Ξ stays where the last training phase left it)."""
    df = _totals(metrics)
    if df.empty or "trained" not in df:
        return None
    df = df[df["method"].isin(methods) & df["trained"].isin(["A", "B"])]
    present = [m for m in methods if m in set(df["method"])]
    if not present:
        return None
    parts = _variants(df)
    fig, axes = _grid(len(parts) * len(present), ncols=len(present), sharey=True)
    shade = {"B": ("#c6dbef", "A frozen"), "A": ("#fdd9b5", "B frozen")}
    for i, (label, part) in enumerate(parts):
        for ax, m in zip(axes[i * len(present):(i + 1) * len(present)], present, strict=True):
            mdf = part[part["method"] == m]
            if mdf.empty:
                continue
            ref = mdf.drop_duplicates("round").sort_values("round")
            rounds, trained = ref["round"].to_numpy(), ref["trained"].to_numpy()
            starts = np.flatnonzero(np.r_[True, trained[1:] != trained[:-1]])
            ends = np.r_[starts[1:], len(rounds)]
            for a, b in zip(starts, ends, strict=True):
                ax.axvspan(rounds[a] - 0.5, rounds[b - 1] + 0.5, color=shade[trained[a]][0],
                           alpha=0.6, lw=0)
            for block, color in BLOCK_COLORS.items():
                col = "xi_" + block[-1]
                v = mdf[mdf[col] > ZERO * max(mdf[col].abs().max(), 1e-300)]
                if v.empty:
                    ax.text(0.02, 0.03 if block == "Ξ_A" else 0.12, f"{block} ≡ 0",
                            transform=ax.transAxes, fontsize=9, color=color)
                    continue
                st = v.groupby("round")[col].agg(["mean", lambda s: s.quantile(0.05),
                                                  lambda s: s.quantile(0.95)])
                ax.plot(st.index, st.iloc[:, 0], color=color, lw=1.5)
                ax.fill_between(st.index, st.iloc[:, 1], st.iloc[:, 2], color=color,
                                alpha=0.2, lw=0)
            ax.set_yscale("log")
            _rounds_range(ax, part)
            ax.set_title(m + (f"  [{label}]" if label else ""))
            ax.set_ylabel("Ξ")
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    extra = [Line2D([], [], color=c, lw=1.5, label=b) for b, c in BLOCK_COLORS.items()]
    extra += [Patch(color=c, alpha=0.6, label=lab) for c, lab in shade.values()]
    _legend(fig, [], None, extra)
    return fig


def per_round(metrics: pd.DataFrame, col: str, title: str, log: bool = True
              ) -> plt.Figure | None:
    """One metric of the ``all`` rows per round, a line per method, seed bands, one panel
    per study variant (shared y axis), one legend."""
    df = _totals(metrics)
    if df.empty or col not in df or df[col].isna().all():
        return None
    df = df.dropna(subset=[col])
    parts = _variants(df)
    fig, axes = _grid(len(parts), sharey=True)
    for ax, (label, part) in zip(axes, parts, strict=True):
        _band_lines(ax, part, col, log=log)
        _rounds_range(ax, df)
        ax.set_title(label if label else title)
        ax.set_ylabel(col)
    if len(parts) > 1:
        fig.suptitle(title, y=1.0, fontsize=11)
    _legend(fig, _order(df["method"]), df)
    return fig


def difference(metrics: pd.DataFrame, col: str, ref: str = "adf-lora",
               others=("rolora", "lora"), relative: bool = False) -> plt.Figure | None:
    """``col`` of each other method minus ``ref``'s, paired by seed and round (same data and
    initialisation), so a difference that the seed spread hides in the raw curves shows;
    ``relative``: divided by ``ref``'s value. Above 0: ``ref`` is lower."""
    df = _totals(metrics)
    if df.empty or col not in df or ref not in set(df["method"]):
        return None
    others = [m for m in others if m in set(df["method"])]
    if not others:
        return None
    keys = [k for k in ("variant", "cmp", "seed", "round") if k in df]
    base = df[df["method"] == ref].set_index(keys)[col]
    rows = []
    for m in others:
        o = df[df["method"] == m].set_index(keys)[col]
        d = (o - base).dropna()
        if relative:
            d = d / base.reindex(d.index)
        rows.append(d.rename("d").reset_index().assign(method=m))
    diff = pd.concat(rows, ignore_index=True)
    if diff.empty:
        return None
    parts = _variants(diff)
    fig, axes = _grid(len(parts), sharey=True)
    for ax, (label, part) in zip(axes, parts, strict=True):
        ax.axhline(0, color="#888", lw=0.9)
        _band_lines(ax, part, "d")
        _rounds_range(ax, part)
        ax.set_title(label or "")
        ax.set_ylabel(f"(m − {ref}) / {ref}" if relative else f"m − {ref}")  # col: title
    fig.suptitle(f"{col}: each method minus {ref}, paired by seed (above 0: {ref} lower)",
                 y=1.0, fontsize=11)
    _legend(fig, _order(diff["method"]), diff)
    return fig


def evaluation(evals: pd.DataFrame) -> plt.Figure | None:
    """Evaluation metric per evaluation round: mean over clients (solid) and the averaged
    adapter (dashed), a panel per metric; markers show every evaluation (one evaluation round
    still draws its points)."""
    if evals is None or evals.empty:
        return None
    df = evals[evals["client"].astype(str).isin(["mean", "averaged"])].copy()
    if df.empty:
        return None
    metrics = list(dict.fromkeys(df["metric"]))
    fig, axes = _grid(len(metrics))
    from matplotlib.lines import Line2D

    for ax, metric in zip(axes, metrics, strict=True):
        part = df[df["metric"] == metric]
        for client, ls in (("mean", "-"), ("averaged", "--")):
            sub = part[part["client"].astype(str) == client]
            if sub.empty:
                continue
            for m, g in sub.groupby("method", sort=False):
                st = g.groupby("round")["value"].agg(["mean", "min", "max"])
                color, marker = method_style(m)
                ax.plot(st.index, st["mean"], color=color, marker=marker, ls=ls, lw=1.5, ms=5)
                if g["seed"].nunique() > 1 if "seed" in g else False:
                    ax.fill_between(st.index, st["min"], st["max"], color=color, alpha=0.15)
        _rounds_range(ax, part)
        ax.set_title(metric)
        ax.set_ylabel(metric)
        ax.set_xlabel("round")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    extra = [Line2D([], [], color="#333", ls="-", label="mean of clients"),
             Line2D([], [], color="#333", ls="--", label="averaged adapter")]
    _legend(fig, _order(df["method"]), None, extra)
    return fig


def label_distribution(labels: pd.DataFrame) -> plt.Figure | None:
    """Share of each label per client (stacked bars; the first seed's partition)."""
    if labels is None or labels.empty or not {"client", "count"} <= set(labels):
        return None
    df = labels
    if "seed" in df and df["seed"].nunique() > 1:
        df = df[df["seed"] == df["seed"].iloc[0]]
    if "variant" in df and df["variant"].nunique() > 1:
        df = df[df["variant"] == df["variant"].iloc[0]]
    name = "label_name" if "label_name" in df else "label"
    piv = df.pivot_table(index="client", columns=name, values="count", aggfunc="sum").fillna(0)
    share = piv.div(piv.sum(axis=1), axis=0)
    n = len(share)
    fig, ax = plt.subplots(figsize=(min(10.5, 1.2 + 0.45 * n), 3.2))
    bottom = np.zeros(n)
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3"]
    for k, lab in enumerate(share.columns):
        ax.bar(np.arange(n), share[lab].to_numpy(), bottom=bottom, color=colors[k % 5],
               label=str(lab), width=0.8)
        bottom += share[lab].to_numpy()
    ax.set_xticks(np.arange(n), [str(c) for c in share.index])
    ax.set_xlabel("client")
    ax.set_ylabel("share of the client's rows")
    ax.set_ylim(0, 1)
    totals = piv.sum(axis=1).astype(int)
    ax.set_title(f"label distribution per client ({totals.min()}–{totals.max()} rows each)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=min(5, len(share.columns)),
              frameon=False)
    fig.tight_layout()
    return fig


def cross_heatmap(mats: pd.DataFrame) -> plt.Figure | None:
    """The n × n matrix ‖B_i A_j‖_F per method (rows) and round (columns) on one log colour
    scale: the diagonal is what client i computed, the rest are cross terms ("update directions
    no client computed") that averaging A and B separately mixes in. ``mats``: columns method,
    round, i, j, value (seed means)."""
    if mats is None or mats.empty:
        return None
    methods = _order(mats["method"])
    rounds = sorted(mats["round"].unique())
    from matplotlib.colors import LogNorm

    pos = mats["value"][mats["value"] > 0]
    if pos.empty:
        return None
    norm = LogNorm(vmin=float(pos.min()), vmax=float(pos.max()))
    fig, axes = plt.subplots(len(methods), len(rounds), squeeze=False, layout="constrained",
                             figsize=(min(10.5, 2.6 * len(rounds) + 1.6), 2.9 * len(methods)))
    im = None
    for r, m in enumerate(methods):
        for c, t in enumerate(rounds):
            ax = axes[r][c]
            sub = mats[(mats["method"] == m) & (mats["round"] == t)]
            if sub.empty:
                ax.set_visible(False)
                continue
            n = int(sub["i"].max()) + 1
            M = np.full((n, n), np.nan)
            M[sub["i"].to_numpy(), sub["j"].to_numpy()] = sub["value"].to_numpy()
            im = ax.imshow(np.where(M > 0, M, np.nan), norm=norm, cmap="viridis")
            for k in range(n):
                ax.add_patch(plt.Rectangle((k - 0.5, k - 0.5), 1, 1, fill=False, ec="white",
                                           lw=0.8))
            off = M[~np.eye(n, dtype=bool)]
            ratio = np.nanmean(off) / np.nanmean(np.diag(M)) if np.nanmean(np.diag(M)) else 0
            ax.set_title(f"{m}, round {t}\noff-diag/diag mean {ratio:.3g}", fontsize=9.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel("i (B_i)")
            if r == len(methods) - 1:
                ax.set_xlabel("j (A_j)")
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.5, label="‖B_i A_j‖_F")
    fig.suptitle("‖B_i A_j‖_F: diagonal (outlined) = what client i computed; off-diagonal = "
                 "cross terms", fontsize=10.5)
    return fig


def sweep(sweep_df: pd.DataFrame) -> plt.Figure | None:
    """Expected consensus rate p against encounter probability q, per combination rule, with
    static reference graphs of the same n as grey horizontal lines labelled at the right
    (labels spread apart so none overlap)."""
    if sweep_df is None or sweep_df.empty or "q" not in sweep_df:
        return None
    enc = sweep_df[sweep_df["q"].notna()]
    static = sweep_df[sweep_df["q"].isna()]
    dropped = []
    if "n" in sweep_df and not enc.empty:
        n = enc["n"].mode().iloc[0]
        dropped = [f"{r.get('graph', '?')} (n = {r['n']:g})" for _, r in static.iterrows()
                   if r["n"] != n]
        static = static[static["n"] == n]
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    rule_colors = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00"]
    if not enc.empty:
        rules = list(dict.fromkeys(enc["rule"])) if "rule" in enc else [None]
        for k, rule in enumerate(rules):
            g = enc if rule is None else enc[enc["rule"] == rule]
            st = g.groupby("q")["p"].mean()
            ax.plot(st.index, st.to_numpy(), marker="o", color=rule_colors[k % 5], lw=1.6,
                    label=f"encounter, {rule}" if rule else "encounter")
    names = [str(r.get("graph", "static")) + (f" ({r['rule']})" if "rule" in r and
                                              isinstance(r["rule"], str) else "")
             for _, r in static.iterrows()]
    ps = static["p"].to_numpy(dtype=float)
    greys = ["#555", "#777", "#999"]
    styles = [":", "--", "-."]
    for k, p in enumerate(ps):
        ax.axhline(p, ls=styles[k % 3], color=greys[k % 3], lw=1)
    # labels at the right edge, pushed apart to at least 0.045 (axes units of p in [0, 1.05])
    order = np.argsort(ps)
    ys = ps[order].copy()
    for i in range(1, len(ys)):
        ys[i] = max(ys[i], ys[i - 1] + 0.045)
    for y, k in zip(ys, order, strict=True):
        ax.annotate(names[k], xy=(1.0, ps[k]), xycoords=("axes fraction", "data"),
                    xytext=(1.01, y), textcoords=("axes fraction", "data"), fontsize=9,
                    va="center", arrowprops={"arrowstyle": "-", "color": "#bbb", "lw": 0.6})
    ax.set_xscale("log")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("encounter probability q")
    ax.set_ylabel("expected consensus rate p")
    n_txt = f" (n = {enc['n'].mode().iloc[0]:g})" if "n" in enc and not enc.empty else ""
    ax.set_title("p against q per combination rule; grey: static graphs" + n_txt)
    if dropped:
        ax.text(0.0, -0.3, "not drawn (other n): " + ", ".join(dropped), fontsize=8.5,
                transform=ax.transAxes, color="#555")
    ax.legend(loc="upper left", frameon=False)
    fig.tight_layout()
    return fig


def final_vs(metrics: pd.DataFrame, by: str, col: str, title: str) -> plt.Figure | None:
    """Final-round value of ``col`` against a study variable ``by`` (e.g. switch_interval,
    heterogeneity, p), a line per method with the 90% band over seeds. A log axis only where
    the values span a factor of 10 or more."""
    df = _totals(metrics)
    if df.empty or by not in df or col not in df or df[by].nunique() < 2:
        return None
    last = df[df["round"] == df.groupby(["method", by])["round"].transform("max")]
    last = last.dropna(subset=[col, by]).sort_values(by)
    if last.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    _band_lines(ax, last.assign(seed=last.get("seed", 0)), col, x=by)
    v = last[col]
    if (v > 0).all() and v.max() / v.min() >= 10:
        ax.set_yscale("log")
    xs = last[by]
    if (xs > 0).all() and xs.max() / xs.min() >= 10:
        ax.set_xscale("log")
    ax.set_xlabel(by)
    ax.set_ylabel(col)
    ax.set_title(title)
    _legend(fig, _order(last["method"]), last)
    return fig
