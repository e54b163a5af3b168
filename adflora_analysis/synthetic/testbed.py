"""The synthetic quadratic testbed, declared (:mod:`adflora_analysis.study.testbed`): its jobs,
meta, resource needs and round hook are in :mod:`.runner` (imported when a run needs them); the
run sequence is the one of every kind (:func:`adflora_analysis.study.sequence.run_testbed`)."""

from __future__ import annotations

from adflora_analysis.study.testbed import Testbed, lazy, register_testbed
from adflora_analysis.synthetic.config import SyntheticConfig

RUNNER = "adflora_analysis.synthetic.runner"

TESTBED = register_testbed(Testbed(
    "synthetic", SyntheticConfig, lazy(f"{RUNNER}:build"), meta=lazy(f"{RUNNER}:meta"),
    needs=lazy(f"{RUNNER}:needs"), threads=lambda cfg: cfg.n_threads(),
    tables=("metrics", "mixing", "constants"),
    checks=("mixing-validity", "gossip-contraction", "frozen-block", "consensus",
            "stationarity", "descent-audit", "cross-term-invariant", "cross-term",
            "cross-term-below", "stale-gossip-rate", "step-audit", "frozen-audit",
            "gossip-audit", "bytes-audit"),
    report_sections=("bounds", "consensus", "cross-term", "checks", "async"),
    description="quadratic LoRA problems with known constants: the theory's testbed"))
