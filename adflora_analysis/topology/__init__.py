"""Topology layer: graphs, mixing matrices, time-varying samplers and consensus rates.

docs/architecture.md §3. Rows of a mixing matrix W are receivers: one gossip step is
``X <- W @ X`` over the client axis; J = 11ᵀ/n is exact averaging.

- :func:`build_graph` — graph families (``graphs.py``)
- :func:`mixing_matrix` — weight rules (``weights.py``)
- :func:`validate` — doubly stochastic / symmetric / connected checks (``validation.py``)
- :func:`spectral_gap`, :func:`spectral_summary` — λ2, λn, δ (``spectral.py``)
- :func:`make_sampler` — W^t for static, encounter, matching, one-peer / k-peer exponential,
  Base-(k+1) (``finite_time.py``), EquiDyn / EquiStatic (``equitopo.py``), list (``samplers.py``)
- :func:`consensus_rate`, :func:`second_moment_rate`, :func:`require_mixing` — p of Koloskova
  et al. 2020 and the exact second-moment decay (``rates.py``)
- :class:`TopologyConfig`, :func:`build_sampler`, :func:`topology_constants` — the config
  other layers embed, and the constants written to ``meta.json`` (``config.py``)
- :class:`SparseW` — W^t as self-weights + edge list, no n x n array (``sparse.py``)
- :func:`effective_neighbours`, :func:`exchangeable_p`, :func:`operator_p` — the effective
  number of neighbours (Vogels et al. 2022) and p without n x n work (``measures.py``)
- :func:`measures_table`, :func:`measure_fit` — which measure predicts consensus (``fit.py``)
"""

# Names load from their module on first use (PEP 562), so that importing a sub-module (the CLI)
# does not import torch, scipy and networkx.
_LAZY = {
    "TopologyConfig": "config", "build_sampler": "config", "topology_constants": "config",
    "GRAPHS": "graphs", "build_graph": "graphs", "RateEstimate": "rates",
    "consensus_basis": "rates", "consensus_rate": "rates", "periodic_rates": "rates",
    "require_mixing": "rates", "second_moment_rate": "rates", "ENCOUNTER_RULES": "samplers",
    "SAMPLERS": "samplers", "EncounterSampler": "samplers", "ListSampler": "samplers",
    "MatchingSampler": "samplers", "OnePeerExponentialSampler": "samplers", "Sampler": "samplers",
    "StaticSampler": "samplers", "make_sampler": "samplers", "SpectralSummary": "spectral",
    "spectral_gap": "spectral", "spectral_summary": "spectral", "MixingReport": "validation",
    "load_matrix": "validation", "validate": "validation", "RULES": "weights",
    "mixing_matrix": "weights", "SparseW": "sparse", "KPeerExponentialSampler": "samplers",
    "EquiDynSampler": "samplers", "EquiStaticSampler": "samplers", "BaseKSampler": "samplers",
    "effective_neighbours": "measures",
    "exchangeable_p": "measures", "operator_p": "measures", "measures_table": "fit",
    "measure_fit": "fit",
}

__all__ = [
    "ENCOUNTER_RULES", "GRAPHS", "RULES", "SAMPLERS", "EncounterSampler", "ListSampler",
    "MatchingSampler", "MixingReport", "OnePeerExponentialSampler", "RateEstimate", "Sampler",
    "SpectralSummary", "StaticSampler", "TopologyConfig", "build_graph", "build_sampler",
    "consensus_basis", "consensus_rate", "load_matrix", "make_sampler", "mixing_matrix",
    "periodic_rates", "require_mixing", "second_moment_rate", "spectral_gap", "spectral_summary",
    "topology_constants", "validate", "SparseW", "KPeerExponentialSampler", "EquiDynSampler",
    "EquiStaticSampler", "BaseKSampler",
    "effective_neighbours", "exchangeable_p", "operator_p", "measures_table", "measure_fit",
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
