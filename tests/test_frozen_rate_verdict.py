"""Check 3's verdict comes from its per-round rate fit (issue 20, item 3): adf-lora's frozen
factor trained without saying so (at 0.1 and 0.02 of the step, the logs left as they were)
is ``violated``; the clean run stays ``held``."""

from __future__ import annotations

import dataclasses
import math

import pytest

from adflora_analysis.config import load_config
from adflora_analysis.synthetic.config import SyntheticConfig
from adflora_analysis.synthetic.runner import run_study
from adflora_analysis.theory import run_checks
from adflora_analysis.theory.data import Context
from adflora_analysis.theory.frozen import rate_test

SMALL = dict(n_clients=10, rounds=40, local_steps=2, lr=0.05, rank=2, seeds=20, d_in=5,
             d_out=4, target_rank=2, samples_per_client=12, batch_size=4, constants_every=0,
             topology_samples=4000, switch_interval=5, methods=["adf-lora"])


def small(**kw) -> SyntheticConfig:
    return load_config(SyntheticConfig, data={**SMALL, "topology": {
        "graph": "encounter", "weights": "metropolis", "q": 0.1}, **kw})


def frozen_results(res):
    return [r for r in res if r.number == "3" and r.method == "adf-lora"]


def plant_frozen_training(monkeypatch, c: float) -> None:
    """The frozen factor moves by ``c`` times the step it would take if trained; the rows
    (``trained``, the measured columns) stay those of the declared blocks."""
    from adflora_analysis.synthetic.problem import QuadraticProblem

    orig = QuadraticProblem.local_update

    def planted(self, state, blocks, t, disp=None, **kw):
        new, measured = orig(self, state, blocks, t, disp, **kw)
        frozen = tuple(b for b in ("A", "B") if b not in blocks)
        if not frozen:
            return new, measured
        both, _ = orig(self, state, ("A", "B"), t, None, **kw)
        moved = {b: [o + c * (f - o) for o, f in zip(getattr(state, b), getattr(both, b),
                                                       strict=True)] for b in frozen}
        return dataclasses.replace(new, **moved), measured

    monkeypatch.setattr(QuadraticProblem, "local_update", planted)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    run_study(small(), out, progress=False)
    return run_checks(out)


def test_clean_run_holds_on_the_rate(clean):
    res = frozen_results(clean)
    assert res and all(r.status == "held" for r in res), [r.note for r in res]
    for r in res:
        assert "fitted rate" in r.note and "pooled" in r.note
        assert abs(r.z) <= r.threshold
        assert math.isclose(r.bound, r.details["one_minus_p"])      # exchangeable: 1 - p


@pytest.mark.parametrize("c", [0.1, 0.02])
def test_frozen_factor_trained_is_violated(tmp_path, monkeypatch, clean, c):
    plant_frozen_training(monkeypatch, c)
    run_study(small(), tmp_path / "run", progress=False)
    res = frozen_results(run_checks(tmp_path / "run"))
    assert any(r.status == "violated" and r.z > r.threshold for r in res), \
        [(r.status, r.z, r.note) for r in res]
    # the trained factor decays slower than 1 - p: the fitted rate is above it
    assert all(r.measured > r.bound for r in res if r.status == "violated")


def _ctx(exchangeable: bool, rho: float | None) -> Context:
    return Context(None, None, {}, "adf-lora", "v", {}, 3.0, 0.2, 0.3655, 0.0003, rho,
                   0.0003 if rho is not None else None, exchangeable, False, "synthetic")


def test_rate_test_sidedness():
    # exchangeable: two-sided, a rate far *below* 1 - p is violated too
    assert rate_test(0.55, 0.005, _ctx(True, 0.6345), 20).status == "violated"
    # otherwise one-sided against rho: below is fine, above rho is violated
    assert rate_test(0.55, 0.005, _ctx(False, 0.62), 20).status == "held"
    t = rate_test(0.65, 0.005, _ctx(False, 0.62), 20)
    assert t.status == "violated" and math.isclose(t.bound, 0.62) and t.kind == "upper"
    # few seeds: no verdict either way unless the difference is huge
    assert rate_test(0.64, 0.05, _ctx(True, 0.6345), 2).status == "underpowered"
