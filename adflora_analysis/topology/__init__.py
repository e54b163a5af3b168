"""Topology layer: graphs, mixing matrices, time-varying samplers and consensus rates.

docs/architecture.md §3. Rows of a mixing matrix W are receivers: one gossip step is ``X <- W @ X`` over the
client axis; J = 11ᵀ/n is exact averaging.

- :func:`build_graph` — graph families (``graphs.py``)
- :func:`mixing_matrix` — weight rules (``weights.py``)
- :func:`validate` — doubly stochastic / symmetric / connected checks (``validation.py``)
- :func:`spectral_gap`, :func:`spectral_summary` — λ2, λn, δ (``spectral.py``)
- :func:`make_sampler` — W^t for static, encounter, matching, one-peer exponential, list
  (``samplers.py``)
- :func:`consensus_rate`, :func:`second_moment_rate`, :func:`require_mixing` — p of Koloskova
  et al. 2020 and the exact second-moment decay (``rates.py``)
- :class:`TopologyConfig`, :func:`build_sampler`, :func:`topology_constants` — the config
  other layers embed, and the constants written to ``meta.json`` (``config.py``)
"""

from adflora_analysis.topology.config import (
    TopologyConfig,
    build_sampler,
    topology_constants,
)
from adflora_analysis.topology.graphs import GRAPHS, build_graph
from adflora_analysis.topology.rates import (
    RateEstimate,
    consensus_basis,
    consensus_rate,
    periodic_rates,
    require_mixing,
    second_moment_rate,
)
from adflora_analysis.topology.samplers import (
    ENCOUNTER_RULES,
    SAMPLERS,
    EncounterSampler,
    ListSampler,
    MatchingSampler,
    OnePeerExponentialSampler,
    Sampler,
    StaticSampler,
    make_sampler,
)
from adflora_analysis.topology.spectral import SpectralSummary, spectral_gap, spectral_summary
from adflora_analysis.topology.validation import MixingReport, load_matrix, validate
from adflora_analysis.topology.weights import RULES, mixing_matrix

__all__ = [
    "ENCOUNTER_RULES", "GRAPHS", "RULES", "SAMPLERS", "EncounterSampler", "ListSampler",
    "MatchingSampler", "MixingReport", "OnePeerExponentialSampler", "RateEstimate", "Sampler",
    "SpectralSummary", "StaticSampler", "TopologyConfig", "build_graph", "build_sampler",
    "consensus_basis", "consensus_rate", "load_matrix", "make_sampler", "mixing_matrix",
    "periodic_rates", "require_mixing", "second_moment_rate", "spectral_gap", "spectral_summary",
    "topology_constants", "validate",
]
