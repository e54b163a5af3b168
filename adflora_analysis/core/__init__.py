"""Method core shared by the synthetic testbed and the GLUE runner (docs/architecture.md §1, §2,
§4).

Public surface: method specs (:func:`get_method`, :data:`METHODS`, :func:`phase`), stacked
states (:class:`LoraState`), gossip (:func:`gossip`, in place :func:`gossip_`,
:func:`mixing_schedule`), metrics (:func:`consensus_error`, :func:`cross_term`,
:func:`product_consensus`, streaming :class:`DisplacementStats`) and the one round loop
(:func:`run_rounds`) with its extension points (docs/architecture.md §9): switching schedules
(:func:`periodic`, :func:`topology_aware`, :func:`feedback`), mixers (:func:`synchronous`,
:func:`asynchronous`) and step sizes (:func:`lr_at`).
"""

from adflora_analysis.core.backend import LOCAL, Backend, LocalBackend
from adflora_analysis.core.displacement import DisplacementStats
from adflora_analysis.core.gossip import gossip, gossip_, messages, mix_state, mixing_schedule
from adflora_analysis.core.loop import Problem, RoundResult, check_finite, run_rounds
from adflora_analysis.core.lr_schedules import lr_at
from adflora_analysis.core.methods import METHODS, MethodSpec, get_method, register_method
from adflora_analysis.core.metrics import (
    consensus_error,
    cross_term,
    layer_metrics,
    product_consensus,
    total_over_layers,
)
from adflora_analysis.core.mixers import Mixer, asynchronous, synchronous
from adflora_analysis.core.rows import round_rows
from adflora_analysis.core.schedules import (
    SwitchSchedule,
    feedback,
    periodic,
    phase,
    topology_aware,
)
from adflora_analysis.core.state import LoraState

__all__ = [
    "LOCAL", "Backend", "DisplacementStats", "LocalBackend", "METHODS", "LoraState",
    "MethodSpec", "Mixer", "Problem", "SwitchSchedule", "RoundResult", "asynchronous",
    "check_finite", "consensus_error", "cross_term", "feedback", "get_method", "gossip",
    "gossip_", "layer_metrics", "lr_at", "messages", "mix_state", "mixing_schedule", "periodic",
    "phase", "product_consensus", "register_method", "round_rows", "run_rounds", "synchronous",
    "topology_aware", "total_over_layers",
]
