"""The synthetic quadratic testbed, declared (:mod:`adflora_analysis.study.testbed`): its jobs,
meta, resource needs and round hook are in :mod:`.runner`; the run sequence is the one of every
kind (:func:`adflora_analysis.study.sequence.run_testbed`)."""

from __future__ import annotations

from adflora_analysis.study.testbed import Testbed, register_testbed
from adflora_analysis.synthetic import runner
from adflora_analysis.synthetic.config import SyntheticConfig

TESTBED = register_testbed(Testbed(
    kind="synthetic",
    config=SyntheticConfig,
    build=runner.build,
    meta=runner.meta,
    needs=runner.needs,
    threads=lambda cfg: cfg.n_threads(),
    tables=("metrics", "mixing", "constants"),
    checks=("mixing-validity", "gossip-contraction", "frozen-block", "consensus",
            "stationarity", "cross-term", "stale-gossip-rate"),
    report_sections=("bounds", "consensus", "cross-term", "checks", "async"),
    description="quadratic LoRA problems with known constants: the theory's testbed",
))
