"""adflora-analysis: numbers and pictures for decentralized federated LoRA (ADF-LoRA and baselines).

Layers (docs/architecture.md §1): :mod:`adflora_analysis.topology` (graphs, mixing matrices,
spectral constants), :mod:`adflora_analysis.core` (method specs, gossip, metrics, the one round
loop), :mod:`adflora_analysis.synthetic` (quadratic LoRA testbed and theory checks),
:mod:`adflora_analysis.glue` (RoBERTa + peft LoRA on GLUE) and :mod:`adflora_analysis.reports`.

For a notebook, the package root gives the few functions of :mod:`adflora_analysis.api`
(loaded on first use, so importing the package and ``adflora --help`` stay fast):

>>> import adflora_analysis as af
>>> sorted(af.__all__)  # doctest: +NORMALIZE_WHITESPACE
['MethodSpec', '__version__', 'build_topology', 'make_report', 'register_method',
 'run_checks', 'run_synthetic', 'synthetic_config', 'topology_constants']
>>> round(af.topology_constants(af.build_topology("complete", 5))["p"], 6)
1.0
"""

__version__ = "0.1.0"

_API = ("MethodSpec", "build_topology", "make_report", "register_method", "run_checks",
        "run_synthetic", "synthetic_config", "topology_constants")

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in ("MethodSpec", "register_method"):   # methods as plugins (imports torch)
        from adflora_analysis.core import methods

        return getattr(methods, name)
    if name in _API:
        from adflora_analysis import api

        return getattr(api, name)
    raise AttributeError(f"module 'adflora_analysis' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
