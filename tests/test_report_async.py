"""Report sections of issue 12 (reports/async_figures.py): the phase ribbon, T against q, the
predicted against the fitted consensus rate; each appears only where the runs hold its data,
and each figure's check catches a planted mismatch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from adflora_analysis.reports import async_figures as af


def _metrics(phase_clients: bool = False) -> pd.DataFrame:
    """Hand-made metric rows: adf-lora T = 2 and rolora T = 3 in two variants, lora (AB)."""
    rows = []
    for variant, T in (("v1", 2), ("v2", 3)):
        for m in ("adf-lora", "rolora", "lora"):
            for seed in (0, 1):
                for t in range(8):
                    ph = "B" if (t // T) % 2 == 0 else "A"
                    if m == "rolora":
                        ph = "B" if (t // 3) % 2 == 0 else "A"   # the same in both variants
                    row = {"variant": variant, "method": m, "seed": seed, "round": t,
                           "layer": "all", "phase": ph, "trained": "AB" if m == "lora" else ph,
                           "staleness": 1}
                    if phase_clients:   # client 2 runs one round late under clock drift
                        Tm = 3 if m == "rolora" else T
                        late = "B" if ((t - 1) // Tm) % 2 == 0 or t == 0 else "A"
                        row["phase_clients"] = ph * 2 + late if m != "lora" else ph * 3
                    rows.append(row)
    return pd.DataFrame(rows)


def test_ribbon_rows_one_per_method_or_variant_and_figure_matches():
    m = _metrics()
    rows = af.ribbon_rows(m)
    labels = list(dict.fromkeys(rows["label"]))
    # adf-lora differs between the variants (a row each); rolora and lora do not (one row)
    assert labels == ["adf-lora | v1", "adf-lora | v2", "rolora", "lora"]
    assert "".join(rows[rows.label == "adf-lora | v1"].block) == "BBAABBAA"
    assert "".join(rows[rows.label == "adf-lora | v2"].block) == "BBBAAABB"
    assert set(rows[rows.label == "lora"].block) == {"AB"}
    fig = af.phase_ribbon(m)
    assert af.verify_ribbon(fig, m) == []
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == labels
    # the method's colour is on its row label
    assert fig.axes[0].get_yticklabels()[2].get_color() == af.method_style("rolora")[0]


def test_per_client_rows_where_clients_phases_differ():
    m = _metrics(phase_clients=True)
    labels = list(dict.fromkeys(af.ribbon_rows(m)["label"]))
    assert "adf-lora | v1 | client 2" in labels and "rolora | client 0" in labels
    assert not any(lab.startswith("lora |") for lab in labels)   # lora does not alternate
    fig = af.phase_ribbon(m)
    assert af.verify_ribbon(fig, m) == []
    rows = af.ribbon_rows(m)
    c2 = "".join(rows[rows.label == "adf-lora | v1 | client 2"].block)
    c0 = "".join(rows[rows.label == "adf-lora | v1 | client 0"].block)
    assert c0 == "BBAABBAA" and c2 == "BBBAABBA"


def test_planted_wrong_ribbon_is_caught(monkeypatch):
    m = _metrics()
    fig = af.phase_ribbon(m)
    img = fig.axes[0].images[0]
    arr = np.array(img.get_array(), dtype=float)
    arr[0, 3] = 1 - arr[0, 3]                       # one cell A <-> B
    img.set_data(arr)
    bad = af.verify_ribbon(fig, m)
    assert len(bad) == 1 and "adf-lora | v1" in bad[0] and "[3]" in bad[0]
    # a ribbon builder that is one round late: the section says the check failed
    real = af.ribbon_rows
    monkeypatch.setattr(af, "ribbon_rows", lambda df: real(df).assign(
        block=lambda r: r.groupby("label")["block"].shift(1).fillna(r["block"])))
    secs = af.async_sections("run", m, [])
    assert secs and "FIGURE CHECK FAILED" in secs[0].text[-1]


def test_no_ribbon_without_issue12_data():
    m = _metrics().assign(staleness=0)
    assert not af.has_issue12_data(m)
    assert af.async_sections("run", m, []) == []
    assert af.has_issue12_data(m.assign(participation=0.8))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from adflora_analysis.config import load_config
    from adflora_analysis.synthetic.config import SyntheticConfig
    from adflora_analysis.synthetic.runner import run_study

    d = tmp_path_factory.mktemp("async_report")
    small = {"n_clients": 5, "rounds": 12, "seeds": 3, "d_in": 4, "d_out": 4,
             "methods": ["adf-lora", "rolora"], "topology_samples": 500}
    run_study(load_config(SyntheticConfig, data={
        **small, "sweep": {"topology.q": [0.2, 0.5]},
        "variants": [{"label": "T=1", "switch_interval": 1},
                     {"label": "T=4", "switch_interval": 4},
                     {"label": "topology", "switch_schedule": "topology"},
                     {"label": "feedback", "switch_schedule": "feedback", "switch_max": 6}]}),
        d / "adaptive", progress=False)
    run_study(load_config(SyntheticConfig, data={
        **small, "rounds": 16, "switch_interval": 8,
        "sweep": {"gossip.staleness": [0, 2], "gossip.participation": [1.0, 0.6]}}),
        d / "async", progress=False)
    run_study(load_config(SyntheticConfig, data=small), d / "plain", progress=False)
    return d


def _sections(run):
    from adflora_analysis.reports.collect import collect_run

    r = collect_run(run)
    return af.async_sections(r.name, r.metrics.assign(run=r.name), [r.path])


def test_sections_appear_where_the_runs_have_the_data(runs):
    titles = [s.title for s in _sections(runs / "adaptive")]
    assert titles == ["adaptive: phase ribbon", "adaptive: adaptive switching interval"]
    titles = [s.title for s in _sections(runs / "async")]
    assert titles == ["async: phase ribbon", "async: stale and partial gossip"]
    assert _sections(runs / "plain") == []
    for run in ("adaptive", "async"):
        for s in _sections(runs / run):
            assert any(t.startswith("Figure check:") for t in s.text), (s.title, s.text)
            assert not any("FAILED" in t for t in s.text)


def test_adaptive_figure_marks_best_fixed_T_and_catches_a_wrong_star(runs):
    from adflora_analysis.synthetic.async_tables import adaptive_table

    tab = adaptive_table(runs / "adaptive")
    # paired by seed: every schedule runs the same seeds, so the mean of the differences is
    # the difference of the means, and the best fixed T differs from itself by exactly 0
    best_g = tab[tab.is_best].set_index(["q", "method"]).grad_final
    d = tab.grad_final - best_g.reindex(pd.MultiIndex.from_frame(tab[["q", "method"]])).values
    assert np.allclose(tab.diff_paired, d, atol=1e-12)
    assert (tab[tab.is_best].diff_paired == 0).all() and tab[tab.is_best].within_noise_paired.all()
    fig = af.adaptive_figure(tab)
    assert af.verify_adaptive(fig, tab) == []
    star = next(ln for ax in fig.axes for ln in ax.lines if ln.get_gid() == "best:adf-lora")
    x, y = star.get_data()
    best = tab[tab.is_best & (tab.method == "adf-lora")].sort_values("q")
    assert list(y) == [float(s[2:]) for s in best.schedule]
    other = [5.0 - v for v in y]                    # T=1 <-> T=4: the wrong fixed T
    star.set_data(x, other)
    assert any("best fixed T of adf-lora" in p for p in af.verify_adaptive(fig, tab))
    # a table whose adaptive T was drawn from the wrong column is caught too
    assert af.verify_adaptive(af.adaptive_figure(tab.assign(T_mean=tab.T_mean_se)), tab)


def test_rates_figure_pairs_predicted_and_fitted_and_catches_a_swap(runs):
    from adflora_analysis.synthetic.async_tables import async_table

    tab = async_table(runs / "async")
    assert sorted(set(zip(tab.staleness, tab.participation, strict=True))) == [
        (0, 0.6), (0, 1.0), (2, 0.6), (2, 1.0)]
    fig = af.rates_figure(tab)
    assert af.verify_rates(fig, tab) == []
    swapped = tab.assign(predicted_rate=tab.fitted_rate, fitted_rate=tab.predicted_rate)
    assert af.verify_rates(af.rates_figure(swapped), tab) == ["rates of adf-lora: drawn ≠ table"]


def test_report_build_hooks_the_sections(runs):
    from adflora_analysis.reports.build import report_sections
    from adflora_analysis.reports.collect import collect_run

    titles = [s.title for s in report_sections([collect_run(runs / "async")])]
    assert "async: phase ribbon" in titles and "async: stale and partial gossip" in titles
