"""Synthetic testbed: config errors, exact gradients and constants, runner files, CLI, checks."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from adflora_analysis.config import load_config
from adflora_analysis.errors import AdfloraError, DivergenceError
from adflora_analysis.synthetic.config import SyntheticConfig
from adflora_analysis.synthetic.constants import hessian_norm, hvp, point_bound, sigma_sq
from adflora_analysis.synthetic.problem import QuadraticProblem
from adflora_analysis.synthetic.runner import run_study

SMALL = dict(n_clients=4, rounds=6, local_steps=2, lr=0.05, rank=2, seeds=3, d_in=5, d_out=4,
             target_rank=2, samples_per_client=12, batch_size=4, constants_every=3,
             topology_samples=500, switch_interval=2)


def small(**kw) -> SyntheticConfig:
    return load_config(SyntheticConfig, data={**SMALL, "topology": {
        "graph": "encounter", "weights": "metropolis", "q": 0.5}, **kw})


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize("kw, match", [
    ({"rank": 6}, "rank = 6 must be between 1 and min"),
    ({"switch_interval": 0}, "switch_interval T = 0"),
    ({"methods": ["adf-lora", "fedavg"]}, "unknown method 'fedavg'; valid: adf-lora, ffa-lora"),
    ({"lr": 0.0}, "lr = 0.0 must be positive"),
    ({"batch_size": 99}, "batch_size = 99"),
    ({"heterogeneity": 1.5}, "heterogeneity"),
    ({"rnak": 2}, "unknown config key 'rnak'"),
    ({"seeds": 0}, "seeds = 0"),
])
def test_config_errors(kw, match):
    with pytest.raises(AdfloraError, match=match):
        small(**kw)


def test_config_unknown_topology_key_and_seed_list():
    with pytest.raises(AdfloraError, match="unknown config key in \\[topology\\] 'qq'"):
        load_config(SyntheticConfig, data={"topology": {"graph": "ring", "qq": 1}})
    assert small(seeds=[3, 7]).seed_list == [3, 7]


def test_shipped_studies_load():
    from pathlib import Path

    from adflora_analysis.synthetic.runner import expand_variants

    root = Path(__file__).resolve().parents[1] / "synthetic"
    counts = {}
    for p in sorted(root.glob("*.toml")):
        counts[p.stem] = len(expand_variants(load_config(SyntheticConfig, p)))
    assert counts == {"adaptive_t": 28, "async": 17, "async_models": 18, "bounds": 1,
                      "heterogeneity": 6,
                      "scale": 1, "scale_100k": 1, "step_decay": 1, "t_ablation": 5,
                      "topology_measures": 40, "topology_sweep": 9}


# --------------------------------------------------------------------------- problem
def _autograd_loss(prob: QuadraticProblem, A, B, i_seed=0):
    """f_i summed over layers from the raw data (X, R), per client."""
    X, R = prob.X.double()[i_seed], prob.R.double()[i_seed]      # (n, L, m, d)
    P = prob.s * B @ A                                             # (n, L, do, di)
    res = X @ P.transpose(-1, -2) - R
    return res.pow(2).sum((-2, -1)).sum(-1) / (2 * X.shape[-2])     # (n,)


def test_full_gradients_and_loss_match_autograd():
    cfg = small(n_layers=2, alpha=4.0)
    prob = QuadraticProblem(cfg)
    g = torch.Generator().manual_seed(1)
    A = torch.randn(4, 2, 2, 5, generator=g, dtype=torch.float64, requires_grad=True)
    B = torch.randn(4, 2, 4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    f = _autograd_loss(prob, A, B)
    f.sum().backward()
    grads = prob.full_grads(A.detach(), B.detach(), prob.Sig[0], prob.C[0])
    torch.testing.assert_close(grads["A"], A.grad)
    torch.testing.assert_close(grads["B"], B.grad)
    ours = prob._loss(A.detach(), B.detach(), prob.Sig[0], prob.C[0], prob.c0[0]).sum(-1)
    torch.testing.assert_close(ours, f.detach())


def test_minibatch_gradient_with_all_rows_is_the_full_gradient():
    prob = QuadraticProblem(small())
    st = prob.initial_state()
    A = torch.stack(st.A, 2)
    B = torch.randn(3, 4, 1, 4, 2, dtype=torch.float64)
    idx = torch.arange(12).expand(3, 4, 1, 12)
    mb = prob._minibatch_grads(A, B, idx, ("A", "B"))
    full = prob.full_grads(A, B, prob.Sig, prob.C)
    for k in "AB":
        torch.testing.assert_close(mb[k], full[k])


def test_sigma_sq_matches_monte_carlo_variance():
    prob = QuadraticProblem(small(n_clients=2, seeds=1))
    g = torch.Generator().manual_seed(3)
    A = torch.randn(1, 2, 1, 2, 5, generator=g, dtype=torch.float64)
    B = torch.randn(1, 2, 1, 4, 2, generator=g, dtype=torch.float64)
    c = prob.cfg
    exact = sigma_sq(prob.X, prob.R, prob.s, A, B, noise_kind=c.noise_kind, noise=c.noise,
                     batch_size=c.batch_size)
    full = prob.full_grads(A, B, prob.Sig, prob.C)
    draws = 4000
    idx = torch.randint(0, 12, (draws, 1, 2, 1, 4), generator=g)
    tot = torch.zeros(1, 2, dtype=torch.float64)
    for d in range(draws):
        mb = prob._minibatch_grads(A, B, idx[d], ("A", "B"))
        tot += sum((mb[k] - full[k]).pow(2).sum((-3, -2, -1)) for k in "AB")
    mc = tot / draws
    torch.testing.assert_close(mc, exact, rtol=0.08, atol=0)


def test_f_star_is_the_rank_r_minimum():
    prob = QuadraticProblem(small(seeds=1, n_clients=3))
    fstar = float(prob.f_star[0])
    # gradient descent on the global objective from many starts never goes below f*
    Sb, Cb, cb = prob.Sig_bar64[0], prob.C_bar64[0], prob.c_bar64[0]
    best = np.inf
    for s in range(3):
        g = torch.Generator().manual_seed(s)
        A = torch.randn(1, 2, 5, generator=g, dtype=torch.float64) * 0.3
        B = torch.randn(1, 4, 2, generator=g, dtype=torch.float64) * 0.3
        for _ in range(3000):
            gr = prob.full_grads(A, B, Sb, Cb)
            A, B = A - 0.05 * gr["A"], B - 0.05 * gr["B"]
        best = min(best, float(prob._loss(A, B, Sb, Cb, cb).sum()))
    assert best >= fstar - 1e-9
    assert best - fstar < 1e-6


def test_hessian_power_iteration_and_bounds():
    prob = QuadraticProblem(small(seeds=1, n_clients=2))
    g = torch.Generator().manual_seed(5)
    A = torch.randn(2, 2, 5, generator=g, dtype=torch.float64)
    B = torch.randn(2, 4, 2, generator=g, dtype=torch.float64)
    Sig, C = prob.Sig[0, :, 0], prob.C[0, :, 0]
    # dense Hessian by autograd, per client
    for i in range(2):
        def f(x, i=i):
            a, b = x[:10].reshape(2, 5), x[10:].reshape(4, 2)
            return prob._loss(a, b, Sig[i], C[i], torch.tensor(0.0, dtype=torch.float64))
        x0 = torch.cat([A[i].flatten(), B[i].flatten()])
        H = torch.autograd.functional.hessian(f, x0)
        true = torch.linalg.eigvalsh(H).abs().max()
        U, V = torch.randn(2, 5, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
        HA, HB = hvp(prob.s, A[i], B[i], U, V, Sig[i], C[i])
        torch.testing.assert_close(torch.cat([HA.flatten(), HB.flatten()]),
                                   H @ torch.cat([U.flatten(), V.flatten()]))
        est = hessian_norm(prob.s, A[i], B[i], Sig[i], C[i], iters=200)
        assert est <= true * (1 + 1e-9)
        assert est >= 0.95 * true
        assert point_bound(prob.s, A[i], B[i], Sig[i], C[i]) >= true * (1 - 1e-9)


def test_seed_results_do_not_depend_on_the_batch():
    a = QuadraticProblem(small(seeds=[0, 1]))
    b = QuadraticProblem(small(seeds=[1]))
    torch.testing.assert_close(a.C[1], b.C[0])
    sa, sb = a.initial_state(), b.initial_state()
    torch.testing.assert_close(sa.A[0][1], sb.A[0][0])
    ua, _ = a.local_update(sa, ("B",), 0)
    ub, _ = b.local_update(sb, ("B",), 0)
    torch.testing.assert_close(ua.B[0][1], ub.B[0][0])


def test_shared_init_and_per_client_init():
    st = QuadraticProblem(small()).initial_state()
    assert torch.equal(st.A[0][:, :1].expand_as(st.A[0]), st.A[0])
    assert torch.count_nonzero(st.B[0]) == 0
    st2 = QuadraticProblem(small(per_client_init=True)).initial_state()
    assert not torch.equal(st2.A[0][:, 0], st2.A[0][:, 1])


# --------------------------------------------------------------------------- runner + checks
@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = small(rounds=12, seeds=6, methods=["adf-lora", "rolora", "ffa-lora", "lora"])
    df = run_study(cfg, out, progress=False)
    return out, df


def test_run_directory_contents(small_run):
    out, df = small_run
    for f in ("config.toml", "meta.json", "metrics.jsonl", "metrics.parquet",
              "constants.parquet", "mixing.parquet"):
        assert (out / f).exists(), f
    pq = pd.read_parquet(out / "metrics.parquet")
    for col in ("method", "seed", "round", "layer", "xi_A", "xi_B", "cross_term",
                "grad_norm_sq", "loss", "loss_gap", "zeta_sq", "sigma_sq_max", "L_hull",
                "xi_A_local", "disp_B", "bytes_sent", "switch_interval", "variant"):
        assert col in pq, col
    # one row per method, seed, round and layer (1 layer + "all")
    assert len(pq) == 4 * 6 * 12 * 2
    assert pq.groupby(["method", "seed", "round", "layer"]).size().max() == 1
    meta = json.loads((out / "meta.json").read_text())
    assert 0 < meta["p"] <= 1 and meta["p_stderr"] >= 0
    assert meta["second_moment_rate"] is not None and meta["status"] == "done"
    assert meta["variants"]["base"]["switch_interval"]["rolora"] == 2
    allrows = pq[pq.layer == "all"]
    assert (allrows.loss_gap > -1e-9).all()


def test_bytes_sent_counts_a_server_as_2n_messages(tmp_path):
    """The same W = J, realised by a server (2n messages) or by all-to-all gossip on the
    complete graph with uniform weights (n(n-1) messages)."""
    per_client = 4 * (2 * 5 + 4 * 2)   # float32 A (2 x 5) + B (4 x 2) of the one layer
    sent = {}
    for weights in ("server", "uniform"):
        cfg = small(rounds=2, seeds=1, methods=["lora"], dtype="float32", topology={
            "graph": "complete", "weights": weights})
        pq = run_study(cfg, tmp_path / weights, progress=False)
        sent[weights] = pq[pq.layer == "all"].bytes_sent.unique().tolist()
    assert sent == {"server": [2 * 4 * per_client], "uniform": [4 * 3 * per_client]}


# the theory checks' tests live in tests/test_checks.py and tests/test_checks_planted.py


def test_divergence_stops_with_round_and_method_and_keeps_rows(tmp_path):
    cfg = small(lr=500.0, rounds=30, methods=["lora"], constants_every=0)
    with pytest.raises(DivergenceError, match=r"round \d+ .*method lora"):
        run_study(cfg, tmp_path, progress=False)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["status"] == "diverged"
    assert (tmp_path / "metrics.parquet").exists() or (tmp_path / "metrics.jsonl").exists()


def test_resume_matches_uninterrupted(tmp_path):
    cfg = small(rounds=8, checkpoint_every=2, methods=["adf-lora", "lora"])
    full = run_study(cfg, tmp_path / "a", progress=False)
    run_study(cfg, tmp_path / "b", progress=False, stop_after=11)
    res = run_study(cfg, tmp_path / "b", progress=False, resume=True)
    key = ["job", "seed", "round", "layer"]
    pd.testing.assert_frame_equal(full.sort_values(key).reset_index(drop=True),
                                  res.sort_values(key).reset_index(drop=True))


# --------------------------------------------------------------------------- CLI
def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "adflora_analysis", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_cli_run_check_json_strict(tmp_path):
    cfgp = tmp_path / "c.toml"
    cfgp.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in SMALL.items())
                    + '\nmethods = ["adf-lora", "rolora"]\n[topology]\ngraph = "ring"\n'
                    'weights = "metropolis"\n')
    out = tmp_path / "run"
    r = _cli("synthetic", "run", str(cfgp), "--out", str(out), "rounds=8")
    assert r.returncode == 0, r.stderr
    # off a terminal, stderr carries only progress lines (job start/end, every tenth round)
    assert r.stderr.strip() and not [ln for ln in r.stderr.splitlines()
                                     if ln.startswith(("error", "warning", "Traceback"))]
    r = _cli("synthetic", "check", str(out), "--json")
    assert r.returncode == 0, r.stderr
    items = json.loads(r.stdout)["results"]
    assert {"check", "number", "method", "status", "ratio", "ratio_ci"} <= set(items[0])
    assert {i["method"] for i in items} == {"adf-lora", "rolora"}
    assert (out / "checks.json").exists() and (out / "check_curves.parquet").exists()
    r = _cli("synthetic", "check", str(out), "--strict")
    bad = [i for i in items if i["status"] in ("violated", "error") and i["expected"] == "hold"]
    assert r.returncode == (1 if bad else 0)
    # bad input: one line, exit 2
    r = _cli("synthetic", "run", str(cfgp), "--out", str(tmp_path / "x"), "rank=9")
    assert r.returncode == 2 and r.stderr.startswith("error: rank = 9")
    assert len(r.stderr.strip().splitlines()) == 1
    r = _cli("synthetic", "run", str(cfgp), "--out", str(tmp_path / "y"), "lr=1000",
             "rounds=30")
    assert r.returncode == 2 and "error: non-finite" in r.stderr and "round" in r.stderr
    # the run had started: progress lines, then the one error line last
    errors = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("error")]
    assert len(errors) == 1 and r.stderr.strip().splitlines()[-1] == errors[0]
    assert (tmp_path / "y" / "metrics.jsonl").exists()
