"""A job's switching schedule and mixer from the shared config keys (``switch_schedule``,
``switch_eps``, ``switch_min``, ``switch_max`` and ``[gossip]``; runconfig.FederationConfig),
for the synthetic and GLUE runners alike (issue 12; docs/theory.md §9).
"""

from __future__ import annotations

from typing import Any

from adflora_analysis.errors import AdfloraError


def schedule_and_mixer(cfg, sampler, seeds: list[int],
                       block_bytes: tuple[int, int, int] | None = None,
                       method: str | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """(schedule, mixer, row columns) of a job; schedule and mixer are None for the defaults
    (the round loop fills them in, bit-identical to before).

    ``sampler``: the job's topology sampler (built when None and needed); ``seeds``: the job's
    seeds (participation masks); ``block_bytes``: (bytes of A, bytes of B per client, layers),
    to record what agreeing on the feedback schedule's numbers costs per round (column
    ``agree_bytes``, :func:`~adflora_analysis.core.schedules.agreement_bytes`). Other columns:
    ``switch_schedule``, ``staleness``, ``participation``, ``speed_spread``, ``clock_drift``.

    With ``gossip.clock_drift`` > 0 the schedule of an alternating ``method`` (its T:
    ``cfg.switch_for(method)`` under ``periodic``) is read on each client's own clock
    (:func:`~adflora_analysis.core.schedules.drifting`); ``method`` is needed then.

    >>> from adflora_analysis.study.runconfig import FederationConfig, GossipConfig
    >>> s, m, cols = schedule_and_mixer(FederationConfig(), None, [0])
    >>> s is None and m is None, cols
    (True, {})
    >>> cfg = FederationConfig(switch_schedule="feedback", gossip=GossipConfig(2, 0.8))
    >>> s, m, cols = schedule_and_mixer(cfg, None, [0], (256, 256, 1))
    >>> s.name, m.name, cols["agree_bytes"]
    ('feedback(eps=0.1,1..20)', 'stale-read(staleness=2,participation=0.8)', 9648)
    >>> cfg = FederationConfig(gossip=GossipConfig(clock_drift=0.05))
    >>> s, m, cols = schedule_and_mixer(cfg, None, [0], method="rolora")
    >>> s.name, m, cols
    ('periodic(T=1)+drift(0.05)', None, {'clock_drift': 0.05})
    """
    from adflora_analysis.core import mixers, schedules

    schedule, mixer, cols = None, None, {}
    if cfg.switch_schedule != "periodic":
        cols["switch_schedule"] = cfg.switch_schedule
        if cfg.switch_schedule == "topology":
            schedule = topology_schedule(cfg, sampler)
        else:
            schedule = schedules.feedback(cfg.switch_eps, cfg.switch_min, cfg.switch_max)
            if block_bytes is not None:
                cols["agree_bytes"] = schedules.agreement_bytes(cfg.n_clients, *block_bytes)
    g = cfg.gossip
    if not g.is_default:
        mixer = mixers.make_mixer(g.model, g.staleness, g.participation, seeds)
        cols.update(staleness=g.staleness, participation=g.participation)
        if g.model != "stale-read":
            cols["gossip_model"] = g.model
    if g.speed_spread:
        cols["speed_spread"] = g.speed_spread
    if g.clock_drift:
        cols["clock_drift"] = g.clock_drift
        if method is None:
            raise ValueError("schedule_and_mixer needs the method with gossip.clock_drift")
        from adflora_analysis.core.methods import get_method

        if get_method(method).alternates:
            base = schedule or schedules.periodic(cfg.switch_for(method))
            schedule = schedules.drifting(base, g.clock_drift, seeds, cfg.n_clients)
    return schedule, mixer, cols


def topology_schedule(cfg, sampler):
    """:func:`~adflora_analysis.core.schedules.topology_aware` with the topology's p (the
    estimate ``meta.json`` holds: ``topology_samples`` draws (4000 without that key) under the
    first seed; the sampler is built when None). A T that reaches the number of rounds would
    never switch: refused."""
    from adflora_analysis.core.schedules import topology_aware
    from adflora_analysis.topology import build_sampler, consensus_rate

    if sampler is None:
        sampler = build_sampler(cfg.topology, cfg.n_clients, seed=cfg.seed_list[0])
    p = consensus_rate(sampler, samples=getattr(cfg, "topology_samples", 4000),
                       seed=cfg.seed_list[0]).p
    sched = topology_aware(p, cfg.switch_eps)
    if sched.interval >= cfg.rounds:
        raise AdfloraError(f"the topology schedule would never switch: p = {p:.4g} gives "
                           f"T = {sched.interval} >= rounds = {cfg.rounds}",
                           "raise switch_eps, run more rounds, or use a better-mixing topology")
    return sched
