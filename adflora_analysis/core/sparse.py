"""Sparse gossip: W^t of a batch of seeds as one block-diagonal CSR operator (docs/topology.md).

:class:`SparseMix` is the torch form of a :class:`~adflora_analysis.topology.sparse.SparseW`
that :func:`~adflora_analysis.core.gossip.mixing_schedule` returns for sparse samplers: the S
seeds' matrices stacked block-diagonally over the flattened (seed, client) axis, self-weights
included. One gossip step of a block X (*batch, n, a, b) is then one sparse-dense product
(S n, S n) @ (S n, a b): cost proportional to (edges + S n) x a b, memory one block-sized
output, and no n x n tensor anywhere. :func:`sparse_gossip_` equals the dense product
``W @ X`` to float round-off (tests/test_scale.py).

>>> import numpy as np, torch
>>> from adflora_analysis.topology.sparse import SparseW
>>> sw = SparseW.from_dense(np.array([[[0.5, 0.5], [0.5, 0.5]]]))
>>> W = SparseMix.from_sparse_w(sw, (1,), dtype=torch.float64)
>>> sparse_gossip_(W, torch.tensor([[[[1.0]], [[3.0]]]], dtype=torch.float64)).flatten()
tensor([2., 2.], dtype=torch.float64)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

__all__ = ["SparseMix", "mixing_stats", "sparse_gossip_"]


@dataclass(frozen=True)
class SparseMix:
    """W^t for every seed of a batch, block-diagonal over the flattened (seed, client) axis.

    Attributes
    ----------
    n : int
        Clients per matrix.
    batch_shape : tuple of int
        The batch axes (S,) of the state it mixes.
    crow, col : Tensor (int64)
        CSR structure of the (S n, S n) operator (self-weights included).
    weight : Tensor
        Its values, in the dtype of the state.
    """

    n: int
    batch_shape: tuple[int, ...]
    crow: Tensor
    col: Tensor
    weight: Tensor
    _csr: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_sparse_w(cls, sw, batch_shape: tuple[int, ...], *, dtype=torch.float64,
                      device: str | torch.device = "cpu") -> SparseMix:
        """From a :class:`~adflora_analysis.topology.sparse.SparseW` of ``prod(batch_shape)``
        matrices."""
        n, B = sw.n, sw.size
        if B != int(np.prod(batch_shape, dtype=np.int64)):
            raise ValueError(f"SparseMix: {B} matrices for batch shape {batch_shape}")
        eye = np.arange(B * n)
        rows = np.concatenate([eye, sw.batch * n + sw.dst])
        cols = np.concatenate([eye, sw.batch * n + sw.src])
        vals = np.concatenate([sw.diag.ravel(), sw.weight])
        A = sp.csr_array((vals, (rows, cols)), shape=(B * n, B * n))
        A.sort_indices()
        as_t = lambda a, dt: torch.as_tensor(a, dtype=dt, device=device)  # noqa: E731
        return cls(n, tuple(batch_shape), as_t(A.indptr, torch.int64),
                   as_t(A.indices, torch.int64), as_t(A.data, dtype))

    @property
    def nnz(self) -> int:
        """Stored entries (self-weights included)."""
        return int(self.weight.numel())

    def csr(self, dtype: torch.dtype) -> Tensor:
        """The torch sparse CSR operator in ``dtype`` (cached)."""
        if dtype not in self._csr:
            size = self.crow.numel() - 1
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
                self._csr[dtype] = torch.sparse_csr_tensor(
                    self.crow, self.col, self.weight.to(dtype), (size, size))
        return self._csr[dtype]

    def coo(self) -> tuple[Tensor, Tensor]:
        """Flat (row, col) of every stored entry."""
        counts = self.crow[1:] - self.crow[:-1]
        rows = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device),
                                       counts)
        return rows, self.col

    def dense(self) -> Tensor:
        """The dense (*batch, n, n) tensor (tests and small n only)."""
        from adflora_analysis.topology.sparse import check_dense_fits

        B = int(np.prod(self.batch_shape, dtype=np.int64))
        check_dense_fits(self.n, B)
        rows, cols = self.coo()
        W = torch.zeros(B, self.n, self.n, dtype=self.weight.dtype, device=self.weight.device)
        W[rows // self.n, rows % self.n, cols % self.n] = self.weight
        return W.reshape(*self.batch_shape, self.n, self.n)

    def restricted(self, active: Tensor) -> SparseMix:
        """W^t restricted to the ``active`` clients, (*batch, n) bool: the sparse form of
        :func:`adflora_analysis.core.mixers.participating` (an off-diagonal weight survives when
        both ends are active; each diagonal takes the rest of its row). O(edges), no dense W;
        dropped edges stay stored as zeros (:meth:`messages` does not count them).

        >>> import numpy as np, torch
        >>> from adflora_analysis.topology.sparse import SparseW
        >>> sw = SparseW.from_dense(np.full((1, 3, 3), 1 / 3))
        >>> W = SparseMix.from_sparse_w(sw, (1,)).restricted(torch.tensor([[True, True, False]]))
        >>> W.dense().mul(6).round()[0].tolist()
        [[4.0, 2.0, 0.0], [2.0, 4.0, 0.0], [0.0, 0.0, 6.0]]
        """
        a = active.reshape(-1).to(self.col.device)
        rows, cols = self.coo()
        off = rows != cols
        w = torch.where(off & ~(a[rows] & a[cols]), torch.zeros_like(self.weight), self.weight)
        offsum = torch.zeros(a.numel(), dtype=w.dtype, device=w.device).index_add_(
            0, rows, torch.where(off, w, torch.zeros_like(w)))
        w = torch.where(off, w, (1 - offsum)[rows])
        return SparseMix(self.n, self.batch_shape, self.crow, self.col, w)

    def diagonal(self) -> Tensor:
        """The self-weights w_ii, (*batch, n).

        >>> import numpy as np
        >>> from adflora_analysis.topology.sparse import SparseW
        >>> W = SparseMix.from_sparse_w(SparseW.from_dense(np.full((1, 2, 2), 0.5)), (1,))
        >>> W.diagonal().tolist(), W.off_diagonal().dense()[0].tolist()
        ([[0.5, 0.5]], [[0.0, 0.5], [0.5, 0.0]])
        """
        rows, cols = self.coo()
        d = torch.zeros(self.crow.numel() - 1, dtype=self.weight.dtype, device=self.weight.device)
        on = rows == cols
        d[rows[on]] = self.weight[on]
        return d.reshape(*self.batch_shape, self.n)

    def off_diagonal(self) -> SparseMix:
        """W^t − diag(W^t), same structure (self-weights stored as zeros)."""
        rows, cols = self.coo()
        w = torch.where(rows == cols, torch.zeros_like(self.weight), self.weight)
        return SparseMix(self.n, self.batch_shape, self.crow, self.col, w)

    def messages(self) -> Tensor:
        """Client-to-client messages of one gossip step (*batch,): nonzero off-diagonal
        entries of each matrix."""
        rows, cols = self.coo()
        off = (rows != cols) & (self.weight != 0)
        B = int(np.prod(self.batch_shape, dtype=np.int64))
        cnt = torch.bincount(rows[off] // self.n, minlength=B)
        return cnt.reshape(self.batch_shape)


def sparse_gossip_(W: SparseMix, X: Tensor) -> Tensor:
    """One gossip step, in place: X (*batch, n, a, b) <- W X over the client axis.

    Returns ``X``. One CSR product over the flattened (seed, client) axis; the temporary is
    one block-sized output.
    """
    nb = len(W.batch_shape)
    if X.ndim != nb + 3 or X.shape[nb] != W.n or tuple(X.shape[:nb]) != W.batch_shape:
        raise ValueError(f"sparse gossip: X of shape {tuple(X.shape)} is not "
                         f"(*{W.batch_shape}, {W.n}, a, b)")
    flat = X.reshape(-1, X.shape[-2] * X.shape[-1])
    X.copy_((W.csr(X.dtype) @ flat).reshape(X.shape))
    return X


def mixing_stats(W: Tensor | SparseMix) -> dict[str, Tensor]:
    """How far each W of a batch is from doubly stochastic, nonnegative and symmetric
    (theory check 1), dense or sparse, each (*batch,) float64: ``row_err``, ``col_err``
    (max |sum − 1|), ``min_entry`` (0 when some entry is absent), ``asym`` (max |W − Wᵀ|),
    ``mean_degree`` (nonzero off-diagonal entries per client). O(edges) for a sparse W.

    >>> s = mixing_stats(torch.tensor([[0.5, 0.5], [0.25, 0.75]]))
    >>> float(s["col_err"]), float(s["asym"]), float(s["mean_degree"])
    (0.25, 0.25, 1.0)
    """
    if not isinstance(W, SparseMix):
        W = W.double()
        n = W.shape[-1]
        off = (W.abs() > 0) & ~torch.eye(n, dtype=torch.bool, device=W.device)
        return {"row_err": (W.sum(-1) - 1).abs().amax(-1),
                "col_err": (W.sum(-2) - 1).abs().amax(-1),
                "min_entry": W.flatten(-2).amin(-1),
                "asym": (W - W.transpose(-1, -2)).abs().flatten(-2).amax(-1),
                "mean_degree": off.sum(-1).double().mean(-1)}
    n, shape = W.n, W.batch_shape
    B = int(np.prod(shape, dtype=np.int64))
    rows, cols = W.coo()
    w = W.weight.double()
    b = rows // n

    def per_client(idx: Tensor) -> Tensor:
        return torch.zeros(B * n, dtype=torch.float64, device=w.device).index_add_(0, idx, w)

    def per_matrix_max(v: Tensor, idx: Tensor) -> Tensor:
        out = torch.zeros(B, dtype=torch.float64, device=w.device)
        return out.scatter_reduce_(0, idx, v, "amax", include_self=True)

    row = (per_client(rows) - 1).abs().reshape(B, n).amax(-1)
    col = (per_client(cols) - 1).abs().reshape(B, n).amax(-1)
    stored = torch.bincount(b, minlength=B)
    mn = torch.full((B,), float("inf"), dtype=torch.float64, device=w.device)
    mn = mn.scatter_reduce_(0, b, w, "amin", include_self=True)
    mn = torch.where(stored < n * n, mn.clamp(max=0.0), mn)        # absent entries are zeros
    # W − Wᵀ: the entries and their mirrored negatives, summed by position
    idx = torch.cat([torch.stack([rows, cols]), torch.stack([cols, rows])], 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse invariant checks are implicitly disabled"
        diff = torch.sparse_coo_tensor(idx, torch.cat([w, -w]), (B * n, B * n)).coalesce()
    asym = per_matrix_max(diff.values().abs(), diff.indices()[0] // n)
    off = (rows != cols) & (w != 0)
    deg = torch.bincount(b[off], minlength=B).double() / n
    return {k: v.reshape(shape) for k, v in
            {"row_err": row, "col_err": col, "min_entry": mn, "asym": asym,
             "mean_degree": deg}.items()}
