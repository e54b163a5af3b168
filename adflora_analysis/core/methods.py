"""Method specs: which LoRA blocks train and which are gossiped in each phase (docs/architecture.md
§2).

A method is data, not code: adding one is adding a :class:`MethodSpec` to :data:`METHODS`.
The same specs drive the synthetic testbed and the GLUE runner through
:func:`adflora_analysis.core.loop.run_rounds`. Centralized (server) variants are the same specs
run with the ``server`` topology (W^t = J).

>>> [get_method("adf-lora").trained_blocks(t, 2) for t in range(5)]
[('B',), ('B',), ('A',), ('A',), ('B',)]
>>> get_method("adf-lora").mixed_blocks(3, 2), get_method("rolora").mixed_blocks(3, 1)
(('A', 'B'), ('A',))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from adflora_analysis.core.schedules import phase
from adflora_analysis.errors import AdfloraError, unknown_name

BlockRule = Literal["phase", "A", "B", "AB"]


def _blocks(rule: BlockRule, ph: str) -> tuple[str, ...]:
    if rule == "phase":
        return (ph,)
    return tuple(rule)


def _masks(rule: BlockRule, phase_A: Tensor) -> dict[str, Tensor]:
    if rule == "phase":
        return {"A": phase_A.clone(), "B": ~phase_A}
    return {b: torch.full_like(phase_A, b in rule) for b in ("A", "B")}


@dataclass(frozen=True)
class MethodSpec:
    """One federated LoRA method.

    Attributes
    ----------
    name : registry name used in configs (``methods = [...]``).
    train : which blocks take local steps: ``"phase"`` (alternating by :func:`phase`), ``"A"``,
        ``"B"`` or ``"AB"``.
    mix : which blocks are gossiped every round (same vocabulary).
    default_switch_interval : T used when the config gives none.
    summary : one line for tables and reports.
    """

    name: str
    train: BlockRule
    mix: BlockRule
    default_switch_interval: int
    summary: str

    def trained_in(self, ph: str) -> tuple[str, ...]:
        """Blocks updated by local steps in a round of phase ``ph`` ("A" or "B").

        >>> get_method("rolora").trained_in("A"), get_method("lora").trained_in("A")
        (('A',), ('A', 'B'))
        """
        return _blocks(self.train, ph)

    def mixed_in(self, ph: str) -> tuple[str, ...]:
        """Blocks gossiped with W^t in a round of phase ``ph``.

        >>> get_method("rolora").mixed_in("B"), get_method("adf-lora").mixed_in("B")
        (('B',), ('A', 'B'))
        """
        return _blocks(self.mix, ph)

    def trained_masks(self, phase_A: Tensor) -> dict[str, Tensor]:
        """Which clients train each block when each client has its own phase (clock drift,
        docs/theory.md §9): ``phase_A`` (*batch, n) bool, True where a client is in phase A;
        returns ``{"A": (*batch, n) bool, "B": ...}``.

        >>> m = get_method("rolora").trained_masks(torch.tensor([True, False]))
        >>> m["A"].tolist(), m["B"].tolist()
        ([True, False], [False, True])
        >>> get_method("lora").trained_masks(torch.tensor([True, False]))["B"].tolist()
        [True, True]
        """
        return _masks(self.train, phase_A)

    def mixed_masks(self, phase_A: Tensor) -> dict[str, Tensor]:
        """Which clients gossip each block when each client has its own phase (see
        :meth:`trained_masks`): rolora's client gossips only its phase's factor.

        >>> get_method("rolora").mixed_masks(torch.tensor([True, False]))["B"].tolist()
        [False, True]
        >>> get_method("adf-lora").mixed_masks(torch.tensor([True, False]))["B"].tolist()
        [True, True]
        """
        return _masks(self.mix, phase_A)

    def trained_blocks(self, t: int, switch_interval: int | None = None) -> tuple[str, ...]:
        """Blocks updated by local steps at round ``t`` of the periodic schedule."""
        return self.trained_in(phase(t, switch_interval or self.default_switch_interval))

    def mixed_blocks(self, t: int, switch_interval: int | None = None) -> tuple[str, ...]:
        """Blocks gossiped with W^t at round ``t`` of the periodic schedule."""
        return self.mixed_in(phase(t, switch_interval or self.default_switch_interval))

    @property
    def alternates(self) -> bool:
        """Whether the trained block switches with the phase (T matters)."""
        return self.train == "phase"


METHODS: dict[str, MethodSpec] = {
    s.name: s
    for s in (
        MethodSpec("adf-lora", "phase", "AB", 5,
                   "alternate the trained factor every T rounds; gossip both factors every round"),
        MethodSpec("rolora", "phase", "phase", 1,
                   "alternate the trained factor; gossip only the trained one (naive in DFL)"),
        MethodSpec("ffa-lora", "B", "B", 1, "train and gossip B; A frozen at its shared init"),
        MethodSpec("lora", "AB", "AB", 1, "train and gossip both factors (FedAvg-LoRA)"),
    )
}


def get_method(name: str) -> MethodSpec:
    """The spec registered as ``name``; an unknown name lists the valid ones.

    >>> spec = get_method("adf-lora")
    >>> spec.default_switch_interval, [spec.trained_blocks(t) for t in (0, 4, 5, 10)]  # B first
    (5, [('B',), ('B',), ('A',), ('B',)])
    >>> get_method("adflora")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    adflora_analysis.errors.AdfloraError: unknown method 'adflora'; valid: adf-lora, ...
    """
    try:
        return METHODS[name]
    except KeyError:
        raise unknown_name("method", name, METHODS) from None


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add a method spec to :data:`METHODS` (refuses to overwrite a name).

    >>> spec = register_method(MethodSpec("b-only-gossip-ab", "B", "AB", 1, "doc example"))
    >>> get_method("b-only-gossip-ab").mixed_blocks(0)
    ('A', 'B')
    >>> register_method(spec)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    adflora_analysis.errors.AdfloraError: method 'b-only-gossip-ab' is already registered ...
    >>> del METHODS["b-only-gossip-ab"]  # the registry is global: leave it as it was
    """
    if spec.name in METHODS:
        raise AdfloraError(f"method {spec.name!r} is already registered", "pick another name")
    METHODS[spec.name] = spec
    return spec
