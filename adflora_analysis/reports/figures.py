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

import functools
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from adflora_analysis.errors import unknown_name
from adflora_analysis.figstyle import BASE_RC

#: Settings every report figure is drawn and saved under (inside ``rc_context``, never set
#: globally): TrueType (Type 42) fonts in PDF and PostScript, so a journal's checker accepts
#: them and the text stays selectable.


@dataclass(frozen=True)
class Preset:
    """A figure style: ``width`` in inches (None: each figure's screen size), the most panels
    per row, and the rcParams (font sizes in points) drawn under."""

    width: float | None
    max_cols: int
    rc: dict = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "screen": Preset(None, 3, {"font.size": 10, "axes.titlesize": 10.5, "axes.labelsize": 10,
                               "legend.fontsize": 9.5, "xtick.labelsize": 9,
                               "ytick.labelsize": 9}),
    "paper-column": Preset(3.5, 2, {"font.size": 8, "axes.titlesize": 8.5,
                                    "axes.labelsize": 8, "legend.fontsize": 7.5,
                                    "xtick.labelsize": 7.5, "ytick.labelsize": 7.5,
                                    "lines.linewidth": 1.2, "lines.markersize": 3.5,
                                    "axes.linewidth": 0.6, "figure.titlesize": 9}),
    "paper-text": Preset(7.0, 3, {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9,
                                  "legend.fontsize": 8, "xtick.labelsize": 8,
                                  "ytick.labelsize": 8, "lines.linewidth": 1.3,
                                  "lines.markersize": 4, "axes.linewidth": 0.7,
                                  "figure.titlesize": 9.5}),
}
_STYLE: ContextVar[str] = ContextVar("adflora_figure_style", default="screen")


def check_style(name: str) -> str:
    """``name`` if it is a preset, else one :class:`AdfloraError` with a did-you-mean hint.

    >>> check_style("paper-column")
    'paper-column'
    """
    if name not in PRESETS:
        raise unknown_name("figure style", name, PRESETS)
    return name


def preset() -> Preset:
    """The preset figures are drawn with now (``screen`` outside :func:`style`)."""
    return PRESETS[_STYLE.get()]


def rc() -> dict:
    """The rcParams of the current preset (with :data:`BASE_RC`)."""
    return {**BASE_RC, **preset().rc}


@contextmanager
def style(name: str = "screen") -> Iterator[Preset]:
    """Draw and save figures with preset ``name`` inside this block; matplotlib's global
    rcParams and backend are as before afterwards.

    >>> import matplotlib
    >>> before = dict(matplotlib.rcParams)
    >>> with style("paper-column") as p:
    ...     f = consensus(pd.DataFrame())
    >>> p.width, dict(matplotlib.rcParams) == before
    (3.5, True)
    """
    token = _STYLE.set(check_style(name))
    try:
        with matplotlib.rc_context(rc()):
            yield PRESETS[name]
    finally:
        _STYLE.reset(token)


def styled(fn):
    """Draw ``fn``'s figure inside the current preset's ``rc_context`` (no global change)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(rc()):
            return fn(*args, **kwargs)
    return wrapper


def figsize(w: float, h: float) -> tuple[float, float]:
    """A figure's size under the current preset: ``(w, h)`` on screen; at the preset's width
    (column 3.5 in, text 7 in) with the height scaled, kept readable, elsewhere."""
    width = preset().width
    if width is None:
        return (w, h)
    return (width, float(np.clip(h * width / w, 0.62 * width if width < 5 else 2.4, 9.0)))


def subplots(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6.4, 4.8),
             scale: bool = True, layout: str | None = None, **kw):
    """``(Figure, axes)`` like ``plt.subplots`` but through the object API: pyplot never
    holds the figure, so no backend is chosen and the user's ``plt.show()`` is untouched.
    ``scale``: fit ``figsize`` to the current preset's width."""
    size = globals()["figsize"](*figsize) if scale else figsize
    fig = Figure(figsize=size, layout=layout)
    return fig, fig.subplots(nrows, ncols, **kw)


QUANTILES = (0.05, 0.95)
BAND = "5th–95th percentile"
METHOD_ORDER = ["adf-lora", "rolora", "ffa-lora", "lora"]
#: Fixed colour, marker and line style per method name (colour-blind-safe Okabe-Ito colours;
#: marker and dashes tell them apart in grayscale too).
STYLES = {"adf-lora": ("#0072B2", "o"), "rolora": ("#E69F00", "s"),
          "ffa-lora": ("#009E73", "^"), "lora": ("#D55E00", "D")}
METHOD_DASHES = {"adf-lora": "-", "rolora": "--", "ffa-lora": "-.", "lora": ":"}
_EXTRA = ["#CC79A7", "#56B4E9", "#8c564b", "#7f7f7f", "#bcbd22", "#17becf"]
_EXTRA_MARKERS = ["v", "P", "X", "*", "h", "<"]
_EXTRA_DASHES = [(0, (5, 1, 1, 1, 1, 1)), (0, (1, 2)), (0, (7, 2)), (0, (3, 1, 1, 1))]
BLOCK_COLORS = {"Ξ_A": "#5e3c99", "Ξ_B": "#1b9e77"}   # factors, never a method's colour
DASHES = ["-", "--", ":", "-."]
PANEL_W, PANEL_H, MAX_COLS = 3.6, 2.9, 3
#: The bound curves beside measured ones: thin, no marker, the method's colour.
BOUND_KW = {"ls": (0, (4, 2)), "lw": 0.9, "marker": "", "alpha": 0.9}
ZERO = 1e-14   # relative to a column's largest value: below it a value is round-off

#: Axis labels in words (and symbols) for the run tables' columns.
LABELS = {"xi_A": r"consensus error $\Xi_A$", "xi_B": r"consensus error $\Xi_B$",
          "cross_term": "cross term $C$", "product_consensus": "product consensus",
          "grad_norm_sq": r"squared gradient norm $\|\nabla f\|^2$", "loss": "loss",
          "loss_gap": "excess loss $f - f^*$", "local_loss": "local training loss",
          "switch_interval": "switching interval $T$ (rounds)",
          "heterogeneity": "heterogeneity", "p": "consensus rate $p$", "round": "round",
          "Ξ_A+Ξ_B": r"consensus error $\Xi_A + \Xi_B$"}


def label(col: str) -> str:
    """A column's axis label in words.

    >>> label("loss_gap"), label("my_col")
    ('excess loss $f - f^*$', 'my col')
    """
    return LABELS.get(col, str(col).replace("_", " "))


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


def method_dash(method: str):
    """A method's line style, the same in every figure (unknown names hash to one)."""
    if method in METHOD_DASHES:
        return METHOD_DASHES[method]
    return _EXTRA_DASHES[(zlib.crc32(method.encode()) // 7) % len(_EXTRA_DASHES)]


def line_kw(method: str) -> dict:
    """``plot`` keywords of a method: colour, marker and line style.

    >>> line_kw("rolora")
    {'color': '#E69F00', 'marker': 's', 'ls': '--'}
    """
    color, marker = method_style(method)
    return {"color": color, "marker": marker, "ls": method_dash(method)}


def shade(color, k: int, n: int) -> tuple[float, float, float]:
    """``color`` lighter for larger ``k`` (level k of n of a study variable such as T)."""
    from matplotlib.colors import to_rgb

    f = 0.6 * k / max(1, n - 1)
    return tuple(c + (1 - c) * f for c in to_rgb(color))


def natural_key(v) -> tuple:
    """Sort key that orders the numbers inside names numerically (T=2 before T=10).

    >>> sorted(["T=10", "T=2", "T=1", "T=20", "T=5"], key=natural_key)
    ['T=1', 'T=2', 'T=5', 'T=10', 'T=20']
    """
    parts = re.split(r"(-?\d+(?:\.\d+)?)", str(v))
    return tuple((0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts)
                 if p != "")


def band_text(df: pd.DataFrame | None, what: str = BAND) -> str:
    """The caption line a figure carries: what its lines and bands are, over how many seeds.

    >>> band_text(pd.DataFrame({"seed": [0, 1, 2]}))
    'lines: seed means; bands: 5th–95th percentile over 3 seeds'
    """
    n = int(df["seed"].nunique()) if df is not None and "seed" in df else 1
    if n <= 1:
        return "lines: one seed (no band)"
    return f"lines: seed means; bands: {what} over {n} seeds"


def method_order(values) -> list[str]:
    present = list(dict.fromkeys(str(v) for v in values))
    return [m for m in METHOD_ORDER if m in present] + [m for m in present
                                                         if m not in METHOD_ORDER]


def _totals(metrics: pd.DataFrame) -> pd.DataFrame:
    return metrics[metrics["layer"] == "all"] if "layer" in metrics else metrics


def _variants(df: pd.DataFrame) -> list[tuple[str | None, pd.DataFrame]]:
    """One (label, rows) pair per study variant (a single unlabelled pair without variants)."""
    if "variant" in df and df["variant"].nunique() > 1:
        groups = {str(v): g for v, g in df.groupby("variant", sort=False)}
        return [(k, groups[k]) for k in sorted(groups, key=natural_key)]
    return [(None, df)]


def _grid(n: int, ncols: int | None = None, sharey: bool | str = False, h: float = PANEL_H):
    pre = preset()
    ncols = min(pre.max_cols, n) if ncols is None else ncols
    nrows = -(-n // ncols)
    if pre.width is None:
        width = PANEL_W * ncols + 0.4 if n > 1 else 6.4   # a single panel, readable width
        size = (width, h * nrows + 0.6)
    else:   # the preset's width; panels keep a 4:3 shape
        shape = 0.62 if ncols == 1 else 0.78
        size = (pre.width, min(11.0, (shape * pre.width / ncols + 0.45) * nrows + 0.6))
    fig, axes = subplots(nrows, ncols, figsize=size, scale=False, squeeze=False,
                         sharex=True, sharey=sharey)
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
    return method_order(m for m, v in mx.items() if v <= tiny)


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
        kw = line_kw(m)
        kw["ls"] = ls or (dashes[key[1]] if dashes else kw["ls"])
        color = kw["color"]
        ax.plot(st.index, st["mean"], **kw, markevery=max(1, n_x // 8) if n_x > 1 else None)
        if g["seed"].nunique() > 1 if "seed" in g else False:
            ax.fill_between(st.index, st["lo"], st["hi"], color=color, alpha=0.18, lw=0)
    if log:
        ax.set_yscale("log")
    if zero:
        ax.text(0.98, 0.04, "≡ 0: " + ", ".join(zero), transform=ax.transAxes, fontsize="small",
                color="#333", va="bottom", ha="right",
                bbox={"facecolor": "white", "edgecolor": "#bbb", "alpha": 0.9, "pad": 2})
    return zero


def _legend(fig, methods: list[str], df: pd.DataFrame | None = None, extra=None,
            band: str | None = None) -> None:
    """One legend for the figure, above the panels: a method per entry (colour, marker, line
    style; compared runs: line style, then their entries) and ``extra`` handles; ``band``:
    a caption line at the foot of the figure saying what the lines and bands are."""
    from matplotlib.lines import Line2D

    _wrap_titles(fig)
    cmp = _cmp_dashes(df) if df is not None else {}
    handles = [Line2D([], [], **{**line_kw(m), **({"ls": "-"} if cmp else {})}, label=m)
               for m in methods]
    for c, ls in cmp.items():
        handles.append(Line2D([], [], color="#333", ls=ls, label=c))
    handles += list(extra or [])
    if handles:
        most = 3 if (preset().width or 9) < 5 else 5
        ncol = len(handles) if len(handles) <= most else min(most, 4)
        sup = _suptitle_lines(fig)
        y = 1.0 - (0.3 * sup / fig.get_figheight() if sup else 0.0)
        fig.legend(handles=handles, loc="upper center", ncol=ncol, frameon=False,
                   bbox_to_anchor=(0.5, y))
        row = 0.28 * _fs() / 9.5
        top = 0.05 + row * (1 + (len(handles) - 1) // ncol) + 0.25 * sup * _fs() / 9.5
    foot = 0.0
    if band:
        fig.text(0.5, 0.01, band, ha="center", va="bottom", fontsize="small", color="#333")
        foot = 0.22 * _fs() / 9.5 + 0.04
    if handles:
        fig.tight_layout(rect=(0, foot / fig.get_figheight(), 1,
                               1 - top / fig.get_figheight()))
    else:
        fig.tight_layout(rect=(0, foot / fig.get_figheight(), 1, 1))


def _wrap_titles(fig) -> None:
    """Under a paper preset, wrap the suptitle and panel titles to the width they have (a
    figure keeps its exact width, so a long title would be cut)."""
    import textwrap

    if preset().width is None:
        return
    def chars(inches: float, text) -> int:
        return max(12, int(inches * 72 / (0.56 * text.get_fontsize())))

    if fig._suptitle is not None:
        t = fig._suptitle
        t.set_text(textwrap.fill(t.get_text().replace("\n", " "),
                                 chars(0.96 * fig.get_figwidth(), t), break_on_hyphens=False))
    for ax in fig.axes:
        w = ax.get_position().width * fig.get_figwidth()
        t = ax.title
        if t.get_text() and "$" not in t.get_text():
            t.set_text(textwrap.fill(t.get_text(), chars(w + 0.3, t), break_on_hyphens=False))


def _suptitle_lines(fig) -> int:
    """Lines of the figure's suptitle (0 without one)."""
    return 0 if fig._suptitle is None else fig._suptitle.get_text().count("\n") + 1


def _fs() -> float:
    """The legend font size in points now (9.5 where rcParams name it in words)."""
    v = matplotlib.rcParams["legend.fontsize"]
    return float(v) if isinstance(v, int | float) else 9.5


def _rounds_range(ax, df: pd.DataFrame) -> None:
    lo, hi = df["round"].min(), df["round"].max()
    pad = 0.5 if hi == lo else 0.02 * (hi - lo)
    ax.set_xlim(lo - pad, hi + pad)
    ax.xaxis.get_major_locator().set_params(integer=True)   # rounds are whole numbers
    ax.set_xlabel("round")


@styled
def consensus(metrics: pd.DataFrame, bounds: pd.DataFrame | None = None) -> Figure | None:
    """Ξ_A and Ξ_B per round on a log scale, one row of two panels per study variant;
    ``bounds`` (method, round, block, bound[, variant]) are overlaid dashed where given."""
    df = _totals(metrics)
    if df.empty or "xi_A" not in df:
        return None
    parts = _variants(df)
    fig, axes = _grid(2 * len(parts), ncols=2, sharey="col" if len(parts) > 1 else False)
    drawn_bound = False
    for i, (name, part) in enumerate(parts):
        for ax, block in zip(axes[2 * i:2 * i + 2], ("A", "B"), strict=True):
            _band_lines(ax, part, f"xi_{block}", log=True)
            if bounds is not None and not bounds.empty:
                b_all = bounds[bounds["block"] == block]
                if name is not None and "variant" in b_all:
                    b_all = b_all[b_all["variant"].astype(str) == name]
                for m, b in b_all.groupby("method"):
                    # round-off bounds (a block still identical on every client: ~1e-32)
                    # would squash the log axis, as they would for the measured series
                    b = b[b["bound"] > ZERO * b_all["bound"].abs().max()]
                    if not b.empty:
                        ax.plot(b["round"], b["bound"], **BOUND_KW,
                                color=method_style(m)[0])
                        drawn_bound = True
            _rounds_range(ax, df)
            ax.set_title(f"$\\Xi_{block}$" + (f"  [{name}]" if name else ""))
            ax.set_ylabel(label(f"xi_{block}"))
    from matplotlib.lines import Line2D

    extra = [Line2D([], [], color="#333", **BOUND_KW,
                    label="unrolled bound (check 4b)")] if drawn_bound else []
    _legend(fig, method_order(df["method"]), df, extra, band=band_text(df))
    return fig


@styled
def frozen_block(metrics: pd.DataFrame, methods=("adf-lora", "rolora")) -> Figure | None:
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
    frozen = {"B": ("#c6dbef", "A frozen"), "A": ("#fdd9b5", "B frozen")}
    for i, (name, part) in enumerate(parts):
        for ax, m in zip(axes[i * len(present):(i + 1) * len(present)], present, strict=True):
            mdf = part[part["method"] == m]
            if mdf.empty:
                continue
            ref = mdf.drop_duplicates("round").sort_values("round")
            rounds, trained = ref["round"].to_numpy(), ref["trained"].to_numpy()
            starts = np.flatnonzero(np.r_[True, trained[1:] != trained[:-1]])
            ends = np.r_[starts[1:], len(rounds)]
            for a, b in zip(starts, ends, strict=True):
                ax.axvspan(rounds[a] - 0.5, rounds[b - 1] + 0.5, color=frozen[trained[a]][0],
                           alpha=0.6, lw=0)
            for block, color in BLOCK_COLORS.items():
                col = "xi_" + block[-1]
                v = mdf[mdf[col] > ZERO * max(mdf[col].abs().max(), 1e-300)]
                if v.empty:
                    ax.text(0.02, 0.03 if block == "Ξ_A" else 0.12, f"{block} ≡ 0",
                            transform=ax.transAxes, fontsize="small", color=color)
                    continue
                st = v.groupby("round")[col].agg(["mean", lambda s: s.quantile(0.05),
                                                  lambda s: s.quantile(0.95)])
                ax.plot(st.index, st.iloc[:, 0], color=color,
                        ls="-" if block == "Ξ_A" else "--")
                ax.fill_between(st.index, st.iloc[:, 1], st.iloc[:, 2], color=color,
                                alpha=0.2, lw=0)
            ax.set_yscale("log")
            _rounds_range(ax, part)
            ax.set_title(m + (f"  [{name}]" if name else ""))
            ax.set_ylabel(r"consensus error $\Xi$")
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    extra = [Line2D([], [], color=c, ls="-" if b == "Ξ_A" else "--", label=b)
             for b, c in BLOCK_COLORS.items()]
    extra += [Patch(color=c, alpha=0.6, label=lab) for c, lab in frozen.values()]
    _legend(fig, [], None, extra, band=band_text(df))
    return fig


@styled
def per_round(metrics: pd.DataFrame, col: str, title: str, log: bool = True
              ) -> Figure | None:
    """One metric of the ``all`` rows per round, a line per method, seed bands, one panel
    per study variant (shared y axis), one legend."""
    df = _totals(metrics)
    if df.empty or col not in df or df[col].isna().all():
        return None
    df = df.dropna(subset=[col])
    parts = _variants(df)
    fig, axes = _grid(len(parts), sharey=True)
    for ax, (name, part) in zip(axes, parts, strict=True):
        _band_lines(ax, part, col, log=log)
        _rounds_range(ax, df)
        ax.set_title(name if name else title)
        ax.set_ylabel(label(col))
    if len(parts) > 1:
        fig.suptitle(title, y=1.0)
    _legend(fig, method_order(df["method"]), df, band=band_text(df))
    return fig


@styled
def difference(metrics: pd.DataFrame, col: str, ref: str = "adf-lora",
               others=("rolora", "lora"), relative: bool = False) -> Figure | None:
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
    what = label(col)
    for ax, (name, part) in zip(axes, parts, strict=True):
        ax.axhline(0, color="#888", lw=0.9)
        _band_lines(ax, part, "d")
        _rounds_range(ax, part)
        ax.set_title(name or "")
        ax.set_ylabel(f"{what}: (method − {ref}) / {ref}" if relative
                      else f"{what}: method − {ref}")
    fig.suptitle(f"{what}: each method minus {ref}, paired by seed (above 0: {ref} lower)",
                 y=1.0)
    _legend(fig, method_order(diff["method"]), diff, band=band_text(diff))
    return fig


@styled
def evaluation(evals: pd.DataFrame) -> Figure | None:
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
                ax.plot(st.index, st["mean"], color=color, marker=marker, ls=ls,
                        mfc=color if client == "mean" else "white")
                if g["seed"].nunique() > 1 if "seed" in g else False:
                    ax.fill_between(st.index, st["min"], st["max"], color=color, alpha=0.15)
        _rounds_range(ax, part)
        ax.set_title(f"validation {metric.replace('_', ' ')}")
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_xlabel("round")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    extra = [Line2D([], [], color="#333", ls="-", marker="o", label="mean of clients"),
             Line2D([], [], color="#333", ls="--", marker="o", mfc="white",
                    label="averaged adapter")]
    _legend(fig, [], None, [*(Line2D([], [], color=method_style(m)[0],
                                     marker=method_style(m)[1], ls="none", label=m)
                              for m in method_order(df["method"])), *extra],
            band=band_text(df, "min–max"))
    return fig


@styled
def label_distribution(labels: pd.DataFrame) -> Figure | None:
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
    fig, ax = subplots(figsize=(min(10.5, 1.2 + 0.45 * n), 3.2))
    bottom = np.zeros(n)
    colors = ["#56B4E9", "#E69F00", "#009E73", "#CC79A7", "#F0E442"]
    hatches = ["", "//", "..", "xx", "\\\\"]
    for k, lab in enumerate(share.columns):
        ax.bar(np.arange(n), share[lab].to_numpy(), bottom=bottom, color=colors[k % 5],
               hatch=hatches[k % 5], edgecolor="white", lw=0.3, label=str(lab), width=0.8)
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


@styled
def cross_heatmap(mats: pd.DataFrame) -> Figure | None:
    """The n × n matrix ‖B_i A_j‖_F per method (rows) and round (columns) on one log colour
    scale: the diagonal is what client i computed, the rest are cross terms ("update directions
    no client computed") that averaging A and B separately mixes in. ``mats``: columns method,
    round, i, j, value (seed means)."""
    if mats is None or mats.empty:
        return None
    methods = method_order(mats["method"])
    rounds = sorted(mats["round"].unique())
    from matplotlib.colors import LogNorm

    pos = mats["value"][mats["value"] > 0]
    if pos.empty:
        return None
    norm = LogNorm(vmin=float(pos.min()), vmax=float(pos.max()))
    fig, axes = subplots(len(methods), len(rounds), squeeze=False, layout="constrained",
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
                ax.add_patch(Rectangle((k - 0.5, k - 0.5), 1, 1, fill=False, ec="white",
                                       lw=0.8))
            off = M[~np.eye(n, dtype=bool)]
            ratio = np.nanmean(off) / np.nanmean(np.diag(M)) if np.nanmean(np.diag(M)) else 0
            ax.set_title(f"{m}, round {t}\noff-diag/diag mean {ratio:.3g}", fontsize="medium")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel("client i (row: B_i)")
            if r == len(methods) - 1:
                ax.set_xlabel("client j (column: A_j)")
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.5, label="‖B_i A_j‖_F")
    fig.suptitle("‖B_i A_j‖_F: diagonal (outlined) = what client i computed; off-diagonal = "
                 "cross terms")
    return fig


@styled
def sweep(sweep_df: pd.DataFrame) -> Figure | None:
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
    fig, ax = subplots(figsize=(8.5, 4.2))
    rule_colors = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00"]
    if not enc.empty:
        rules = list(dict.fromkeys(enc["rule"])) if "rule" in enc else [None]
        for k, rule in enumerate(rules):
            g = enc if rule is None else enc[enc["rule"] == rule]
            st = g.groupby("q")["p"].mean()
            ax.plot(st.index, st.to_numpy(), marker="osD^v"[k % 5], color=rule_colors[k % 5],
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
                    xytext=(1.01, y), textcoords=("axes fraction", "data"), fontsize="small",
                    va="center", arrowprops={"arrowstyle": "-", "color": "#bbb", "lw": 0.6})
    ax.set_xscale("log")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("encounter probability q")
    ax.set_ylabel("expected consensus rate p")
    n_txt = f" (n = {enc['n'].mode().iloc[0]:g})" if "n" in enc and not enc.empty else ""
    ax.set_title("p against q per combination rule; grey: static graphs" + n_txt)
    if dropped:
        ax.text(0.0, -0.3, "not drawn (other n): " + ", ".join(dropped), fontsize="small",
                transform=ax.transAxes, color="#555")
    ax.legend(loc="upper left", frameon=False)
    fig.tight_layout()
    return fig


@styled
def final_vs(metrics: pd.DataFrame, by: str, col: str, title: str) -> Figure | None:
    """Final-round value of ``col`` against a study variable ``by`` (e.g. switch_interval,
    heterogeneity, p), a line per method with the 90% band over seeds. A log axis only where
    the values span a factor of 10 or more."""
    df = _totals(metrics)
    if df.empty or by not in df or col not in df or df[by].nunique() < 2:
        return None
    last = df[df["round"] == df.groupby(["method", by])["round"].transform("max")]
    last = last.dropna(subset=[col, by])
    num = pd.to_numeric(last[by], errors="coerce")
    if num.notna().all():        # numbers (T = 1, 2, 5, 10, 20), never text order
        last = last.assign(**{by: num})
    last = last.sort_values(by)
    if last.empty:
        return None
    fig, ax = subplots(figsize=(6.4, 3.6))
    _band_lines(ax, last.assign(seed=last.get("seed", 0)), col, x=by)
    v = last[col]
    if (v > 0).all() and v.max() / v.min() >= 10:
        ax.set_yscale("log")
    xs = last[by]
    if (xs > 0).all() and xs.max() / xs.min() >= 10:
        ax.set_xscale("log")
    ax.set_xlabel(label(by))
    ax.set_ylabel(f"final {label(col)}")
    ax.set_title(title)
    _legend(fig, method_order(last["method"]), last, band=band_text(last))
    return fig
