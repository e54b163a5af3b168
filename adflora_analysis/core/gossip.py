"""Gossip averaging: X <- W @ X over the client axis (DESIGN §1), rows are receivers.

>>> import torch
>>> W = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
>>> gossip(W, torch.tensor([[1.0], [3.0]]))
tensor([[2.],
        [2.]])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from adflora_analysis.core.state import LoraState
from adflora_analysis.seeding import numpy_rng

MixFn = Callable[[Tensor, Tensor], Tensor]


def gossip(W: Tensor, X: Tensor) -> Tensor:
    """One gossip step for a stacked block.

    Parameters
    ----------
    W : (*batch, n, n) mixing matrix (one per batch entry, e.g. per seed), rows are receivers.
    X : (*batch, n, *block) stacked client values.

    Returns
    -------
    (*batch, n, *block): ``X_i <- sum_j W_ij X_j`` for every batch entry.
    """
    nb = W.ndim - 2
    n = W.shape[-1]
    flat = X.reshape(*X.shape[:nb], n, -1)
    return (W.to(X.dtype) @ flat).reshape(X.shape)


def mix_state(state: LoraState, W: Tensor, blocks: Sequence[str],
              mix_fn: MixFn = gossip) -> LoraState:
    """Gossip ``blocks`` of ``state`` with ``W``; other blocks are passed through unchanged."""
    return state.map_blocks(lambda X: mix_fn(W, X), tuple(blocks))


def messages(W: Tensor) -> Tensor:
    """Number of client-to-client messages W implies: nonzero off-diagonal entries, (*batch,)."""
    n = W.shape[-1]
    off = W.abs() > 0
    off = off & ~torch.eye(n, dtype=torch.bool, device=W.device)
    return off.sum(dim=(-2, -1))


def mixing_schedule(sampler, seeds: Sequence[int], *, dtype=torch.float64,
                    device: str | torch.device = "cpu") -> Callable[[int], Tensor]:
    """W^t for every seed: ``t -> (S, n, n)`` drawn from stream ``(seed, "topology", t)``.

    The draw depends only on (seed, t), so resumed and multi-process runs see the same W^t.
    ``sampler`` is any object with ``sample(t, rng) -> (n, n)`` (see
    :func:`adflora_analysis.topology.make_sampler`).
    """

    def at(t: int) -> Tensor:
        Ws = np.stack([sampler.sample(t, numpy_rng(s, "topology", t)) for s in seeds])
        return torch.as_tensor(Ws, dtype=dtype, device=device)

    return at
