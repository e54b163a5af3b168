"""The quadratic testbed's client data kept as rows (docs/architecture.md §6): every product
with S_i = X_iᵀ X_i / m and C_i = R_iᵀ X_i / m is computed through the m rows of
(X_i, R_i), so a client costs O(m (d_in + d_out)) memory instead of the O(d_in (d_in + d_out))
of its sufficient statistics, and a full-batch gradient O(m r (d_in + d_out)) time.

With Z = X Aᵀ (m, r) and E = s Z Bᵀ − R (m, d_out), the residual of the m rows::

    f_i = ||E||² / 2m,   grad_B = (s/m) Eᵀ Z,   grad_A = (s/m) (E B)ᵀ X,

which equal ``1/2 tr(P S Pᵀ) − <P, C> + c`` and its gradients with P = s B A (the
sufficient-statistics form of ``QuadraticProblem.full_grads``) up to float round-off.

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> X, R = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 2, generator=g,
...                                                                      dtype=torch.float64)
>>> rows = Rows(X, R)
>>> A, B = torch.randn(1, 3, generator=g, dtype=torch.float64), torch.ones(2, 1)
>>> S, C = rows.dense()
>>> g_rows = rows.grads(1.0, A, B.double(), ("A", "B"))
>>> torch.allclose(g_rows["B"], B.double() @ (A @ S @ A.T) - C @ A.T)
True
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from adflora_analysis.core.reduce import client_chunks


class Rows:
    """Clients' rows X: (..., m, d_in) and R: (..., m, d_out) (batch axes e.g. (S, n, L)) with
    the products of their statistics S = Xᵀ X / m, C = Rᵀ X / m."""

    def __init__(self, X: Tensor, R: Tensor):
        self.X, self.R = X, R
        self.m = X.shape[-2]

    def to(self, dtype: torch.dtype) -> Rows:
        """The same rows in ``dtype`` (a copy unless already in it)."""
        return Rows(self.X.to(dtype), self.R.to(dtype))

    def select(self, sl: slice, axis: int = 1) -> Rows:
        """The rows of clients ``sl`` along the client ``axis`` (views)."""
        return Rows(self.X.narrow(axis, sl.start, sl.stop - sl.start),
                    self.R.narrow(axis, sl.start, sl.stop - sl.start))

    def grads(self, s: float, A: Tensor, B: Tensor, blocks: tuple[str, ...]) -> dict[str, Tensor]:
        """Full-batch gradients of f_i at A (..., r, d_in), B (..., d_out, r) (batch axes
        broadcast with the rows'): grad_A like A, grad_B like B."""
        Z = self.X @ A.transpose(-1, -2)                      # (..., m, r)
        E = s * Z @ B.transpose(-1, -2) - self.R              # (..., m, d_out)
        out = {}
        if "B" in blocks:
            out["B"] = (s / self.m) * E.transpose(-1, -2) @ Z
        if "A" in blocks:
            out["A"] = (s / self.m) * (E @ B).transpose(-1, -2) @ self.X
        return out

    def loss(self, s: float, A: Tensor, B: Tensor) -> Tensor:
        """f_i = ||s X Aᵀ Bᵀ − R||² / 2m at A, B -> (...) float64."""
        E = s * (self.X @ A.transpose(-1, -2)) @ B.transpose(-1, -2) - self.R
        return E.double().pow(2).sum((-2, -1)) / (2 * self.m)

    def dense(self) -> tuple[Tensor, Tensor]:
        """S (..., d_in, d_in) and C (..., d_out, d_in) formed (tests, Hessian measurements)."""
        Xt = self.X.transpose(-1, -2)
        return Xt @ self.X / self.m, self.R.transpose(-1, -2) @ self.X / self.m

    def spectral(self) -> tuple[Tensor, Tensor]:
        """λmax(S) and ||C||₂ per client (...). With fewer rows than features (m < d_in) from
        the m x m Gram matrix X Xᵀ = Q diag(w) Qᵀ: λmax(S) = max w / m, and ||C||₂ = ||K||₂ / m
        with K = Rᵀ Q diag(√w) (X = Q diag(√w) Vᵀ, Vᵀ with orthonormal rows), whose square is
        the top eigenvalue of the m x m matrix Kᵀ K: no d x d matrix is formed. Otherwise from S
        and C themselves."""
        if self.m >= self.X.shape[-1]:
            S, C = self.dense()
            return torch.linalg.eigvalsh(S).amax(-1), torch.linalg.matrix_norm(C, ord=2)
        w, Q = torch.linalg.eigh(self.X @ self.X.transpose(-1, -2))
        K = (self.R.transpose(-1, -2) @ Q) * w.clamp_min(0).sqrt().unsqueeze(-2)
        top = torch.linalg.eigvalsh(K.transpose(-1, -2) @ K).amax(-1)
        return w.amax(-1) / self.m, top.clamp_min(0).sqrt() / self.m

    def sums(self) -> tuple[Tensor, Tensor]:
        """Σ_i S_i (..., d_in, d_in) and Σ_i C_i (..., d_out, d_in) over the client axis 0 of
        X (n, ..., m, d_in), each one matrix product over the joint (client, row) axis."""
        X = self.X.movedim(0, -3).flatten(-3, -2)          # (..., n m, d_in)
        R = self.R.movedim(0, -3).flatten(-3, -2)
        return X.transpose(-1, -2) @ X / self.m, R.transpose(-1, -2) @ X / self.m


def sum_over_clients(fn: Callable[[slice], Tensor], n: int, per_client: int) -> Tensor:
    """Σ over client chunks of ``fn(chunk)`` (each already reduced over its clients)."""
    return sum(fn(c) for c in client_chunks(n, per_client))
