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

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adflora_analysis.errors import AdfloraError

if TYPE_CHECKING:  # pragma: no cover - typing only (loop imports this module)
    from adflora_analysis.core.loop import RoundResult

ScheduleState = dict[str, Any]


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
    """

    name: str
    init: Callable[[], ScheduleState]
    phase: Callable[[ScheduleState, int], str]
    update: Callable[[ScheduleState, RoundResult], ScheduleState]
    interval: int | None = None


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
