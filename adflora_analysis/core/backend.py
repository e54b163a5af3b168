"""Where clients live: the in-process backend (all clients in this process).

A backend tells the round loop which clients this process holds and how to gossip and gather
their stacked blocks. :class:`LocalBackend` is the in-process simulation; the torch.distributed
backend (``adflora_analysis.distributed``) implements the same members with collectives,
with exactly the same gossip semantics.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from adflora_analysis.core.gossip import gossip_


class Backend(Protocol):
    rank: int
    world_size: int

    def client_slice(self, n: int) -> slice:
        """The clients (a contiguous range of the client axis) this process holds."""

    def mix(self, W: Tensor, X: Tensor) -> Tensor:
        """Gossip in place: overwrite X (*batch, n_local, a, b) with this process's rows of
        ``W @ X_full`` for W (*batch, n, n); return X."""

    def gather(self, X: Tensor) -> Tensor:
        """The full (*batch, n, ...) block from every process's (*batch, n_local, ...) part."""

    def all_sum(self, x: Tensor) -> Tensor:
        """Sum of ``x`` over processes (identity in-process)."""

    def all_max(self, x: Tensor) -> Tensor:
        """Elementwise maximum of ``x`` over processes (identity in-process)."""


class LocalBackend:
    """Every client in this process; gossip is a batched matmul, in place in chunks.

    >>> import torch
    >>> X = torch.tensor([1.0, 3.0]).view(2, 1, 1)
    >>> LOCAL.client_slice(2), LOCAL.mix(torch.full((2, 2), 0.5), X).flatten().tolist()
    (slice(0, 2, None), [2.0, 2.0])
    """

    rank = 0
    world_size = 1

    def client_slice(self, n: int) -> slice:
        return slice(0, n)

    def mix(self, W: Tensor, X: Tensor) -> Tensor:
        return gossip_(W, X)

    def gather(self, X: Tensor) -> Tensor:
        return X

    def all_sum(self, x: Tensor) -> Tensor:
        return x

    def all_max(self, x: Tensor) -> Tensor:
        return x


LOCAL = LocalBackend()
