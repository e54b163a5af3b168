"""Switching schedules: which factor the alternating methods train at round t (docs/architecture.md
§9).

A schedule is a triple of pure functions over a small state (optax's ``init``/``update`` idea)::

    state = schedule.init()
    for t in rounds:
        ph = schedule.phase(state, t)        # "A" or "B": the factor an alternating method trains
        ... run the round ...
        state = schedule.update(state, result)   # feedback from what the round measured

The state is data (numbers and tensors), so the round loop checkpoints it and a resumed run
continues exactly. Every client takes the same decision: a schedule may only read quantities all
clients agree on (the round number, or a round's metrics that the backend has already reduced
over clients). :func:`periodic` is the paper's fixed interval T and the default of every method.

>>> s = periodic(2)
>>> state = s.init()
>>> "".join(s.phase(state, t) for t in range(8))
'BBAABBAA'
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from adflora_analysis.errors import AdfloraError


class RoundView(Protocol):
    """What a schedule's ``update`` reads of a round: the part of
    :class:`~adflora_analysis.core.loop.RoundResult` it needs (so this module does not import
    the loop, which imports it). ``layer`` tensors are (*batch, L), ``scalar`` ones (*batch,)."""

    t: int
    layer: dict[str, Tensor]
    scalar: dict[str, Tensor]


ScheduleState = dict[str, Any]

XI_FLOOR = 1e-24
"""Consensus errors below this count as zero for :func:`feedback` (a block gossiped from a
shared value keeps a round-off Xi ~ 1e-33, which must not block the switch)."""


def phase(t: int, switch_interval: int) -> str:
    """Active factor at round ``t`` of a fixed interval T: ``"B"`` for the first T rounds, then
    ``"A"``, alternating.

    B comes first because B = 0 at init makes A's gradient zero (docs/architecture.md §2).

    >>> "".join(phase(t, 2) for t in range(8))
    'BBAABBAA'
    """
    if switch_interval < 1:
        raise AdfloraError(f"switch_interval T = {switch_interval} must be at least 1",
                           "use T = 1 (switch every round) or more")
    return "B" if (t // switch_interval) % 2 == 0 else "A"


@dataclass(frozen=True)
class SwitchSchedule:
    """Decides the phase ("A" or "B") of every round.

    Attributes
    ----------
    name : short label for tables (e.g. ``"periodic(T=5)"``).
    init : ``() -> state``, the state before round 0.
    phase : ``(state, t) -> "A" | "B"``, the factor trained at round ``t``.
    update : ``(state, result) -> state`` after round ``t`` (``result`` is the round's
        :class:`~adflora_analysis.core.loop.RoundResult`); must not mutate its argument.
    interval : the fixed T when the schedule has one (reported in the metrics rows), else None.
    clients : ``(state, t) -> (S, n)`` bool, True where client i is in phase A at round ``t``
        (each client on its own clock, :func:`drifting`); None (default): every client is in
        ``phase(state, t)``.
    """

    name: str
    init: Callable[[], ScheduleState]
    phase: Callable[[ScheduleState, int], str]
    update: Callable[[ScheduleState, RoundView], ScheduleState]
    interval: int | None = None
    clients: Callable[[ScheduleState, int], Tensor] | None = None


def periodic(switch_interval: int) -> SwitchSchedule:
    """Switch every ``switch_interval`` rounds, B first (the paper's schedule; stateless).

    >>> s = periodic(3)
    >>> [s.phase(s.init(), t) for t in (0, 2, 3, 6)], s.name
    (['B', 'B', 'A', 'B'], 'periodic(T=3)')
    """
    T = int(switch_interval)
    phase(0, T)  # validates T

    return SwitchSchedule(f"periodic(T={T})", init=dict, phase=lambda _s, t: phase(t, T),
                          update=lambda s, _r: s, interval=T)


def interval_for_rate(p: float, eps: float) -> int:
    """Smallest T with (1 − p)^T <= eps: T = max(1, ceil(log eps / log(1 − p))).

    The frozen block's consensus error contracts by 1 − p per gossip round (docs/theory.md
    §1), so a phase of T rounds shrinks it by the factor ``eps``.

    >>> interval_for_rate(0.5, 0.1), interval_for_rate(1.0, 0.1), interval_for_rate(0.05, 0.1)
    (4, 1, 45)
    """
    if not 0 < eps < 1:
        raise AdfloraError(f"switch_eps = {eps} must lie in (0, 1)",
                           "use e.g. switch_eps = 0.1 (the frozen block's error shrinks 10x)")
    if not p > 0:
        raise AdfloraError(f"the topology's consensus rate p = {p} is not positive: the frozen "
                           "block never contracts, so the topology schedule would never switch",
                           "use a connected topology, or switch_schedule = 'periodic'")
    if p >= 1:
        return 1
    return max(1, math.ceil(math.log(eps) / math.log1p(-p) - 1e-12))


def topology_aware(p: float, eps: float = 0.1) -> SwitchSchedule:
    """Periodic schedule with T from the topology before the run: the frozen block's consensus
    error contracts by ``eps`` within a phase (:func:`interval_for_rate`).

    >>> s = topology_aware(0.3, 0.1)
    >>> s.name, s.interval
    ('topology(T=7)', 7)
    """
    T = interval_for_rate(float(p), float(eps))
    base = periodic(T)
    return SwitchSchedule(f"topology(T={T})", init=base.init, phase=base.phase,
                          update=base.update, interval=T)


def agreement_bytes(n_clients: int, bytes_A: int, bytes_B: int, n_layers: int) -> int:
    """Bytes per round that a decentralised federation spends to agree on the numbers
    :func:`feedback` reads: an all-reduce (ring: every client sends 2(n − 1)/n of the payload)
    of each client's A and B blocks (for the averages) and of 2L + 1 float64 scalars (‖X_i‖² per
    block and layer, and the local loss), so Ξ_A, Ξ_B and f are known to every client.

    >>> agreement_bytes(10, 40, 40, 1)
    1872
    """
    n = int(n_clients)
    payload = int(bytes_A) + int(bytes_B) + 8 * (2 * int(n_layers) + 1)
    return 2 * (n - 1) * payload


def feedback(eps: float = 0.1, t_min: int = 1, t_max: int = 20, stall: float = 0.1
             ) -> SwitchSchedule:
    """Switch after the round in which the frozen block's consensus error has fallen to ``eps``
    times its value at the start of the phase, or the trained block's progress stalls; never
    before ``t_min`` and always after ``t_max`` rounds in a phase. B trains first.

    The decision reads only the round's reduced metrics (identical on every process): Ξ of the
    frozen block summed over layers (``layer["xi_A"]``/``["xi_B"]``, after gossip; at the
    phase's start ``xi_*_local``, before gossip) and ``scalar["loss"]`` when the problem reports
    it. *Stall*: the last round's loss decrease is below ``stall`` times the phase's mean
    decrease per round (never with fewer than 2 rounds of the phase; ``stall = 0`` disables it).
    With a batch of seeds (*batch,) the numbers are averaged over the batch, so the seeds of a
    job switch together. What agreeing on them costs is :func:`agreement_bytes`.

    Parameters
    ----------
    eps : target contraction of the frozen block's Ξ within a phase, in (0, 1).
    t_min, t_max : shortest and longest phase, in rounds (1 <= t_min <= t_max).
    stall : relative progress below which the trained block counts as stalled (>= 0).

    >>> s = feedback(0.5, 1, 3)
    >>> st = s.init()
    >>> s.phase(st, 0), st["start"]
    ('B', 0)
    """
    eps, stall = float(eps), float(stall)
    t_min, t_max = int(t_min), int(t_max)
    if not 0 < eps < 1:
        raise AdfloraError(f"switch_eps = {eps} must lie in (0, 1)", "use e.g. 0.1")
    if t_min < 1:
        raise AdfloraError(f"switch_min = {t_min} must be at least 1", "use switch_min = 1")
    if t_min > t_max:
        raise AdfloraError(f"switch_min = {t_min} is larger than switch_max = {t_max}",
                           "use switch_min <= switch_max")
    if stall < 0:
        raise AdfloraError(f"switch_stall = {stall} must be >= 0", "use 0 to disable it")

    def init() -> ScheduleState:
        return {"phase": "B", "start": 0, "xi0": None, "loss0": None, "loss_prev": None,
                "k0": 0}

    def phase_of(s: ScheduleState, _t: int) -> str:
        return s["phase"]

    def update(s: ScheduleState, res: RoundView) -> ScheduleState:
        s = dict(s)
        frozen = "A" if s["phase"] == "B" else "B"
        xi = float(res.layer[f"xi_{frozen}"].double().sum(-1).mean())
        loss = res.scalar.get("loss")
        loss = float(loss.double().mean()) if loss is not None else None
        if s["xi0"] is None:             # first round of the phase: its starting values
            s["xi0"] = float(res.layer[f"xi_{frozen}_local"].double().sum(-1).mean())
            s["loss0"] = float(res.scalar["loss_start"].double().mean()) \
                if "loss_start" in res.scalar else s["loss_prev"]
            s["k0"] = 0
            if s["loss0"] is None:       # no loss before the phase: count from its 1st round
                s["loss0"], s["k0"] = loss, 1
        k = res.t + 1 - s["start"]
        stalled = False
        if stall > 0 and loss is not None and k >= 2 and s["loss0"] is not None \
                and s["loss_prev"] is not None and k > s["k0"]:
            mean_gain = (s["loss0"] - loss) / (k - s["k0"])
            stalled = (s["loss_prev"] - loss) < stall * mean_gain
        contracted = xi <= eps * s["xi0"] + XI_FLOOR
        s["loss_prev"] = loss
        if k >= t_max or (k >= t_min and (contracted or stalled)):
            s.update(phase=frozen, start=res.t + 1, xi0=None, loss0=None)
        return s

    return SwitchSchedule(f"feedback(eps={eps:g},{t_min}..{t_max})", init=init,
                          phase=phase_of, update=update)


def clock_rates(seeds: Sequence[int], n: int, drift: float) -> Tensor:
    """Each client's clock rate 1 + δ_i, δ_i ~ U[−drift, drift] drawn once per (seed, client)
    from the counter-based stream (seed, "clock-drift"), shape (len(seeds), n) float64.

    >>> r = clock_rates([0, 1], 5, 0.2)
    >>> tuple(r.shape), bool(((r >= 0.8) & (r <= 1.2)).all())
    ((2, 5), True)
    >>> torch.equal(clock_rates([1], 5, 0.2)[0], r[1])   # a seed's rates, whatever the batch
    True
    >>> bool((clock_rates([0], 5, 0.0) == 1).all())
    True
    """
    from adflora_analysis.seeding import torch_generator

    drift = float(drift)
    if not 0 <= drift < 1:
        raise AdfloraError(f"gossip.clock_drift = {drift} must lie in [0, 1)",
                           "use 0 (one clock) or e.g. 0.05 (clocks 5% apart at most)")
    u = torch.stack([torch.rand(n, generator=torch_generator(s, "clock-drift"),
                                dtype=torch.float64) for s in seeds])
    return 1 + drift * (2 * u - 1)


def drifting(base: SwitchSchedule, drift: float, seeds: Sequence[int], n: int
             ) -> SwitchSchedule:
    """``base`` read on each client's own clock: client i is at round t in the phase ``base``
    has at its clock c_i(t) = floor(t (1 + δ_i)) (:func:`clock_rates`), so clients of one round
    can be in different phases (docs/theory.md §9). ``phase`` (the ``phase`` column) stays the
    reference clock's (δ = 0); ``clients`` gives every client's. Needs a fixed interval
    (``periodic``, ``topology``); the feedback schedule decides its switches from the
    federation's metrics round by round, so a client whose clock runs ahead would need metrics
    of rounds not yet run: refused.

    >>> s = drifting(periodic(2), 0.3, [0], 4)
    >>> st = s.init()
    >>> "".join(s.phase(st, t) for t in range(8))       # the reference clock
    'BBAABBAA'
    >>> ["".join("A" if a else "B" for a in s.clients(st, t)[0]) for t in (0, 7)]
    ['BBBB', 'BABB']
    """
    if base.interval is None:
        raise AdfloraError(f"gossip.clock_drift needs a schedule with a fixed interval; "
                           f"{base.name} decides its switches from the run's metrics",
                           "use switch_schedule = 'periodic' or 'topology' with clock_drift")
    T = int(base.interval)
    rates = clock_rates(seeds, n, drift)

    def clients(_s: ScheduleState, t: int) -> Tensor:
        c = torch.floor(t * rates).long()             # each client's clock reading
        return (c // T) % 2 == 1                      # B first, like phase()

    return SwitchSchedule(f"{base.name}+drift({float(drift):g})", init=base.init,
                          phase=base.phase, update=base.update, interval=T, clients=clients)
