"""The premises a theory check rests on, declared with ``register_check(..., requires=...)``
and evaluated once per (variant, method) context by the registry (:mod:`.registry`).

A premise is a function of the :class:`~.data.Context` (read from meta, the rows and the
measured mixing matrices) returning None when it holds, or a :class:`Failed` whose ``tag`` is
the short reason every check resting on it shows — ``n/a (premise failed: check 1)``,
``n/a (stale gossip)`` — and whose ``why`` is the longer explanation. A premise that cannot be
read (no mixing table, no meta entry) holds: the check that measures it says n/a itself.

=============================  =============================================================
premise                        holds when
=============================  =============================================================
``doubly-stochastic``          every measured W^t is nonnegative and doubly stochastic
                               (check 1's data); §1–§2 need it for (W - J)(I - J) = W - J
``p>0``                        the consensus rate p is known and > 0
``synchronous-gossip``         gossip is fresh and complete: staleness τ = 0, participation 1
``one-phase-per-round``        no clock drift, or the method does not alternate factors
``one-gossip-phase-per-round`` as above, or the method gossips both factors in every phase
                               (drifted clients then still mix with the full W^t)
``sgd-steps``                  the local steps are plain SGD (not AdamW)
``exchangeable``               the sampler's law is invariant under relabelling the clients
=============================  =============================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from adflora_analysis.theory.data import Context, async_gossip


@dataclass(frozen=True)
class Failed:
    """A failed premise: ``tag`` goes in the status line, ``why`` in the note."""

    premise: str
    tag: str
    why: str
    details: dict | None = None

    @property
    def note(self) -> str:
        return f"{self.tag}: {self.why}"


Premise = Callable[[Context], "Failed | None"]


def _doubly_stochastic(ctx: Context) -> Failed | None:
    from adflora_analysis.theory.mixing import TOL, doubly_stochastic, mixing_summary

    mv = mixing_summary(ctx)
    if not mv or doubly_stochastic(mv, TOL):
        return None
    return Failed("doubly-stochastic", "premise failed: check 1",
                  f"a W^t the run used is not doubly stochastic and nonnegative (row error "
                  f"{mv.get('max_row_err', math.nan):.3g}, column error "
                  f"{mv.get('max_col_err', math.nan):.3g}, min entry "
                  f"{mv.get('min_entry', math.nan):.3g}), so p is not a contraction rate",
                  {k: mv.get(k) for k in ("max_row_err", "max_col_err", "min_entry")})


def _p_positive(ctx: Context) -> Failed | None:
    p = ctx.p
    if math.isfinite(p) and p > 0:
        return None
    return Failed("p>0", "premise failed: p > 0", f"no consensus rate p > 0 (p = {p:g})")


def _synchronous(ctx: Context) -> Failed | None:
    tau, pi = async_gossip(ctx.vmeta)
    if tau == 0 and pi == 1:
        return None
    tag = ("stale gossip" if tau > 0 and pi == 1 else
           "partial gossip" if tau == 0 else "stale/partial gossip")
    return Failed("synchronous-gossip", tag,
                  f"τ = {tau}, π = {pi:g}: a gossip step mixes with old or masked copies, so "
                  "1 - p is not its contraction and x̄ is not the clients' average; check 7 "
                  "(stale-gossip-rate) tests the consensus rate against the predicted ρ_τ,π "
                  "(docs/theory.md §9)", {"staleness": tau, "participation": pi})


def _phase(ctx: Context, mixed_only: bool) -> Failed | None:
    from adflora_analysis.core.methods import METHODS

    d = ctx.vmeta.get("clock_drift")
    d = float(d) if d is not None else 0.0
    spec = METHODS.get(ctx.method)
    if not d > 0 or spec is None or not spec.alternates:   # NaN (no drift column) too
        return None
    if mixed_only and (spec.mixed_in("A"), spec.mixed_in("B")) != (("A",), ("B",)):
        return None
    why = ("a factor is mixed only among the clients in its phase (W^t restricted, (9.5))"
           if mixed_only else "the block the reference clock freezes is trained by the "
           "clients whose clocks have switched")
    return Failed("one-gossip-phase-per-round" if mixed_only else "one-phase-per-round",
                  "clock drift",
                  f"d = {d:g}, clients in different phases in the same round, so {why}; "
                  "read drift runs through docs/theory.md §9's drift measures (C, the frozen "
                  "block's Ξ, phase_frac_A)", {"clock_drift": d})


def _sgd(ctx: Context) -> Failed | None:
    opt = str(ctx.vmeta.get("optimizer") or ("sgd" if ctx.kind == "synthetic" else "")).lower()
    if opt == "sgd":
        return None
    return Failed("sgd-steps", "not SGD",
                  f"the local steps are {opt or 'not recorded as'} SGD, and the bound is derived "
                  "for x ← x − η g")


def _exchangeable(ctx: Context) -> Failed | None:
    if ctx.exchangeable:
        return None
    return Failed("exchangeable", "not exchangeable",
                  "the sampler's law is not invariant under relabelling the clients")


PREMISES: dict[str, Premise] = {
    "doubly-stochastic": _doubly_stochastic,
    "p>0": _p_positive,
    "synchronous-gossip": _synchronous,
    "one-phase-per-round": lambda ctx: _phase(ctx, False),
    "one-gossip-phase-per-round": lambda ctx: _phase(ctx, True),
    "sgd-steps": _sgd,
    "exchangeable": _exchangeable,
}
"""The premise vocabulary: name → function of the context (None: holds)."""


def premise_failure(ctx: Context, requires: tuple[str, ...]) -> Failed | None:
    """The first of ``requires`` that fails on ``ctx``; each premise is evaluated once per
    context (cached in ``ctx.extra["premises"]``).

    >>> ctx = Context(None, None, {"gossip": {"staleness": 2}}, "lora", "v", {}, 3.0, 0.5,
    ...               0.4, 0.0, None, None, True, False, "synthetic")
    >>> premise_failure(ctx, ("p>0", "synchronous-gossip")).tag
    'stale gossip'
    >>> premise_failure(ctx, ("p>0", "exchangeable")) is None
    True
    """
    cache = ctx.extra.setdefault("premises", {})
    for name in requires:
        if name not in cache:
            cache[name] = PREMISES[name](ctx)
        if cache[name] is not None:
            return cache[name]
    return None
