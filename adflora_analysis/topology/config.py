"""The topology section of an experiment config, and the constants a run records.

Conventions of :class:`TopologyConfig` (docs/architecture.md §2-§3):

- ``graph = "encounter"`` (needs ``q`` in (0, 1]): the encounter sampler, with ``weights`` as
  its combination rule (``metropolis``, ``max-degree``, ``lazy-metropolis``, ``uniform``,
  ``pairwise``);
- ``graph = "matching"`` or ``"one-peer-exponential"``: those time-varying samplers (matched
  pairs average; ``params = {graph = "ring"}`` restricts matchings to a graph);
- any other graph name (see :data:`~adflora_analysis.topology.graphs.GRAPHS`): static W from
  ``weights`` on that graph, ``params`` being the graph's parameters (``degree``, ``p``, ...);
- ``weights = "server"``: W = J every round, whatever the graph (the centralized baseline);
- ``matrix = "W.npy"`` (or CSV): a user's static W.

>>> cfg = TopologyConfig(graph="encounter", weights="metropolis", q=0.1)
>>> s = build_sampler(cfg, n=10, seed=0)
>>> s.kind, s.n, s.q
('encounter', 10, 0.1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from adflora_analysis.errors import AdfloraError, unknown_name
from adflora_analysis.seeding import int_seed
from adflora_analysis.topology.graphs import GRAPHS
from adflora_analysis.topology.measures import (
    LARGE_N,
    Estimate,
    connected_fraction,
    effective_neighbours,
    large_constants,
)
from adflora_analysis.topology.rates import (
    SECOND_MOMENT_MAX_N,
    as_sampler,
    consensus_rate,
    periodic_rates,
    second_moment_rate,
)
from adflora_analysis.topology.samplers import (
    ENCOUNTER_RULES,
    SAMPLERS,
    Sampler,
    check_q,
    make_sampler,
)
from adflora_analysis.topology.spectral import spectral_summary
from adflora_analysis.topology.validation import is_connected, load_matrix
from adflora_analysis.topology.weights import RULES

__all__ = ["TIME_VARYING", "TopologyConfig", "build_sampler", "topology_constants"]

TIME_VARYING = tuple(k for k in SAMPLERS if k not in ("static", "list"))
"""Graph names of :class:`TopologyConfig` that mean a time-varying sampler (the sampler kinds
of :data:`~.samplers.SAMPLERS` other than ``static`` and ``list``)."""

ALL_WEIGHTS = tuple(dict.fromkeys((*RULES, *ENCOUNTER_RULES)))


@dataclass
class TopologyConfig:
    """How clients mix (see the module docstring for the conventions).

    Attributes
    ----------
    graph : str
        A graph family, or ``encounter`` / ``matching`` / ``one-peer-exponential``.
    weights : str
        Weight / combination rule.
    q : float, optional
        Encounter probability per pair and round (``graph = "encounter"`` only).
    params : dict
        Graph parameters (``degree``, ``p``, ``k``, ``radius``, ``rows``, ``sided``,
        ``bridges``, ``path``); for ``matching``, ``graph`` names the base graph.
    matrix : str, optional
        Path of a user W (``.npy`` or CSV); overrides ``graph`` and ``weights``.

    >>> TopologyConfig(graph="random-regular", params={"degree": 4}).weights
    'metropolis'
    >>> TopologyConfig(graph="ring", q=0.1)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    adflora_analysis.errors.AdfloraError: q = 0.1 is only used by graph 'encounter', not 'ring' ...
    """

    graph: str = "complete"
    weights: str = "metropolis"
    q: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    matrix: str | None = None

    def __post_init__(self) -> None:
        if self.matrix is not None:
            return
        if self.graph not in GRAPHS and self.graph not in TIME_VARYING:
            raise unknown_name("graph", self.graph, [*GRAPHS, *TIME_VARYING])
        if self.weights not in ALL_WEIGHTS:
            raise unknown_name("weights", self.weights, ALL_WEIGHTS)
        if self.graph == "encounter":
            if self.q is None:
                raise AdfloraError("graph 'encounter' needs an encounter probability q",
                                   "set q in (0, 1], e.g. q = 0.1")
            self.q = check_q(self.q)
            if self.weights not in ENCOUNTER_RULES and self.weights != "server":
                raise unknown_name("encounter combination rule", self.weights,
                                   ENCOUNTER_RULES)
        elif self.q is not None:
            raise AdfloraError(f"q = {self.q} is only used by graph 'encounter', not "
                               f"{self.graph!r}", "drop q or set graph = 'encounter'")
        if self.graph in TIME_VARYING and self.graph != "encounter" and self.weights not in (
                "metropolis", "pairwise", "server"):
            raise AdfloraError(f"graph {self.graph!r} averages matched pairs; weights "
                               f"{self.weights!r} do not apply", "use weights = 'pairwise'")
        if self.graph in GRAPHS and self.weights == "pairwise":
            raise AdfloraError("weights 'pairwise' needs a time-varying graph",
                               "use graph = 'encounter' or 'matching', or weights = "
                               "'metropolis'")


def build_sampler(cfg: TopologyConfig, n: int, seed: int = 0) -> Sampler:
    """The sampler of W^t that ``cfg`` describes, for ``n`` clients.

    Random graph families draw from ``seeding.int_seed(seed, "topology-graph")``. A
    disconnected static graph is returned as is; call
    :func:`~adflora_analysis.topology.rates.require_mixing` where p > 0 is needed.

    >>> build_sampler(TopologyConfig(graph="ring", weights="server"), 4).sample(0, None)[0]
    array([0.25, 0.25, 0.25, 0.25])
    """
    if cfg.matrix is not None:
        W = load_matrix(cfg.matrix, for_theory=False)
        if n is not None and W.shape[0] != n:
            raise AdfloraError(f"matrix {cfg.matrix!r} is {W.shape[0]} x {W.shape[0]} but "
                               f"n = {n}", f"use n = {W.shape[0]}")
        return make_sampler("static", W.shape[0], W=W)
    gseed = int_seed(seed, "topology-graph")
    params = dict(cfg.params)
    if cfg.weights == "server" or cfg.graph not in TIME_VARYING:
        kind, params = "static", {**params, "graph": cfg.graph, "weights": cfg.weights}
    else:
        kind = cfg.graph
        if kind == "encounter":
            params.update(q=cfg.q, weights=cfg.weights)
    return make_sampler(kind, n, seed=gseed, **params)


def w_bytes(cfg: TopologyConfig, n: int) -> float:
    """Bytes one W^t of ``cfg`` takes in a run of ``n`` clients, before building it: the dense
    n x n float64 array, or the sparse form (self-weights + edges, ~24 bytes an entry; see
    :mod:`~adflora_analysis.core.gossip`, sparse from ``SPARSE_MIN_N`` clients) when the
    sampler has one and its edge count is known from the config (memory refusals use it).

    >>> w_bytes(TopologyConfig(graph="ring"), 100_000) < 1e8 < w_bytes(TopologyConfig(), 100_000)
    True
    """
    from adflora_analysis.topology.equitopo import equistatic_degree
    from adflora_analysis.topology.sparse import SPARSE_MIN_N

    dense = 8.0 * n * n
    if n < SPARSE_MIN_N or cfg.matrix is not None or cfg.weights == "server":
        return dense
    p = cfg.params
    per_client = {
        "encounter": None if cfg.weights == "pairwise" else (cfg.q or 0.0) * (n - 1),
        "matching": 1.0, "one-peer-exponential": 1.0, "equidyn": 1.0,
        "k-peer-exponential": float(p.get("k", 2)), "base-k": float(p.get("k", 1)),
        "equistatic": (2.0 if p.get("undirected") else 1.0) * float(
            p.get("M") or equistatic_degree(n, p.get("eps", 0.5), p.get("delta", 0.1))),
        "ring": 2.0, "path": 2.0, "torus": 4.0,
        "grid": 4.0, "hypercube": math.log2(n), "random-regular": float(p.get("degree", 4)),
        "watts-strogatz": float(p.get("k", 4)), "exponential": 2.0 * math.log2(n),
        "star": 2.0,
    }.get(cfg.graph)
    if per_client is None:
        return dense
    return min(dense, 24.0 * n * (per_client + 1.0))


GAMMA = 0.95
"""γ of the effective number of neighbours reported by :func:`topology_constants`."""


def _num(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def topology_constants(obj: Sampler | Any, samples: int = 20000, seed: int = 0, *,
                       max_n: int = SECOND_MOMENT_MAX_N) -> dict[str, Any]:
    """The topology constants of a run (for ``meta.json`` and ``adflora topology inspect``).

    Returns a JSON-ready dict: ``n``, ``kind``, ``graph``, ``weights``, ``q``,
    ``doubly_stochastic`` and ``symmetric`` (of every W^t), ``connected`` (the graph of E[W],
    i.e. whether the clients mix over time), ``connected_draws`` (the fraction of draws W^t
    whose own graph is connected; 1 or 0 when static), ``lambda2``, ``lambda_n``,
    ``spectral_gap`` (of E[W]; W itself when static), ``p``, ``p_stderr`` (0 when exact),
    ``p_method``, ``p_samples``, ``second_moment_rate`` (None above ``max_n`` clients for a
    time-varying sampler), ``effective_neighbours`` (with ``_stderr`` and ``_gamma``: n_W(γ)
    of Vogels et al. 2022 at γ = :data:`GAMMA`, :mod:`~.measures`). A sparse sampler with
    n >= :data:`~.measures.LARGE_N` takes :func:`~.measures.large_constants` (no n x n
    array; at most :data:`~.measures.LARGE_SAMPLES` draws, no periodic rates). For a periodic
    sampler (one-peer exponential, a list) p and the second-moment rate are those of a random
    phase each round; ``periodic`` then adds the rates of the sequence run in order (see
    :func:`~adflora_analysis.topology.rates.periodic_rates`).

    >>> import numpy as np
    >>> c = topology_constants(np.full((3, 3), 1 / 3))
    >>> c["p"], c["spectral_gap"], c["connected"], c["second_moment_rate"]
    (1.0, 1.0, True, 0.0)
    """
    s = as_sampler(obj)
    desc = s.describe()
    labels = {"n": s.n, "kind": s.kind, "graph": desc.get("graph"), "weights": desc.get("rule"),
              "q": desc.get("q"), "doubly_stochastic": bool(s.doubly_stochastic),
              "symmetric": bool(s.symmetric)}
    if s.sparse and s.n >= LARGE_N:
        out = {**labels, **large_constants(s, samples=samples, seed=seed)}
        return {k: _num(v) if isinstance(v, float) else v for k, v in out.items()}
    EW = s.expected(samples=samples, seed=seed)
    spec = spectral_summary(EW)
    rate = consensus_rate(s, samples=samples, seed=seed)
    if s.is_static or s.n <= max_n:
        rho = second_moment_rate(s, samples=samples, seed=seed, max_n=max_n)
    else:
        rho = None
    ne = effective_neighbours(s, GAMMA, seed=seed, p=Estimate(rate.p, rate.stderr, rate.method,
                                                               rate.samples))
    out = {
        **labels,
        "connected": is_connected(EW),
        "lambda2": _num(spec.lambda2),
        "lambda_n": _num(spec.lambda_n),
        "spectral_gap": _num(spec.gap),
        "p": _num(rate.p),
        "p_stderr": _num(rate.stderr),
        "p_method": rate.method,
        "p_samples": rate.samples,
        "second_moment_rate": _num(rho),
        "effective_neighbours": _num(ne.value),
        "effective_neighbours_stderr": _num(ne.stderr),
        "effective_neighbours_gamma": GAMMA,
        "connected_draws": connected_fraction(s, min(samples, 256), seed),
    }
    periodic = periodic_rates(s)
    if periodic is not None:
        out["periodic"] = periodic
    return out
