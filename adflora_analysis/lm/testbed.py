"""The causal-LM testbed, declared (:mod:`adflora_analysis.study.testbed`): LoRA on causal
language models, logging perplexity. It is the GLUE testbed's declaration with its own config,
build (texts for data, :class:`~adflora_analysis.lm.runner.LmStudy`) and resource needs: meta,
summary, tables and checks are shared through the declaration, not by subclassing a runner."""

from __future__ import annotations

import dataclasses

from adflora_analysis.glue.testbed import TESTBED as GLUE
from adflora_analysis.lm.config import LmConfig
from adflora_analysis.study.testbed import lazy, register_testbed

RUNNER = "adflora_analysis.lm.runner"

TESTBED = register_testbed(dataclasses.replace(
    GLUE, kind="lm", config=LmConfig, build=lazy(f"{RUNNER}:build"),
    needs=lazy(f"{RUNNER}:needs"), fits=None, report_sections=("lm", "checks"),
    description="decentralized LoRA on causal language models (perplexity)"))
