"""Step-size schedules: the step eta_t of round t as a pure function of t (docs/theory.md §4).

Config keys (shared by the synthetic testbed and the GLUE runner, ``runconfig.FederationConfig``):
``lr`` (eta_0), ``lr_schedule`` = ``"constant"`` | ``"inverse"`` | ``"cosine"``, ``lr_t0``
(inverse: eta_t = eta_0 / (1 + t / t0)) and ``lr_min`` (cosine: from eta_0 at t = 0 down to
lr_min at the last round). Every local step of round t uses eta_t; the round's step is the
metrics column ``eta`` (``lr`` stays the configured eta_0).

>>> [round(lr_at(t, 1.0, "inverse", t0=2.0), 3) for t in range(4)]
[1.0, 0.667, 0.5, 0.4]
>>> lr_at(0, 0.1, "cosine", rounds=11), round(lr_at(10, 0.1, "cosine", rounds=11, lr_min=0.0), 12)
(0.1, 0.0)
"""

from __future__ import annotations

import math

from adflora_analysis.errors import AdfloraError

SCHEDULES = ("constant", "inverse", "cosine")


def lr_at(t: int, lr: float, schedule: str = "constant", *, t0: float = 10.0,
          rounds: int = 1, lr_min: float = 0.0) -> float:
    """eta_t for round ``t`` (0-based) of ``rounds``."""
    if schedule == "constant":
        return lr
    if schedule == "inverse":
        return lr / (1.0 + t / t0)
    if schedule == "cosine":
        frac = t / max(rounds - 1, 1)
        return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * min(frac, 1.0)))
    raise AdfloraError(f"lr_schedule = {schedule!r} is not a schedule",
                       f"use one of {', '.join(SCHEDULES)}")


def check_schedule(schedule: str, lr: float, t0: float, lr_min: float) -> None:
    """One clear error for a schedule that cannot run."""
    if schedule not in SCHEDULES:
        raise AdfloraError(f"lr_schedule = {schedule!r} is not a schedule",
                           f"use one of {', '.join(SCHEDULES)}")
    if t0 <= 0:
        raise AdfloraError(f"lr_t0 = {t0} must be positive", "use e.g. lr_t0 = 10")
    if not 0 <= lr_min <= lr:
        raise AdfloraError(f"lr_min = {lr_min} must be in [0, lr = {lr}]", "use lr_min = 0")
