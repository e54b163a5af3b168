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

import importlib
import sys
import types

#: public name -> the module that defines it, imported on first use (PEP 562), so that
#: reading a config or a method spec imports no torch
_WHERE = {
    'Backend': 'adflora_analysis.core.backend',
    'DisplacementStats': 'adflora_analysis.core.displacement',
    'LOCAL': 'adflora_analysis.core.backend',
    'LocalBackend': 'adflora_analysis.core.backend',
    'LoraState': 'adflora_analysis.core.state',
    'METHODS': 'adflora_analysis.core.methods',
    'MethodSpec': 'adflora_analysis.core.methods',
    'Mixer': 'adflora_analysis.core.mixers',
    'Problem': 'adflora_analysis.core.loop',
    'RoundResult': 'adflora_analysis.core.loop',
    'SwitchSchedule': 'adflora_analysis.core.schedules',
    'asynchronous': 'adflora_analysis.core.mixers',
    'check_finite': 'adflora_analysis.core.loop',
    'consensus_error': 'adflora_analysis.core.metrics',
    'cross_term': 'adflora_analysis.core.metrics',
    'feedback': 'adflora_analysis.core.schedules',
    'get_method': 'adflora_analysis.core.methods',
    'gossip': 'adflora_analysis.core.gossip',
    'gossip_': 'adflora_analysis.core.gossip',
    'layer_metrics': 'adflora_analysis.core.metrics',
    'lr_at': 'adflora_analysis.core.lr_schedules',
    'messages': 'adflora_analysis.core.gossip',
    'mix_state': 'adflora_analysis.core.gossip',
    'mixing_schedule': 'adflora_analysis.core.gossip',
    'periodic': 'adflora_analysis.core.schedules',
    'phase': 'adflora_analysis.core.schedules',
    'product_consensus': 'adflora_analysis.core.metrics',
    'register_method': 'adflora_analysis.core.methods',
    'round_rows': 'adflora_analysis.core.rows',
    'run_rounds': 'adflora_analysis.core.loop',
    'synchronous': 'adflora_analysis.core.mixers',
    'topology_aware': 'adflora_analysis.core.schedules',
    'total_over_layers': 'adflora_analysis.core.metrics',
}


__all__ = [
    "LOCAL", "Backend", "DisplacementStats", "LocalBackend", "METHODS", "LoraState",
    "MethodSpec", "Mixer", "Problem", "SwitchSchedule", "RoundResult", "asynchronous",
    "check_finite", "consensus_error", "cross_term", "feedback", "get_method", "gossip",
    "gossip_", "layer_metrics", "lr_at", "messages", "mix_state", "mixing_schedule", "periodic",
    "phase", "product_consensus", "register_method", "round_rows", "run_rounds", "synchronous",
    "topology_aware", "total_over_layers",
]


class _Core(types.ModuleType):
    """The package module: importing the submodule ``core.gossip`` must not replace the
    function ``core.gossip`` (the import system sets a package attribute per submodule; the
    eager imports this file had rebound it afterwards)."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in _WHERE and isinstance(value, types.ModuleType):
            return   # the name resolves to the function through __getattr__
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Core


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'adflora_analysis.core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
