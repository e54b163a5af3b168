"""Evaluation every E rounds: each client's GLUE metric on the validation split(s), their mean
(the paper's number), and the metric of the averaged adapter (Ā, B̄) (docs/architecture.md §4, §7).

Rows of the ``eval`` table: ``method``, ``seed``, ``round``, ``client`` (``"0"``..``"n-1"``,
``"mean"`` or ``"averaged"``), ``split`` (``validation``, or ``validation_matched`` /
``validation_mismatched`` for MNLI), ``metric`` (the task's GLUE metrics, plus ``loss``), and
``value``. ``"mean"`` is the mean of the clients' values of each metric; ``"averaged"`` is the
model with the client-mean factors (and client-mean head with ``train_head``) - what averaging
the factors gives, not the mean of the products B_i A_i (their gap is the cross term C).
"""

from __future__ import annotations

import numpy as np

from adflora_analysis.core.state import LoraState
from adflora_analysis.glue.data import Encoded
from adflora_analysis.glue.model import predict
from adflora_analysis.glue.problem import GlueProblem
from adflora_analysis.glue.tasks import TaskSpec, compute_metrics


def _scores(problem: GlueProblem, task: TaskSpec, val: dict[str, Encoded],
            batch_size: int) -> dict[tuple[str, str], float]:
    out = {}
    for split, enc in val.items():
        pred, loss = predict(problem.gm, enc, batch_size)
        for m, v in compute_metrics(task, enc.labels.numpy(), pred.numpy()).items():
            out[(split, m)] = v
        out[(split, "loss")] = loss
    return out


def eval_rows(problem: GlueProblem, state: LoraState, task: TaskSpec,
              val: dict[str, Encoded], *, t: int, batch_size: int = 128,
              clients: bool = True) -> list[dict]:
    """Evaluate every client (if ``clients``) and the averaged adapter; tidy rows.

    Under torch.distributed each process evaluates its own clients and the rows are gathered;
    process 0 alone evaluates the averaged adapter and shares its rows (every process returns
    all rows); ``state`` holds this process's clients.
    """
    gm = problem.gm
    problem.activate()
    backend = problem.backend
    base = {"method": problem.method, "seed": problem.seed, "round": t}
    rows: list[dict] = []
    if clients:
        for li, i in enumerate(problem.local_ids):
            gm.load_client(state, li)
            gm.load_head(problem.client_head(state, li))
            for (split, m), v in _scores(problem, task, val, batch_size).items():
                rows.append({**base, "client": str(i), "split": split, "metric": m,
                             "value": float(v)})
        if backend.world_size > 1:
            import torch.distributed as dist

            parts: list[list[dict]] = [[] for _ in range(backend.world_size)]
            dist.all_gather_object(parts, rows)
            rows = [r for part in parts for r in part]
        per_client: dict[tuple[str, str], list[float]] = {}
        for r in rows:  # client order 0..n-1, as in-process
            per_client.setdefault((r["split"], r["metric"]), []).append(r["value"])
        for (split, m), vs in per_client.items():
            rows.append({**base, "client": "mean", "split": split, "metric": m,
                         "value": float(np.mean(vs))})
    full = state if backend.world_size == 1 else state.map_blocks(backend.gather)
    head = problem.mean_head(state)   # a collective: every process takes part
    averaged: list[dict] = []
    if backend.rank == 0:        # one process evaluates the averaged adapter, the others wait
        gm.load_factors([a.mean(0) for a in full.A], [b.mean(0) for b in full.B])
        gm.load_head(head)
        averaged = [{**base, "client": "averaged", "split": split, "metric": m,
                     "value": float(v)}
                    for (split, m), v in _scores(problem, task, val, batch_size).items()]
        gm.load_head(problem.head0)
    if backend.world_size > 1:
        import torch.distributed as dist

        parts = [None] * backend.world_size
        dist.all_gather_object(parts, averaged)
        averaged = parts[0]
    return rows + averaged
