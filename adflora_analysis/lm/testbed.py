"""The causal-LM testbed, declared (:mod:`adflora_analysis.study.testbed`): LoRA on causal
language models, logging perplexity. Its studies are the GLUE testbed's with texts for data
(:class:`~adflora_analysis.lm.runner.LmStudy`); meta, summary and checks are the GLUE testbed's,
shared through this declaration."""

from __future__ import annotations

from adflora_analysis.glue import runner as glue
from adflora_analysis.glue.testbed import ADAPTER_CHECKS
from adflora_analysis.lm import runner
from adflora_analysis.lm.config import LmConfig
from adflora_analysis.study.testbed import Testbed, register_testbed

TESTBED = register_testbed(Testbed(
    kind="lm",
    config=LmConfig,
    build=runner.build,
    meta=glue.study_meta,
    needs=runner.needs,
    summary=glue.summarize,
    tables=("metrics", "eval", "label_counts", "summary"),
    checks=ADAPTER_CHECKS,
    report_sections=("lm", "checks"),
    description="decentralized LoRA on causal language models (perplexity)",
))
