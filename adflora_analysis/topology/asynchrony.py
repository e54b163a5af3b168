"""The ``[gossip]`` values, validated once (no torch, no numpy): the asynchrony models and
:func:`check_gossip`, which the study config (``study/runconfig.py``) and the mixers
(``core/mixers.py``) both call, so a bad value is one ``error:`` line wherever it enters.
"""

from __future__ import annotations

from adflora_analysis.errors import AdfloraError, unknown_name

__all__ = ["MODELS", "check_gossip"]

MODELS = ("stale-read", "ad-psgd", "push-sum")
"""The asynchrony models ``[gossip] model`` names (core/mixers.py ``make_mixer``;
docs/theory.md §9)."""


def check_gossip(staleness: object = 0, participation: float = 1.0, model: str = "stale-read",
                 speed_spread: float = 0.0, clock_drift: float = 0.0, *,
                 rounds: int | None = None, n_clients: int | None = None) -> None:
    """Validate the ``[gossip]`` values: one :class:`AdfloraError` for the first bad one.

    ``staleness`` τ (an integer >= 0, below ``rounds`` when given), ``participation`` π in
    (0, 1], ``model`` in :data:`MODELS` (push-sum only below
    :data:`~adflora_analysis.topology.sparse.SPARSE_MIN_N` clients, where W^t is dense, when
    ``n_clients`` is given), ``speed_spread`` >= 0, ``clock_drift`` in [0, 1).

    >>> check_gossip(2, 0.8, "push-sum", rounds=10, n_clients=16)
    >>> check_gossip(-1)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    adflora_analysis.errors.AdfloraError: gossip.staleness = -1 must be an integer >= 0 ...
    """
    def need(ok: bool, problem: str, hint: str) -> None:
        if not ok:
            raise AdfloraError(problem, hint)

    if model not in MODELS:
        raise unknown_name("gossip.model", model, MODELS)
    if n_clients is not None and model == "push-sum":
        from adflora_analysis.topology.sparse import SPARSE_MIN_N

        need(n_clients < SPARSE_MIN_N,
             f"gossip.model = 'push-sum' needs a dense W^t, used below {SPARSE_MIN_N:,} "
             f"clients (n_clients = {n_clients:,})",
             "use fewer clients or gossip.model = 'stale-read'")
    need(isinstance(staleness, int) and staleness >= 0,
         f"gossip.staleness = {staleness} must be an integer >= 0",
         "use 0 (fresh messages) or a number of rounds")
    need(rounds is None or staleness < rounds,  # type: ignore[operator]
         f"gossip.staleness = {staleness} is not smaller than rounds = {rounds}: "
         "no message would ever arrive", "use a staleness below the number of rounds")
    need(speed_spread >= 0, f"gossip.speed_spread = {speed_spread} must be >= 0",
         "use 0 (every client makes local_steps steps) or e.g. 0.5")
    need(0 < participation <= 1,
         f"gossip.participation = {participation} must lie in (0, 1]",
         "use 1 (every client every round) or e.g. 0.8")
    need(0 <= clock_drift < 1, f"gossip.clock_drift = {clock_drift} must lie in [0, 1)",
         "use 0 (one clock for every client) or e.g. 0.05 (clocks up to 5% apart)")
