"""The exact predicted consensus rate of stale / partial gossip for exchangeable samplers
(issue 12; docs/theory.md §9, step 5): the permutation-invariant reduction against the full
augmented operator, its exact moments against enumeration, τ = 0 against 1 − p, and planted
defects (a wrong moment, a wrong τ, a law that is not exchangeable) caught."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adflora_analysis.cli import main
from adflora_analysis.errors import AdfloraError
from adflora_analysis.topology import consensus_rate, make_sampler
from adflora_analysis.topology.async_rates import (
    _encounter_patterns,
    _matching_patterns,
    async_consensus_rate,
    exchangeable_law,
    exchangeable_moments,
    pattern_moments,
    reduced_rate,
)

EXACT = [("encounter n=5 metropolis", lambda: make_sampler("encounter", 5, q=0.3)),
         ("encounter n=4 pairwise", lambda: make_sampler("encounter", 4, q=0.4,
                                                         weights="pairwise")),
         ("matching n=6", lambda: make_sampler("matching", 6)),
         ("matching n=5", lambda: make_sampler("matching", 5)),
         ("static complete 0.5 I + 0.5 J", lambda: 0.5 * np.eye(5) + 0.1)]


@pytest.mark.parametrize("name,make", EXACT, ids=[e[0] for e in EXACT])
def test_reduced_operator_equals_the_full_operator_where_both_are_exact(name, make):
    s = make()
    mom, *_ = exchangeable_moments(s)
    n = s.n if hasattr(s, "n") else len(s)
    for tau, pi in ((0, 1.0), (1, 1.0), (2, 1.0), (1, 0.7)):
        red = async_consensus_rate(s, staleness=tau, participation=pi, method="reduced")
        full = async_consensus_rate(s, staleness=tau, participation=pi, method="full")
        assert red.method == "exact-reduced" and full.method == "exact", (red, full)
        quotient = reduced_rate(mom, n, tau, pi, observable=False)
        assert abs(quotient - full.rate) < 1e-9, (name, tau, pi, quotient, full)
        # what Ξ sees is never slower than the whole quotient, the same with a random diagonal
        assert red.stderr == 0.0 and red.rate <= quotient + 1e-12
        if "static" not in name:
            assert abs(red.rate - quotient) < 1e-9, (name, tau, pi, red, quotient)


def test_the_rate_is_what_xi_sees_not_the_lags_drifting_means():
    # static J/5: the deviations obey z' = (z - z_{t-τ})/5, so |λ|² of λ^{τ+1} - λ^τ/5 + 1/5
    J = pattern_moments(np.full((1, 5, 5), 0.2))
    for tau in (1, 2, 8):
        c = np.zeros(tau + 2)
        c[0], c[1], c[-1] = 1.0, -0.2, 0.2
        root = max(abs(np.roots(c))) ** 2
        assert abs(reduced_rate(J, 5, tau) - root) < 1e-9
        assert reduced_rate(J, 5, tau, observable=False) > root + 0.1   # planted: the quotient
    # perfect matchings n = 6 at τ = 8: E Ξ from the exact operator decays at the observable
    # rate 0.8921, not at the quotient's 0.9389 (a direct simulation reads 0.8920)
    from adflora_analysis.topology.async_rates import reduced_operator

    m = _matching_patterns(6)
    T = reduced_operator(m, 6, 8, project=False)
    v = np.concatenate([np.eye(9).ravel(), np.zeros(81)])
    xi = []
    for _ in range(300):
        v = T @ v
        xi.append(v[0])
    late = (xi[299] / xi[249]) ** (1 / 50)
    assert abs(late - reduced_rate(m, 6, 8)) < 1e-3
    assert abs(late - reduced_rate(m, 6, 8, observable=False)) > 0.04


def test_exact_moments_equal_the_enumerated_support():
    for rule in ("metropolis", "lazy-metropolis", "uniform"):
        s = make_sampler("encounter", 5, q=0.3, weights=rule)
        assert np.allclose(_encounter_patterns(5, 0.3, rule), pattern_moments(*s.support()),
                           rtol=0, atol=1e-14), rule
    for n in (6, 7):
        s = make_sampler("matching", n)
        assert np.allclose(_matching_patterns(n), pattern_moments(*s.support()), atol=1e-15)


def test_tau_0_pi_1_is_one_minus_p():
    s = make_sampler("encounter", 5, q=0.3)               # both exact (enumeration)
    assert abs(async_consensus_rate(s).rate - (1 - consensus_rate(s).p)) < 1e-12
    s = make_sampler("encounter", 10, q=0.1)              # exact against Monte Carlo p
    r, p = async_consensus_rate(s), consensus_rate(s, samples=20000)
    assert r.method == "exact-reduced" and r.moments.endswith("exact over the degree laws")
    assert abs(r.rate - (1 - p.p)) < 3 * p.stderr, (r.rate, p)


def test_exact_moments_match_the_symmetrized_monte_carlo_and_the_full_monte_carlo():
    s = make_sampler("encounter", 8, q=0.2)
    exact, _, _, _ = exchangeable_moments(s)
    from adflora_analysis.seeding import numpy_rng

    draws = s.sample_batch(numpy_rng(3, "test"), 4000)
    mc = np.stack([pattern_moments(d[None]) for d in draws])
    se = mc.std(0, ddof=1) / np.sqrt(len(mc))
    assert np.all(np.abs(mc.mean(0) - exact) <= 4 * se + 1e-15), (mc.mean(0), exact, se)
    for tau, pi in ((2, 1.0), (1, 0.8)):
        ex = async_consensus_rate(s, staleness=tau, participation=pi)
        full = async_consensus_rate(s, staleness=tau, participation=pi, method="full",
                                    samples=3000)
        assert full.method == "monte-carlo" and ex.method == "exact-reduced"
        # the full Monte Carlo radius is biased low by a few 1e-3 at 3000 draws
        assert abs(ex.rate - full.rate) < 4 * full.stderr + 0.005, (ex, full)


def test_symmetrized_monte_carlo_for_rules_without_closed_form():
    s = make_sampler("encounter", 8, q=0.2, weights="max-degree")
    r = async_consensus_rate(s, staleness=1, samples=2000, seed=1)
    assert r.method == "monte-carlo-reduced" and 0 < r.stderr < 2e-3, r
    assert r == async_consensus_rate(s, staleness=1, samples=2000, seed=1)   # same seed
    full = async_consensus_rate(s, staleness=1, samples=2000, seed=1, method="full")
    assert abs(r.rate - full.rate) < 4 * (r.stderr + full.stderr) + 0.005, (r, full)


def test_planted_defects_are_caught():
    s = make_sampler("encounter", 5, q=0.3)
    mom, *_ = exchangeable_moments(s)
    full = async_consensus_rate(s, staleness=2, participation=0.7, method="full").rate
    assert abs(reduced_rate(mom, 5, 2, 0.7) - full) < 1e-9
    # a wrong moment: the chain pattern E[W_ij W_jk] taken as 0
    bad = mom.copy()
    bad[5] = 0.0
    assert abs(reduced_rate(bad, 5, 2, 0.7) - full) > 1e-3
    # a wrong τ
    assert abs(reduced_rate(mom, 5, 1, 0.7) - full) > 1e-3
    # the mask's powers of π ignored (masked moments taken as π² times the unmasked)
    wrong = reduced_rate(mom * 0.7 ** 2 / 0.7 ** np.array([2, 2, 2, 3, 3, 3, 4]), 5, 2, 0.7)
    assert abs(wrong - full) > 1e-3
    # a law that is not exchangeable: a ring and EquiDyn (invariant under cyclic shifts only)
    # are refused, and the reduction applied to them anyway is wrong (both sides exact; for
    # EquiDyn it happens to agree at π = 1, not under a mask)
    for t, pi, gap in ((make_sampler("static", 6, graph="ring"), 1.0, 1e-3),
                       (make_sampler("equidyn", 6), 0.5, 1e-5)):
        assert not exchangeable_law(t)
        with pytest.raises(AdfloraError, match="not invariant under relabelling"):
            async_consensus_rate(t, staleness=1, method="reduced")
        full = async_consensus_rate(t, staleness=2, participation=pi)
        assert full.method == "exact"
        forced = reduced_rate(pattern_moments(*t.support()), 6, 2, pi)
        assert abs(forced - full.rate) > gap, (t, forced, full)


def test_bad_input_is_one_line():
    s = make_sampler("encounter", 6, q=0.3)
    for kw in ({"staleness": -1}, {"participation": 0.0}, {"participation": 1.5},
               {"method": "fast"}):
        with pytest.raises(AdfloraError):
            async_consensus_rate(s, **kw)


def test_topology_inspect_prints_the_exact_rate(capsys):
    args = ["topology", "inspect", "--graph", "encounter", "--n", "10", "--q", "0.1",
            "--staleness", "2", "--participation", "0.8", "--samples", "2000"]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--json"])
    out, err = capsys.readouterr()
    assert int(exc.value.code or 0) == 0, err
    d = json.loads(out)
    assert d["async_rate_method"] == "exact-reduced" and d["async_rate_stderr"] == 0.0
    assert abs(d["async_rate"] - 0.793910) < 1e-6 and "degree laws" in d["async_rate_moments"]
    with pytest.raises(SystemExit):
        main(args)
    out, _ = capsys.readouterr()
    assert "0.79391" in out and "exact-reduced" in out


def test_window_rates_and_check_7s_transient_range():
    from adflora_analysis.theory.async_rate import transient_range
    from adflora_analysis.topology.async_rates import window_rates

    s = make_sampler("encounter", 10, q=0.1)
    m, *_ = exchangeable_moments(s)
    for tau, spread in ((2, 0.002), (8, None)):
        pred = async_consensus_rate(s, staleness=tau).as_dict()
        assert pred["patterns"] == pytest.approx(list(m)) and pred["n"] == 10
        w = window_rates(m, 10, tau, 1.0, tau + 1, 20)
        lo, hi = transient_range(pred, [np.ones((10, 19 - tau))], tau)
        assert (lo, hi) == pytest.approx((min(w.values()), max(w.values())))
        if spread:          # far subdominant modes: every start reads ρ in the window
            assert hi - lo < spread and lo - 1e-3 < pred["rate"] < hi + 1e-3
        else:               # τ = 8: modes at 0.866 against ρ = 0.878, the window is transient
            assert hi - lo > 0.05 and lo < pred["rate"] < hi
    # the range moves with the predicted rate, so a wrong prediction is not absorbed by it
    bad = {**pred, "rate": pred["rate"] + 0.1}
    assert transient_range(bad, [np.ones((10, 11))], 8) == pytest.approx((lo + 0.1, hi + 0.1))
    # full-operator predictions carry no patterns: no range
    ring = async_consensus_rate(make_sampler("static", 6, graph="ring"), staleness=1)
    assert ring.patterns is None and np.isnan(transient_range(ring.as_dict(), [], 1)[0])


def test_window_rates_without_staleness_read_rho():
    from adflora_analysis.topology.async_rates import window_rates

    m, *_ = exchangeable_moments(make_sampler("encounter", 10, q=0.1))
    for pi in (1.0, 0.5):
        w = window_rates(m, 10, 0, pi, 1, 20)       # one disagreement mode on V: no transient
        rho = reduced_rate(m, 10, 0, pi)
        assert w and all(abs(v - rho) < 1e-9 for v in w.values()), (w, rho)
