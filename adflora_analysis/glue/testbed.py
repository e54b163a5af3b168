"""The GLUE testbed, declared (:mod:`adflora_analysis.study.testbed`): sequence classification on
GLUE tasks with RoBERTa/MiniLM; its build, meta and resource checks are in :mod:`.runner`
(imported when a run needs them) and shared with the causal-LM testbed
(:mod:`adflora_analysis.lm.testbed`)."""

from __future__ import annotations

from adflora_analysis.glue.config import GlueConfig
from adflora_analysis.study.testbed import Testbed, lazy, register_testbed

RUNNER = "adflora_analysis.glue.runner"

TESTBED = register_testbed(Testbed(
    "glue", GlueConfig, lazy(f"{RUNNER}:build"), meta=lazy(f"{RUNNER}:study_meta"),
    needs=lazy(f"{RUNNER}:needs"), fits=lazy(f"{RUNNER}:fits"),
    summary=lazy(f"{RUNNER}:summarize"), tables=("metrics", "eval", "label_counts", "summary"),
    # one seed per job, real models: the checks that need batched seeds or known constants
    # (consensus, stationarity) are the synthetic testbed's
    checks=("mixing-validity", "gossip-contraction", "frozen-block", "cross-term-invariant",
            "cross-term", "cross-term-below", "stale-gossip-rate", "step-audit",
            "frozen-audit", "gossip-audit", "bytes-audit"),
    report_sections=("glue", "checks"), description="decentralized LoRA fine-tuning on GLUE"))
