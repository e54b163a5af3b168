"""Reductions over clients and processes: the one implementation of each (docs/architecture.md §4).

Stacked tensors carry a client axis (``-3`` for a LoRA block ``(*batch, n, r, d)``, ``1`` for
the synthetic problem's ``(S, n, L, ...)``). Under torch.distributed a process holds its own
clients only; every quantity over all clients is a reduction of per-process partial results
through the backend's all-reduce (:meth:`~.backend.Backend.all_sum`, ``all_max``), never a
gathered state. In-process (``world_size == 1``) each reduction is the plain tensor operation,
so in-process rows do not depend on this module's partial-sum arithmetic.

- :func:`client_chunks`, :func:`client_parts`: the one chunker (bounded float64 temporaries);
- :func:`process_sums`: per-process partial results summed over processes, one all-reduce;
- :func:`client_mean` (local, float64) and :func:`client_means` (over processes);
- :func:`consensus_error` (local) and :func:`consensus_errors` (over processes):
  Ξ = (1/n) Σ_i ‖X_i − X̄‖², centred (no Σ‖X_i‖² − n‖X̄‖² cancellation);
- :func:`client_max`: maxima over clients and processes;
- :func:`means_and_count`: client means when the process does not know n (one all-reduce).

>>> import torch
>>> X = torch.tensor([[[[1.0]], [[3.0]]]])            # (S=1, n=2, 1, 1)
>>> consensus_errors(LOCAL, 2, X, axis=1)
[tensor([1.], dtype=torch.float64)]
>>> client_max(LOCAL, X)
tensor([3.])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from adflora_analysis.core.backend import LOCAL, Backend

CHUNK_BUDGET = 2**18
"""Default elements of one client-chunked temporary (2 MB of float64): far below glibc's 32 MB
mmap threshold, so it is reused from the heap instead of mapped and page-faulted afresh
(measured at n = 100,000, m = 16, d = 64: a pass of the descent bookkeeping took 2.3 s CPU in
32 MB chunks, 0.9 s in 8 MB and 0.7 s in 2 MB)."""

METRICS_BUDGET = 2**16
"""The round metrics' chunk (512 KiB of float64): a transient that does not grow with n."""


def client_chunks(n: int, per_client: int, budget: int = CHUNK_BUDGET) -> list[slice]:
    """Slices of at most ``budget // per_client`` (at least 1) clients covering 0..n, to bound
    a temporary of ``per_client`` elements a client.

    >>> client_chunks(10, 3, budget=12)
    [slice(0, 4, None), slice(4, 8, None), slice(8, 10, None)]
    """
    step = max(1, budget // max(1, per_client))
    return [slice(a, min(n, a + step)) for a in range(0, n, step)]


def client_parts(X: Tensor, ax: int, budget: int = METRICS_BUDGET) -> list[Tensor]:
    """``X`` split along the client axis ``ax`` into chunks of at most ``budget`` elements
    (views, no copy).

    >>> [tuple(p.shape) for p in client_parts(torch.zeros(5, 2), 0, budget=4)]
    [(2, 2), (2, 2), (1, 2)]
    """
    n = X.shape[ax]
    return [X.narrow(ax, s.start, s.stop - s.start)
            for s in client_chunks(n, X.numel() // max(1, n), budget)]


def chunked_sum(fn: Callable[[slice], Tensor], n: int, per_client: int,
                budget: int = CHUNK_BUDGET) -> Tensor:
    """Σ over client chunks of ``fn(chunk)`` (chunks of :func:`client_chunks`).

    >>> chunked_sum(lambda s: torch.arange(10.0)[s].sum(), 10, 1, budget=3)
    tensor(45.)
    """
    return sum(fn(c) for c in client_chunks(n, per_client, budget))


def process_sums(backend: Backend, *xs: Tensor) -> list[Tensor]:
    """Each per-process partial result summed over processes (float64), in one all-reduce;
    in-process the inputs themselves (same tensors, same dtype).

    >>> process_sums(LOCAL, torch.ones(2))
    [tensor([1., 1.])]
    """
    if backend.world_size == 1 or not xs:
        return list(xs)
    flat = backend.all_sum(torch.cat([x.double().reshape(-1) for x in xs]))
    out, off = [], 0
    for x in xs:
        out.append(flat[off:off + x.numel()].reshape(x.shape))
        off += x.numel()
    return out


def client_mean(X: Tensor, ax: int = -3, budget: int = METRICS_BUDGET) -> Tensor:
    """Mean over this process's client axis ``ax`` in float64, keepdim, accumulated chunk by
    chunk.

    >>> client_mean(torch.tensor([[1.0], [3.0]]), ax=0)
    tensor([[2.]], dtype=torch.float64)
    """
    ax = ax % X.ndim
    return sum(p.double().sum(ax, keepdim=True) for p in client_parts(X, ax, budget)) / X.shape[ax]


def client_means(backend: Backend, n: int, *xs: Tensor, axis: int = 1, keepdim: bool = False,
                 dtype: torch.dtype | None = None) -> list[Tensor]:
    """Means over the client axis of every process's clients (``n`` of them), each in its own
    dtype (or ``dtype``). In-process ``x.mean(axis)`` exactly.

    >>> client_means(LOCAL, 2, torch.tensor([[1.0, 3.0]]))
    [tensor([2.])]
    """
    if backend.world_size == 1:
        return [x.mean(axis, keepdim=keepdim) for x in xs]
    sums = process_sums(backend, *(x.sum(axis, keepdim=keepdim, dtype=torch.float64)
                                   for x in xs))
    return [(t / n).to(dtype or x.dtype) for t, x in zip(sums, xs, strict=True)]


def consensus_error(X: Tensor, client_axis: int = -3, budget: int = METRICS_BUDGET) -> Tensor:
    """Ξ = (1/n) Σ_i ‖X_i − X̄‖_F² over this process's clients, reduced over every axis after
    the client axis; float64, two passes in client chunks.

    >>> consensus_error(torch.tensor([[[1.0]], [[3.0]]]))
    tensor(1., dtype=torch.float64)
    """
    ax = client_axis % X.ndim
    mean = client_mean(X, ax, budget)
    # the centred chunk is a fresh tensor: flattening it is a view, never a copy of the block
    total = sum((p.double() - mean).pow(2).flatten(ax).sum(-1)
                for p in client_parts(X, ax, budget))
    return total / X.shape[ax]


def consensus_errors(backend: Backend, n: int, *Xs: Tensor, axis: int = 1) -> list[Tensor]:
    """Ξ of each ``X`` over every process's clients (``n`` of them), each -> float64 with the
    axes before ``axis`` kept. In-process :func:`consensus_error`; otherwise the global means
    (one all-reduce for all of them) and the centred sums about them (a second), in client
    chunks (no full float64 copy).

    >>> consensus_errors(LOCAL, 2, torch.tensor([[1.0, 3.0]]), axis=1)
    [tensor([1.], dtype=torch.float64)]
    """
    if backend.world_size == 1:
        return [consensus_error(X, client_axis=axis) for X in Xs]
    means = client_means(backend, n, *Xs, axis=axis, keepdim=True, dtype=torch.float64)
    tots = []
    for X, mean in zip(Xs, means, strict=True):
        ax = axis % X.ndim
        per = X.narrow(ax, 0, 1).numel()
        tots.append(sum((X.narrow(ax, s.start, s.stop - s.start).double() - mean).pow(2)
                        .flatten(ax).sum(-1) for s in client_chunks(X.shape[ax], per)))
    return [t / n for t in process_sums(backend, *tots)]


def client_max(backend: Backend, x: Tensor) -> Tensor:
    """Maximum over every axis but the leading (seed) axis 0 and over every process -> (S,).

    >>> client_max(LOCAL, torch.tensor([[1.0, 5.0], [2.0, 0.0]]))
    tensor([5., 2.])
    """
    m = x.flatten(1).amax(-1)
    return m if backend.world_size == 1 else backend.all_max(m)


def means_and_count(blocks: list[Tensor], backend: Backend = LOCAL,
                    budget: int = METRICS_BUDGET) -> tuple[list[Tensor], Tensor]:
    """The client mean of every block in float64 over the clients of every process, and the
    client count n: one ``all_sum`` of the per-process sums Σ_i X_i and counts.
    Blocks (*batch, n_local, a, b) -> means (*batch, a, b), n a float64 scalar.

    >>> means_and_count([torch.tensor([[[1.0]], [[3.0]]])])
    ([tensor([[2.]], dtype=torch.float64)], tensor(2., dtype=torch.float64))
    """
    sums = [sum(p.double().sum(-3) for p in client_parts(X, X.ndim - 3, budget))
            for X in blocks]
    n_local = torch.tensor([float(blocks[0].shape[-3])], dtype=torch.float64,
                           device=blocks[0].device)
    flat = backend.all_sum(torch.cat([n_local, *(s.reshape(-1) for s in sums)]))
    out, off = [], 1
    for s in sums:
        out.append(flat[off:off + s.numel()].reshape(s.shape) / flat[0])
        off += s.numel()
    return out, flat[0]
