"""Check 4 — consensus with local updates (docs/theory.md §2).

For a block gossiped at round t, with Xi(t) entering round t and the displacement
disp(t) = ||(I - J) Delta_t||^2 / n of its local update:

- **4 (step)**: E[Xi(t+1) | past] <= (1 - p/2) Xi(t) + c(p) disp(t), c(p) = (1 - p)(1 + 2/p)
  (Assumption 4, then Young's inequality with weight p/2). Deterministic given the past: it is
  implied by check 2 and catches only an unreported displacement.
- **4b (unrolled)**: E Xi(t) <= E U(t), U(0) = Xi(0), U(t+1) = (1 - p/2) U(t) + c(p) disp(t).
- **4c (a priori)**: with Gamma the clients' gradient spread (the ``gamma_X`` columns, mean over
  the K inner steps of (1/n)||(I - J) G^{t,k}||^2), disp(t) <= eta_t^2 K^2 Gamma(t) (Jensen over
  the K steps), so E Xi(t) <= (1 - p/2)^t Xi(0) + kappa(p) sup_{s<t} eta_s^2 K^2 E Gamma(s),
  kappa(p) = 2(1 - p)(2 + p) / p^2 — a bound from the problem's gradients alone, with content
  check 2 does not have.

4b and 4c apply to blocks gossiped every round. Sources: Koloskova et al. 2020, consensus
recursion (their tau = 1); Koloskova, Stich, Jaggi 2019 (CHOCO-SGD), Lemma 5.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from adflora_analysis.theory.data import Context
from adflora_analysis.theory.gossip import tiny
from adflora_analysis.theory.result import CheckResult
from adflora_analysis.theory.stats import pooled_test

SOURCE = ("docs/theory.md §2 (Young's inequality, weight p/2); Koloskova et al. 2020, "
          "consensus recursion")


def kappa(p: float) -> float:
    """kappa(p) = 2(1 - p)(2 + p)/p^2, the fixed point factor of the consensus recursion.

    >>> kappa(1.0), round(kappa(0.5), 4)
    (0.0, 10.0)
    """
    return 2 * (1 - p) * (2 + p) / p ** 2


def c_of(p: float) -> float:
    """c(p) = (1 - p)(1 + 2/p)."""
    return (1 - p) * (1 + 2 / p)


def unrolled(xi0: np.ndarray, drive: np.ndarray, p: float) -> np.ndarray:
    """U(0) = xi0, U(t+1) = (1 - p/2) U(t) + c(p) drive(t): (S, R) -> (S, R) with U(t) the
    bound on Xi after round t - 1 (column t of Xi), column 0 = xi0."""
    U = np.empty_like(drive)
    U[:, 0] = xi0
    for j in range(1, drive.shape[1]):
        U[:, j] = (1 - p / 2) * U[:, j - 1] + c_of(p) * drive[:, j]
    return U


def gossiped_blocks(ctx: Context) -> list[str]:
    """Blocks gossiped every round with a consensus error that is not round-off."""
    run = ctx.run
    return [b for b in ("A", "B") if all(b in m for m in run.mixed)
            and run.mat(f"xi_{b}").max() > tiny(run.mat(f"xi_{b}"))]


def check_consensus(ctx: Context) -> list[CheckResult]:
    """Checks 4, 4b and 4c for one (variant, method). Premises (declared at registration,
    tested once by the registry): one gossip phase per round, W^t doubly stochastic, p > 0,
    synchronous gossip."""
    run, p, p_se = ctx.run, ctx.p, ctx.p_se
    out = []
    # 4: the one-step recursion at every round where the block is gossiped
    ms, bs, idx = [], [], []
    for blk in ("A", "B"):
        xi, disp = run.mat(f"xi_{blk}"), run.mat(f"disp_{blk}")
        cols = [j for j in range(1, run.R) if blk in run.mixed[j]]
        if cols and xi.max() > tiny(xi):
            ms.append(xi[:, cols])
            bs.append((xi, disp, cols))
            idx.append(pd.DataFrame({"block": blk, "round": run.rounds[cols]}))
    if ms:
        def step(pp):
            return np.concatenate([(1 - pp / 2) * xi[:, [j - 1 for j in cols]]
                                   + c_of(pp) * disp[:, cols] for xi, disp, cols in bs], 1)

        out.append(_pooled(
            ctx, p, p_se, "consensus-step", "4", ms, idx, step,
            lambda t: f"one-step recursion; bound/measured {t.ratio:.3f} (implied by check 2 "
                      "given the reported displacement)"))
    blocks = gossiped_blocks(ctx)
    if not blocks:
        return out
    # 4b: unrolled, driven by the measured displacement
    ms, us, idx = [], [], []
    for blk in blocks:
        xi, disp = run.mat(f"xi_{blk}"), run.mat(f"disp_{blk}")
        ms.append(xi[:, 1:])
        us.append((xi[:, 0], disp))
        idx.append(pd.DataFrame({"block": blk, "round": run.rounds[1:]}))

    def unr(pp):
        return np.concatenate([unrolled(x0, d, pp)[:, 1:] for x0, d in us], 1)

    out.append(_pooled(
        ctx, p, p_se, "consensus-unrolled", "4b", ms, idx, unr,
        lambda t: f"U driven by the measured displacement; bound/measured {t.ratio:.3f}"))
    # 4c: a priori, driven by the measured gradient spread
    if not all(run.has(f"gamma_{b}") for b in blocks):
        out.append(CheckResult("consensus-a-priori", "4c", ctx.method, ctx.variant, "n/a",
                               note="the run has no gamma_A/gamma_B columns", source=SOURCE))
        return out
    eta2 = ctx.lr ** 2 * ctx.K ** 2
    ms, idx, drives = [], [], []
    for blk in blocks:
        xi = run.mat(f"xi_{blk}")
        drive = np.maximum.accumulate(eta2 * run.mat(f"gamma_{blk}").mean(0))  # sup s<=t
        ms.append(xi[:, 1:])
        drives.append((xi[:, 0], drive))
        idx.append(pd.DataFrame({"block": blk, "round": run.rounds[1:]}))
    tt = np.arange(1, run.R)

    def apriori(pp):
        return np.concatenate([(1 - pp / 2) ** tt * x0[:, None]
                               + kappa(pp) * np.broadcast_to(d[1:], (len(x0), run.R - 1))
                               for x0, d in drives], 1)

    out.append(_pooled(
        ctx, p, p_se, "consensus-a-priori", "4c", ms, idx, apriori,
        lambda t: f"(1 - p/2)^t Xi_0 + kappa(p) sup eta^2 K^2 E Gamma, kappa = {kappa(p):.2f}; "
                  f"bound/measured {t.ratio:.3f}", details={"kappa": kappa(p)}))
    return out


def _pooled(ctx, p: float, p_se: float, name: str, number: str, ms: list[np.ndarray],
            idx: list[pd.DataFrame], bound, note, details: dict | None = None) -> CheckResult:
    """One pooled test of the measured blocks ``ms`` (seed x point each) against ``bound(p)``
    (same shape, concatenated), with its curve (mean over seeds per point, ``idx`` labels)."""
    m = np.concatenate(ms, 1)
    t = pooled_test(m, bound, p, p_se, z=ctx.z, effect=ctx.effect)
    curve = pd.concat(idx, ignore_index=True)
    curve["measured"], curve["bound"] = m.mean(0), bound(p).mean(0)
    return CheckResult.from_test(name, number, ctx.method, ctx.variant, t, source=SOURCE,
                                 curve=curve, note=note(t), **({"details": details}
                                                               if details else {}))
