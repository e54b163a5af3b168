"""The six theory checks of docs/architecture.md §5, evaluated on a finished synthetic run.

Every check is a function of the run's metrics table (one method of one variant) and measured
constants (p with its Monte Carlo standard error, the second-moment rate, L, sigma^2, f*), and
returns a :class:`CheckResult`: the measured curve, the bound, whether it held, and the worst
slack. Derivations: ``docs/theory.md``.

**Statistics.** Bounds on E[.] over the random W^t (and gradient noise) are tested across
seeds. Where the bound is conditional on the past (checks 2, 3 and the one-step form of 4:
E[m | F_t] <= b with b known at time t), each seed contributes D_s = m_s / b_s - 1, whose mean
is <= 0 in expectation whatever the seed's scale; for bounds on total expectations (the unrolled
form of 4, check 5) D_s = m_s - b_s. At every point, mean(D) is compared with its standard error
``se = sqrt(sd(D)^2 / S + (effect of p - se_p)^2)`` (Monte Carlo error of the seeds and of the
estimated p). A check **holds** if (i) every point satisfies mean(D) <= t * se with t the
Student-t (S - 1 d.o.f.) quantile of the one-sided level of ``z`` (default 3, i.e. 0.135%)
Bonferroni-divided over the check's points, and (ii) the pooled sum of D over all points is
within the same level undivided. ``worst_z``, ``points_over_z`` (points with z > 3, expected to
be a few by chance where a bound is tight) and ``pooled_z`` are reported so a reader can judge.
**Slack** at a point is ``(bound - measured) / bound`` of the seed means; the reported slack is
the worst (smallest) over points (noisy where a bound is tight: see ``pooled_slack``); negative
means the seed mean exceeded the bound.

**Expected failures.** Frozen-block consensus under ``rolora`` (the frozen block is never
mixed) is expected to fail: it is reported with ``expected = "fail"`` and its numbers, and
``--strict`` does not count it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from adflora_analysis.errors import AdfloraError

Z_DEFAULT = 3.0
RTOL = 1e-9
C_DECAY_TOL = 0.1  # check 6b: "C -> 0" means final C <= 10% of its peak


@dataclass
class CheckResult:
    """Outcome of one check for one method (and variant).

    ``curve`` has at least ``measured``, ``bound``, ``stderr``, ``slack``, ``held`` and an
    index column (``round``, or ``stretch``/``k``); ``details`` holds the check's numbers (rates,
    constants, findings).
    """

    check: str
    number: int
    method: str
    variant: str
    held: bool | None
    slack: float
    expected: str = "hold"
    worst_z: float = float("nan")
    violations: int = 0
    points: int = 0
    source: str = ""
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    curve: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)

    @property
    def status(self) -> str:
        if self.held is None:
            return "n/a"
        if self.expected == "fail":
            return "finding (fails as expected)" if not self.held else "held (expected to fail)"
        return "held" if self.held else "VIOLATED"

    @property
    def unexpected_violation(self) -> bool:
        return self.held is False and self.expected == "hold"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the curve)."""
        return _clean({"check": self.check, "number": self.number, "method": self.method,
                       "variant": self.variant, "held": self.held, "slack": self.slack,
                       "expected": self.expected, "status": self.status,
                       "worst_z": self.worst_z, "violations": self.violations,
                       "points": self.points, "source": self.source, "note": self.note,
                       **{f"detail_{k}" if k in ("check", "method") else k: v
                          for k, v in self.details.items()}})


def _clean(o: Any) -> Any:
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_clean(v) for v in o]
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


# ---------------------------------------------------------------------------- helpers
@dataclass
class RunData:
    """What the checks read from a run directory."""

    metrics: pd.DataFrame
    meta: dict[str, Any]
    constants: pd.DataFrame | None
    mixing: pd.DataFrame | None

    def variant_meta(self, variant: str) -> dict[str, Any]:
        v = self.meta.get("variants", {})
        return v.get(variant, self.meta)


def load_run(run_dir: str | Path) -> RunData:
    """Read ``metrics.parquet`` (or ``metrics.jsonl`` of an unfinished run), ``meta.json``,
    ``constants.parquet`` and ``mixing.parquet``."""
    d = Path(run_dir)
    if not (d / "meta.json").exists():
        raise AdfloraError(f"{str(d)!r} is not a synthetic run directory (no meta.json)",
                           "pass the directory that `adflora synthetic run --out` wrote")
    meta = json.loads((d / "meta.json").read_text())
    if (d / "metrics.parquet").exists():
        df = pd.read_parquet(d / "metrics.parquet")
    else:
        from adflora_analysis import fileio

        df = pd.DataFrame(fileio.read_jsonl(d / "metrics.jsonl"))
    if df.empty:
        raise AdfloraError(f"{str(d)!r} has no metric rows", "run the study first")
    if "variant" not in df:
        df["variant"] = "base"
    consts = pd.read_parquet(d / "constants.parquet") if (d / "constants.parquet").exists() \
        else None
    mixing = pd.read_parquet(d / "mixing.parquet") if (d / "mixing.parquet").exists() else None
    return RunData(df, meta, consts, mixing)


class _Run:
    """One (variant, method) slice of the metrics as seed x round arrays (layer "all")."""

    def __init__(self, df: pd.DataFrame):
        a = df[df.layer == "all"].sort_values(["seed", "round"])
        self.seeds = sorted(a.seed.unique())
        self.rounds = np.array(sorted(a["round"].unique()))
        self.S, self.R = len(self.seeds), len(self.rounds)
        if len(a) != self.S * self.R:
            raise AdfloraError("metrics are ragged (a seed is missing rounds)",
                               "check only finished runs")
        self.df = a
        first = a[a.seed == self.seeds[0]]
        self.trained = list(first.trained)
        self.mixed = list(first.mixed)
        self.layers = df[df.layer != "all"]

    def mat(self, col: str) -> np.ndarray:
        return self.df[col].to_numpy(dtype=float).reshape(self.S, self.R)


@dataclass
class _Cmp:
    """A paired comparison: the curve of seed means plus what the pooled test needs."""

    curve: pd.DataFrame
    D: np.ndarray          # (S, P) per-seed measured - bound at the kept points
    dB: np.ndarray         # (P,) change of the mean bound when p drops by se_p
    bound_sum: float
    measured_sum: float
    keep: np.ndarray


def _ratio(m: np.ndarray, b: np.ndarray) -> np.ndarray:
    tiny = 1e-24 + 1e-12 * float(np.nanmax(np.abs(b), initial=0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > tiny, m / b, np.where(m <= tiny, 0.0, np.inf))


def _compare(measured: np.ndarray, bound_fn, p: float, p_se: float,
             rtol: float = RTOL, normalized: bool = False) -> _Cmp:
    """Paired across-seed comparison at every point (columns). ``measured`` (S, P);
    ``bound_fn(p)`` gives the (S, P) bound for a consensus rate p. Points whose mean bound is
    round-off of zero (a block exactly in consensus) are dropped.

    ``normalized``: the bound is conditional on the past (E[m | F] <= b with b F-measurable), so
    the per-seed ratio m/b has E[m/b] <= 1 and the test runs on D = m/b - 1, which removes
    the seeds' differing scales (far more power than raw differences). Otherwise
    D = m - b (valid for bounds on total expectations)."""
    bound = bound_fn(p)
    mb_all = bound.mean(0)
    keep = np.abs(mb_all) > 1e-12 * np.nanmax(np.abs(mb_all), initial=0.0) + 1e-24
    measured, bound = measured[:, keep], bound[:, keep]
    S = measured.shape[0]
    lo = bound_fn(max(p - p_se, 1e-12))[:, keep] if p_se > 0 else bound
    if normalized:
        D = _ratio(measured, bound) - 1
        dB = (_ratio(measured, lo) - 1).mean(0) - D.mean(0)
        scale = np.ones(D.shape[1])
    else:
        D = measured - bound
        dB = (lo - bound).mean(0)
        scale = np.abs(bound.mean(0))
    mD = D.mean(0)
    with np.errstate(invalid="ignore"):
        sd = D.std(0, ddof=1) if S > 1 else np.zeros(D.shape[1])
    sd = np.nan_to_num(sd, nan=np.inf)
    se = np.sqrt(sd ** 2 / S + dB ** 2)
    mb, mm = bound.mean(0), measured.mean(0)
    excess = mD - rtol * scale
    with np.errstate(divide="ignore", invalid="ignore"):
        slack = (mb - mm) / np.abs(mb)
        zs = np.where(excess <= 0, np.minimum(mD / np.where(se > 0, se, np.inf), 0.0),
                      np.where(se > 0, excess / se, np.inf))
    curve = pd.DataFrame({"measured": mm, "bound": mb, "stderr": se, "slack": slack,
                          "z": zs})
    return _Cmp(curve, D, dB, float(mb.sum()), float(mm.sum()), keep)


def _point_threshold(z: float, points: int, seeds: int) -> float:
    """Per-point critical value: the one-sided level of ``z`` (normal), Bonferroni-divided over
    the points of the check, as a Student-t quantile with S - 1 degrees of freedom."""
    from scipy import stats

    alpha = stats.norm.sf(z) / max(points, 1)
    return float(stats.t.isf(alpha, df=max(seeds - 1, 1))) if seeds > 1 else z


def _decide(parts: list[tuple[_Cmp, pd.DataFrame]], z: float
            ) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """Join comparisons (each with its index columns) into one curve and decide: every point
    within the Bonferroni-t threshold *and* the pooled sum over points within z standard
    errors (t quantile). Returns (curve, CheckResult fields, extra details)."""
    from scipy import stats

    parts = [(c, i) for c, i in parts if len(c.curve)]
    if not parts:
        return pd.DataFrame(), {"held": None, "slack": float("nan"), "worst_z": float("nan"),
                                "violations": 0, "points": 0}, {}
    curve = pd.concat([pd.concat([idx[c.keep].reset_index(drop=True), c.curve], axis=1)
                       for c, idx in parts], ignore_index=True)
    S = parts[0][0].D.shape[0]
    m = len(curve)
    thr = _point_threshold(z, m, S)
    curve["held"] = curve.z <= thr
    Dsum = sum(c.D.sum(1) for c, _ in parts)
    dBsum = sum(float(c.dB.sum()) for c, _ in parts)
    with np.errstate(invalid="ignore"):
        sd_pool = float(np.nan_to_num(Dsum.std(ddof=1), nan=np.inf)) if S > 1 else 0.0
    se_pool = math.sqrt(sd_pool ** 2 / S + dBsum ** 2)
    bsum = sum(c.bound_sum for c, _ in parts)
    msum = sum(c.measured_sum for c, _ in parts)
    tq = float(stats.t.isf(stats.norm.sf(z), df=max(S - 1, 1))) if S > 1 else z
    pooled_ok = bool(Dsum.mean() <= tq * se_pool + RTOL * max(abs(bsum), float(m)))
    fields = {"held": bool(curve.held.all() and pooled_ok),
              "slack": float(curve.slack.min()), "worst_z": float(curve.z.max()),
              "violations": int((~curve.held).sum()) + (0 if pooled_ok else 1), "points": m}
    extra = {"pooled_slack": (bsum - msum) / abs(bsum) if bsum else float("nan"),
             "pooled_z": float(Dsum.mean() / se_pool) if se_pool > 0 else float("nan"),
             "pooled_held": pooled_ok, "point_threshold": thr,
             "points_over_z": int((curve.z > z).sum()),
             "median_slack": float(curve.slack.median())}
    return curve, fields, extra


def _tiny(x: np.ndarray) -> float:
    """Values below this are round-off of an exactly-zero consensus error."""
    return 1e-24 + 1e-12 * float(np.nanmax(np.abs(x))) if np.size(x) else 1e-24


# ---------------------------------------------------------------------------- check 1
def check_mixing(mixing: pd.DataFrame | None, vmeta: dict[str, Any], method: str,
                 variant: str, *, z: float = Z_DEFAULT, tol: float = 1e-9) -> CheckResult:
    """Check 1 — mixing validity of every W^t the run used.

    Holds if every W^t is nonnegative, row- and column-stochastic and symmetric (within ``tol``)
    and E[W] mixes: p - z * se_p > 0 with p = 1 - lambda_max((I-J) E[W^T W] (I-J)) (Koloskova
    et al. 2020, Assumption 4 with tau = 1; docs/architecture.md §3). Slack = the margin p - z se_p.
    Source: Koloskova, Loizou, Boreiri, Jaggi, Stich, "A Unified Theory of Decentralized SGD
    with Changing Topology and Local Updates", ICML 2020, Assumption 4 (W^t doubly stochastic,
    Definition 1) and Boyd et al. 2006 (gossip: doubly stochastic, symmetric).
    """
    p, se = float(vmeta.get("p") or 0.0), float(vmeta.get("p_stderr") or 0.0)
    mv = vmeta.get("mixing_validity") or {}
    if mixing is not None and not mixing.empty:
        m = mixing[mixing.variant == variant] if "variant" in mixing else mixing
        mv = {"max_row_err": float(m.row_err.max()), "max_col_err": float(m.col_err.max()),
              "min_entry": float(m.min_entry.min()), "max_asym": float(m.asym.max()),
              "mean_degree": float(m.mean_degree.mean()), "matrices": len(m)}
    ds = mv.get("max_row_err", math.inf) <= tol and mv.get("max_col_err", math.inf) <= tol
    nonneg = mv.get("min_entry", -math.inf) >= -tol
    sym = mv.get("max_asym", math.inf) <= tol
    margin = p - z * se
    held = bool(ds and nonneg and sym and margin > 0)
    reasons = [r for r, ok in (("not doubly stochastic", ds), ("negative entries", nonneg),
                               ("not symmetric", sym), ("p not > 0", margin > 0)) if not ok]
    return CheckResult("mixing-validity", 1, method, variant, held, margin, points=int(
        mv.get("matrices", 0)), worst_z=float("nan"), violations=len(reasons),
        source="Koloskova et al. 2020, Assumption 4 / Definition 1",
        note="; ".join(reasons), details={**mv, "p": p, "p_stderr": se,
                                          "p_method": (vmeta.get("topology") or {}).get(
                                              "p_method")})


# ---------------------------------------------------------------------------- check 2
def check_gossip_contraction(run: _Run, p: float, p_se: float, rho: float | None,
                             method: str, variant: str, *, z: float = Z_DEFAULT
                             ) -> CheckResult:
    """Check 2 — one gossip step contracts consensus in expectation:

        E[ Xi(after gossip) | X ] <= (1 - p) Xi(before gossip),

    since E||(W - J) X||^2 = tr(X^T (I-J) E[W^T W] (I-J) X) <= (1 - p) ||(I - J) X||^2 (W doubly
    stochastic, so (W - J) = W (I - J)). Tested for every mixed block at every round with
    before = ``xi_X_local`` (after the local update) and after = ``xi_X`` of the same round.
    Source: Koloskova et al. 2020, Assumption 4 (eq. (5)) with tau = 1; Boyd, Ghosh, Prabhakar,
    Shah, "Randomized gossip algorithms", IEEE Trans. Inf. Theory 2006, Lemma 1.
    Reports the pooled measured ratio sum(after)/sum(before) per block against 1 - p and the
    exact second-moment rate rho (the asymptotic decay of repeated gossip, rho <= 1 - p).
    """
    parts, det = [], {"one_minus_p": 1 - p, "second_moment_rate": rho}
    for blk in ("A", "B"):
        before, after = run.mat(f"xi_{blk}_local"), run.mat(f"xi_{blk}")
        cols = [j for j in range(run.R) if blk in run.mixed[j]
                and before[:, j].mean() > _tiny(before)]
        if not cols:
            continue
        b, a = before[:, cols], after[:, cols]
        c = _compare(a, lambda pp, b=b: (1 - pp) * b, p, p_se, normalized=True)
        parts.append((c, pd.DataFrame({"block": blk, "round": run.rounds[cols]})))
        det[f"ratio_{blk}"] = float(a.sum() / b.sum())
        det[f"ratio_{blk}_median"] = float(np.median(a.mean(0) / b.mean(0)))
    curve, fields, extra = _decide(parts, z)
    det.update(extra)
    rates = ", ".join(f"{k[-1]}: {det[k]:.4f}" for k in ("ratio_A", "ratio_B") if k in det)
    note = (f"measured E-ratio after/before ({rates}) vs 1 - p = {1 - p:.4f}"
            + (f", second-moment rate {rho:.4f}" if rho is not None else "")
            + f"; pooled slack {det.get('pooled_slack', float('nan')):.3g}")
    return CheckResult("gossip-contraction", 2, method, variant, **fields, note=note,
                       source="Koloskova et al. 2020, Assumption 4; Boyd et al. 2006",
                       details=det, curve=curve)


# ---------------------------------------------------------------------------- check 3
def _stretches(flags: list[bool]) -> list[tuple[int, int]]:
    """Maximal runs [start, end) where flags is True."""
    out, start = [], None
    for i, f in enumerate([*flags, False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            out.append((start, i))
            start = None
    return out


def fit_geometric_rate(series: list[np.ndarray], n_boot: int = 200, seed: int = 0
                       ) -> tuple[float, float]:
    """Pooled geometric rate of decaying stretches: each entry is (S, k+1) per-seed values
    Xi(start), Xi(start+1), ...; fits log(mean over seeds) = a_stretch + k log(rho) by least
    squares with a free intercept per stretch. Returns (rho, bootstrap stderr over seeds)."""
    def fit(idx) -> float:
        num = den = 0.0
        for M in series:
            y = np.log(np.maximum(M[idx].mean(0), 1e-300))
            k = np.arange(len(y), dtype=float)
            kc = k - k.mean()
            num += float((kc * (y - y.mean())).sum())
            den += float((kc * kc).sum())
        return math.exp(num / den) if den > 0 else float("nan")

    if not series:
        return float("nan"), float("nan")
    S = series[0].shape[0]
    rho = fit(np.arange(S))
    rng = np.random.default_rng(seed)
    boots = [fit(rng.integers(0, S, S)) for _ in range(n_boot)] if S > 1 else []
    return rho, float(np.std(boots, ddof=1)) if len(boots) > 1 else float("nan")


def check_frozen_block(run: _Run, p: float, p_se: float, rho: float | None, method: str,
                       variant: str, *, z: float = Z_DEFAULT) -> list[CheckResult]:
    """Check 3 — frozen-block consensus (ADF-LoRA's claim).

    Over a stretch of k rounds in which block X is not trained but is gossiped every round,
    X only mixes, so by check 2 applied k times (tower rule, W^t independent of the past):

        E Xi_X(t0 + k) <= (1 - p)^k Xi_X(t0),

    where Xi_X(t0) is the value entering the stretch (= ``xi_X_local`` of its first round,
    since the local update leaves X unchanged). Source: Koloskova et al. 2020, Assumption 4
    iterated (their Lemma 4 / consensus recursion with no gradient steps); ADF-LoRA (Wang et al.,
    arXiv 2511.18291), the block-wise consensus argument for mixing both factors.

    If X is frozen and *not* gossiped (``rolora``; ``ffa-lora``'s A), Xi_X stays exactly flat:
    the bound is expected to fail; this is reported as a finding (``expected = "fail"``) with
    the mean ratio Xi(end)/Xi(start) and the bound's value. Stretches entering with Xi ~ 0
    (shared init) are skipped. Also fits the geometric rate of the frozen block's Xi
    (:func:`fit_geometric_rate`) against 1 - p and the exact second-moment rate.
    """
    out = []
    for blk in ("A", "B"):
        frozen = [blk not in tr for tr in run.trained]
        xi, start_vals = run.mat(f"xi_{blk}"), run.mat(f"xi_{blk}_local")
        tiny = _tiny(np.concatenate([xi, start_vals], 1))
        mixed_rows, flat_rows, series, flat_ratios = [], [], [], []
        for si, (a, b) in enumerate(_stretches(frozen)):
            mixed = [blk in run.mixed[j] for j in range(a, b)]
            x0 = start_vals[:, a]
            if x0.mean() <= tiny:
                continue
            M = np.concatenate([x0[:, None], xi[:, a:b]], 1)     # (S, k+1)
            k = np.arange(1, b - a + 1)
            if all(mixed) or not any(mixed):
                c = _compare(M[:, 1:], lambda pp, x0=x0, k=k: x0[:, None] * (1 - pp) ** k,
                             p, p_se, normalized=True)
                idx = pd.DataFrame({"block": blk, "stretch": si, "round": run.rounds[a:b],
                                    "k": k, "xi_start": x0.mean()})
                if all(mixed):
                    mixed_rows.append((c, idx))
                    series.append(M)
                else:
                    flat_rows.append((c, idx))
                    flat_ratios.append(M[:, -1].mean() / M[:, 0].mean())
        for rows, expected in ((mixed_rows, "hold"), (flat_rows, "fail")):
            if not rows:
                continue
            curve, fields, extra = _decide(rows, z)
            det: dict[str, Any] = {"block": blk, "one_minus_p": 1 - p,
                                   "second_moment_rate": rho,
                                   "stretches": int(curve.stretch.nunique()),
                                   "stretch_length": int(curve.k.max()), **extra}
            if expected == "hold":
                r, r_se = fit_geometric_rate(series)
                det.update(fitted_rate=r, fitted_rate_stderr=r_se)
                note = (f"frozen {blk} gossiped: fitted rate {r:.4f} ± {r_se:.4f} vs 1 - p = "
                        f"{1 - p:.4f}" + (f", second-moment rate {rho:.4f}" if rho is not None
                                          else ""))
            else:
                kmax = int(curve.k.max())
                det.update(mean_ratio_end_over_start=float(np.mean(flat_ratios)),
                           max_abs_ratio_deviation=float(np.max(np.abs(np.array(flat_ratios)
                                                                       - 1))),
                           bound_ratio=(1 - p) ** kmax,
                           xi_start_mean=float(curve[curve.k == 1].measured.mean()),
                           xi_end_mean=float(curve[curve.k == kmax].measured.mean()))
                note = (f"frozen {blk} never gossiped: Xi(end)/Xi(start) = "
                        f"{np.mean(flat_ratios):.6f} over {kmax}-round stretches, while the "
                        f"mixed bound allows {(1 - p) ** kmax:.4f}")
            name = "frozen-block-consensus"
            out.append(CheckResult(name, 3, method, variant, **fields,
                                   expected=expected,
                                   source="Koloskova et al. 2020, Assumption 4 iterated; "
                                          "ADF-LoRA (arXiv 2511.18291)",
                                   note=note, details=det, curve=curve))
    return out


# ---------------------------------------------------------------------------- check 4
def check_consensus_with_updates(run: _Run, p: float, p_se: float, method: str,
                                 variant: str, *, z: float = Z_DEFAULT) -> CheckResult:
    """Check 4 — consensus recursion with local updates (derivation: docs/theory.md §2).

    For a block gossiped at round t, with Xi(t) its consensus error entering round t, Delta_t
    the stacked local displacement and W^t independent of (X_t, Delta_t):

        E Xi(t+1) <= (1 - p/2) Xi(t) + (1 - p)(1 + 2/p) ||(I - J) Delta_t||_F^2 / n.

    Proof: E||(W-J)(X+Delta)||^2 <= (1-p)||(I-J)(X+Delta)||^2 (Assumption 4), then Young's
    inequality ||a+b||^2 <= (1+a')||a||^2 + (1+1/a')||b||^2 with a' = p/2, and
    (1-p)(1+p/2) <= 1 - p/2. Source: Koloskova et al. 2020, proof of Lemma 9/10 (the consensus
    recursion, with their tau = 1); the same step is Lemma 5 of Koloskova, Stich, Jaggi 2019
    (CHOCO-SGD). Tested at every round t >= 1 where the block is gossiped (Xi(t) is the
    previous row's ``xi_X``; Delta_t is ``disp_X``). Where the block is gossiped every round,
    the unrolled bound U(t+1) = (1 - p/2) U(t) + (1-p)(1+2/p) disp(t), U(0) = Xi(0), is tested
    too (``kind = "unrolled"``).
    """
    parts = []
    for blk in ("A", "B"):
        xi, disp = run.mat(f"xi_{blk}"), run.mat(f"disp_{blk}")
        cols = [j for j in range(1, run.R) if blk in run.mixed[j]]
        if not cols:
            continue

        def step_bound(pp, cols=cols, xi=xi, disp=disp):
            cc = (1 - pp) * (1 + 2 / pp)
            return np.stack([(1 - pp / 2) * xi[:, j - 1] + cc * disp[:, j] for j in cols], 1)

        c = _compare(xi[:, cols], step_bound, p, p_se, normalized=True)
        parts.append((c, pd.DataFrame({"block": blk, "kind": "step",
                                       "round": run.rounds[cols]})))
        if all(blk in m for m in run.mixed):
            def unrolled(pp, xi=xi, disp=disp):
                cc = (1 - pp) * (1 + 2 / pp)
                U = np.empty_like(xi)
                U[:, 0] = xi[:, 0]
                for j in range(1, xi.shape[1]):
                    U[:, j] = (1 - pp / 2) * U[:, j - 1] + cc * disp[:, j]
                return U[:, 1:]

            c = _compare(xi[:, 1:], unrolled, p, p_se)
            parts.append((c, pd.DataFrame({"block": blk, "kind": "unrolled",
                                           "round": run.rounds[1:]})))
    curve, fields, det = _decide(parts, z)
    if not curve.empty:
        for kind in ("step", "unrolled"):
            k = curve[curve.kind == kind]
            if len(k):
                det[f"median_slack_{kind}"] = float(k.slack.median())
    return CheckResult("consensus-with-updates", 4, method, variant, **fields,
                       source="derived in docs/theory.md §2 (Young's inequality, weight p/2); "
                              "Koloskova et al. 2020, consensus recursion",
                       details=det, curve=curve)


# ---------------------------------------------------------------------------- check 5
def check_stationarity(run: _Run, vmeta: dict[str, Any], constants: pd.DataFrame | None,
                       method: str, variant: str, *, z: float = Z_DEFAULT) -> CheckResult:
    """Check 5 — stationarity at the averaged model against the decentralized-SGD bound.

    For the virtual sequence of averaged models x_bar^{t,k} (the average moves by the mean of
    the masked client steps; gossip with doubly stochastic W preserves it), with every f_i
    L-smooth on the region visited, stochastic gradients unbiased with variance <= sigma^2
    (independent over clients) and lr = eta <= 1/L (derivation: docs/theory.md §3):

        (1/RK) sum_{t<R} sum_{k<K} E||M_t grad f(x_bar^{t,k})||^2
            <= 2 (f(x_bar^0) - f*) / (eta R K) + L^2 (1/RK) sum E Xi^{t,k} + L eta sigma^2 / n,

    M_t = projection on the trained blocks, Xi^{t,k} = (1/n) sum_i ||x_i^{t,k} - x_bar^{t,k}||^2
    over all factors. This is the descent step of Koloskova et al. 2020, Theorem 2 (non-convex,
    with P = M = 0; their Lemma 8 with constants re-derived) and of Lian et al. 2017 ("Can
    Decentralized Algorithms Outperform Centralized Algorithms?", NeurIPS, Theorem 1), with the
    consensus term kept as measured instead of bounded a priori.

    Measured: LHS from ``grad_norm_sq_inner``; Xi^{t,k} from ``xi_inner``; f(x_bar^0) from
    ``loss_start`` of round 0; f* exact per seed (meta.json); sigma^2 = max over rounds of
    ``sigma_sq_max`` (at the round boundaries); L = ``L_hull`` at the last round (rigorous on the
    convex hull of all iterates). If eta L_hull > 1 the derivation does not apply: the check
    reports n/a for the rigorous bound and gives the bound with L_power (a lower estimate of L).
    Also reports the final ||grad f(x_bar)||^2 (round boundary, full gradient), the loss gap,
    the three terms of the bound at R, how loose it is (bound / measured), and the fitted
    exponent of the running average of ||grad f(x_bar_t)||^2 in R (second half of the run).
    """
    eta = float(vmeta.get("lr"))
    K = int(vmeta.get("local_steps"))
    n = int(vmeta.get("n_clients"))
    fstar = vmeta.get("f_star")
    S, R = run.S, run.R
    lhs_inner = run.mat("grad_norm_sq_inner")
    xi_inner = run.mat("xi_inner")
    f0 = run.mat("loss_start")[:, 0]
    if fstar is None:
        fstar_arr = np.nanmin(run.mat("loss"), 1)   # upper bound of f*: a looser bound
        fs_note = "f* unknown: used min loss seen (bound slightly optimistic)"
    else:
        seed_index = {int(s): i for i, s in enumerate(vmeta.get("seeds", run.seeds))}
        fstar_all = np.asarray(fstar, dtype=float)
        fstar_arr = np.array([fstar_all[seed_index.get(int(s), i)] for i, s in
                              enumerate(run.seeds)]) if len(fstar_all) >= S else \
            np.full(S, fstar_all.min())
        fs_note = ""
    sigma2 = np.nanmax(run.mat("sigma_sq_max"), 1)
    L_hull = run.mat("L_hull")[:, -1]
    L_power = L_hull * np.nan
    if constants is not None and not constants.empty:
        c = constants[(constants.method == method)]
        if "variant" in c:
            c = c[c.variant == variant]
        g = c.groupby("seed")[["L_power", "L_power_avg"]].max().max(axis=1)
        L_power = np.array([g.get(s, np.nan) for s in run.seeds])
    Rs = np.arange(1, R + 1, dtype=float)
    lhs = np.cumsum(lhs_inner, 1) / Rs
    avg_xi = np.cumsum(xi_inner, 1) / Rs

    def bound_with(L):
        def fn(_pp):
            return (2 * (f0 - fstar_arr)[:, None] / (eta * Rs * K)
                    + (L ** 2)[:, None] * avg_xi + (L * eta * sigma2 / n)[:, None])
        return fn

    rigorous = bool(np.all(eta * L_hull <= 1))
    L_used = L_hull if rigorous else L_power
    det: dict[str, Any] = {
        "eta": eta, "K": K, "eta_L_hull": float(np.max(eta * L_hull)),
        "L_hull": float(np.max(L_hull)), "L_power": float(np.nanmax(L_power))
        if np.isfinite(L_power).any() else None, "sigma_sq": float(np.max(sigma2)),
        "zeta_sq_max": float(np.nanmax(run.mat("zeta_sq"))),
        "f0_minus_fstar": float(np.mean(f0 - fstar_arr)), "L_used": "L_hull" if rigorous
        else "L_power (lower estimate: not rigorous)",
    }
    if not np.isfinite(L_used).all():
        curve = pd.DataFrame()
        return CheckResult("stationarity", 5, method, variant, None, float("nan"),
                           note="eta L_hull > 1 and no power-iteration L: bound not applicable",
                           details=det)
    curve, fields, extra = _decide([(_compare(lhs, bound_with(L_used), 0.5, 0.0),
                                     pd.DataFrame({"round": run.rounds}))], z)
    gn = run.mat("grad_norm_sq")
    t_init = 2 * (f0 - fstar_arr) / (eta * R * K)
    t_cons = L_used ** 2 * avg_xi[:, -1]
    t_noise = L_used * eta * sigma2 / n
    half = max(1, R // 2)
    run_avg = np.cumsum(gn.mean(0)) / Rs
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.polyfit(np.log(Rs[half:]), np.log(np.maximum(run_avg[half:], 1e-300)), 1)[0] \
            if R - half >= 2 else float("nan")
    det.update({
        "final_grad_norm_sq": float(gn[:, -1].mean()),
        "final_grad_norm_sq_stderr": float(gn[:, -1].std(ddof=1) / math.sqrt(S)) if S > 1
        else 0.0,
        "final_loss_gap": float(run.mat("loss_gap")[:, -1].mean()),
        "final_lhs": float(lhs[:, -1].mean()), "final_bound": float(curve.bound.iloc[-1]),
        "bound_over_measured": float(curve.bound.iloc[-1] / max(curve.measured.iloc[-1],
                                                                 1e-300)),
        "term_init": float(t_init.mean()), "term_consensus": float(t_cons.mean()),
        "term_noise": float(t_noise.mean()),
        "running_avg_grad_exponent": float(slope),
    })
    note = (f"rigorous (eta L_hull = {det['eta_L_hull']:.3f} <= 1)" if rigorous else
            f"eta L_hull = {det['eta_L_hull']:.2f} > 1: the derivation needs eta <= 1/L; shown "
            "with L_power, a lower estimate of L, so it is indicative only")
    if fs_note:
        note += "; " + fs_note
    if det["bound_over_measured"] > 100:
        note += f"; the bound is loose (x{det['bound_over_measured']:.0f})"
    det.update(extra)
    res = CheckResult("stationarity", 5, method, variant, **fields, note=note,
                      source="Koloskova et al. 2020 Thm 2 (P = M = 0) descent step; Lian et "
                             "al. 2017 Thm 1; constants derived in docs/theory.md §3",
                      details=det, curve=curve)
    if not rigorous:
        res.held = None if res.held else False
    return res


# ---------------------------------------------------------------------------- check 6
def check_cross_term(run: _Run, method: str, variant: str, *, lora_final_C: float | None = None,
                     decay_tol: float = C_DECAY_TOL) -> CheckResult:
    """Check 6 — cross-term invariant and decay.

    (a) C <= sqrt(Xi_A Xi_B) at every seed, round and layer (and for the layer total), by
    Cauchy-Schwarz: C = ||(1/n) sum_i (B_i - B_bar)(A_i - A_bar)||_F
    <= (1/n) sum_i ||B_i - B_bar||_F ||A_i - A_bar||_F <= sqrt(Xi_B Xi_A) (docs/architecture.md §4).
    Deterministic, so tested per point with a round-off tolerance.
    (b) for ``adf-lora`` and ``ffa-lora``: C -> 0, tested as "the seed-mean C over the last 10%
    of rounds is at most ``decay_tol`` times its peak" (ffa-lora: C is identically ~0 when A is
    shared). Source of the claim: ADF-LoRA (arXiv 2511.18291), cross-term suppression of
    alternating updates; RoLoRA/FFA-LoRA for the centralized case. At a constant step size with
    gradient noise or heterogeneous clients the consensus errors, hence C, settle at a floor set
    by the step size: the check reports the floor and its ratio to ``lora``'s C.
    """
    L = run.layers
    parts = [L[["cross_term", "xi_A", "xi_B"]], run.df[["cross_term", "xi_A", "xi_B"]]]
    allp = pd.concat(parts, ignore_index=True)
    C = allp.cross_term.to_numpy()
    B = np.sqrt(allp.xi_A.to_numpy() * allp.xi_B.to_numpy())
    tol = 1e-9 * B + 1e-15
    ok = C <= B + tol
    live = B > 1e-12 * float(np.max(B, initial=0.0)) + 1e-20
    with np.errstate(divide="ignore", invalid="ignore"):
        sl = np.where(live, (B - C) / B, np.inf)
    worst = float(sl.min()) if live.any() else float("nan")
    inv_held = bool(ok.all())
    mC = run.mat("cross_term").mean(0)
    tail = max(1, run.R // 10)
    final, peak = float(mC[-tail:].mean()), float(mC.max())
    ratio = final / peak if peak > 0 else 0.0
    det = {"invariant_held": inv_held, "invariant_points": int(len(C)),
           "invariant_worst_slack": worst, "final_C": final, "peak_C": peak,
           "final_over_peak": ratio, "final_sqrt_xiA_xiB": float(np.sqrt(
               run.mat("xi_A") * run.mat("xi_B"))[:, -tail:].mean()),
           "final_C_over_lora": final / lora_final_C if lora_final_C else None}
    expect_decay = method in ("adf-lora", "ffa-lora")
    held = inv_held
    note = f"C <= sqrt(Xi_A Xi_B) at {len(C)} points: {'held' if inv_held else 'VIOLATED'}"
    if expect_decay:
        scale = float(np.sqrt(run.mat("xi_A").max() * run.mat("xi_B").max())) + 1e-300
        zero = peak <= 1e-12 * scale + 1e-24
        decays = ratio <= decay_tol or zero
        det["decay_held"] = bool(decays)
        held = held and decays
        note += ("; C -> 0: C is identically ~0 (round-off)" if zero else
                 f"; C -> 0: final/peak = {ratio:.3g} ({'held' if decays else 'NOT reached'}"
                 f", tolerance {decay_tol})")
    else:
        note += f"; final C = {final:.3g} (no decay claimed for {method})"
    if det["final_C_over_lora"] is not None:
        note += f"; final C / lora's = {det['final_C_over_lora']:.3g}"
    curve = pd.DataFrame({"round": run.rounds, "measured": mC,
                          "bound": np.sqrt(run.mat("xi_A") * run.mat("xi_B")).mean(0)})
    curve["slack"] = np.where(curve.bound > 1e-15, (curve.bound - curve.measured)
                              / curve.bound, 0.0)
    curve["held"] = True
    return CheckResult("cross-term", 6, method, variant, held, worst,
                       worst_z=float("nan"), violations=int((~ok).sum()), points=int(len(C)),
                       source="docs/architecture.md §4 (Cauchy-Schwarz); ADF-LoRA (arXiv 2511.18291)",
                       note=note, details=det, curve=curve)


# ---------------------------------------------------------------------------- driver
def run_checks(run_dir: str | Path, *, z: float = Z_DEFAULT,
               decay_tol: float = C_DECAY_TOL) -> list[CheckResult]:
    """Every theory check for every (variant, method) of a finished run directory."""
    data = load_run(run_dir)
    out: list[CheckResult] = []
    df = data.metrics
    for variant in list(dict.fromkeys(df.variant)):
        vmeta = {**data.variant_meta(variant)}
        vmeta.setdefault("seeds", data.meta.get("seeds"))
        vmeta.setdefault("seeds", data.meta.get("seeds"))
        cfg_keys = ("lr", "local_steps", "n_clients")
        dv = df[df.variant == variant]
        for k in cfg_keys:
            if vmeta.get(k) is None and k in dv:
                vmeta[k] = dv[k].iloc[0]
        p = vmeta.get("p")
        if p is None:
            raise AdfloraError(f"meta.json of {str(run_dir)!r} has no consensus rate p",
                               "re-run the study with this version")
        p, p_se = float(p), float(vmeta.get("p_stderr") or 0.0)
        rho = vmeta.get("second_moment_rate")
        runs = {m: _Run(g) for m, g in dv.groupby("method", sort=False)}
        lora_C = None
        if "lora" in runs:
            r = runs["lora"]
            lora_C = float(r.mat("cross_term").mean(0)[-max(1, r.R // 10):].mean())
        for m, r in runs.items():
            out.append(check_mixing(data.mixing, vmeta, m, variant, z=z))
            if p > 0:  # checks 2-5 need a consensus rate
                out.append(check_gossip_contraction(r, p, p_se, rho, m, variant, z=z))
                out.extend(check_frozen_block(r, p, p_se, rho, m, variant, z=z))
                out.append(check_consensus_with_updates(r, p, p_se, m, variant, z=z))
                out.append(check_stationarity(r, vmeta, data.constants, m, variant, z=z))
            out.append(check_cross_term(r, m, variant, lora_final_C=lora_C if m != "lora"
                                        else None, decay_tol=decay_tol))
    return out


def save_results(run_dir: str | Path, results: list[CheckResult]) -> None:
    """Write ``checks.json`` (the summaries) and ``check_curves.parquet`` (every check's
    measured curve and bound) into the run directory, atomically."""
    from adflora_analysis import fileio

    parts = []
    for r in results:
        if len(r.curve):
            c = r.curve.copy()
            c.insert(0, "check", r.number)
            c.insert(1, "method", r.method)
            c.insert(2, "variant", r.variant)
            parts.append(c)
    if parts:
        fileio.write_parquet(Path(run_dir) / "check_curves.parquet",
                         pd.concat(parts, ignore_index=True))
    fileio.write_json(Path(run_dir) / "checks.json", [r.to_dict() for r in results])


def format_results(results: list[CheckResult]) -> str:
    """A plain-text table: check, method, variant, status, worst slack, note."""
    lines = [f"{'check':<26} {'method':<9} {'variant':<22} {'status':<28} {'slack':>9} "
             f"{'worst z':>8}  note"]
    for r in results:
        sl = f"{r.slack:.3g}" if math.isfinite(r.slack) else "-"
        wz = f"{r.worst_z:.2f}" if math.isfinite(r.worst_z) else "-"
        name = f"{r.number} {r.check}"
        lines.append(f"{name:<26} {r.method:<9} {r.variant[:22]:<22} {r.status:<28} {sl:>9} "
                     f"{wz:>8}  {r.note}")
    return "\n".join(lines)
