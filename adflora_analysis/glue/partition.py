"""Split a task's training rows over clients (docs/architecture.md §7): the paper's label skew,
Dirichlet(α),
IID, and disjoint labels. Every split is seeded (stream ``(seed, "partition")``) and disjoint:
no row goes to two clients.

Paper label skew, for n = 10 clients:

- binary tasks: 3 clients with label proportions (0.9, 0.1), 3 with (0.1, 0.9), 4 with (0.5, 0.5);
- MNLI (3 classes): 4 x (0.9, 0.05, 0.05), 3 x (0.05, 0.9, 0.05), 3 x (0.05, 0.05, 0.9).

For other n the groups keep the shares 3/10, 3/10, 4/10 (binary) and 4/10, 3/10, 3/10 (MNLI),
rounded by largest remainder. Every client gets the same number of rows m, the largest the label
pools allow (capped by ``examples_per_client``). Regression labels (STS-B) are binned at the
middle of their range into two classes for partitioning.

>>> import numpy as np
>>> y = np.array([0] * 500 + [1] * 500)
>>> parts = partition_indices(y, 10, "paper", seed=0)
>>> [round(float(np.mean(y[p] == 0)), 2) for p in parts]
[0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.5, 0.5, 0.5, 0.5]
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from adflora_analysis.errors import AdfloraError, unknown_name
from adflora_analysis.seeding import numpy_rng

PARTITIONS = ("paper", "dirichlet", "iid", "disjoint")


def _largest_remainder(shares: np.ndarray, total: int) -> np.ndarray:
    raw = shares / shares.sum() * total
    out = np.floor(raw).astype(int)
    rest = total - out.sum()
    if rest > 0:
        out[np.argsort(-(raw - out), kind="stable")[:rest]] += 1
    return out


def paper_proportions(n_clients: int, n_classes: int) -> np.ndarray:
    """(n, C) label proportions of the paper's skew (see the module docstring)."""
    if n_classes == 2:
        groups = [(0.3, [0.9, 0.1]), (0.3, [0.1, 0.9]), (0.4, [0.5, 0.5])]
    elif n_classes == 3:
        groups = [(0.4, [0.9, 0.05, 0.05]), (0.3, [0.05, 0.9, 0.05]),
                  (0.3, [0.05, 0.05, 0.9])]
    else:
        raise AdfloraError(f"the paper's label skew is defined for 2 or 3 classes, not "
                           f"{n_classes}", 'use partition = "dirichlet" or "iid"')
    sizes = _largest_remainder(np.array([g[0] for g in groups]), n_clients)
    rows = [p for (_, p), k in zip(groups, sizes, strict=True) for _ in range(k)]
    return np.asarray(rows, dtype=float)


def _by_class(y: np.ndarray, n_classes: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.permutation(np.flatnonzero(y == c)) for c in range(n_classes)]


def _fixed_proportions(y, P: np.ndarray, rng, cap: int) -> list[np.ndarray]:
    n, C = P.shape
    pools = _by_class(y, C, rng)
    avail = np.array([len(p) for p in pools], dtype=float)
    demand = P.sum(0)  # rows of class c per unit of m
    m = int(np.floor(np.min(np.where(demand > 0, avail / np.maximum(demand, 1e-12), np.inf))))
    if cap:
        m = min(m, cap)
    while m > 0:  # rounding may overshoot a pool by a row or two
        counts = np.stack([_largest_remainder(P[i], m) for i in range(n)])
        if (counts.sum(0) <= avail).all():
            break
        m -= 1
    if m <= 0:
        raise AdfloraError("the label pools are too small for the requested skew",
                           "use more training rows or fewer clients")
    starts = np.zeros(C, dtype=int)
    parts = []
    for i in range(n):
        take = []
        for c in range(C):
            k = int(counts[i, c])
            take.append(pools[c][starts[c]:starts[c] + k])
            starts[c] += k
        parts.append(np.sort(np.concatenate(take)))
    return parts


def _dirichlet(y, n, C, alpha, rng, cap, min_rows: int = 2) -> list[np.ndarray]:
    pools = _by_class(y, C, rng)
    for _ in range(100):
        parts: list[list[np.ndarray]] = [[] for _ in range(n)]
        for c in range(C):
            share = rng.dirichlet(np.full(n, alpha))
            counts = _largest_remainder(share, len(pools[c]))
            cuts = np.concatenate([[0], np.cumsum(counts)])
            for i in range(n):
                parts[i].append(pools[c][cuts[i]:cuts[i + 1]])
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= min_rows:
            break
    else:
        raise AdfloraError(f"Dirichlet(alpha = {alpha}) left a client with fewer than "
                           f"{min_rows} rows in 100 draws",
                           "raise dirichlet_alpha or use more rows")
    if cap:
        out = [np.sort(rng.permutation(p)[:cap]) for p in out]
    return out


def partition_indices(labels, n_clients: int, kind: str, seed: int, *,
                      n_classes: int | None = None, alpha: float = 0.5,
                      examples_per_client: int = 0) -> list[np.ndarray]:
    """Row indices of each client's training data.

    Parameters
    ----------
    labels : (N,) integer class labels (bin regression targets first, see
        :func:`partition_labels`).
    kind : ``"paper"``, ``"dirichlet"``, ``"iid"`` or ``"disjoint"``.
    alpha : Dirichlet concentration.
    examples_per_client : cap per client (0 = no cap).
    """
    y = np.asarray(labels)
    C = int(n_classes if n_classes is not None else y.max() + 1)
    rng = numpy_rng(seed, "partition")
    cap = int(examples_per_client)
    if kind not in PARTITIONS:
        raise unknown_name("partition", kind, PARTITIONS)
    if n_clients < 1:
        raise AdfloraError("n_clients must be at least 1", "use n_clients = 2 or more")
    if kind == "paper":
        return _fixed_proportions(y, paper_proportions(n_clients, C), rng, cap)
    if kind == "disjoint":
        if n_clients < C:
            raise AdfloraError(f"disjoint labels need at least one client per class "
                               f"({C} classes, {n_clients} clients)",
                               f"use n_clients >= {C} or another partition")
        P = np.zeros((n_clients, C))
        P[np.arange(n_clients), np.arange(n_clients) % C] = 1.0
        return _fixed_proportions(y, P, rng, cap)
    if kind == "dirichlet":
        return _dirichlet(y, n_clients, C, alpha, rng, cap)
    perm = rng.permutation(len(y))
    m = len(y) // n_clients
    if cap:
        m = min(m, cap)
    if m < 1:
        raise AdfloraError(f"{len(y)} training rows cannot fill {n_clients} clients",
                           "use more rows or fewer clients")
    return [np.sort(perm[i * m:(i + 1) * m]) for i in range(n_clients)]


def partition_labels(labels, is_regression: bool) -> tuple[np.ndarray, int]:
    """Integer labels used for partitioning: the labels themselves, or regression targets
    binned at the middle of their range into 2 classes."""
    y = np.asarray(labels)
    if not is_regression:
        return y.astype(int), int(y.max()) + 1
    mid = (float(np.min(y)) + float(np.max(y))) / 2
    return (y >= mid).astype(int), 2


def label_count_table(labels, parts: list[np.ndarray], n_classes: int,
                      label_names=None, seed: int | None = None) -> pd.DataFrame:
    """Tidy per-client label counts: columns seed, client, label, label_name, count, share."""
    y = np.asarray(labels)
    rows = []
    for i, p in enumerate(parts):
        cnt = np.bincount(y[p], minlength=n_classes)
        for c in range(n_classes):
            rows.append({"seed": seed, "client": i, "label": c,
                         "label_name": label_names[c] if label_names else str(c),
                         "count": int(cnt[c]),
                         "share": float(cnt[c] / max(1, len(p)))})
    return pd.DataFrame(rows)
