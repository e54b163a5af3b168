"""Check 1 — every W^t the run used is a valid mixing matrix, and E[W] mixes.

Required (docs/theory.md §1): W^t nonnegative and doubly stochastic (W1 = 1, 1^T W = 1^T), which
is all §1–§2 use ((W - J)(I - J) = W - J and E||(W - J)X||^2 <= (1 - p)||(I - J)X||^2), and
p - thr * se_p > 0. Symmetry is reported, not required (the ``pairwise`` rule gives asymmetric
doubly stochastic matrices). Source: Koloskova et al. 2020, Assumption 4 / Definition 1.
"""

from __future__ import annotations

import math

from adflora_analysis.theory.data import Context
from adflora_analysis.theory.result import CheckResult

TOL = 1e-9


def mixing_summary(ctx: Context) -> dict:
    """The variant's measured mixing matrices, summarised (``mixing.parquet``, else meta's
    ``mixing_validity``): max row / column sum error, min entry, max asymmetry; {} if none."""
    mv = dict(ctx.vmeta.get("mixing_validity") or {})
    m = ctx.data.mixing if ctx.data is not None else None
    if m is not None and not m.empty:
        if "variant" in m:
            m = m[m.variant == ctx.variant]
        if len(m):
            mv = {"max_row_err": float(m.row_err.max()), "max_col_err": float(m.col_err.max()),
                  "min_entry": float(m.min_entry.min()), "max_asym": float(m.asym.max()),
                  "mean_degree": float(m.mean_degree.mean()), "matrices": len(m)}
    return mv


def doubly_stochastic(mv: dict, tol: float = TOL) -> bool:
    """Rows and columns of every measured W^t sum to 1 within ``tol``, entries >= -tol.

    >>> doubly_stochastic({"max_row_err": 0.0, "max_col_err": 0.2, "min_entry": 0.0})
    False
    """
    return (mv.get("max_row_err", math.inf) <= tol and mv.get("max_col_err", math.inf) <= tol
            and mv.get("min_entry", -math.inf) >= -tol)


def check_mixing(ctx: Context, tol: float = TOL) -> CheckResult:
    """Check 1 on the run's ``mixing.parquet`` (or meta's summary)."""
    mv = mixing_summary(ctx)
    p, se = ctx.p, ctx.p_se
    if not mv or not math.isfinite(p):
        return CheckResult("mixing-validity", "1", ctx.method, ctx.variant, "n/a",
                           note="the run records no mixing matrices or no p")
    ds = mv.get("max_row_err", math.inf) <= tol and mv.get("max_col_err", math.inf) <= tol
    nonneg = mv.get("min_entry", -math.inf) >= -tol
    sym = mv.get("max_asym", math.inf) <= tol
    thr = ctx.z if se > 0 else 0.0          # p's error is normal (Monte Carlo, many draws)
    margin = p - thr * se
    ok = ds and nonneg and margin > 0
    reasons = [r for r, good in (("not doubly stochastic", ds), ("negative entries", nonneg),
                                 ("p not > 0", margin > 0)) if not good]
    note = "; ".join(reasons) or "doubly stochastic, nonnegative, p > 0"
    note += "; symmetric" if sym else "; not symmetric (allowed: §1–§2 need only double " \
                                      "stochasticity)"
    return CheckResult("mixing-validity", "1", ctx.method, ctx.variant,
                       "held" if ok else "violated", measured=p, bound=0.0,
                       ratio=math.inf if ok else 0.0, threshold=thr,
                       z=-(p / se) if se > 0 else -math.inf, seeds=int(mv.get("matrices", 0)),
                       test="deterministic (round-off tolerance) + p > thr se_p",
                       source="Koloskova et al. 2020, Assumption 4 / Definition 1",
                       note=note, details={**mv, "symmetric": sym, "p": p, "p_stderr": se})
