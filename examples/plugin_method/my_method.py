"""A fifth method from your own file: ``half-gossip``, ADF-LoRA that gossips its frozen factor
only every other round (docs/methods.md, "A method of your own").

Each client alternates the factor it trains every T rounds (T = 1 by default), like ADF-LoRA.
In a round of phase B (B trains) it gossips both factors, as ADF-LoRA does; in a round of phase
A (A trains) it gossips A only. So with T = 1 the frozen factor is gossiped every other round
(A while B trains), at three quarters of ADF-LoRA's traffic.

Use it without editing the toolkit, by one of:

- a study config: ``plugins = ["examples/plugin_method/my_method.py"]`` and
  ``methods = ["half-gossip", "adf-lora"]``;
- the environment: ``ADFLORA_PLUGINS=examples/plugin_method/my_method.py``;
- a package: ``pip install examples/plugin_method`` (its pyproject.toml declares the entry point
  ``half-gossip = "my_method:HALF_GOSSIP"`` of group ``adflora_analysis.methods``).
"""

from adflora_analysis.core import MethodSpec, register_method

HALF_GOSSIP = MethodSpec(
    name="half-gossip",
    train="phase",                      # alternate the trained factor, like adf-lora
    mix={"A": "A", "B": "AB"},          # per phase: which blocks are gossiped
    default_switch_interval=1,          # T = 1: the phase, and so the gossip, alternates
    summary="alternate the trained factor; gossip the frozen one every other round",
)

register_method(HALF_GOSSIP)
