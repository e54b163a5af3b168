"""EquiTopo graphs of Song, Li, Jin, Shi, Yan, Yin and Yuan, "Communication-Efficient Topologies
for Decentralized Learning with O(1) Consensus Rate" (NeurIPS 2022), after the definitions in
their paper and released code (github.com/kexinjinnn/EquiTopo), on edge lists
(docs/topology.md).

The building block is the basis matrix of an offset u in {1, …, n − 1},

    A(u) = I/n + ((n − 1)/n) P_u,      (P_u x)_i = x_((i + u) mod n),

doubly stochastic, circulant, and exactly J = 11ᵀ/n on average over a uniform u:
E[P_u] = (nJ − I)/(n − 1) gives E[A(u)] = J.

- **D-EquiStatic**: W = (1/M) Σ_m A(u_m) for M offsets drawn uniformly with replacement
  (each client receives from at most M peers). By the matrix Bernstein inequality
  (‖A(u) − J‖ <= 1, ‖E[(A − J)(A − J)ᵀ]‖ <= 1), ‖W − J‖₂ <= ε with probability at least
  1 − δ as soon as M >= 8 ln(2n/δ) / (3ε²) (:func:`equistatic_degree`): a consensus rate
  1 − ε² that does not depend on n, at degree Θ(ln n).
- **U-EquiStatic**: W = (1/(2M)) Σ_m (A(u_m) + A(u_m)ᵀ), symmetric, the same bound (at most
  2M peers).

W is circulant, hence normal, so ‖W − J‖₂ is the largest modulus of its eigenvalues
λ_j = Σ_d c_d e^(2πi dj/n), j ≠ 0, of its first row c: one FFT, O(n log n)
(:func:`circulant_norm`).

>>> W = equistatic_matrix(8, np.array([1, 2, 3]))
>>> bool(np.allclose(W.sum(0), 1) and np.allclose(W.sum(1), 1))
True
>>> row = equistatic_first_row(8, np.array([1, 2, 3]))
>>> bool(np.allclose(row, W[0]) and np.isclose(circulant_norm(row), np.linalg.norm(W - 1 / 8, 2)))
True
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

__all__ = ["circulant_norm", "equi_offsets", "equistatic_degree", "equistatic_first_row",
           "equistatic_matrix"]


def equistatic_degree(n: int, eps: float, delta: float) -> int:
    """Offsets M = ⌈8 ln(2n/δ) / (3ε²)⌉ after which ‖W − J‖₂ <= ε w.p. >= 1 − δ.

    >>> equistatic_degree(100, 0.5, 0.1), equistatic_degree(10_000, 0.5, 0.1)
    (82, 131)
    """
    return math.ceil(8.0 * math.log(2.0 * n / delta) / (3.0 * eps ** 2))


def equi_offsets(n: int, M: int, rng: np.random.Generator) -> np.ndarray:
    """M offsets drawn uniformly from {1, …, n − 1}, with replacement, shape (M,)."""
    return rng.integers(1, n, size=int(M))


def equistatic_matrix(n: int, offsets: np.ndarray, undirected: bool = False,
                      sparse: bool = False) -> np.ndarray | sp.csr_array:
    """W of D-EquiStatic (or U-EquiStatic with ``undirected``), shape (n, n): dense, or CSR
    with ``sparse`` (O(n M) entries)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    M = len(offsets)
    i = np.arange(n)
    rows = np.concatenate([i, np.tile(i, M)])
    cols = np.concatenate([i, ((i[None, :] + offsets[:, None]) % n).ravel()])
    vals = np.concatenate([np.full(n, 1.0 / n), np.full(n * M, (n - 1) / (n * M))])
    W = sp.csr_array((vals, (rows, cols)), shape=(n, n))      # duplicates are summed
    if undirected:
        W = sp.csr_array((W + W.T) * 0.5)
    W.sum_duplicates()
    return W if sparse else W.toarray()


def equistatic_first_row(n: int, offsets: np.ndarray, undirected: bool = False) -> np.ndarray:
    """Row 0 of the EquiStatic W, shape (n,), in O(n + M) (W_ij = c_((j − i) mod n)).

    >>> equistatic_first_row(4, np.array([1, 1, 2])).tolist()
    [0.25, 0.5, 0.25, 0.0]
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    c = np.bincount(offsets % n, minlength=n) * ((n - 1) / (n * len(offsets)))
    if undirected:
        c = 0.5 * (c + np.roll(c[::-1], 1))                  # c_d -> (c_d + c_(−d)) / 2
    c[0] += 1.0 / n
    return c


def circulant_norm(first_row: np.ndarray) -> float:
    """‖W − J‖₂ of a doubly stochastic circulant W with first row c (W_ij = c_((j − i) mod n)):
    max over j ≠ 0 of |Σ_d c_d e^(2πi dj/n)|.

    >>> circulant_norm(np.full(4, 0.25)), circulant_norm(np.array([0.5, 0.5, 0.0, 0.0]))
    (0.0, 0.7071067811865476)
    """
    lam = np.fft.fft(np.asarray(first_row, dtype=np.float64))
    return float(np.abs(lam[1:]).max()) if len(lam) > 1 else 0.0
