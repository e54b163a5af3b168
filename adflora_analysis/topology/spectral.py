"""Spectral quantities of a static mixing matrix W (docs/architecture.md §3).

Definitions (eigenvalues of a symmetric W sorted 1 = λ1 ≥ λ2 ≥ ... ≥ λn):

- spectral gap δ = 1 − max(|λ2|, |λn|) for symmetric W (Boyd et al. 2006, "Randomized gossip
  algorithms"; Koloskova et al. 2020 §3); for a general W, δ = 1 − σ2(W), the second largest
  singular value (for doubly stochastic W, σ2(W) = ‖W − J‖₂, so the two agree on symmetric W).
- δ = 0 exactly when W does not mix (e.g. a disconnected graph: λ2 = 1).

Dense path: LAPACK (``eigvalsh`` / ``eigvals`` / ``svd``), O(n³). Sparse path:
``scipy.sparse.linalg.eigsh`` (ARPACK) for the extreme eigenvalues, ``svds`` for σ2; for
thousands of clients on a sparse graph. Both agree to ~1e-10.

>>> import numpy as np
>>> W = 0.25 * np.full((4, 4), 1 / 4) + 0.75 * np.eye(4)   # g·J + (1 − g)·I with g = 0.25
>>> round(spectral_gap(W), 12)
0.25
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from adflora_analysis.errors import AdfloraError, unknown_name
from adflora_analysis.topology.validation import as_matrix

__all__ = ["SpectralSummary", "spectral_gap", "spectral_summary"]

METHODS = ("auto", "dense", "sparse")


@dataclass(frozen=True)
class SpectralSummary:
    """Spectral summary of W.

    Attributes
    ----------
    n : int
    lambda2, lambda_n : float
        Second largest and smallest eigenvalue (real parts, sorted by real part, if W is not
        symmetric).
    sigma2 : float
        Second largest singular value of W.
    gap : float
        δ = 1 − max(|λ2|, |λn|) (symmetric W) or 1 − σ2 (otherwise).
    symmetric : bool
    method : str
        ``"dense"`` or ``"sparse"``.
    """

    n: int
    lambda2: float
    lambda_n: float
    sigma2: float
    gap: float
    symmetric: bool
    method: str

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready)."""
        return asdict(self)


def _is_symmetric(W: Any, tol: float) -> bool:
    if sp.issparse(W):
        d = W - W.T
        return d.nnz == 0 or float(abs(d).max()) <= tol
    return bool(np.abs(W - W.T).max() <= tol)


def _choose(W: Any, method: str) -> str:
    if method not in METHODS:
        raise unknown_name("spectral method", method, METHODS)
    n = W.shape[0]
    if n < 5:
        return "dense"  # ARPACK needs k < n - 1
    if method != "auto":
        return method
    nnz = W.nnz if sp.issparse(W) else int(np.count_nonzero(W))
    return "sparse" if n > 1500 and nnz < 0.05 * n * n else "dense"


def spectral_summary(W: Any, *, method: str = "auto", sym_tol: float = 1e-12
                     ) -> SpectralSummary:
    """λ2, λn, σ2 and the spectral gap δ of W (see the module docstring for definitions).

    Parameters
    ----------
    W : array_like or scipy.sparse matrix, shape (n, n)
    method : {"auto", "dense", "sparse"}
        ``auto`` takes the sparse path for n > 1500 with < 5% nonzeros.
    sym_tol : float
        W counts as symmetric when ``max |W − Wᵀ| <= sym_tol``.

    Returns
    -------
    SpectralSummary

    Examples
    --------
    >>> import networkx as nx
    >>> from adflora_analysis.topology import mixing_matrix
    >>> s = spectral_summary(mixing_matrix(nx.cycle_graph(6), "metropolis"))
    >>> round(s.lambda2, 12), round(s.lambda_n, 12), round(s.gap, 12)   # 1/3 + 2/3 cos(2πk/6)
    (0.666666666667, -0.333333333333, 0.333333333333)
    """
    W = as_matrix(W)
    n = W.shape[0]
    how = _choose(W, method)
    sym = _is_symmetric(W, sym_tol)
    if how == "dense":
        A = W.toarray() if sp.issparse(W) else W
        if sym:
            ev = np.linalg.eigvalsh(0.5 * (A + A.T))  # ascending
            lam2, lamn = float(ev[-2]), float(ev[0])
            sig2 = max(abs(lam2), abs(lamn))
        else:
            ev = np.linalg.eigvals(A)
            ev = ev[np.argsort(-ev.real, kind="stable")]
            lam2, lamn = float(ev[1].real), float(ev[-1].real)
            sig2 = float(sla.svdvals(A)[1])
    else:
        lam2, lamn, sig2 = _sparse_by_component(sp.csr_array(W), sym)
    gap = 1.0 - (max(abs(lam2), abs(lamn)) if sym else sig2)
    return SpectralSummary(n=n, lambda2=lam2, lambda_n=lamn, sigma2=float(sig2),
                           gap=snap(float(gap)),
                           symmetric=sym, method=how)


def snap(x: float, eps: float = 1e-13) -> float:
    """``x`` with floating-point noise at the ends rounded off: 0.0 or 1.0 when |x − 0| or
    |x − 1| is below ``eps``, else ``float(x)`` (a rate, gap or p in [0, 1]).

    >>> snap(1 - 1e-15), snap(0.25)
    (1.0, 0.25)
    """
    for v in (0.0, 1.0):
        if abs(x - v) < eps:
            return v
    return float(x)


def _sparse_by_component(A: sp.csr_array, sym: bool) -> tuple[float, float, float]:
    """(λ2, λn, σ2) of W, block by block when its support has several (weak) components.

    W is then block diagonal, and its spectrum and singular values are the union of the blocks'.
    Within a connected block the eigenvalue 1 of a stochastic W is simple (Perron–Frobenius), so
    one Krylov start vector is enough.
    """
    from scipy.sparse.csgraph import connected_components

    ncomp, labels = connected_components(A, directed=True, connection="weak")
    if ncomp == 1:
        lam1, lam2, lamn, sig1, sig2 = _sparse(A, sym)
        return lam2, lamn, sig2
    eig_top: list[float] = []
    sv_top: list[float] = []
    lamn = np.inf
    for c in range(ncomp):
        idx = np.flatnonzero(labels == c)
        B = A[idx][:, idx]
        if len(idx) <= 500:  # small blocks go dense (ARPACK also needs k < n − 1)
            D = B.toarray()
            ev = np.linalg.eigvals(D).real
            eig_top += sorted(ev)[-2:]
            lamn = min(lamn, float(ev.min()))
            sv_top += sorted(np.linalg.svd(D, compute_uv=False))[-2:]
        else:
            B = sp.csr_array(B)
            lam1, lam2, lamb, sig1, sig2 = _sparse(B, _is_symmetric(B, 1e-12))
            eig_top += [lam1, lam2]
            lamn = min(lamn, lamb)
            sv_top += [sig1, sig2]
    lam2 = sorted(eig_top)[-2]
    sig2 = sorted(sv_top)[-2]
    return float(lam2), float(lamn), float(sig2 if not sym else max(abs(lam2), abs(lamn)))


def _sparse(A: sp.csr_array, sym: bool) -> tuple[float, float, float, float, float]:
    """(λ1, λ2, λn, σ1, σ2) of a W with a connected support, by ARPACK.

    Lanczos/Arnoldi from one start vector cannot see the multiplicity of an eigenvalue, so
    asking for the top two eigenvalues of a disconnected W (λ = 1 twice) would miss the second 1.
    For doubly stochastic W the consensus direction is deflated instead: in the basis [1, U],
    W = diag(1, UᵀWU), so W − 2J has the eigenvalue −1 on 1 and λ2, ..., λn elsewhere, and
    σ_max(W − J) = σ2(W).
    """
    n = A.shape[0]
    tol = 1e-13  # relative accuracy of the Ritz values (tol=0, machine precision, is slower)
    v0 = np.random.default_rng(0).standard_normal(n)  # fixed start: reproducible
    ones = np.ones(n)
    rows = np.asarray(A.sum(axis=1)).ravel()
    cols = np.asarray(A.sum(axis=0)).ravel()
    ds = bool(np.allclose(rows, 1.0, rtol=0, atol=1e-12)
              and np.allclose(cols, 1.0, rtol=0, atol=1e-12))

    def shifted(c: float) -> spla.LinearOperator:  # W − cJ
        return spla.LinearOperator(
            (n, n), dtype=np.float64,
            matvec=lambda x: A @ np.ravel(x) - c * np.mean(x) * ones,
            rmatvec=lambda y: A.T @ np.ravel(y) - c * np.mean(y) * ones)

    ncv = min(n - 1, 20)  # eigs and svds need ncv < n
    try:
        if sym:
            if ds:
                top = [1.0, *spla.eigsh(shifted(2.0), k=1, which="LA", tol=tol, v0=v0,
                                        return_eigenvectors=False)]
            else:
                top = spla.eigsh(A, k=2, which="LA", tol=tol, v0=v0, return_eigenvectors=False)
            bot = spla.eigsh(A, k=1, which="SA", tol=tol, v0=v0, return_eigenvectors=False)
            lam1, lam2, lamn = float(np.max(top)), float(np.min(top)), float(bot[0])
            sig = sorted(abs(x) for x in (lam1, lam2, lamn))
            return lam1, lam2, lamn, sig[-1], sig[-2]
        if ds:
            top = [1.0, *spla.eigs(shifted(2.0), k=1, which="LR", tol=tol, ncv=ncv, v0=v0,
                                   return_eigenvectors=False).real]
            sv = [1.0, *spla.svds(shifted(1.0), k=1, tol=tol, ncv=ncv, v0=v0,
                                  return_singular_vectors=False)]
        else:
            top = spla.eigs(A, k=2, which="LR", tol=tol, ncv=ncv, v0=v0,
                            return_eigenvectors=False).real
            sv = spla.svds(A, k=2, tol=tol, ncv=ncv, v0=v0, return_singular_vectors=False)
        bot = spla.eigs(A, k=1, which="SR", tol=tol, ncv=ncv, v0=v0, return_eigenvectors=False)
        return (float(np.max(top)), float(np.min(top)), float(bot[0].real), float(np.max(sv)),
                float(np.min(sv)))
    except (spla.ArpackNoConvergence, spla.ArpackError):
        if n <= DENSE_FALLBACK_N:  # small enough: the dense eigensolver always converges
            return _dense_extremes(A.toarray(), sym)
        raise AdfloraError(f"sparse eigensolver did not converge for n = {n}",
                           "use method='dense' (n up to a few thousand)") from None


DENSE_FALLBACK_N = 3000
"""Up to this n a sparse eigensolve that does not converge falls back to LAPACK."""


def _dense_extremes(D: np.ndarray, sym: bool) -> tuple[float, float, float, float, float]:
    """(λ1, λ2, λn, σ1, σ2) of a dense W, as :func:`_sparse` returns them."""
    if sym:
        ev = np.linalg.eigvalsh(0.5 * (D + D.T))
        sig = sorted(np.abs(ev))
        return float(ev[-1]), float(ev[-2]), float(ev[0]), float(sig[-1]), float(sig[-2])
    ev = np.sort(np.linalg.eigvals(D).real)
    sv = np.linalg.svd(D, compute_uv=False)
    return float(ev[-1]), float(ev[-2]), float(ev[0]), float(sv[0]), float(sv[1])


def spectral_gap(W: Any, *, method: str = "auto") -> float:
    """Spectral gap δ of W: 1 − max(|λ2|, |λn|) if symmetric, else 1 − σ2(W).

    >>> import numpy as np
    >>> spectral_gap(np.eye(3))          # no mixing at all
    0.0
    >>> spectral_gap(np.full((3, 3), 1 / 3))
    1.0
    """
    return spectral_summary(W, method=method).gap
