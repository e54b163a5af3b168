"""Theory checks: statistics, verdicts on a small run, JSON fields, user checks and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from adflora_analysis.config import load_config
from adflora_analysis.synthetic.config import SyntheticConfig
from adflora_analysis.synthetic.runner import run_study
from adflora_analysis.theory import run_checks
from adflora_analysis.theory.stats import (
    fit_a_plus_b_over_R,
    log_mean_unbiased,
    pooled_test,
    threshold,
)

SMALL = dict(n_clients=4, rounds=12, local_steps=2, lr=0.05, rank=2, seeds=6, d_in=5, d_out=4,
             target_rank=2, samples_per_client=12, batch_size=4, constants_every=0,
             topology_samples=2000, switch_interval=2)
JSON_FIELDS = {"check", "number", "method", "variant", "status", "measured", "bound", "ratio",
               "ratio_ci", "threshold"}


def small(**kw) -> SyntheticConfig:
    return load_config(SyntheticConfig, data={**SMALL, "topology": {
        "graph": "encounter", "weights": "metropolis", "q": 0.5}, **kw})


@pytest.fixture(scope="module")
def run4(tmp_path_factory):
    out = tmp_path_factory.mktemp("run4")
    run_study(small(methods=["adf-lora", "rolora", "ffa-lora", "lora"]), out, progress=False)
    return out


def by(results, number, method, **kw):
    return [r for r in results if r.number == number and r.method == method
            and all(r.details.get(k) == v for k, v in kw.items())]


# --------------------------------------------------------------------------- statistics
def test_threshold_is_the_t_quantile_and_infinite_without_seeds():
    assert threshold(3.0, 20) == pytest.approx(3.45, abs=0.01)
    assert threshold(3.0, 20, two_sided=True) > threshold(3.0, 20)
    assert threshold(3.0, 1) == float("inf")


def test_pooled_test_upper_equal_and_underpowered():
    rng = np.random.default_rng(0)
    m = 1 + 0.05 * rng.normal(size=(20, 30))
    assert pooled_test(m, lambda p: np.ones_like(m), 0.5, 0.0, kind="equal").status == "held"
    assert pooled_test(m, lambda p: 0.8 * np.ones_like(m), 0.5, 0.0).status == "violated"
    assert pooled_test(m, lambda p: 1.2 * np.ones_like(m), 0.5, 0.0,
                       kind="equal").status == "violated"          # two-sided: too loose
    assert pooled_test(m, lambda p: 1.2 * np.ones_like(m), 0.5, 0.0).status == "held"
    few = pooled_test(m[:2], lambda p: np.ones_like(m[:2]), 0.5, 0.0)
    assert few.status == "underpowered"                          # cannot fail with 2 seeds
    noisy = rng.exponential(1.0, size=(4, 3))                     # 4 seeds, 100% noise
    t = pooled_test(noisy, lambda p: np.full_like(noisy, 1.5), 0.5, 0.0)
    assert t.status == "underpowered" and t.mde > 0.2


def test_log_mean_unbiased_removes_the_jensen_bias():
    rng = np.random.default_rng(1)
    x = rng.exponential(1.0, size=(200000, 5)).reshape(-1, 4, 5)    # many 4-seed draws
    naive = np.log(x.mean(1)).mean()
    fixed = np.mean([log_mean_unbiased(s) for s in x])
    assert naive < -0.1 and abs(fixed) < abs(naive) / 3             # log 1 = 0


def test_fit_a_plus_b_over_R():
    R = np.arange(10.0, 50.0)
    assert fit_a_plus_b_over_R(R, 0.3 + 7 / R) == pytest.approx((0.3, 7.0))


# --------------------------------------------------------------------------- verdicts
def test_checks_on_a_small_run(run4):
    res = run_checks(run4)
    assert {r.status for r in res} <= {"held", "underpowered", "finding", "n/a"}, \
        [(r.number, r.method, r.status, r.note) for r in res if r.status == "violated"]
    assert by(res, "1", "adf-lora")[0].status == "held"
    two = by(res, "2", "adf-lora")[0]
    assert two.test == "two-sided identity" and two.ratio_ci[0] < 1 < two.ratio_ci[1]
    flat = by(res, "3", "rolora")
    assert flat and all(r.status == "finding" and r.expected == "fail" for r in flat)
    assert all(r.details["mean_ratio_end_over_start"] == pytest.approx(1, abs=1e-12)
               for r in flat)
    assert all(r.status == "held" for r in res if r.number == "6i")
    for r in res:
        d = r.to_dict()
        json.dumps(d)
        assert JSON_FIELDS <= set(d)
        if r.status == "held" and r.test in ("one-sided bound", "two-sided identity"):
            assert r.ratio_ci[1] >= 1                # never "held" beside a violated bound


def test_exchangeable_rate_is_one_minus_p(run4):
    res = run_checks(run4)
    two = by(res, "2", "lora")[0]
    assert two.details["rho"] == pytest.approx(1 - two.details["p"])


def test_interpolation_regime_cross_term_vanishes(tmp_path):
    """Identical clients, noiseless labels, full-batch gradients: adf-lora's C collapses."""
    cfg = small(rounds=40, seeds=3, heterogeneity=0.0, label_noise=0.0, noise_kind="none",
                methods=["adf-lora"], lr=0.1, local_steps=3, per_client_init=True)
    df = run_study(cfg, tmp_path, progress=False)
    C = df[df.layer == "all"].groupby("round").cross_term.mean()
    assert C.iloc[-4:].mean() < 1e-3 * C.max()
    res = run_checks(tmp_path)
    assert all(r.status != "violated" for r in res if r.number.startswith("6")), \
        [r.note for r in res if r.status == "violated"]


# --------------------------------------------------------------------------- user checks
USER = '''
import numpy as np
from adflora_analysis.theory import bound_check, register_check

@register_check("loss-below-double-start")
def ok(ctx):
    return bound_check(ctx, "loss-below-double-start", "u1", ctx.run.mat("loss"),
                       2 * ctx.run.mat("loss_start")[:, :1] + 0 * ctx.run.mat("loss"))

@register_check("raises")
def raises(ctx):
    raise ValueError("boom")

@register_check("missing-column")
def missing(ctx):
    return bound_check(ctx, "missing-column", "u3", ctx.run.mat("no_such_column"),
                       ctx.run.mat("loss"))

@register_check("nonsense")
def nonsense(ctx):
    return 42
'''


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "adflora_analysis", *args],
                          capture_output=True, text=True, timeout=300)


def test_user_checks_run_like_builtins_and_bad_ones_are_one_line_each(tmp_path):
    out = tmp_path / "run"
    run_study(small(methods=["adf-lora"], seeds=3, rounds=6), out, progress=False)
    f = tmp_path / "mine.py"
    f.write_text(USER)
    r = _cli("synthetic", "check", str(out), "--checks", str(f), "--json")
    assert r.returncode == 2
    errs = [e for e in r.stderr.strip().splitlines() if e.startswith("error:")]
    assert len(errs) == 3 and all(e.startswith("error: check '") for e in errs), r.stderr
    assert any("'raises'" in e and "boom" in e for e in errs)
    assert any("'missing-column'" in e and "no_such_column" in e for e in errs)
    assert any("'nonsense'" in e and "int" in e for e in errs)
    items = json.loads(r.stdout)["results"]
    mine = [i for i in items if i["check"] == "loss-below-double-start"]
    assert mine and mine[0]["status"] in ("held", "underpowered") and mine[0]["ratio"] > 1
    assert any(i["number"] == "2" for i in items)          # built-ins still ran
    saved = json.loads((out / "checks.json").read_text())["results"]
    assert any(i["check"] == "loss-below-double-start" for i in saved)
    import pandas as pd

    curves = pd.read_parquet(out / "check_curves.parquet")
    assert "u1" in set(curves.number)


def test_cli_check_json_fields_and_strict(tmp_path):
    out = tmp_path / "run"
    run_study(small(methods=["adf-lora", "rolora"], seeds=4, rounds=8), out, progress=False)
    r = _cli("synthetic", "check", str(out), "--json")
    assert r.returncode == 0, r.stderr
    items = json.loads(r.stdout)["results"]
    assert all(JSON_FIELDS <= set(i) for i in items)
    r = _cli("synthetic", "check", str(out), "--strict")
    bad = [i for i in items if i["status"] in ("violated", "error") and i["expected"] == "hold"]
    assert r.returncode == (1 if bad else 0), r.stdout[-2000:]
    r = _cli("synthetic", "check", str(out), "--effect", "0")
    assert r.returncode == 2 and r.stderr.startswith("error: --effect 0")


# --------------------------------------------------------------------------- GLUE + schedules
def test_glue_run_directory_is_checked_by_the_same_command(tiny, tmp_path):
    """Checks 2, 3, 6a, 6d and the invariant run on a GLUE run directory; the AdamW step
    follows lr_schedule and is the ``eta`` column."""
    from adflora_analysis.glue.config import GlueConfig
    from adflora_analysis.glue.runner import run_glue

    cfg = load_config(GlueConfig, data=dict(
        task="rotten_tomatoes", n_clients=4, rounds=4, local_steps=2, batch_size=8,
        max_length=32, max_train_examples=200, max_eval_examples=20, eval_every=4,
        checkpoint_every=0, lr=5e-3, lr_schedule="inverse", lr_t0=2.0, threads=1,
        methods=["adf-lora", "rolora", "lora"], switch_interval=2, model=str(tiny)))
    run_glue(cfg, tmp_path / "run")
    import pandas as pd

    m = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    eta = m[m.layer == "all"].groupby("round").eta.first()
    assert eta.tolist() == pytest.approx([5e-3 / (1 + t / 2.0) for t in range(4)])
    r = _cli("synthetic", "check", str(tmp_path / "run"), "--json")
    assert r.returncode == 0, r.stderr
    items = json.loads(r.stdout)["results"]
    got = {(i["number"], i["method"]) for i in items}
    for need in [("2", "adf-lora"), ("3", "adf-lora"), ("6i", "lora"), ("6a", "lora"),
                 ("6d", "adf-lora")]:
        assert need in got, need
    assert not any(i["status"] == "error" for i in items)
    assert not any(i["number"] in ("4", "5") for i in items)     # synthetic-only checks


def test_lr_schedules_in_the_synthetic_problem(tmp_path):
    df = run_study(small(methods=["lora"], seeds=2, rounds=5, lr_schedule="cosine",
                         lr_min=0.01), tmp_path, progress=False)
    eta = df[df.layer == "all"].groupby("round").eta.first().to_numpy()
    assert eta[0] == pytest.approx(0.05) and eta[-1] == pytest.approx(0.01)
    assert (np.diff(eta) < 0).all()
    from adflora_analysis.errors import AdfloraError

    with pytest.raises(AdfloraError, match="unknown value for 'lr_schedule' 'step'"):
        small(lr_schedule="step")


def test_every_check_with_a_curve_gets_an_overlay_panel(run4):
    from adflora_analysis.reports.checks import check_curves, check_overlays

    res = run_checks(run4)
    curves = check_curves(res)
    with_curve = {r.number for r in res if not r.curve.empty}
    assert set(curves["number"]) == with_curve and {"2", "4b", "5", "6a"} <= with_curve
    fig = check_overlays(curves)
    titles = {ax.get_title() for ax in fig.axes if ax.get_visible()}
    assert len(titles) == len(set(zip(curves["number"], curves["check"], strict=True)))


def test_entry_point_checks_are_registered_and_run(run4, tmp_path, monkeypatch):
    import importlib.metadata as md

    from adflora_analysis.theory import registry

    (tmp_path / "ep_checks_mod.py").write_text(
        "from adflora_analysis.theory import bound_check\n"
        "def gap(ctx):\n"
        "    m = ctx.run.mat('loss_gap')\n"
        "    return bound_check(ctx, 'ep-gap', 'e1', m, m + 1.0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = md.EntryPoint(name="ep-gap", value="ep_checks_mod:gap", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(md, "entry_points", lambda group=None: [ep] if
                        group == registry.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(registry, "REGISTRY", dict(registry.REGISTRY))
    import adflora_analysis.theory as checks

    monkeypatch.setattr(checks, "REGISTRY", registry.REGISTRY)
    res = run_checks(run4)
    mine = [r for r in res if r.check == "ep-gap"]
    assert len(mine) == 4 and all(r.ratio > 1 for r in mine)
