"""GLUE runner: decentralized federated LoRA on real transformers (docs/architecture.md §7).

The same method specs, gossip, metrics and round loop as the synthetic testbed
(:mod:`adflora_analysis.core`), applied to a sequence-classification model whose per-client
adapters are stacked tensors swapped into one shared peft model.

- :class:`GlueConfig` (``config.py``): the ``glue_runs/*.toml`` schema.
- :data:`TASKS`, :func:`get_task`, :func:`compute_metrics` (``tasks.py``).
- :func:`load_data`, :func:`write_fixture`, :func:`encode` (``data.py``).
- :func:`partition_indices`, :func:`paper_proportions` (``partition.py``).
- :class:`GlueModel` (``model.py``), :class:`GlueProblem` (``problem.py``),
  :func:`eval_rows` (``evaluate.py``), :func:`run_glue`, :func:`summarize` (``runner.py``).
- :func:`build_tiny_roberta` (``tiny.py``): an offline RoBERTa for tests and benchmarks.
"""

__all__ = ["PARTITIONS", "TASKS", "GlueConfig", "TaskSpec", "compute_metrics", "get_task",
           "paper_proportions", "partition_indices"]


def __getattr__(name):  # every name loads on first use (the CLI's --help imports no torch)
    import importlib

    where = {"GlueConfig": "config", "PARTITIONS": "partition",
             "paper_proportions": "partition", "partition_indices": "partition",
             "TASKS": "tasks", "TaskSpec": "tasks", "compute_metrics": "tasks",
             "get_task": "tasks", "load_data": "data", "write_fixture": "data", "encode": "data",
             "GlueModel": "model", "GlueProblem": "problem", "eval_rows": "evaluate",
             "run_glue": "runner", "summarize": "runner", "GlueStudy": "runner",
             "build_tiny_roberta": "tiny"}
    if name in where:
        return getattr(importlib.import_module(f"adflora_analysis.glue.{where[name]}"), name)
    raise AttributeError(name)
