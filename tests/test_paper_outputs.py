"""Outputs a researcher pastes into a paper: print-ready figures with no global side effects,
LaTeX tables, and a verdict that says what held and what is significant."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb

from adflora_analysis import fileio
from adflora_analysis.cli import main
from adflora_analysis.reports import figures
from adflora_analysis.reports.api import make_report
from adflora_analysis.reports.build import glue_pm_table, glue_table
from adflora_analysis.reports.collect import Run
from adflora_analysis.reports.render import latex_table
from adflora_analysis.reports.verdict import family_verdicts, verdict_lines
from adflora_analysis.rundir import init_run_dir, make_meta

METHODS = ("adf-lora", "rolora", "ffa-lora", "lora")


def glue_run(path: Path, seeds=(0, 1, 2), rounds: int = 3) -> Path:
    """A GLUE-kind run written by hand (no training): adf-lora at T = 5, rolora at T = 1."""
    init_run_dir(path, {"task": "sst2", "n_clients": 2, "rounds": rounds},
                 make_meta(list(seeds), kind="glue", status="done"))
    rows = [{"method": m, "seed": s, "round": r, "layer": "all", "job": m,
             "switch_interval": 5 if m == "adf-lora" else 1,
             "xi_A": (1.0 + 0.1 * s) / (r + 1), "xi_B": 0.5 / (r + 1), "cross_term": 0.1,
             "trained": "AB", "mixed": "AB", "loss": 1.0 - 0.1 * r + 0.01 * s}
            for m in METHODS for s in seeds for r in range(rounds)]
    fileio.write_parquet(path / "metrics.parquet", pd.DataFrame(rows))
    ev = [{"method": m, "seed": s, "round": rounds - 1, "client": c, "split": "validation",
           "metric": "accuracy", "value": 0.6 + 0.01 * s + 0.02 * METHODS.index(m)}
          for m in METHODS for s in seeds for c in ("0", "mean", "averaged")]
    fileio.write_parquet(path / "eval.parquet", pd.DataFrame(ev))
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One report of the hand-written run, the rcParams and backend before and after."""
    root = tmp_path_factory.mktemp("paper")
    run = glue_run(root / "glue")
    import matplotlib.pyplot as plt

    before = (dict(matplotlib.rcParams), matplotlib.get_backend(), plt.get_fignums())
    html = make_report([run], root / "rep", style="paper-column")
    after = (dict(matplotlib.rcParams), matplotlib.get_backend(), plt.get_fignums())
    return html.parent, before, after


def test_rcparams_and_backend_unchanged_after_a_report(report):
    _, (rc0, backend0, figs0), (rc1, backend1, figs1) = report
    changed = {k for k in rc0 if rc0[k] != rc1.get(k)}
    assert not changed and backend0 == backend1
    assert figs0 == figs1            # pyplot never held a report figure (plt.show() is yours)


def test_the_topology_sweep_figure_sets_no_global_theme(tmp_path):
    from adflora_analysis.topology.sweep import plot_sweep

    df = pd.DataFrame([{"graph": "encounter", "rule": r, "flag": "", "q": q, "p": q * k,
                        "p_stderr": 0.01, "n": 8} for k, r in ((1, "metropolis"),
                                                               (0.5, "pairwise"))
                       for q in (0.1, 0.5)]
                      + [{"graph": "ring", "rule": "metropolis", "flag": "", "q": None,
                          "p": 0.2, "p_stderr": 0.0, "n": 8}])
    before = dict(matplotlib.rcParams)
    out = plot_sweep(df, tmp_path / "sweep.pdf")
    assert dict(matplotlib.rcParams) == before
    assert b"/Subtype /Type3" not in out.read_bytes()


def test_pdf_fonts_are_truetype_and_svg_beside_png(report):
    out = report[0]
    pngs = sorted((out / "figures").glob("*.png"))
    assert pngs
    for png in pngs:
        pdf = png.with_suffix(".pdf").read_bytes()
        assert b"/Subtype /Type3" not in pdf
        assert b"/FontFile2" in pdf or b"/TrueType" in pdf
        assert png.with_suffix(".svg").read_text().lstrip().startswith("<?xml")


def _pdf_width_pt(path: Path) -> float:
    box = re.search(rb"/MediaBox \[\s*([-\d.]+) ([-\d.]+) ([-\d.]+) ([-\d.]+)",
                    path.read_bytes())
    return float(box[3]) - float(box[1])


def test_paper_column_pdfs_are_column_wide(report):
    pdfs = sorted((report[0] / "figures").glob("*.pdf"))
    assert pdfs and all(_pdf_width_pt(p) == pytest.approx(3.5 * 72) for p in pdfs)


def metrics(variants=("T=1", "T=10", "T=2", "T=20", "T=5"), seeds=(0, 1)) -> pd.DataFrame:
    return pd.DataFrame([{"method": m, "seed": s, "round": t, "layer": "all", "variant": v,
                          "trained": "AB"[t % 2], "xi_A": 1.0 / (t + 1) + 0.1 * s,
                          "xi_B": 0.5 / (t + 1), "loss": 1.0 + 0.01 * s}
                         for v in variants for m in METHODS for s in seeds for t in range(4)])


@pytest.mark.parametrize("name, width", [("paper-column", 3.5), ("paper-text", 7.0)])
def test_presets_set_the_figure_width(name, width):
    with figures.style(name):
        figs = [figures.consensus(metrics(variants=("base",))), figures.per_round(
            metrics(), "loss", "loss", log=False), figures.final_vs(
            metrics().assign(switch_interval=lambda d: d["variant"].str[2:].astype(int)),
            "switch_interval", "loss", "loss against T")]
    assert all(f.get_figwidth() == pytest.approx(width) for f in figs)
    assert figures.preset().width is None          # back to screen after the block


def _styles(fig) -> dict[str, tuple]:
    """Drawn (marker, line style) per colour, from the measured lines (bounds aside)."""
    from matplotlib.colors import to_hex

    return {to_hex(ln.get_color()): (ln.get_marker(), ln.get_linestyle())
            for ax in fig.axes for ln in ax.get_lines()
            if len(ln.get_xdata()) > 1 and ln.get_marker() not in ("", "None")}  # not bounds


def test_a_method_looks_the_same_in_two_figures():
    m = metrics(variants=("base",))
    a = _styles(figures.consensus(m))
    b = _styles(figures.per_round(m, "loss", "loss", log=False))
    from adflora_analysis.reports.checks import check_overlays

    curves = pd.DataFrame([{"number": "2", "check": "gossip", "method": x, "variant": "base",
                            "round": t, "measured": 1.0 / (t + 1), "bound": 2.0 / (t + 1)}
                           for x in METHODS for t in range(4)])
    c = _styles(check_overlays(curves))
    for x in METHODS:
        color = figures.method_style(x)[0].lower()
        assert a[color] == b[color] == (figures.method_style(x)[1], figures.method_dash(x))
        assert c[color] == a[color]        # theory-check curves: the same style, not position


def _luminance(color: str) -> float:
    r, g, b = to_rgb(color)
    return 0.299 * r + 0.587 * g + 0.114 * b


def test_method_styles_survive_grayscale():
    names = [*METHODS, "my-plugin"]
    lum = sorted(_luminance(figures.method_style(m)[0]) for m in METHODS)
    assert min(np.diff(lum)) > 0.04          # four methods: four different grays
    markers = [figures.method_style(m)[1] for m in names]
    dashes = [str(figures.method_dash(m)) for m in names]
    assert len(set(markers)) == len(names) and len(set(dashes)) == len(names)
    assert figures.line_kw("my-plugin") == figures.line_kw("my-plugin")


def test_t_variants_sort_numerically_and_share_the_y_axis():
    fig = figures.per_round(metrics(), "loss", "loss", log=False)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["T=1", "T=2", "T=5", "T=10", "T=20"]
    assert len({ax.get_ylim() for ax in fig.axes if ax.get_visible()}) == 1
    assert all(ax.get_xlabel() == "round" for ax in fig.axes if ax.get_visible())
    assert any("bands: 5th–95th percentile over 2 seeds" in t.get_text() for t in fig.texts)


def test_theory_check_curves_have_labels_and_readable_legends():
    from adflora_analysis.reports.checks import check_overlays

    curves = pd.DataFrame([{"number": "4", "check": "consensus", "method": x, "variant": v,
                            "round": t, "measured": 1.0 / (t + 1), "bound": 2.0 / (t + 1)}
                           for x in ("adf-lora", "rolora") for v in ("T=10", "T=2")
                           for t in range(4)])
    fig = check_overlays(curves)
    assert fig.axes[0].get_ylabel() and fig.axes[0].get_xlabel() == "round"
    texts = [t for leg in fig.legends for t in leg.get_texts()]
    assert texts and min(t.get_fontsize() for t in texts) >= 7
    labels = [t.get_text() for t in texts]
    assert labels.index("T=2") < labels.index("T=10")
    colors = {tuple(ln.get_color()) for ln in fig.axes[0].get_lines()
              if ln.get_marker() == "o"}
    assert len(colors) == 2                  # adf-lora's two T values: two shades


def test_tables_as_latex_and_the_glue_table_with_sd_and_seeds(report):
    out = report[0]
    texs = sorted((out / "tables").glob("*.tex"))
    assert len(texs) == len(list((out / "tables").glob("*.csv")))
    for t in texs:
        s = t.read_text()
        assert "\\toprule" in s and "\\midrule" in s and "\\bottomrule" in s
    tex = latex_table(pd.DataFrame({"grad_norm_sq": [1.5], "note": ["50% & #1"]}))
    assert "grad\\_norm\\_sq" in tex and "50\\% \\& \\#1" in tex
    pm = next(t for t in texs if "sd-over-seeds" in t.name).read_text()
    assert "$\\pm$" in pm
    page = (out / "index.html").read_text()
    assert "<th>task</th>" not in page and "white-space:normal" in page


def test_glue_table_mean_sd_and_seeds(tmp_path):
    ev = pd.DataFrame([{"method": m, "run": "r", "seed": s, "round": 1, "client": "mean",
                        "metric": "accuracy", "value": v}
                       for m, vals in (("adf-lora", (0.8, 0.9)), ("lora", (0.7, 0.7)))
                       for s, v in enumerate(vals)])
    runs = [Run(Path("r"), "glue", {"model": "tiny", "task": "sst2"}, {"status": "done"})]
    pm = glue_pm_table(ev, runs).set_index("method")
    assert pm.loc["adf-lora", "sst2"] == "85.00 ± 7.07" and pm.loc["adf-lora", "seeds"] == "2"
    tab, _ = glue_table(ev, runs)
    assert tab.columns.name is None and "task" not in tab.columns
    assert tab.set_index("method").loc["lora", "sst2 sd"] == pytest.approx(0.0)


def test_verdict_per_method_and_a_not_significant_comparison():
    checks = pd.DataFrame({"no": ["1", "2", "4", "4b", "1", "2"],
                           "method": ["adf-lora"] * 4 + ["rolora"] * 2,
                           "status": ["held", "held", "held", "underpowered", "held",
                                      "violated"]})
    fams = family_verdicts(checks)
    assert fams["adf-lora"]["consensus bound"] == "underpowered"
    assert fams["rolora"]["gossip contraction"] == "violated"
    # planted: rolora's loss overlaps adf-lora's (seed noise ±), lora's is clearly higher
    rows = [{"method": m, "seed": s, "round": 3, "loss_gap": base + noise,
             "switch_interval": 5 if m == "adf-lora" else 1}
            for m, base in (("adf-lora", 1.0), ("rolora", 1.0), ("lora", 2.0))
            for s, noise in enumerate((0.1, -0.2, 0.05, 0.12))]
    rows = [{**r, "loss_gap": r["loss_gap"] + (0.3 * (-1) ** r["seed"]
                                               if r["method"] == "rolora" else 0)}
            for r in rows]
    lines = verdict_lines(checks, [("toy", pd.DataFrame(rows), {"loss_gap": "excess loss"})])
    text = "\n".join(lines)
    assert "Claims, adf-lora: underpowered: consensus bound; held:" in text
    assert "Claims, rolora: violated: gossip contraction; held: mixing matrix." in text
    ro = next(ln for ln in lines if "rolora − adf-lora" in ln)
    lo = next(ln for ln in lines if "lora − adf-lora" in ln and "rolora" not in ln)
    assert ro.endswith("not significant.") and lo.endswith(": significant.")
    assert any("switch_interval adf-lora = 5, rolora = 1" in ln for ln in lines)
    one = verdict_lines(None, [("toy", pd.DataFrame(rows)[lambda d: d["seed"] == 0],
                                {"loss_gap": "excess loss"})])
    assert any("one seed: no test" in ln for ln in one)


def test_report_opens_with_the_verdict(report):
    md = (report[0] / "report.md").read_text()
    head = md.split("**Summary**")[0]
    assert "**Verdict**" in head
    assert "rolora − adf-lora: " in head and "3 seeds, paired" in head
    assert "Warning: methods compared at different settings" in head


def test_unknown_style_is_one_error_line(tmp_path, capsys):
    run = glue_run(tmp_path / "glue", seeds=(0,))
    with pytest.raises(SystemExit) as e:
        main(["report", str(run), "--out", str(tmp_path / "rep"), "--style", "paper-colum"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert err[0].startswith("error: unknown figure style 'paper-colum'")
    assert "did you mean 'paper-column'?" in err[0] and not (tmp_path / "rep").exists()
