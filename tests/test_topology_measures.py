"""Constants without n x n work (trace identity, Lanczos on the sparse expected operator) and
the effective number of neighbours of Vogels, Hendrikx & Jaggi (2022)."""

from __future__ import annotations

import numpy as np
import pytest

from adflora_analysis.topology import measures as M
from adflora_analysis.topology.config import TopologyConfig, build_sampler, topology_constants
from adflora_analysis.topology.rates import consensus_rate
from adflora_analysis.topology.samplers import make_sampler


def test_trace_identity_equals_dense_monte_carlo():
    """Same stream, same draws: the O(edges) p is the dense estimator's p."""
    for weights in ("metropolis", "max-degree"):
        s = make_sampler("encounter", 40, q=0.1, weights=weights)
        e = M.exchangeable_p(s, samples=300)
        r = consensus_rate(s, samples=300, method="monte-carlo")
        assert e.value == pytest.approx(r.p, abs=1e-12)
        assert e.stderr == pytest.approx(r.stderr, rel=1e-9)
    m = make_sampler("matching", 9)                       # exchangeable, odd n
    exact = consensus_rate(m, method="enumeration").p if m.support() else None
    e = M.exchangeable_p(m, samples=4000)
    if exact is not None:
        assert abs(e.value - exact) < 4 * e.stderr + 1e-12


@pytest.mark.parametrize("sampler", [
    make_sampler("one-peer-exponential", 12),                          # periodic: exact
    make_sampler("static", 9, graph="exponential", sided="one", weights="uniform"),
    make_sampler("static", 10, graph="ring", weights="metropolis"),
])
def test_lanczos_p_is_exact(sampler):
    e = M.operator_p(sampler)
    assert e.method == "lanczos-exact" and e.stderr == 0.0
    assert e.value == pytest.approx(consensus_rate(sampler).p, abs=1e-8)


def test_lanczos_p_monte_carlo_matches_dense():
    s = make_sampler("matching", 10, graph="ring")
    e = M.operator_p(s, samples=400)
    r = consensus_rate(s, samples=400, method="monte-carlo")
    assert e.value == pytest.approx(r.p, abs=1e-8) and e.stderr > 0


@pytest.mark.parametrize("rule", ["metropolis", "lazy-metropolis", "uniform"])
def test_encounter_offdiag_in_linear_time(rule):
    s = make_sampler("encounter", 30, q=0.15, weights=rule)
    assert M._encounter_offdiag(s) == pytest.approx(s.expected()[0, 1], rel=1e-12)


@pytest.mark.parametrize("cfg", [
    TopologyConfig(graph="encounter", q=0.05),
    TopologyConfig(graph="random-regular", params={"degree": 4}),
    TopologyConfig(graph="one-peer-exponential", weights="pairwise"),
])
def test_large_path_agrees_with_dense_path(cfg, monkeypatch):
    n = 120
    s = build_sampler(cfg, n, seed=0)
    dense = topology_constants(s, samples=2000)
    monkeypatch.setattr("adflora_analysis.topology.config.LARGE_N", 100)
    large = topology_constants(s, samples=2000)
    assert large["p_method"] != dense["p_method"] or s.is_static
    tol = 4 * ((large["p_stderr"] or 0) + (dense["p_stderr"] or 0)) + 1e-7
    assert large["p"] == pytest.approx(dense["p"], abs=tol)
    assert large["spectral_gap"] == pytest.approx(dense["spectral_gap"], abs=5e-3)
    assert large["connected"] == dense["connected"]
    ne_tol = 4 * (large["effective_neighbours_stderr"] + dense["effective_neighbours_stderr"])
    assert large["effective_neighbours"] == pytest.approx(dense["effective_neighbours"],
                                                          abs=ne_tol + 1e-6)


def test_effective_neighbours_limits():
    n = 12
    J = make_sampler("static", n, graph="complete", weights="server")
    identity = make_sampler("static", n, W=np.eye(n))
    for gamma in (0.5, 0.9, 0.99):
        assert M.effective_neighbours(J, gamma).value == pytest.approx(n)
        assert M.effective_neighbours(identity, gamma).value == pytest.approx(1.0)
        assert M._hutchinson(identity, gamma, 8, 0, 1e-12).value == pytest.approx(1.0)
    # more gossip, more neighbours: complete > torus > ring
    ne = [M.effective_neighbours(make_sampler("static", 16, graph=g), 0.9).value
          for g in ("complete", "torus", "ring")]
    assert ne[0] > ne[1] > ne[2] > 1


@pytest.mark.parametrize("sampler", [
    make_sampler("static", 14, graph="ring"),
    make_sampler("encounter", 14, q=0.2),
])
def test_hutchinson_agrees_with_closed_forms(sampler):
    closed = M.effective_neighbours(sampler, 0.9)
    assert closed.method in ("eigenvalues", "closed-form-from-p")
    est = M._hutchinson(sampler, 0.9, 400, 1, 1e-10)
    assert abs(est.value - closed.value) < 4 * (est.stderr + closed.stderr)
    # the estimate can fail: a planted wrong γ is rejected
    wrong = M._hutchinson(sampler, 0.5, 400, 1, 1e-10)
    assert abs(wrong.value - closed.value) > 4 * (wrong.stderr + closed.stderr)


def test_connected_fraction():
    assert M.connected_fraction(make_sampler("static", 8, graph="ring")) == 1.0
    assert M.connected_fraction(make_sampler("matching", 8)) == 0.0
    f = M.connected_fraction(make_sampler("encounter", 8, q=0.5), samples=400)
    assert 0.3 < f < 1.0
    c = topology_constants(make_sampler("encounter", 10, q=0.1), samples=500)
    assert c["connected"] and c["connected_draws"] < 0.2       # E[W] connected, draws not


def test_inspect_prints_the_measures():
    import json

    from typer.testing import CliRunner

    from adflora_analysis.topology.cli import app

    r = CliRunner().invoke(app, ["inspect", "--graph", "encounter", "--q", "0.1", "--n", "10",
                                 "--samples", "500", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["effective_neighbours"] > 1 and 0 <= out["connected_draws"] < 0.2
    r = CliRunner().invoke(app, ["inspect", "--graph", "ring", "--n", "8"],
                           env={"COLUMNS": "200"})
    assert "effective neighbours n_W(γ)" in r.output
    assert "connected (graph of E[W]" in r.output and "connected draws" in r.output


def test_measure_fit_finds_the_planted_measure():
    import pandas as pd

    from adflora_analysis.topology.fit import measure_fit

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"spectral_gap": rng.uniform(0.01, 1, 12), "p": rng.uniform(0.01, 1, 12),
                       "effective_neighbours": rng.uniform(1, 50, 12),
                       "excess_variance": rng.uniform(0.01, 1, 12)})
    df["consensus_floor"] = 3.0 / df["effective_neighbours"]        # planted: 1/n_eff
    df["grad_norm_sq"] = 0.5 * df["p"] ** -2
    fit = measure_fit(df).set_index(["outcome", "measure"])
    assert fit.loc[("consensus_floor", "effective_neighbours"), "r2"] == pytest.approx(1.0)
    assert fit.loc[("consensus_floor", "effective_neighbours"), "slope"] == pytest.approx(-1.0)
    assert fit.loc[("grad_norm_sq", "p"), "slope"] == pytest.approx(-2.0)
    assert fit.loc[("consensus_floor", "p"), "r2"] < 0.5              # unrelated measures lose


def test_measures_table_from_a_run(tmp_path):
    from adflora_analysis.config import load_config
    from adflora_analysis.synthetic.config import SyntheticConfig
    from adflora_analysis.synthetic.runner import run_study
    from adflora_analysis.topology.fit import measure_fit, measures_table

    cfg = load_config(SyntheticConfig, data={
        "n_clients": 8, "rounds": 6, "local_steps": 2, "lr": 0.05, "rank": 2, "seeds": 2,
        "methods": ["adf-lora"], "d_in": 4, "d_out": 4, "target_rank": 2, "constants_every": 0,
        "noise_kind": "minibatch", "batch_size": 4, "samples_per_client": 8,
        "topology_samples": 200,
        "variants": [{"label": "ring", "topology.graph": "ring"},
                     {"label": "hypercube", "topology.graph": "hypercube"},
                     {"label": "enc", "topology.graph": "encounter", "topology.q": 0.3}]})
    run_study(cfg, tmp_path / "run", progress=False)
    df = measures_table(tmp_path / "run", tail=3)
    assert sorted(df["variant"]) == ["enc", "hypercube", "ring"]
    assert (df["consensus_floor"] > 0).all() and (df["effective_neighbours"] > 1).all()
    fit = measure_fit(df)
    assert set(fit["measure"]) == {"spectral_gap", "p", "effective_neighbours",
                                   "excess_variance"}
    assert (fit["points"] == 3).all()
    np.testing.assert_allclose(df["excess_variance"],
                               1 / df["effective_neighbours"] - 1 / df["n"])


def test_w_bytes_estimate():
    from adflora_analysis.topology.config import w_bytes

    enc = TopologyConfig(graph="encounter", q=1e-4)
    assert w_bytes(enc, 100_000) == pytest.approx(24 * 100_000 * (1e-4 * 99_999 + 1))
    assert w_bytes(TopologyConfig(graph="ring", weights="server"), 100_000) == 8e10  # dense J
    assert w_bytes(enc, 500) == 8 * 500 * 500                        # below the sparse path


def test_sparse_spectrum_falls_back_to_dense(monkeypatch):
    """ARPACK failing to converge (seen on a 39-node graph) no longer aborts at small n."""
    import networkx as nx
    import scipy.sparse.linalg as spla

    from adflora_analysis.topology import spectral
    from adflora_analysis.topology.weights import mixing_matrix

    W = mixing_matrix(nx.random_regular_graph(3, 40, seed=1), "max-degree", sparse=True)
    dense = spectral.spectral_summary(W.toarray(), method="dense")

    def fail(*a, **k):
        raise spla.ArpackNoConvergence("planted", [], [])

    monkeypatch.setattr(spectral.spla, "eigsh", fail)
    s = spectral.spectral_summary(W, method="sparse")
    assert s.gap == pytest.approx(dense.gap, abs=1e-12)
    monkeypatch.setattr(spectral, "DENSE_FALLBACK_N", 10)            # above it: the error
    with pytest.raises(Exception, match="did not converge"):
        spectral.spectral_summary(W, method="sparse")


def _measures_df(n_rows: int = 6):
    import pandas as pd

    g = np.random.default_rng(0)
    nw = np.geomspace(3, 200, n_rows)
    return pd.DataFrame({
        "run": "r", "variant": [f"v{i}" for i in range(n_rows)],
        "graph": ["ring", "torus", "encounter"] * (n_rows // 3), "n": [16, 128] * (n_rows // 2),
        "spectral_gap": g.uniform(0.01, 0.5, n_rows), "p": g.uniform(0.01, 0.5, n_rows),
        "effective_neighbours": nw, "excess_variance": 1 / nw,
        "consensus_floor": 0.3 / nw, "grad_norm_sq": g.uniform(0.05, 0.1, n_rows)})


def test_measures_figure_is_read_back_and_a_wrong_point_is_caught():
    """The figure's panels carry exactly the table's points (the check passes), the best
    predictor of the planted relation is named; a figure drawn from a table with one point
    moved fails the read-back for the panels that show it."""
    from adflora_analysis.reports.measure_figures import (
        best_measures,
        measures_figure,
        verify_measures,
    )
    from adflora_analysis.topology.fit import measure_fit

    df = _measures_df()
    fit = measure_fit(df)
    fig = measures_figure(df, fit)
    assert verify_measures(fig, df) == []
    assert best_measures(fit)["consensus_floor"][0] in ("effective_neighbours",
                                                        "excess_variance")
    moved = df.copy()
    moved.loc[2, "consensus_floor"] *= 3.0
    problems = verify_measures(measures_figure(moved, measure_fit(moved)), df)
    assert len(problems) == 4 and all("consensus floor" in p for p in problems)


def test_measures_section_in_the_report_of_a_study_run(tmp_path):
    """A study whose variants carry the topology measures gets the section (tables, figure,
    a passing read-back); a run with one topology gets none."""
    import json

    from adflora_analysis.config import load_config
    from adflora_analysis.reports.measure_figures import measures_rows, measures_sections
    from adflora_analysis.synthetic.config import SyntheticConfig
    from adflora_analysis.synthetic.runner import run_study

    base = {"n_clients": 8, "rounds": 4, "local_steps": 2, "lr": 0.05, "rank": 2, "seeds": 1,
            "methods": ["adf-lora"], "d_in": 4, "d_out": 4, "target_rank": 2,
            "constants_every": 0, "noise_kind": "minibatch", "batch_size": 4,
            "samples_per_client": 8, "topology_samples": 100}
    variants = [{"label": g, "topology.graph": g} for g in ("ring", "hypercube", "torus")]
    variants += [{"label": "enc", "topology.graph": "encounter", "topology.q": 0.3}]
    run_study(load_config(SyntheticConfig, data={**base, "variants": variants}),
              tmp_path / "run", progress=False)
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    secs = measures_sections([tmp_path / "run"], [meta])
    assert len(secs) == 1
    sec = secs[0]
    assert set(sec.tables) == {"fit across all variants", "fit within each n", "variants"}
    assert len(sec.tables["variants"]) == 4 and sec.figures
    assert any(t.startswith("Figure check: the points") for t in sec.text)
    run_study(load_config(SyntheticConfig, data={**base, "variants": variants[:1]}),
              tmp_path / "one", progress=False)
    one = json.loads((tmp_path / "one" / "meta.json").read_text())
    assert measures_rows([tmp_path / "one"], [one]) is None
