"""Violations a study declares it expects (``[[expect]]``, theory/expect.py): a declared
violation becomes a finding only where declared; one that held is ``expectation unmet`` and
fails ``--strict``; a malformed or dangling declaration is one ``error:`` line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from adflora_analysis.config import load_config
from adflora_analysis.errors import AdfloraError
from adflora_analysis.study.runconfig import expand_study
from adflora_analysis.synthetic.config import SyntheticConfig
from adflora_analysis.synthetic.runner import run_study
from adflora_analysis.theory import check_data, expectation_unmet, run_checks
from adflora_analysis.theory.expect import apply_expectations
from adflora_analysis.theory.result import CheckResult

SMALL = dict(n_clients=4, rounds=8, local_steps=2, lr=0.05, rank=2, seeds=3, d_in=5, d_out=4,
             target_rank=2, samples_per_client=12, batch_size=4, constants_every=0,
             topology_samples=1000, switch_interval=2, methods=["adf-lora", "lora"],
             topology={"graph": "encounter", "weights": "metropolis", "q": 0.5})


def cfg(**kw) -> SyntheticConfig:
    return load_config(SyntheticConfig, data={**SMALL, **kw})


def _r(check, method, variant, status):
    return CheckResult(check, "5", method, variant, status, ratio=0.5)


def test_only_the_declared_cells_become_findings():
    rs = [_r("stationarity", m, v, "violated") for m in ("lora", "adf-lora")
          for v in ("h=1", "h=0")]
    apply_expectations(rs, [{"check": "stationarity", "variants": ["h=1"], "methods": ["lora"],
                             "why": "eta L > 1"}])
    got = {(r.method, r.variant): (r.status, r.unexpected_violation) for r in rs}
    assert got == {("lora", "h=1"): ("finding", False), ("lora", "h=0"): ("violated", True),
                   ("adf-lora", "h=1"): ("violated", True),
                   ("adf-lora", "h=0"): ("violated", True)}
    assert rs[0].note.startswith("declared by the study: eta L > 1")


def test_a_declared_violation_that_held_is_unmet():
    rs = [_r("stationarity", "lora", "base", "held"), _r("stationarity", "lora", "x", "n/a")]
    apply_expectations(rs, [{"check": "5", "why": "diverges"}])
    assert [expectation_unmet(r) for r in rs] == [True, False]   # n/a: nothing to meet
    assert rs[0].status == "held" and "expectation unmet" in rs[0].note


@pytest.mark.parametrize("decl, msg", [
    ({"check": "stationarty", "why": "x"}, "names the check 'stationarty'"),
    ({"check": "5", "methods": ["lora2"], "why": "x"}, "names the method 'lora2'"),
    ({"check": "5", "variants": ["h=2"], "why": "x"}, "names the variant 'h=2'"),
    ({"check": "5"}, "has no 'why'"),
    ({"check": "5", "why": "x", "status": "held"}, "only \"violated\""),
    ({"check": "5", "why": "x", "method": ["lora"]}, "unknown key 'method'"),
])
def test_bad_declarations_are_one_error(decl, msg):
    rs = [_r("stationarity", "lora", "h=1", "violated")]
    with pytest.raises(AdfloraError) as e:
        apply_expectations(rs, [decl])
    assert msg in e.value.problem and rs[0].status == "violated"


def test_the_config_refuses_bad_declarations_before_running():
    with pytest.raises(AdfloraError, match="has no 'why'"):
        cfg(expect=[{"check": "stationarity"}])
    with pytest.raises(AdfloraError, match="the variant 'h=2', which the study does not"):
        expand_study(cfg(variants=[{"label": "h=1", "heterogeneity": 1.0}],
                         expect=[{"check": "5", "variants": ["h=2"], "why": "x"}]))
    with pytest.raises(AdfloraError, match="every job must share"):
        cfg(variants=[{"label": "a", "expect": [{"check": "5", "why": "x"}]}])


def test_the_shipped_heterogeneity_study_declares_only_what_it_must():
    import adflora_analysis

    path = Path(adflora_analysis.__file__).parent / "configs/synthetic/heterogeneity.toml"
    c = load_config(SyntheticConfig, path)
    assert [(e["check"], e["variants"], sorted(e["methods"])) for e in c.expect] == [
        ("stationarity", ["h=1 disjoint"], ["lora", "rolora"])]
    assert dict(expand_study(c))    # the labels it names exist


def test_run_and_cli_apply_the_study_declarations(tmp_path):
    """End to end: config.toml carries [[expect]]; a declared violation that held fails
    --strict (exit 1) and is counted; the check's other cells are untouched."""
    out = tmp_path / "run"
    run_study(cfg(expect=[{"check": "mixing-validity", "methods": ["lora"],
                           "why": "planted: W is not doubly stochastic"}]), out, progress=False)
    res = run_checks(out, entry_points=False)
    mv = {r.method: r for r in res if r.check == "mixing-validity"}
    assert mv["lora"].status == "held" and expectation_unmet(mv["lora"])
    assert not expectation_unmet(mv["adf-lora"])
    run = [sys.executable, "-m", "adflora_analysis", "synthetic", "check", str(out)]
    r = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "1 declared violation(s) held (expectation unmet)" in r.stdout
    r = subprocess.run([*run, "--strict"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout[-1500:]


def test_a_declaration_does_not_hide_a_planted_bug_elsewhere(tmp_path):
    """A run with a planted bug (bytes_sent halved: bytes-audit violated for every method):
    declaring it for lora leaves it violated for adf-lora; declaring another check hides
    nothing."""
    from adflora_analysis.synthetic import mutations as mut

    out = tmp_path / "bug"
    with mut.BUGS["bytes-undercount"].patch():
        run_study(cfg(), out, progress=False)
    data = check_data(out)
    data.meta["expect"] = [{"check": "bytes-audit", "methods": ["lora"], "why": "declared"},
                           {"check": "stationarity", "why": "unrelated"}]
    res = {r.method: r for r in run_checks(out, entry_points=False, data=data)
           if r.check == "bytes-audit"}
    assert res["lora"].status == "finding" and not res["lora"].unexpected_violation
    assert res["adf-lora"].status == "violated" and res["adf-lora"].unexpected_violation
