"""The mutation harness (issue 20 item 5, synthetic/mutations.py): every planted bug is caught by
some check that should hold, the clean run has no unexpected violation, the patches are undone,
and the CLI refuses an unknown bug name in one line with a did-you-mean."""

import subprocess
import sys

import pytest

from adflora_analysis.synthetic import mutations as mut

CI_SIZE = {"rounds": 16, "topology_samples": 1000, "constants_every": 0}


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    return mut.run_harness(mut.select_bugs(None), mut.DEFAULT_SEEDS,
                           tmp_path_factory.mktemp("mutate"), CI_SIZE)


def test_at_least_twelve_bugs_with_the_issues_list():
    names = set(mut.BUGS)
    assert len(names) >= 12
    assert {"step-x0.5", "step-x0.95", "step-x1.5", "step-x3", "previous-gradient",
            "frozen-trained-0.1", "frozen-trained-0.02", "gossip-twice", "client-left-out",
            "metropolis-degree", "p-high", "cross-term-before-gossip", "data-swapped",
            "non-converging"} <= names


def test_every_bug_is_caught_and_the_clean_run_is_clean(harness):
    missed, clean = mut.summary(harness)
    table = mut.format_table(harness)
    assert not clean, f"clean run violates {clean}\n{table}"
    assert not missed, f"caught by nothing: {missed}\n{table}"


def test_the_audits_catch_what_they_are_for(harness):
    by = {r.bug: r for r in harness}
    for bug, check in (("step-x0.95", "step-audit"), ("step-x1.5", "step-audit"),
                       ("previous-gradient", "step-audit"), ("data-swapped", "step-audit"),
                       ("frozen-trained-0.02", "frozen-audit"),
                       ("gossip-twice", "gossip-audit"), ("client-left-out", "gossip-audit"),
                       ("bytes-undercount", "bytes-audit")):
        assert check in by[bug].caught_by, (bug, by[bug].caught_by)
    step = next(x for x in by["step-x1.5"].results if x.check == "step-audit")
    assert "1.5 × the replayed SGD step" in step.note and "step size" in step.note
    prev = next(x for x in by["previous-gradient"].results if x.check == "step-audit")
    assert "stale or previous step's gradient" in prev.note


def test_patches_are_undone():
    from adflora_analysis.core import loop, mixers
    from adflora_analysis.synthetic.problem import QuadraticProblem

    before = (QuadraticProblem.local_update, mixers.synchronous, loop.synchronous)
    for bug in mut.BUGS.values():
        if bug.patch is not None:
            with bug.patch():
                pass
    assert (QuadraticProblem.local_update, mixers.synchronous, loop.synchronous) == before


def test_cli_unknown_bug_is_one_error_line():
    res = subprocess.run([sys.executable, "-m", "adflora_analysis", "synthetic", "mutate",
                          "--bugs", "step-x1.5,gossip-twise"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and res.stdout == ""
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown bug 'gossip-twise'")
    assert "did you mean 'gossip-twice'" in err[0]
