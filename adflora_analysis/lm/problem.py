"""Local training and evaluation of the causal-LM testbed.

Local steps are :class:`~adflora_analysis.glue.problem.GlueProblem`'s unchanged (K AdamW steps
per client on the shared model; the batch's ``labels`` are the next-token targets of
:class:`~adflora_analysis.lm.data.LmEncoded`, so ``model(**batch).loss`` is the causal-LM
loss). :func:`eval_rows` writes the ``eval`` table: per client, their ``mean`` and the
``averaged`` adapter (Ā, B̄), each with ``loss`` (next-token cross-entropy per token, nats) and
``perplexity`` = exp(loss).
"""

from __future__ import annotations

import math

import numpy as np

from adflora_analysis.core.state import LoraState
from adflora_analysis.glue.problem import GlueProblem as LmProblem
from adflora_analysis.lm.data import LmEncoded
from adflora_analysis.lm.model import lm_loss

__all__ = ["LmProblem", "eval_rows"]


def _scores(problem: LmProblem, val: dict[str, LmEncoded], batch_size: int
            ) -> dict[tuple[str, str], float]:
    out = {}
    for split, enc in val.items():
        loss, _ = lm_loss(problem.gm, enc, batch_size)
        out[(split, "loss")] = loss
        out[(split, "perplexity")] = math.exp(min(loss, 700.0))
    return out


def eval_rows(problem: LmProblem, state: LoraState, val: dict[str, LmEncoded], *, t: int,
              batch_size: int = 16) -> list[dict]:
    """Loss and perplexity of every client (state ``A[l]`` (n_local, r, d_in)), their mean,
    and the averaged adapter; tidy rows (``method, seed, round, client, split, metric,
    value``). Under torch.distributed each process evaluates its clients, rows are gathered,
    process 0 evaluates the averaged adapter; every process returns all rows."""
    gm, backend = problem.gm, problem.backend
    problem.activate()
    base = {"method": problem.method, "seed": problem.seed, "round": t}
    rows: list[dict] = []
    for li, i in enumerate(problem.local_ids):
        gm.load_client(state, li)
        rows += [{**base, "client": str(i), "split": s, "metric": m, "value": float(v)}
                 for (s, m), v in _scores(problem, val, batch_size).items()]
    rows = _all_gather(backend, rows, concat=True)
    per: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        per.setdefault((r["split"], r["metric"]), []).append(r["value"])
    rows += [{**base, "client": "mean", "split": s, "metric": m, "value": float(np.mean(v))}
             for (s, m), v in per.items()]
    full = state if backend.world_size == 1 else state.map_blocks(backend.gather)
    averaged: list[dict] = []
    if backend.rank == 0:
        gm.load_factors([a.mean(0) for a in full.A], [b.mean(0) for b in full.B])
        averaged = [{**base, "client": "averaged", "split": s, "metric": m, "value": float(v)}
                    for (s, m), v in _scores(problem, val, batch_size).items()]
    return rows + _all_gather(backend, averaged, concat=False)


def _all_gather(backend, rows: list[dict], concat: bool) -> list[dict]:
    """Every process's ``rows`` concatenated (``concat``) or process 0's."""
    if backend.world_size == 1:
        return rows
    import torch.distributed as dist

    parts: list = [None] * backend.world_size
    dist.all_gather_object(parts, rows)
    return [r for p in parts for r in p] if concat else parts[0]
