"""Sparse mixing matrices: W^t as self-weights plus an edge list, batched (docs/topology.md).

A :class:`SparseW` holds ``B`` mixing matrices over ``n`` clients without any n x n array:
``diag (B, n)`` are the self-weights w_ii and the off-diagonal entries are the edges
``W[batch[e], dst[e], src[e]] = weight[e]`` (rows are receivers: dst takes a share of src).
Memory and every operation cost O(B n + E). Samplers that support it (``Sampler.sparse``) draw
W^t in this form; the core gossips it with an index-add over the client axis
(:mod:`adflora_analysis.core.sparse`).

>>> W = SparseW.from_dense(np.array([[[0.5, 0.5, 0], [0.5, 0.25, 0.25], [0, 0.25, 0.75]]]))
>>> W.n, W.size, W.nnz_off
(3, 1, 4)
>>> bool(np.array_equal(W.dense(), np.array([[[0.5, 0.5, 0], [0.5, 0.25, 0.25],
...                                                [0, 0.25, 0.75]]])))
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from adflora_analysis.errors import AdfloraError

__all__ = ["DENSE_BYTES_LIMIT", "SPARSE_MIN_N", "SparseW", "check_dense_fits"]

SPARSE_MIN_N = 1024
"""From this many clients :func:`adflora_analysis.core.gossip.mixing_schedule` gives a
sparse-capable sampler's W^t as a :class:`~adflora_analysis.core.sparse.SparseMix`. Below it
the dense (S, n, n) W^t (at most 8 MiB per seed) is kept, so the shipped studies (n <= 1,000)
give bit-identical rows to earlier releases; the sparse product equals the dense one to float
round-off only (summation order)."""

DENSE_BYTES_LIMIT = 4 << 30
"""Largest dense float64 W batch (bytes) a sampler materialises; above it, refuse."""


def check_dense_fits(n: int, count: int = 1, what: str = "W^t") -> None:
    """Refuse, before allocating, a dense (count, n, n) float64 array above
    :data:`DENSE_BYTES_LIMIT`.

    >>> check_dense_fits(1000)
    >>> check_dense_fits(100_000)
    Traceback (most recent call last):
    ...
    adflora_analysis.errors.AdfloraError: a dense W^t with n = 100000 needs 80.0 GB (limit 4.3 GB) (hint: use a sparse sampler (encounter, matching, one-peer-exponential, a static graph) and the sparse gossip path)
    """  # noqa: E501
    need = 8 * int(count) * int(n) * int(n)
    if need > DENSE_BYTES_LIMIT:
        raise AdfloraError(f"a dense {what} with n = {n} needs {need / 1e9:.1f} GB (limit "
                           f"{DENSE_BYTES_LIMIT / 1e9:.1f} GB)",
                           "use a sparse sampler (encounter, matching, one-peer-exponential, "
                           "a static graph) and the sparse gossip path")


@dataclass(frozen=True)
class SparseW:
    """A batch of ``size`` sparse mixing matrices over ``n`` clients.

    Attributes
    ----------
    n : int
    diag : ndarray, shape (B, n), float64
        Self-weights w_ii.
    batch, dst, src : ndarray, shape (E,), int64
        Off-diagonal entries: matrix ``batch[e]``, receiver ``dst[e]``, sender ``src[e]``
        (dst != src; at most one entry per (batch, dst, src)).
    weight : ndarray, shape (E,), float64
    """

    n: int
    diag: np.ndarray
    batch: np.ndarray
    dst: np.ndarray
    src: np.ndarray
    weight: np.ndarray

    @property
    def size(self) -> int:
        """Number of matrices B."""
        return int(self.diag.shape[0])

    @property
    def nnz_off(self) -> int:
        """Stored off-diagonal entries (all matrices)."""
        return int(self.weight.shape[0])

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_edges(cls, n: int, diag: np.ndarray, dst: np.ndarray, src: np.ndarray,
                   weight: np.ndarray, batch: np.ndarray | None = None) -> SparseW:
        """From arrays (``batch`` defaults to zeros: one matrix)."""
        dst = np.asarray(dst, dtype=np.int64)
        diag = np.asarray(diag, dtype=np.float64).reshape(-1, n)
        if batch is None:
            batch = np.zeros(dst.shape, dtype=np.int64)
        return cls(int(n), diag, np.asarray(batch, dtype=np.int64), dst,
                   np.asarray(src, dtype=np.int64), np.asarray(weight, dtype=np.float64))

    @classmethod
    def from_dense(cls, W: np.ndarray) -> SparseW:
        """From a dense batch (B, n, n) (or one (n, n) matrix)."""
        W = np.asarray(W, dtype=np.float64)
        if W.ndim == 2:
            W = W[None]
        n = W.shape[-1]
        off = W.copy()
        idx = np.arange(n)
        off[:, idx, idx] = 0.0
        b, i, j = np.nonzero(off)
        return cls(n, np.ascontiguousarray(W[:, idx, idx]), b.astype(np.int64),
                   i.astype(np.int64), j.astype(np.int64), off[b, i, j])

    @classmethod
    def from_csr(cls, W: sp.sparray | sp.spmatrix) -> SparseW:
        """From one scipy sparse (n, n) matrix."""
        coo = sp.coo_array(W)
        n = coo.shape[0]
        on = coo.row == coo.col
        diag = np.zeros(n)
        np.add.at(diag, coo.row[on], coo.data[on])
        keep = ~on & (coo.data != 0)
        return cls.from_edges(n, diag[None], coo.row[keep], coo.col[keep], coo.data[keep])

    @classmethod
    def stack(cls, mats: list[SparseW]) -> SparseW:
        """One batch from several (same n), in order."""
        n = mats[0].n
        if any(m.n != n for m in mats):
            raise ValueError("SparseW.stack: matrices of different n")
        offs = np.cumsum([0] + [m.size for m in mats[:-1]])
        cat = np.concatenate
        return cls(n, cat([m.diag for m in mats]), cat([m.batch + o for m, o in
                                                       zip(mats, offs, strict=True)]),
                   cat([m.dst for m in mats]), cat([m.src for m in mats]),
                   cat([m.weight for m in mats]))

    # ------------------------------------------------------------------ views
    def dense(self) -> np.ndarray:
        """The dense batch (B, n, n) (for tests and small n; refuses above the limit)."""
        check_dense_fits(self.n, self.size)
        W = np.zeros((self.size, self.n, self.n))
        idx = np.arange(self.n)
        W[:, idx, idx] = self.diag
        W[self.batch, self.dst, self.src] = self.weight
        return W

    def csr(self, k: int = 0) -> sp.csr_array:
        """Matrix ``k`` as a scipy CSR array (n, n), diagonal included."""
        sel = self.batch == k
        rows = np.concatenate([np.arange(self.n), self.dst[sel]])
        cols = np.concatenate([np.arange(self.n), self.src[sel]])
        vals = np.concatenate([self.diag[k], self.weight[sel]])
        return sp.csr_array((vals, (rows, cols)), shape=(self.n, self.n))

    def row_sums(self) -> np.ndarray:
        """Σ_j W_ij, shape (B, n)."""
        return self._scatter(self.dst)

    def col_sums(self) -> np.ndarray:
        """Σ_i W_ij, shape (B, n)."""
        return self._scatter(self.src)

    def _scatter(self, idx: np.ndarray) -> np.ndarray:
        out = self.diag.copy().ravel()
        out += np.bincount(self.batch * self.n + idx, weights=self.weight,
                           minlength=self.size * self.n)
        return out.reshape(self.size, self.n)

    def messages(self) -> np.ndarray:
        """Off-diagonal nonzero entries per matrix (client-to-client messages), shape (B,)."""
        return np.bincount(self.batch[self.weight != 0], minlength=self.size)

    def frob_dev(self) -> np.ndarray:
        """‖W(I − J)‖²_F = ‖W‖²_F − ‖W1‖²/n per matrix, shape (B,) — O(B n + E)."""
        sq = (self.diag ** 2).sum(1) + np.bincount(self.batch, weights=self.weight ** 2,
                                                   minlength=self.size)
        return sq - (self.row_sums() ** 2).sum(1) / self.n

    def matvec(self, x: np.ndarray) -> np.ndarray:
        """W_k x_k for x (B, n) -> (B, n)."""
        out = (self.diag * x).ravel()
        out += np.bincount(self.batch * self.n + self.dst,
                           weights=self.weight * x[self.batch, self.src],
                           minlength=self.size * self.n)
        return out.reshape(self.size, self.n)

    def rmatvec(self, y: np.ndarray) -> np.ndarray:
        """W_kᵀ y_k for y (B, n) -> (B, n)."""
        out = (self.diag * y).ravel()
        out += np.bincount(self.batch * self.n + self.src,
                           weights=self.weight * y[self.batch, self.dst],
                           minlength=self.size * self.n)
        return out.reshape(self.size, self.n)
