"""Gossip averaging: X <- W @ X over the client axis (docs/architecture.md §1), rows are receivers.

>>> import torch
>>> W = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
>>> gossip(W, torch.tensor([[[1.0]], [[3.0]]]))
tensor([[[2.]],
<BLANKLINE>
        [[2.]]])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from adflora_analysis.core.sparse import SparseMix, sparse_gossip_
from adflora_analysis.core.state import LoraState
from adflora_analysis.seeding import numpy_rng
from adflora_analysis.topology.sparse import SPARSE_MIN_N

MixFn = Callable[[Tensor, Tensor], Tensor]


# Column chunk of the in-place product: the temporary W @ X[..., chunk] holds at most this many
# elements (1 MiB in float32), so gossip adds no memory that grows with the number of clients.
_CHUNK_ELEMS = 2**18


def gossip_(W: Tensor | SparseMix, X: Tensor) -> Tensor:
    """One gossip step for a stacked block, in place.

    Parameters
    ----------
    W : (*batch, n, n) mixing matrix (one per batch entry, e.g. per seed), rows are receivers;
        or a :class:`~adflora_analysis.core.sparse.SparseMix` (then one sparse product,
        :func:`~adflora_analysis.core.sparse.sparse_gossip_`).
    X : (*batch, n, a, b) stacked client values; overwritten with ``X_i <- sum_j W_ij X_j``.

    Returns
    -------
    ``X`` itself. Every entry (a, b) mixes independently of the others, so the dense product
    is taken over chunks of entries: the only temporary is one chunk of ``W @ X``.

    >>> W = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    >>> X = torch.tensor([1.0, 3.0, 7.0]).view(3, 1, 1)
    >>> gossip_(W, X) is X, X.flatten().tolist()   # client 2 met nobody
    (True, [2.0, 2.0, 7.0])
    """
    if isinstance(W, SparseMix):
        return sparse_gossip_(W, X)
    nb = W.ndim - 2
    n = W.shape[-1]
    if X.ndim != nb + 3 or X.shape[nb] != n:
        raise ValueError(f"gossip: X of shape {tuple(X.shape)} is not (*batch, {n}, a, b) for "
                         f"W of shape {tuple(W.shape)}")
    Wx = W.to(X.dtype)
    a, b = X.shape[-2], X.shape[-1]
    per_entry = X[..., :1, :1].numel()                       # batch * n
    cols = min(b, max(1, _CHUNK_ELEMS // per_entry))
    rows = max(1, _CHUNK_ELEMS // (per_entry * b)) if cols == b else 1
    for i in range(0, a, rows):
        for j in range(0, b, cols):
            Y = X[..., i:i + rows, j:j + cols]
            Y.copy_((Wx @ Y.reshape(*Y.shape[:nb], n, -1)).reshape(Y.shape))
    return X


def gossip(W: Tensor | SparseMix, X: Tensor) -> Tensor:
    """One gossip step for a stacked block, returning a new tensor (see :func:`gossip_`).

    W : (*batch, n, n); X : (*batch, n, a, b). Returns (*batch, n, a, b).

    >>> X = torch.tensor([1.0, 3.0]).view(2, 1, 1)
    >>> Y = gossip(torch.full((2, 2), 0.5), X)
    >>> Y.flatten().tolist(), X.flatten().tolist()   # X is left as it was
    ([2.0, 2.0], [1.0, 3.0])
    """
    return gossip_(W, X.clone())


def mix_state(state: LoraState, W: Tensor, blocks: Sequence[str],
              mix_fn: MixFn = gossip) -> LoraState:
    """Gossip ``blocks`` of ``state`` with ``W``; other blocks are passed through unchanged.

    >>> st = LoraState([torch.tensor([1.0, 3.0]).view(2, 1, 1)],
    ...                [torch.tensor([5.0, 7.0]).view(2, 1, 1)])
    >>> out = mix_state(st, torch.full((2, 2), 0.5), ["B"])
    >>> out.A[0].flatten().tolist(), out.B[0].flatten().tolist()
    ([1.0, 3.0], [6.0, 6.0])
    """
    return state.map_blocks(lambda X: mix_fn(W, X), tuple(blocks))


def messages(W: Tensor | SparseMix, server: bool = False) -> Tensor:
    """Messages one gossip step sends, (*batch,): the nonzero off-diagonal entries of W
    (client-to-client), or, with ``server``, 2n (W = J realised by a server: every client
    uploads its block and downloads the average; a complete graph with uniform weights gives
    the same W but n(n − 1) messages). ``W`` dense (*batch, n, n) or a :class:`SparseMix`.

    >>> import torch
    >>> J = torch.full((4, 4), 0.25)
    >>> int(messages(J)), int(messages(J, server=True))
    (12, 8)
    """
    if isinstance(W, SparseMix):
        if server:
            return torch.full(W.batch_shape, 2 * W.n, dtype=torch.long, device=W.col.device)
        return W.messages()
    n = W.shape[-1]
    if server:
        return torch.full(W.shape[:-2], 2 * n, dtype=torch.long, device=W.device)
    off = W.abs() > 0
    off = off & ~torch.eye(n, dtype=torch.bool, device=W.device)
    return off.sum(dim=(-2, -1))


def mixing_schedule(sampler, seeds: Sequence[int], *, dtype=torch.float64,
                    device: str | torch.device = "cpu", sparse: bool | None = None
                    ) -> Callable[[int], Tensor | SparseMix]:
    """W^t for every seed: ``t -> (S, n, n)`` drawn from stream ``(seed, "topology", t)``.

    The draw depends only on (seed, t), so resumed and multi-process runs see the same W^t.
    ``sampler`` is any object with ``sample(t, rng) -> (n, n)`` (see
    :func:`adflora_analysis.topology.make_sampler`).

    ``sparse``: None (default) chooses the sparse form — a :class:`SparseMix` built from the
    sampler's ``sample_sparse(t, rng)``, the same matrices from the same stream — when the
    sampler has one (``sampler.sparse``) and n >= :data:`SPARSE_MIN_N`; True forces it (an
    error if the sampler has none), False forces the dense (S, n, n) tensor.

    >>> from adflora_analysis.topology import make_sampler
    >>> sched = mixing_schedule(make_sampler("encounter", 6, q=0.5), seeds=[0, 1])
    >>> W0 = sched(0)
    >>> tuple(W0.shape), torch.equal(W0, sched(0)), torch.equal(W0[0], W0[1])
    ((2, 6, 6), True, False)
    >>> torch.allclose(W0.sum(-1), torch.ones(2, 6, dtype=torch.float64))
    True
    """
    has = bool(getattr(sampler, "sparse", False))
    if sparse is None:
        sparse = has and sampler.n >= SPARSE_MIN_N
    if sparse and not has:
        from adflora_analysis.errors import AdfloraError

        raise AdfloraError(f"the {getattr(sampler, 'kind', '?')!r} sampler has no sparse form",
                           "use sparse=None or a sparse sampler")
    if sparse:
        from adflora_analysis.topology.sparse import SparseW

        def at_sparse(t: int) -> SparseMix:
            sw = SparseW.stack([sampler.sample_sparse(t, numpy_rng(s, "topology", t))
                                for s in seeds])
            return SparseMix.from_sparse_w(sw, (len(seeds),), dtype=dtype, device=device)

        return at_sparse

    def at(t: int) -> Tensor:
        Ws = np.stack([sampler.sample(t, numpy_rng(s, "topology", t)) for s in seeds])
        return torch.as_tensor(Ws, dtype=dtype, device=device)

    return at
