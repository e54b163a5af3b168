"""The GLUE testbed, declared (:mod:`adflora_analysis.study.testbed`): sequence classification on
GLUE tasks with RoBERTa/MiniLM; its build, meta and resource checks are in :mod:`.runner` (and
shared with the causal-LM testbed, :mod:`adflora_analysis.lm.testbed`)."""

from __future__ import annotations

from adflora_analysis.glue import runner
from adflora_analysis.glue.config import GlueConfig
from adflora_analysis.study.testbed import Testbed, register_testbed

#: the checks of a testbed that trains real models on one seed per job
ADAPTER_CHECKS = ("mixing-validity", "gossip-contraction", "frozen-block", "cross-term",
                  "stale-gossip-rate")

TESTBED = register_testbed(Testbed(
    kind="glue",
    config=GlueConfig,
    build=runner.build,
    meta=runner.study_meta,
    needs=runner.needs,
    fits=runner.fits,
    summary=runner.summarize,
    tables=("metrics", "eval", "label_counts", "summary"),
    checks=ADAPTER_CHECKS,
    report_sections=("glue", "checks"),
    description="decentralized LoRA fine-tuning on GLUE tasks",
))
