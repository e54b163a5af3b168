"""Report sections of the adaptive switching interval and of stale/partial gossip (issue 12;
docs/theory.md §9): the phase ribbon, the interval T the adaptive schedules chose against the
encounter probability q, and the predicted against the fitted consensus rate against the
staleness τ and the participation π.

Each figure is checked against the run's tables after it is drawn (:func:`verify_ribbon`,
:func:`verify_adaptive`, :func:`verify_rates` read the drawn artists back); the section says
what the check found, so a figure that does not show its data is visible in the report.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap, to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from adflora_analysis.reports.figures import (
    BLOCK_COLORS,
    method_order,
    method_style,
    styled,
    subplots,
)
from adflora_analysis.reports.render import Section, figure_check_line

#: Ribbon cell codes: the block a client trains in a round.
BLOCKS = ("A", "B", "AB")
RIBBON_COLORS = (BLOCK_COLORS["Ξ_A"], BLOCK_COLORS["Ξ_B"], "#bdbdbd")
SEP = " | "
ADAPTIVE = ("topology", "feedback")
SCHEDULE_DASH = {"topology": "-", "feedback": "--"}
ALTERNATING = ("adf-lora", "rolora")


def _totals(metrics: pd.DataFrame) -> pd.DataFrame:
    return metrics[metrics["layer"] == "all"] if "layer" in metrics else metrics


def _key(df: pd.DataFrame) -> pd.Series:
    """A row's study variant, prefixed by its run where runs are compared (``cmp``)."""
    v = df["variant"].astype(str) if "variant" in df else pd.Series("", index=df.index)
    if "cmp" in df:
        v = df["cmp"].astype(str) + (", " + v).where(v != "", "")
    return v


def _seed0(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["seed"] == df["seed"].min()] if "seed" in df else df


def has_issue12_data(metrics: pd.DataFrame) -> bool:
    """True where a ribbon says something: an adaptive schedule, stale or partial gossip, or
    per-client phases (clock drift) in the run's metrics.

    >>> has_issue12_data(pd.DataFrame({"phase": ["A"], "staleness": [0], "participation": [1]}))
    False
    >>> has_issue12_data(pd.DataFrame({"phase": ["A"], "staleness": [2]}))
    True
    """
    if "phase" not in metrics and "trained" not in metrics:
        return False
    tests = (("phase_clients", lambda c: c.notna()),
             ("switch_schedule", lambda c: c.isin(ADAPTIVE)),
             ("staleness", lambda c: c.fillna(0) > 0),
             ("participation", lambda c: c.fillna(1) < 1))
    return any(bool(f(metrics[col]).any()) for col, f in tests if col in metrics)


# ---------------------------------------------------------------- (a) phase ribbon
def ribbon_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """The ribbon's rows from metric rows (first seed): columns ``label`` (``method``,
    ``method | variant`` or ``... | client i``), ``method``, ``round``, ``block`` (the block
    trained: A, B or AB). A method whose ribbon is the same in every variant gets one row;
    per-client rows where ``phase_clients`` shows clients of one round in different phases.

    >>> m = pd.DataFrame({"method": ["adf-lora"] * 2, "round": [0, 1], "trained": ["B", "A"],
    ...                   "seed": 0, "layer": "all"})
    >>> ribbon_rows(m)[["label", "round", "block"]].values.tolist()
    [['adf-lora', 0, 'B'], ['adf-lora', 1, 'A']]
    """
    df = _seed0(_totals(metrics))
    df = df.assign(_key=_key(df), block=df["trained"] if "trained" in df else df["phase"])
    out = []
    for m in method_order(df["method"]):
        mdf = df[df["method"] == m]
        seqs = {k: g.sort_values("round") for k, g in mdf.groupby("_key", sort=False)}
        per_client = m in ALTERNATING and "phase_clients" in mdf
        same = len({(tuple(g["block"]), tuple(g["phase_clients"]) if per_client else ())
                    for g in seqs.values()}) == 1
        for k, g in seqs.items():
            label = m if same or not k else f"{m}{SEP}{k}"
            clients = g["phase_clients"] if "phase_clients" in g else None
            split = (per_client and clients is not None and clients.notna().all()
                     and clients.map(lambda s: len(set(s)) > 1).any())
            if split:
                n = len(clients.iloc[0])
                for i in range(n):
                    out.append(pd.DataFrame({"label": f"{label}{SEP}client {i}", "method": m,
                                             "round": g["round"].to_numpy(),
                                             "block": clients.str[i].to_numpy()}))
            else:
                out.append(pd.DataFrame({"label": label, "method": m,
                                         "round": g["round"].to_numpy(),
                                         "block": g["block"].to_numpy()}))
            if same and not split:
                break
    return pd.concat(out, ignore_index=True)


@styled
def phase_ribbon(metrics: pd.DataFrame) -> Figure | None:
    """Which block each method (row) trains at each round (column), first seed; rows per
    client where clients' phases differ (clock drift). Row labels carry the method's marker
    and colour. Cells: the trained block's colour (A, B; grey: both)."""
    rows = ribbon_rows(metrics)
    if rows.empty:
        return None
    labels = list(dict.fromkeys(rows["label"]))
    rounds = np.sort(rows["round"].unique())
    codes = rows["block"].map({b: i for i, b in enumerate(BLOCKS)})
    mat = np.full((len(labels), len(rounds)), np.nan)
    mat[rows["label"].map({lab: i for i, lab in enumerate(labels)}).to_numpy(),
        np.searchsorted(rounds, rows["round"].to_numpy())] = codes.to_numpy()
    h = 1.8 + 0.24 * len(labels)
    fig, ax = subplots(figsize=(9.5, h))
    ax.imshow(mat, cmap=ListedColormap(RIBBON_COLORS), vmin=-0.5, vmax=len(BLOCKS) - 0.5,
              aspect="auto", interpolation="nearest",
              extent=(rounds[0] - 0.5, rounds[-1] + 0.5, len(labels) - 0.5, -0.5))
    ax.set_yticks(range(len(labels)), labels, fontsize="small")
    method_of = dict(zip(rows["label"], rows["method"], strict=False))
    for tick, lab in zip(ax.get_yticklabels(), labels, strict=True):
        tick.set_color(method_style(method_of[lab])[0])
    for i, lab in enumerate(labels):
        color, marker = method_style(method_of[lab])
        ax.plot([-0.02], [i], marker=marker, color=color, ms=5, transform=ax.get_yaxis_transform(),
                clip_on=False)
    ax.tick_params(axis="y", pad=10)
    ax.set_xlabel("round")
    ax.set_title("phase ribbon: the block trained at each round (first seed)")
    handles = [Patch(color=c, label=f"trains {b}" if b != "AB" else "trains A and B")
               for b, c in zip(BLOCKS, RIBBON_COLORS, strict=True)]
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False)
    fig.tight_layout(rect=(0, 0.4 / h, 1, 1))
    return fig


def verify_ribbon(fig: Figure, metrics: pd.DataFrame) -> list[str]:
    """Read the drawn ribbon back (image cells and row labels) and compare every cell with the
    metric rows it names; returns the mismatches (empty: the figure shows the data)."""
    ax = fig.axes[0]
    mat = np.asarray(ax.images[0].get_array(), dtype=float)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    df = _seed0(_totals(metrics))
    df = df.assign(_key=_key(df))
    col = "trained" if "trained" in df else "phase"
    rounds = np.sort(df["round"].unique())
    problems = []
    for i, lab in enumerate(labels):
        parts = lab.split(SEP)
        g = df[df["method"] == parts[0]]
        client = None
        if parts[-1].startswith("client "):
            client = int(parts.pop()[len("client "):])
        if len(parts) > 1:
            g = g[g["_key"] == parts[1]]
        else:
            g = g[g["_key"] == g["_key"].iloc[0]] if not g.empty else g
        g = g.sort_values("round")
        want = g["phase_clients"].str[client] if client is not None else g[col]
        want = want.map({b: k for k, b in enumerate(BLOCKS)}).to_numpy(dtype=float)
        got = mat[i, np.searchsorted(rounds, g["round"].to_numpy())]
        bad = np.flatnonzero(~np.isclose(got, want))
        if g.empty or bad.size:
            r = g["round"].to_numpy()[bad[:3]].tolist() if bad.size else "no rows"
            problems.append(f"ribbon row {lab!r}: drawn ≠ metrics at rounds {r}")
    return problems


# ---------------------------------------------------------------- (b) T against q
@styled
def adaptive_figure(table: pd.DataFrame) -> Figure | None:
    """Mean phase length T (± s.e. over seeds) of the adaptive schedules against q, a panel per
    method; grey dotted: the fixed-T grid; star: the best fixed T at each q (lowest final
    ‖∇f‖²). ``table``: :func:`adaptive_table`'s rows."""
    ad = table[table["schedule"].isin(ADAPTIVE)]
    if ad.empty:
        return None
    methods = method_order(ad["method"])
    fig, axes = subplots(1, len(methods), figsize=(3.9 * len(methods) + 0.4, 3.4),
                         squeeze=False, sharey=True)
    grid = sorted({int(s[2:]) for s in table["schedule"] if str(s).startswith("T=")})
    for ax, m in zip(axes[0], methods, strict=True):
        color, marker = method_style(m)
        for t in grid:
            ax.axhline(t, color="#999", ls=":", lw=0.9)
        for s in ADAPTIVE:
            g = ad[(ad["method"] == m) & (ad["schedule"] == s)].sort_values("q")
            if not g.empty:
                ax.errorbar(g["q"], g["T_mean"], yerr=g["T_mean_se"].fillna(0), color=color,
                            marker=marker, ls=SCHEDULE_DASH[s], lw=1.5, ms=5, capsize=3,
                            gid=f"adaptive:{m}:{s}")
        best = table[(table["method"] == m) & table["is_best"]].sort_values("q")
        if not best.empty:
            ax.plot(best["q"], best["schedule"].str[2:].astype(float), ls="none", marker="*",
                    ms=13, mfc="none", mec=color, mew=1.4, gid=f"best:{m}")
        ax.set_xscale("log")
        ax.set_xticks(sorted(table["q"].unique()), [f"{q:g}" for q in sorted(table["q"].unique())])
        ax.minorticks_off()
        ax.set_xlabel("encounter probability q")
        ax.set_title(m, color=color)
    axes[0][0].set_ylabel("mean phase length T (rounds)")
    handles = [Line2D([], [], color="#333", ls=SCHEDULE_DASH[s], marker="o", label=s)
               for s in ADAPTIVE if s in set(ad["schedule"])]
    handles += [Line2D([], [], color="#333", ls="none", marker="*", mfc="none", ms=11,
                       label="best fixed T (final ‖∇f‖²)"),
                Line2D([], [], color="#999", ls=":", label="fixed-T grid")]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.88))
    return fig


def _drawn(fig: Figure, gid: str) -> np.ndarray | None:
    for ax in fig.axes:
        for line in ax.lines:
            if line.get_gid() == gid:
                return np.asarray(line.get_xydata(), dtype=float)
    return None


def verify_adaptive(fig: Figure, table: pd.DataFrame) -> list[str]:
    """The drawn adaptive points equal the table's T_mean, and each star sits at the fixed T
    with the lowest final ‖∇f‖² at its q (recomputed here from ``grad_final``)."""
    problems = []
    for (m, s), g in table[table["schedule"].isin(ADAPTIVE)].groupby(["method", "schedule"]):
        xy = _drawn(fig, f"adaptive:{m}:{s}")
        want = g.sort_values("q")[["q", "T_mean"]].to_numpy(dtype=float)
        if xy is None or xy.shape != want.shape or not np.allclose(xy, want):
            problems.append(f"adaptive T of {m}, {s}: drawn ≠ table")
    fixed = table[table["schedule"].str.startswith("T=")]
    for m, g in fixed.groupby("method"):
        best = g.loc[g.groupby("q")["grad_final"].idxmin()].sort_values("q")
        want = np.c_[best["q"], best["schedule"].str[2:].astype(float)]
        xy = _drawn(fig, f"best:{m}")
        if xy is None or xy.shape != want.shape or not np.allclose(xy, want):
            problems.append(f"best fixed T of {m}: drawn ≠ lowest final ‖∇f‖²")
    return problems


# ---------------------------------------------------------------- (c) predicted vs fitted
def _shade(color: str, k: int, n: int) -> tuple[float, float, float]:
    """The method's colour, lighter for larger k (k of n levels): a study variable's level."""
    f = 0.6 * k / max(1, n - 1)
    return tuple(c + (1 - c) * f for c in to_rgb(color))


@styled
def rates_figure(table: pd.DataFrame) -> Figure | None:
    """Predicted (open markers, dashed) and fitted (filled, ± s.e.) frozen-block consensus rate
    against τ (a line per π) and against π (a line per τ), and fitted against predicted with
    the line y = x. ``table``: :func:`async_table`'s rows (fitted for adf-lora only)."""
    t = table.dropna(subset=["fitted_rate"])
    if t.empty:
        return None
    fig, axes = subplots(1, 3, figsize=(12.2, 3.8))
    for ax, (x, by, xl) in zip(axes[:2], (("staleness", "participation", "staleness τ"),
                                         ("participation", "staleness", "participation π")),
                               strict=True):
        levels = sorted(t[by].unique(), reverse=by == "participation")
        for m in method_order(t["method"]):
            color, marker = method_style(m)
            for k, lev in enumerate(levels):
                g = t[(t["method"] == m) & (t[by] == lev)].sort_values(x)
                c = _shade(color, k, len(levels))
                sym = "π" if by == "participation" else "τ"
                ax.plot(g[x], g["predicted_rate"], ls="--", marker=marker, mfc="none", color=c,
                        lw=1.1, ms=6)
                ax.errorbar(g[x], g["fitted_rate"], yerr=g["fitted_rate_se"].fillna(0),
                            ls="-", marker=marker, color=c, lw=1.4, ms=5, capsize=3,
                            label=f"{m}, {sym} = {lev:g}")
        ax.set_xlabel(xl)
        ax.set_ylabel("consensus rate per round")
        ax.set_title(f"against {xl}")
        ax.legend(frameon=False)
    ax = axes[2]
    lo = float(np.nanmin(np.r_[t["predicted_rate"], t["fitted_rate"]])) - 0.02
    ax.plot([lo, 1], [lo, 1], color="#888", lw=0.9, label="y = x")
    for m in method_order(t["method"]):
        g = t[t["method"] == m]
        color, marker = method_style(m)
        ax.errorbar(g["predicted_rate"], g["fitted_rate"], yerr=g["fitted_rate_se"].fillna(0),
                    ls="none", marker=marker, color=color, ms=5, capsize=3, label=m,
                    gid=f"rates:{m}")
    ax.set_xlabel("predicted rate (meta.json async_rate)")
    ax.set_ylabel("fitted rate (frozen block)")
    ax.set_title("fitted against predicted")
    ax.legend(frameon=False)
    fig.suptitle("frozen-block consensus rate: predicted (open, dashed) and fitted (filled, "
                 "± s.e. over seeds)")
    fig.tight_layout()
    return fig


def verify_rates(fig: Figure, table: pd.DataFrame) -> list[str]:
    """The fitted-against-predicted points equal the table's (predicted, fitted) pairs."""
    problems = []
    for m, g in table.dropna(subset=["fitted_rate"]).groupby("method"):
        xy = _drawn(fig, f"rates:{m}")
        want = g[["predicted_rate", "fitted_rate"]].to_numpy(dtype=float)
        if xy is None or xy.shape != want.shape or not np.allclose(
                xy[np.lexsort(xy.T[::-1])], want[np.lexsort(want.T[::-1])]):
            problems.append(f"rates of {m}: drawn ≠ table")
    return problems


# ---------------------------------------------------------------- sections
def async_sections(title: str, metrics: pd.DataFrame, run_dirs: list,
                   metas: list[dict] | None = None) -> list[Section]:
    """The issue-12 sections where the runs hold their data: the phase ribbon (an adaptive
    schedule, stale or partial gossip or clock drift in the metrics), T against q (a run whose
    variants include an adaptive schedule), predicted against fitted rate (a run whose
    meta.json has an ``async_rate``). ``run_dirs``: the group's run directories; ``metas``:
    their meta.json contents when already read (else read here)."""
    from adflora_analysis.rundir import load_run
    from adflora_analysis.synthetic.async_tables import adaptive_table, async_table

    secs = []
    if has_issue12_data(metrics):
        fig = phase_ribbon(metrics)
        if fig is not None:
            secs.append(Section(f"{title}: phase ribbon", [
                "Which block each method trains at each round (first seed): one row per "
                "method, per variant where its ribbon differs between variants, and per client "
                "where clients of one round are in different phases (clock drift).",
                figure_check_line(verify_ribbon(fig, metrics), "ribbon cells")],
                figures={"phase ribbon": fig}))
    for i, d in enumerate(run_dirs):
        m = metrics[metrics["run"] == d.name] if "run" in metrics else metrics
        name = d.name if len(run_dirs) > 1 else title
        if ("switch_schedule" in m and m["switch_schedule"].isin(ADAPTIVE).any()
                and "variant" in m and "q" in m):
            tab = adaptive_table(d)
            fig = adaptive_figure(tab)
            if fig is not None:
                secs.append(Section(f"{name}: adaptive switching interval", [
                    "T chosen by the adaptive schedules (mean length of the completed phases, "
                    "± s.e. over seeds) against the encounter probability q; final ‖∇f‖² is "
                    "the mean of the last 10 rounds, C the time-averaged cross term. "
                    "within_noise: |final ‖∇f‖² − the best fixed T's| ≤ 2 s.e. of the "
                    "difference.",
                    figure_check_line(verify_adaptive(fig, tab), "T values and stars")],
                    figures={"T against q": fig}, tables={"adaptive T": tab}))
        meta = metas[i] if metas is not None else load_run(d).meta
        variants = (meta.get("variants") or {}).values()
        if meta.get("async_rate") or any(v.get("async_rate") for v in variants):
            tab = async_table(d)
            fig = rates_figure(tab)
            text = ["Frozen-block consensus rate per round: predicted before the run "
                    "(ρ of the expected companion operator, docs/theory.md §9; the second-moment "
                    "rate for τ = 0, π = 1) and fitted on adf-lora's frozen stretches (first "
                    "τ + 1 rounds of each dropped), ± s.e. over seeds."]
            models = set(tab["model"]) - {"stale-read", "synchronous"} if "model" in tab \
                else set()
            if models:   # issue 20: AD-PSGD / push-sum runs beside stale-read gossip
                text.append("Asynchrony models (column model): stale-read gossip, AD-PSGD "
                            "(its frozen block mixes synchronously: the τ = 0 rate) and "
                            "push-sum (derived at τ = 0 on a symmetric W, else measured by a "
                            "direct simulation: column prediction = simulated).")
            if fig is not None:
                text.append(figure_check_line(verify_rates(fig, tab), "rate pairs"))
            secs.append(Section(f"{name}: " + ("asynchrony models" if models
                                               else "stale and partial gossip"), text,
                                figures={"consensus rate against tau and pi": fig} if fig else {},
                                tables={"async": tab}))
    return secs
