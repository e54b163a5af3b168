"""Statistics shared by the theory checks: pooled ratio-of-sums tests with power statements.

Every stochastic check compares per-seed totals (one seed = one independent realization of data,
W^t and gradient noise): ``measured`` M_s and ``bound`` B_s, each a sum over the check's points.
The seeds are i.i.d., so the ratio of means R = mean(B) / mean(M) (bound ÷ measured, >= 1 when
an upper bound holds) has the delta-method standard error

    se_R = sd_s(B_s - R M_s) / (sqrt(S) mean(M)),

to which the Monte Carlo error of the topology constant p is added in quadrature (the change of
R when p moves by its standard error). A pooled ratio weights rounds by their size, is unbiased
to first order (no per-point ratio, so no Jensen bias) and has far more power than per-point
tests with a Bonferroni threshold.

Decisions, at threshold ``thr`` = the Student-t (S - 1 d.o.f.) quantile of the one-sided normal
level of ``z`` (default z = 3, 0.135 %):

- **upper bound** (``kind = "upper"``): violated iff R + thr se_R < 1;
- **identity** (``kind = "equal"``; E[measured] = bound exactly, e.g. gossip contraction under an
  exchangeable sampler): violated iff |R - 1| > thr se_R (two-sided);
- **power**: the smallest relative violation the test detects with 80 % power is
  ``mde = (thr + t_0.8) se_R / R`` (the relative error of R carried to R ~ 1); if it exceeds
  ``effect`` (default 20 %) or S < 3, the test is ``underpowered`` instead of ``held``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Z_DEFAULT = 3.0
EFFECT_DEFAULT = 0.2
MIN_SEEDS = 3
POWER = 0.8
ONE_SEED = "one seed: a test needs two seeds or more (three for a verdict)"


def pm(x: float, se: float, fmt: str = ".4f") -> str:
    """``x ± se``, or ``x`` alone when the error is not finite (one seed).

    >>> pm(0.5, 0.01), pm(0.5, float("nan"))
    ('0.5000 ± 0.0100', '0.5000')
    """
    return f"{x:{fmt}} ± {se:{fmt}}" if math.isfinite(se) else f"{x:{fmt}}"


def interval(x: float, lo: float, hi: float, fmt: str = ".4f") -> str:
    """``x [lo, hi]``, or ``x`` alone when the interval is not finite (one seed).

    >>> interval(1.0, 0.9, 1.1), interval(1.0, -math.inf, math.inf)
    ('1.0000 [0.9000, 1.1000]', '1.0000')
    """
    ok = math.isfinite(lo) and math.isfinite(hi)
    return f"{x:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]" if ok else f"{x:{fmt}}"


def threshold(z: float, seeds: int, two_sided: bool = False) -> float:
    """Critical value: the Student-t quantile (S - 1 d.o.f.) of the one-sided normal level of
    ``z`` (halved when two-sided). ``inf`` with fewer than 2 seeds.

    >>> round(threshold(3.0, 20), 2), threshold(3.0, 1)
    (3.45, inf)
    """
    from scipy import stats

    if seeds < 2:
        return math.inf
    alpha = stats.norm.sf(z) / (2 if two_sided else 1)
    return float(stats.t.isf(alpha, df=seeds - 1))


def power_quantile(seeds: int) -> float:
    """t quantile for 80 % power (0 below 2 seeds)."""
    from scipy import stats

    return float(stats.t.ppf(POWER, df=seeds - 1)) if seeds >= 2 else 0.0


@dataclass
class RatioTest:
    """A pooled test. ``ratio`` = bound ÷ measured; ``ratio_ci`` = ratio ± threshold × stderr;
    ``z`` = (1 - ratio) / stderr (positive: measured above the bound); ``mde``: the smallest
    relative violation detectable with 80 % power."""

    kind: str
    ratio: float
    stderr: float
    threshold: float
    z: float
    mde: float
    seeds: int
    status: str
    measured: float
    bound: float

    @property
    def ratio_ci(self) -> tuple[float, float]:
        h = self.threshold * self.stderr
        return (self.ratio - h, self.ratio + h)


def ratio_of_sums(bound: np.ndarray, measured: np.ndarray) -> tuple[float, float]:
    """R = mean(bound) / mean(measured) over seeds and its delta-method standard error.

    >>> r, se = ratio_of_sums(np.array([2.0, 2.0, 2.0]), np.array([1.0, 1.0, 1.0]))
    >>> r, se
    (2.0, 0.0)
    """
    bound, measured = np.asarray(bound, float), np.asarray(measured, float)
    S = len(measured)
    mM, mB = float(measured.mean()), float(bound.mean())
    if mM == 0:
        return (math.inf if mB > 0 else 1.0), math.inf
    R = mB / mM
    if S < 2:
        return R, math.inf
    resid = bound - R * measured
    return R, float(resid.std(ddof=1) / (math.sqrt(S) * abs(mM)))


def pooled_test(measured: np.ndarray, bound_fn: Callable[[float], np.ndarray], p: float,
                p_se: float, *, kind: str = "upper", z: float = Z_DEFAULT,
                effect: float = EFFECT_DEFAULT, replicates: str = "seeds") -> RatioTest:
    """Test ``E[sum of measured] <= E[sum of bound]`` (``upper``) or ``=`` (``equal``).

    ``measured``: (S, P) per seed and point; ``bound_fn(p)``: the (S, P) bound for a consensus
    rate p (pass a constant function when the bound does not depend on p). ``replicates``:
    ``"seeds"`` (the standard error from the seeds' spread, t with S − 1 d.o.f.) or
    ``"points"``, for a check whose per-point differences D = measured − bound are martingale
    differences (mean 0 given the past under an identity, ≤ 0 under an upper bound): the
    standard error from the spread of all S·P values of D and the normal threshold; below
    MIN_SEEDS the status is still never ``held`` (docs/theory.md §5, check 2 at two seeds).

    >>> m = np.array([[1.0, 1.0], [1.1, 0.9], [0.9, 1.1], [1.0, 1.05]])
    >>> t = pooled_test(m, lambda p: 2 * np.ones_like(m), 0.5, 0.0)
    >>> t.status, round(t.ratio, 3)  # 4 / (1.0 + 1.0125)
    ('held', 1.988)
    """
    measured = np.asarray(measured, float)
    if measured.ndim == 1:
        measured = measured[:, None]
    S = measured.shape[0]
    M = measured.sum(1)
    B = np.asarray(bound_fn(p), float).reshape(measured.shape).sum(1)
    R, se = ratio_of_sums(B, M)
    dR = 0.0
    if p_se > 0:
        lo = np.asarray(bound_fn(max(p - p_se, 1e-12)), float).reshape(measured.shape).sum(1)
        dR = ratio_of_sums(lo, M)[0] - R
    if replicates == "points" and measured.size >= 3 and measured.sum() > 0:
        D = measured - np.asarray(bound_fn(p), float).reshape(measured.shape)
        se = float(np.std(D, ddof=1) * math.sqrt(D.size) / measured.sum())
        t = decide(kind, R, se, dR, D.size, float(M.mean()), float(B.mean()), z=z,
                   effect=effect)
        held = t.status == "held" and S < MIN_SEEDS
        return dataclasses.replace(t, seeds=S, status="underpowered" if held else t.status)
    return decide(kind, R, se, dR, S, float(M.mean()), float(B.mean()), z=z, effect=effect)


def statistic_test(stat: Callable[[np.ndarray, float], tuple[float, float]], seeds: int,
                   p: float, p_se: float, *, kind: str = "upper", z: float = Z_DEFAULT,
                   effect: float = EFFECT_DEFAULT) -> RatioTest:
    """Like :func:`pooled_test` for a bound that is a nonlinear function of seed means
    (e.g. sqrt(E U_A E U_B)): ``stat(idx, p) -> (bound, measured)`` over the seeds ``idx``;
    the standard error of bound ÷ measured is the jackknife's over seeds.

    >>> x = np.array([1.0, 1.2, 0.8, 1.0])
    >>> t = statistic_test(lambda i, p: (2 * x[i].mean(), x[i].mean()), 4, 0.5, 0.0)
    >>> round(t.ratio, 6), t.stderr < 1e-12
    (2.0, True)
    """
    idx = np.arange(seeds)
    B, M = stat(idx, p)
    R = B / M if M else (math.inf if B > 0 else 1.0)
    if seeds >= 2 and math.isfinite(R):
        loo = np.array([_ratio(*stat(np.delete(idx, i), p)) for i in range(seeds)])
        se = float(math.sqrt((seeds - 1) / seeds * ((loo - loo.mean()) ** 2).sum()))
    else:
        se = math.inf
    dR = _ratio(*stat(idx, max(p - p_se, 1e-12))) - R if p_se > 0 else 0.0
    return decide(kind, R, se, dR, seeds, float(M), float(B), z=z, effect=effect)


def _ratio(b: float, m: float) -> float:
    return b / m if m else (math.inf if b > 0 else 1.0)


def decide(kind: str, R: float, se: float, dR: float, S: int, measured: float, bound: float,
           *, z: float = Z_DEFAULT, effect: float = EFFECT_DEFAULT) -> RatioTest:
    """The verdict on a ratio R = bound ÷ measured with standard error ``se`` (seeds) and
    ``dR`` (its change when p moves by one standard error), see the module docstring."""
    se = math.sqrt(se ** 2 + dR ** 2) if math.isfinite(se) else se
    two = kind == "equal"
    thr = threshold(z, S, two_sided=two)
    if not math.isfinite(thr):
        zval = math.nan                 # one seed: no test
    elif se > 0:
        zval = (1 - R) / se
    else:
        zval = 0.0 if R == 1 else math.copysign(math.inf, 1 - R)
    rel = se / abs(R) if R and math.isfinite(R) else se
    mde = (thr + power_quantile(S)) * rel if math.isfinite(thr) else math.inf
    bad = (abs(R - 1) > thr * se) if two else (R + thr * se < 1)
    if bad and math.isfinite(thr):
        status = "violated"
    elif S < MIN_SEEDS or not math.isfinite(mde) or mde > effect:
        status = "underpowered"
    else:
        status = "held"
    return RatioTest(kind, float(R), float(se), thr, float(zval), float(mde), S, status,
                     measured, bound)


def bootstrap_ratio(num: np.ndarray, den: np.ndarray, *, n_boot: int = 2000, seed: int = 0,
                    level: float = 0.95) -> tuple[float, tuple[float, float]]:
    """mean(num) / mean(den) over paired seeds with a percentile seed-bootstrap interval.

    >>> r, (lo, hi) = bootstrap_ratio(np.array([2.0, 2.2, 1.8]), np.array([1.0, 1.1, 0.9]))
    >>> r, lo <= r <= hi
    (2.0, True)
    """
    num, den = np.asarray(num, float), np.asarray(den, float)
    S = len(num)
    r = float(num.mean() / den.mean()) if den.mean() else math.inf
    if S < 2:
        return r, (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, S, (n_boot, S))
    with np.errstate(divide="ignore", invalid="ignore"):
        boots = num[idx].mean(1) / den[idx].mean(1)
    a = (1 - level) / 2
    return r, (float(np.nanquantile(boots, a)), float(np.nanquantile(boots, 1 - a)))


def log_mean_unbiased(x: np.ndarray) -> np.ndarray:
    """log of the seed mean with its O(1/S) Jensen bias removed (second-order delta method):
    E log(mean) ~ log(mu) - var / (2 S mu^2), so add var / (2 S mean^2). ``x``: (S, P).

    >>> v = log_mean_unbiased(np.array([[1.0], [3.0]]))  # log 2 + 2 / (2 * 2 * 2^2)
    >>> round(float(v[0]), 4)
    0.8181
    """
    x = np.asarray(x, float)
    S = x.shape[0]
    m = x.mean(0)
    var = x.var(0, ddof=1) if S > 1 else np.zeros_like(m)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.maximum(m, 1e-300)) + np.where(m > 0, var / (2 * S * m * m), 0.0)


def fit_a_plus_b_over_R(R: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares fit y ~ a + b / R (the shape of a telescoped stationarity bound).

    >>> a, b = fit_a_plus_b_over_R(np.arange(1.0, 6.0), 2 + 3 / np.arange(1.0, 6.0))
    >>> round(a, 6), round(b, 6)
    (2.0, 3.0)
    """
    X = np.stack([np.ones_like(R, dtype=float), 1.0 / np.asarray(R, float)], 1)
    coef, *_ = np.linalg.lstsq(X, np.asarray(y, float), rcond=None)
    return float(coef[0]), float(coef[1])
