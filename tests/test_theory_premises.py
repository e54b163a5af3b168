"""Declared premises and columns of the theory checks (issue 20 item 4, issue 23 item 2):
``register_check(requires=..., reads=...)``, one evaluation of each premise per context, a
uniform n/a for every check whose premise fails (user checks included), ``columns_needed``,
and no import cycle between theory/data.py, frozen.py and gossip.py."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import adflora_analysis.theory as theory
from adflora_analysis.config import load_config
from adflora_analysis.errors import AdfloraError
from adflora_analysis.synthetic.config import SyntheticConfig
from adflora_analysis.synthetic.runner import run_study
from adflora_analysis.theory import REGISTRY, check_data, columns_needed, run_checks
from adflora_analysis.theory.registry import register_check

SMALL = dict(n_clients=8, rounds=16, local_steps=2, lr=0.05, rank=2, seeds=20, d_in=5,
             d_out=4, target_rank=2, samples_per_client=12, batch_size=4, constants_every=0,
             topology_samples=4000, switch_interval=3, methods=["adf-lora", "lora"])


def small(**kw) -> SyntheticConfig:
    return load_config(SyntheticConfig, data={**SMALL, "topology": {
        "graph": "encounter", "weights": "metropolis", "q": 0.3}, **kw})


def by(results, number, method="lora"):
    got = [r for r in results if r.number == number and r.method == method]
    assert got, f"no check {number} for {method}"
    return got


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "run"
    run_study(small(), out, progress=False)
    return out, run_checks(out, entry_points=False)


@pytest.fixture
def user_checks():
    """Remove the user checks a test registers in this process."""
    before = dict(REGISTRY)
    yield
    REGISTRY.clear()
    REGISTRY.update(before)


# ------------------------------------------------------------------ a failed premise
def test_metropolis_degree_off_by_one_stops_the_checks_resting_on_it(tmp_path, monkeypatch,
                                                                     clean):
    """Metropolis weights with the sender's degree off by one (rows sum to 1, columns do not):
    check 1 is violated and checks 2, 3, 4 and 6a–6c say n/a (premise failed: check 1) instead
    of a verdict on a meaningless p; on the clean run check 2 has a verdict."""
    from adflora_analysis.topology import weights

    assert by(clean[1], "2")[0].status == "held"
    orig = weights._pair_weight

    def off_by_one(rule, d_i, d_j, d_max):
        if rule == "metropolis" and d_j is not None:
            return 1.0 / (1.0 + np.maximum(d_i, d_j - 1.0))
        return orig(rule, d_i, d_j, d_max)

    monkeypatch.setattr(weights, "_pair_weight", off_by_one)
    run_study(small(), tmp_path / "run", progress=False)
    res = run_checks(tmp_path / "run", entry_points=False)
    one = by(res, "1")[0]
    assert one.status == "violated" and "not doubly stochastic" in one.note
    for number, method in (("2", "lora"), ("2", "adf-lora"), ("3", "adf-lora"), ("4", "lora"),
                           ("6a", "lora")):
        for r in by(res, number, method):
            assert r.status == "n/a", (number, method, r.status, r.note)
            assert r.note.startswith("premise failed: check 1"), r.note
            assert r.details["premise"] == "doubly-stochastic"
    # the metric unit test (6i) rests on no premise: it still runs
    assert by(res, "6i")[0].status == "held"


def test_premises_are_evaluated_once_per_context(clean, monkeypatch):
    from adflora_analysis.theory import premises

    calls: list[str] = []
    orig = premises.PREMISES["doubly-stochastic"]

    def counted(ctx):
        calls.append(ctx.method)
        return orig(ctx)

    monkeypatch.setitem(premises.PREMISES, "doubly-stochastic", counted)
    run_checks(clean[0], entry_points=False)
    users = sum("doubly-stochastic" in c.requires for c in REGISTRY.values())
    assert users >= 3                                  # 2, 3, 4, 6a... all rest on it
    assert sorted(calls) == ["adf-lora", "lora"]       # once per (variant, method)


def test_user_check_declares_premises_and_gets_the_same_status(tmp_path, user_checks):
    """A user check requiring synchronous gossip says n/a (stale gossip) on a stale run, like
    the built-ins; its function is never called."""
    called = []

    @register_check("my-sync-check", requires=("synchronous-gossip",))
    def mine(ctx):
        called.append(ctx.method)
        return []

    cfg = small(methods=["lora"], gossip={"staleness": 2})
    run_study(cfg, tmp_path / "run", progress=False)
    res = run_checks(tmp_path / "run", entry_points=False)
    got = [r for r in res if r.check == "my-sync-check"]
    assert [r.status for r in got] == ["n/a"] and got[0].note.startswith("stale gossip")
    assert not called
    assert by(res, "2")[0].note.startswith("stale gossip")


def test_unknown_premise_is_one_error_at_registration(user_checks):
    with pytest.raises(AdfloraError) as e:
        register_check("typo", requires=("synchronous-gosip",))(lambda ctx: None)
    assert "unknown premise 'synchronous-gosip'" in str(e.value)
    assert "did you mean 'synchronous-gossip'" in str(e.value)
    assert "typo" not in REGISTRY


def test_user_file_with_unknown_premise_errors_and_the_others_run(tmp_path, clean):
    f = tmp_path / "bad_premise.py"
    f.write_text("from adflora_analysis.theory import register_check\n"
                 "@register_check('bad', requires=('doubly-stochastik',))\n"
                 "def bad(ctx):\n    return None\n")
    res = run_checks(clean[0], check_files=[str(f)], entry_points=False)
    errs = [r for r in res if r.status == "error"]
    assert len(errs) == 1 and "doubly-stochastik" in errs[0].note, [r.note for r in errs]
    assert "did you mean 'doubly-stochastic'" in errs[0].note
    assert by(res, "2")[0].status == "held"


# ------------------------------------------------------------------ declared columns
def test_columns_needed_selection():
    everything = columns_needed("all")
    assert columns_needed("none") == frozenset()
    two = columns_needed(["gossip-contraction"])
    assert two == {"xi_A", "xi_B", "xi_A_local", "xi_B_local"}
    assert two <= everything
    assert {"disp_A", "gamma_A", "cross_term"} <= columns_needed(["consensus", "cross-term"])
    with pytest.raises(AdfloraError, match="did you mean 'frozen-block'"):
        columns_needed(["frozen-blok"])


def test_declared_columns_are_what_each_check_reads(clean, tmp_path):
    """Each built-in check, run on the rows without the columns that only *other* checks
    declare, gives the same statuses as on the full rows: it reads nothing undeclared."""
    run, full = clean
    data = check_data(run)
    declared = columns_needed("all")
    present = set(data.metrics.columns)
    for name, chk in REGISTRY.items():
        if not chk.builtin:
            continue
        drop = sorted((declared - set(chk.columns)) & present)
        d = check_data(run)
        d.metrics = d.metrics.drop(columns=drop)
        saved = dict(REGISTRY)
        REGISTRY.clear()
        REGISTRY[name] = chk
        try:
            res = run_checks(run, data=d, entry_points=False)
        finally:
            REGISTRY.clear()
            REGISTRY.update(saved)
        want = [(r.number, r.method, r.status) for r in full
                if r.check in {x.check for x in res}]
        got = [(r.number, r.method, r.status) for r in res]
        assert got == want, (name, drop)
        assert not any("column" in r.note and "not in the metrics" in r.note for r in res)


def test_a_missing_declared_column_is_a_clear_status(clean):
    d = check_data(clean[0])
    d.metrics = d.metrics.drop(columns=["disp_A", "disp_B"])
    res = run_checks(clean[0], data=d, entry_points=False)
    four = by(res, "4")[0]
    assert four.status == "n/a" and four.note.startswith("columns missing: disp_A, disp_B")
    assert by(res, "2")[0].status == "held"              # it does not read them


def test_run_made_without_check_columns_is_one_error(clean):
    """No check that reads rows can run (a run made with checks = "none"): one error naming
    the missing columns and how to get them."""
    d = check_data(clean[0])
    d.meta["checks"] = "none"
    d.metrics = d.metrics.drop(columns=sorted(columns_needed("all") & set(d.metrics.columns)))
    with pytest.raises(AdfloraError) as e:
        run_checks(clean[0], data=d, entry_points=False)
    msg = str(e.value)
    assert 'checks = "none"' in msg and "xi_A_local" in msg and 'checks = "all"' in msg


def test_unknown_column_declaration_is_refused(user_checks):
    with pytest.raises(AdfloraError):
        register_check("empty-col", reads=("",))(lambda ctx: None)


# ------------------------------------------------------------------ no import cycle
def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_no_import_cycle_between_data_frozen_gossip():
    root = Path(theory.__file__).parent
    mods = {m: _imports(root / f"{m}.py") for m in ("data", "frozen", "gossip", "premises")}
    pkg = "adflora_analysis.theory."
    assert not {pkg + "frozen", pkg + "gossip", pkg + "premises"} & mods["data"]
    assert pkg + "frozen" not in mods["gossip"]


def test_synthetic_checks_shim_still_works():
    from adflora_analysis.synthetic.checks import register_check as old

    assert old is register_check


# ------------------------------------------------------------------ p without the λ_max bias
def test_monte_carlo_p_of_a_non_exchangeable_sampler_is_unbiased():
    """The encounter law (exact p = 0.365655, n = 10, q = 0.1) read as if not exchangeable:
    the plug-in λ_max of the Monte Carlo E[WᵀW] put p ~0.0046 low at 20,000 draws; the
    cross-fitted halves are unbiased within their error, with an honest standard error. The
    exchangeable estimator is untouched."""
    import copy

    from adflora_analysis.seeding import numpy_rng
    from adflora_analysis.topology import make_sampler
    from adflora_analysis.topology.rates import consensus_basis, consensus_rate
    from adflora_analysis.topology.samplers import draw_batches

    s = make_sampler("encounter", 10, q=0.1, weights="metropolis")
    ne = copy.copy(s)
    ne.exchangeable = False
    exact, N, seeds = 0.365655, 20000, 8
    new = [consensus_rate(ne, samples=N, seed=sd) for sd in range(seeds)]
    p = np.array([r.p for r in new])
    se_mean = p.std(ddof=1) / np.sqrt(seeds)
    assert abs(p.mean() - exact) < 3 * se_mean + 1e-4, (p.mean(), se_mean)
    # its reported error matches the spread over seeds (within a factor 2)
    assert 0.5 < np.mean([r.stderr for r in new]) / p.std(ddof=1) < 2

    def plug_in(seed):          # the estimator it replaces, same draws
        U = consensus_basis(10)
        rng, M = numpy_rng(seed, "consensus-rate"), np.zeros((9, 9))
        for k in draw_batches(N, 10):
            WU = ne.sample_batch(rng, k) @ U
            M += np.einsum("kia,kib->ab", WU, WU)
        return 1 - float(np.linalg.eigvalsh(M / N)[-1])

    old = np.array([plug_in(sd) for sd in range(seeds)])
    assert old.mean() - exact < -0.003                  # the bias it removes
    # exchangeable samplers keep their exact-mean estimator (golden tests pin its values)
    r = consensus_rate(s, samples=N, seed=0)
    assert r.method == "monte-carlo" and abs(r.p - exact) < 4 * r.stderr
