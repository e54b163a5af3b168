"""Figures that do not mislead: fixed method styles, '≡ 0' notes, every variant, one legend,
true titles, paired differences, paper numbers only for the paper's setting, comparison."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from adflora_analysis.reports import figures
from adflora_analysis.reports.build import (
    compare_labels,
    glue_table,
    report_sections,
    should_compare,
    summary_lines,
)
from adflora_analysis.reports.collect import Run
from adflora_analysis.reports.cross import cross_matrix


def metrics(methods=("adf-lora", "rolora", "ffa-lora", "lora"), variants=(None,), rounds=6,
            seeds=(0, 1), zero=("ffa-lora",)):
    rows = []
    for v in variants:
        for m in methods:
            for s in seeds:
                for t in range(rounds):
                    xi = 0.0 if m in zero else 1.0 / (t + 1) + 0.1 * s
                    rows.append({"method": m, "seed": s, "round": t, "layer": "all",
                                 "variant": v or "base", "trained": "AB"[t % 2],
                                 "xi_A": xi, "xi_B": 0.5 / (t + 1),
                                 "loss": 1.0 + 0.01 * s + (0.001 if m != "adf-lora" else 0)})
    return pd.DataFrame(rows)


def _line_colors(fig) -> set[str]:
    from matplotlib.colors import to_hex

    return {to_hex(ln.get_color()) for ax in fig.axes for ln in ax.get_lines()
            if len(ln.get_xdata()) > 1}


def test_method_colours_do_not_move_when_a_series_is_dropped():
    full = figures.consensus(metrics(zero=()))
    dropped = figures.consensus(metrics(zero=("ffa-lora",)))
    lora = figures.method_style("lora")[0].lower()
    assert lora in _line_colors(full) and lora in _line_colors(dropped)
    ffa = figures.method_style("ffa-lora")[0].lower()
    # ffa-lora's Ξ_A is ≡ 0: not drawn in the Ξ_A panel, and said so there
    ax_a = dropped.axes[0]
    assert ffa not in {ln.get_color().lower() for ln in ax_a.get_lines()}
    assert any("≡ 0: ffa-lora" in t.get_text() for t in ax_a.texts)
    assert not any("≡ 0" in t.get_text() for t in full.axes[0].texts)
    plt.close("all")


def test_one_legend_per_figure_and_no_bound_in_title_without_bounds():
    fig = figures.consensus(metrics(variants=("T=1", "T=5")))
    assert sum(ax.get_legend() is not None for ax in fig.axes) == 0 and len(fig.legends) == 1
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["adf-lora", "rolora", "ffa-lora", "lora"]
    assert not any("bound" in ax.get_title() or "bound" in lab
                   for ax in fig.axes for lab in labels)
    # the panels share the rounds axis from the first round
    assert len({ax.get_xlim() for ax in fig.axes}) == 1
    plt.close("all")


def test_frozen_block_shows_every_variant():
    fig = figures.frozen_block(metrics(variants=("T=1", "T=5", "T=20")))
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert len(titles) == 6 and any("T=20" in t for t in titles)
    plt.close("all")


def test_difference_shows_what_the_seed_spread_hides():
    df = metrics(zero=())
    fig = figures.difference(df, "loss")
    ys = [ln.get_ydata() for ln in fig.axes[0].get_lines() if len(ln.get_xdata()) > 2]
    assert len(ys) == 2 and all(np.allclose(y, 0.001) for y in ys)   # paired: exactly 0.001
    plt.close("all")


def test_evaluation_with_one_round_draws_points():
    ev = pd.DataFrame([{"method": m, "seed": 0, "round": 5, "client": c, "metric": "accuracy",
                        "value": 0.6} for m in ("adf-lora", "lora") for c in ("mean",
                                                                                "averaged")])
    fig = figures.evaluation(ev)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "accuracy"
    pts = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == 1 and ln.get_marker() != "None"]
    assert len(pts) == 4
    plt.close("all")


def test_final_vs_uses_a_log_axis_only_over_a_decade():
    df = metrics(variants=("1", "5"), zero=())
    df["switch_interval"] = df["variant"].astype(int)
    fig = figures.final_vs(df, "switch_interval", "loss", "final loss")
    assert fig.axes[0].get_yscale() == "linear"
    plt.close("all")


def test_sweep_drops_references_of_another_n_and_separates_labels():
    sw = pd.DataFrame([{"graph": "encounter", "rule": "metropolis", "q": q, "p": q, "n": 10}
                       for q in (0.05, 0.1, 0.5)]
                      + [{"graph": g, "rule": "metropolis", "q": None, "p": p, "n": n}
                         for g, p, n in (("ring", 0.3, 10), ("torus", 0.31, 10),
                                         ("hypercube", 0.5, 8))])
    fig = figures.sweep(sw)
    ax = fig.axes[0]
    notes = [a.get_text() for a in ax.texts]
    assert any("hypercube (n = 8)" in t for t in notes)
    ys = sorted(a.xyann[1] for a in ax.texts if hasattr(a, "xyann"))
    assert len(ys) == 2 and ys[1] - ys[0] >= 0.045 - 1e-12
    plt.close("all")


def _glue_run(model: str, task: str) -> Run:
    return Run(Path(task), "glue", {"model": model, "task": task}, {"status": "done"})


def test_paper_numbers_only_for_the_papers_setting():
    ev = pd.DataFrame([{"method": "adf-lora", "run": t, "round": 1, "client": "mean",
                        "metric": "accuracy", "value": 0.9} for t in ("sst2", "qnli", "qqp",
                                                                        "mnli")])
    tab, note = glue_table(ev, [_glue_run("roberta-large", t) for t in
                                ("sst2", "qnli", "qqp", "mnli")])
    assert tab.set_index("method").loc["adf-lora", "paper DFL average (roberta-large)"] == 85.05
    tab, note = glue_table(ev, [_glue_run("minilm", t) for t in ("sst2", "qnli", "qqp",
                                                                  "mnli")])
    assert "paper DFL average (roberta-large)" not in tab and "differs" in note


def test_comparison_labels_the_differing_keys_and_overlays_runs():
    m = metrics(zero=(), methods=("adf-lora", "rolora"))
    a = Run(Path("a"), "synthetic", {"lr": 0.1, "seeds": 2}, {"status": "done"}, m)
    b = Run(Path("b"), "synthetic", {"lr": 0.2, "seeds": 2}, {"status": "stopped"},
            m.assign(loss=m["loss"] * 2))
    assert should_compare([a, b]) and compare_labels([a, b]) == {"a": "lr=0.1", "b": "lr=0.2"}
    secs = report_sections([a, b])
    dyn = next(s for s in secs if s.title.endswith(": dynamics"))
    assert dyn.title.startswith("comparison of a, b")
    fig = dyn.figures["loss"]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "lr=0.1" in labels and "lr=0.2" in labels
    styles = {ln.get_linestyle() for ln in fig.axes[0].get_lines() if len(ln.get_xdata()) > 1}
    assert styles == {"-", "--"}
    lines = summary_lines([a, b], secs)
    assert len(lines) == 5 and "b is stopped" in lines[-1]
    plt.close("all")


def test_cross_matrix_against_a_loop():
    import torch

    g = torch.Generator().manual_seed(0)
    A = [torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64)]   # (S, n, r, d_in)
    B = [torch.randn(2, 4, 6, 3, generator=g, dtype=torch.float64)]   # (S, n, d_out, r)
    M = cross_matrix(A, B)
    want = np.array([[np.mean([torch.linalg.norm(B[0][s, i] @ A[0][s, j]).item()
                               for s in range(2)]) for j in range(4)] for i in range(4)])
    assert M.shape == (4, 4)
    assert np.allclose(M, want, rtol=0.05)   # mean of norms vs norm of mean-square: close
    one = cross_matrix([A[0][:1]], [B[0][:1]])
    exact = np.array([[torch.linalg.norm(B[0][0, i] @ A[0][0, j]).item() for j in range(4)]
                      for i in range(4)])
    assert np.allclose(one, exact)


@pytest.mark.parametrize("method", ["adf-lora", "rolora", "ffa-lora", "lora", "x"])
def test_method_style_is_fixed(method):
    assert figures.method_style(method) == figures.method_style(method)
