"""adflora-analysis: numbers and pictures for decentralized federated LoRA (ADF-LoRA and baselines).

Layers (see docs/architecture.md): :mod:`adflora_analysis.topology` (graphs, mixing matrices, spectral
constants), :mod:`adflora_analysis.core` (method specs, gossip, metrics, the one round loop),
:mod:`adflora_analysis.synthetic` (quadratic LoRA testbed and theory checks),
:mod:`adflora_analysis.glue` (RoBERTa + peft LoRA on GLUE) and :mod:`adflora_analysis.reports`.
"""

__version__ = "0.1.0"
