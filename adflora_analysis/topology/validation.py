"""Checks of a mixing matrix W: what the theory assumes and what a run can use.

docs/architecture.md §3, §5.1.

The theory (Koloskova et al. 2020, Assumption 4) takes W nonnegative and doubly stochastic
(rows and columns sum to 1; symmetry is not needed). A W that is not square, has NaN/inf or
negative entries is never usable and always raises; a W that is only row-stochastic (e.g. the
``uniform`` rule on an irregular graph) is allowed for study and raises only when the caller
asks for theory use (``for_theory=True``).

>>> r = validate(np.full((3, 3), 1 / 3))
>>> r.doubly_stochastic, r.symmetric, r.connected
(True, True, True)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from adflora_analysis.errors import AdfloraError

__all__ = ["MixingReport", "as_matrix", "is_connected", "load_matrix", "validate"]


@dataclass(frozen=True)
class MixingReport:
    """What :func:`validate` found about an (n, n) mixing matrix.

    Attributes
    ----------
    n : int
        Number of clients.
    doubly_stochastic, row_stochastic, column_stochastic : bool
        Row / column sums equal 1 within ``tol``.
    symmetric : bool
        ``max |W − Wᵀ| <= tol``.
    nonnegative : bool
        Always True for a returned report (negative entries raise).
    connected : bool
        The support graph of W (edge j -> i where W[i, j] > tol, i != j) is strongly connected.
    worst_row_sum, worst_col_sum : float
        The row (column) sum furthest from 1.
    max_asymmetry : float
        ``max |W − Wᵀ|``.
    min_diagonal : float
        Smallest self-weight.
    tol : float
        Tolerance used.
    """

    n: int
    doubly_stochastic: bool
    row_stochastic: bool
    column_stochastic: bool
    symmetric: bool
    nonnegative: bool
    connected: bool
    worst_row_sum: float
    worst_col_sum: float
    max_asymmetry: float
    min_diagonal: float
    tol: float

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready)."""
        return asdict(self)


def as_matrix(W: Any, what: str = "mixing matrix") -> np.ndarray | sp.csr_array:
    """``W`` as a float64 dense array or CSR array; refuses non-2-D / non-square / non-finite.

    >>> as_matrix([[0.5, 0.5], [0.5, 0.5]]).dtype
    dtype('float64')
    >>> as_matrix([[1.0, 0.0]])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    adflora_analysis.errors.AdfloraError: mixing matrix ...
    """
    if sp.issparse(W):
        W = sp.csr_array(W, dtype=np.float64)
        data = W.data
    else:
        try:
            W = np.asarray(W, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise AdfloraError(f"{what} is not numeric: {e}", "give an n x n array of numbers"
                               ) from None
        data = W
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise AdfloraError(f"{what} is not square: shape {tuple(W.shape)}",
                           "give an n x n matrix (rows are receivers)")
    if W.shape[0] < 2:
        raise AdfloraError(f"{what} is {W.shape[0]} x {W.shape[0]}; gossip needs n >= 2",
                           "give an n x n matrix with n >= 2")
    bad = ~np.isfinite(data)
    if bad.any():
        raise AdfloraError(f"{what} has {int(bad.sum())} NaN/inf entries",
                           "give finite weights")
    return W


def is_connected(W: Any, tol: float = 1e-12) -> bool:
    """Whether the support of W (edge j -> i where ``W[i, j] > tol``) is strongly connected.

    >>> is_connected(np.eye(3)), is_connected(np.full((3, 3), 1 / 3))
    (False, True)
    """
    W = sp.csr_array(W)
    support = sp.csr_array(W > tol)
    ncomp = connected_components(support, directed=True, connection="strong",
                                 return_labels=False)
    return int(ncomp) == 1


def validate(W: Any, *, for_theory: bool = True, tol: float = 1e-8) -> MixingReport:
    """Check a mixing matrix; raise on unusable input.

    Parameters
    ----------
    W : array_like or scipy.sparse matrix, shape (n, n)
        Rows are receivers (``X <- W @ X``).
    for_theory : bool
        Also raise if W is not doubly stochastic (the theory's assumption), naming the worst
        row sum and column sum.
    tol : float
        Tolerance on sums, symmetry and negativity.

    Returns
    -------
    MixingReport

    Raises
    ------
    AdfloraError
        W not square, has NaN/inf or negative entries; or (``for_theory``) not doubly stochastic.

    Examples
    --------
    >>> validate([[0.5, 0.5], [0.2, 0.8]], for_theory=False).column_stochastic
    False
    >>> validate([[0.5, 0.5], [0.2, 0.8]])
    Traceback (most recent call last):
    ...
    adflora_analysis.errors.AdfloraError: mixing matrix is not doubly stochastic: worst row sum 1, worst column sum 0.7 (hint: use metropolis or max-degree weights, or pass a doubly stochastic W)
    """  # noqa: E501
    W = as_matrix(W)
    n = W.shape[0]
    if sp.issparse(W):
        vmin = min(float(W.data.min(initial=0.0)), 0.0)
        rows = np.asarray(W.sum(axis=1)).ravel()
        cols = np.asarray(W.sum(axis=0)).ravel()
        diff = W - W.T
        asym = float(abs(diff).max()) if diff.nnz else 0.0
        diag = W.diagonal()
    else:
        vmin = float(W.min())
        rows, cols = W.sum(1), W.sum(0)
        asym = float(np.abs(W - W.T).max())
        diag = np.diag(W)
    if vmin < -tol:
        idx = _argmin(W)
        raise AdfloraError(f"mixing matrix has a negative entry {vmin:.3g} at {idx}",
                           "weights must be >= 0; use metropolis or max-degree weights")
    worst_row = float(rows[np.argmax(np.abs(rows - 1.0))])
    worst_col = float(cols[np.argmax(np.abs(cols - 1.0))])
    row_ok = abs(worst_row - 1.0) <= tol
    col_ok = abs(worst_col - 1.0) <= tol
    report = MixingReport(
        n=n, doubly_stochastic=bool(row_ok and col_ok), row_stochastic=bool(row_ok),
        column_stochastic=bool(col_ok), symmetric=asym <= tol, nonnegative=True,
        connected=is_connected(W, tol), worst_row_sum=worst_row, worst_col_sum=worst_col,
        max_asymmetry=asym, min_diagonal=float(diag.min()), tol=tol)
    if for_theory and not report.doubly_stochastic:
        raise AdfloraError(f"mixing matrix is not doubly stochastic: worst row sum "
                           f"{worst_row:.6g}, worst column sum {worst_col:.6g}",
                           "use metropolis or max-degree weights, or pass a doubly "
                           "stochastic W")
    return report


def _argmin(W: Any) -> tuple[int, int]:
    if sp.issparse(W):
        coo = W.tocoo()
        k = int(np.argmin(coo.data))
        return int(coo.row[k]), int(coo.col[k])
    i, j = np.unravel_index(int(np.argmin(W)), W.shape)
    return int(i), int(j)


def load_matrix(path: str, *, for_theory: bool = False) -> np.ndarray:
    """Read a user W from ``.npy`` or CSV / whitespace text and validate it.

    Raises :class:`AdfloraError` if the file is missing or does not parse, and as
    :func:`validate` does.

    >>> import tempfile
    >>> from pathlib import Path
    >>> p = Path(tempfile.mkdtemp()) / "W.csv"
    >>> _ = p.write_text("0.5,0.5,0\\n0.5,0.25,0.25\\n0,0.25,0.75\\n")
    >>> load_matrix(str(p)).sum(axis=0).tolist()
    [1.0, 1.0, 1.0]
    """
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise AdfloraError(f"matrix file {str(p)!r} does not exist", "check the path")
    try:
        if p.suffix == ".npy":
            W = np.load(p, allow_pickle=False)
        else:
            text = p.read_text(encoding="utf-8")
            delim = "," if "," in text else None
            W = np.loadtxt(p, delimiter=delim, dtype=np.float64, comments="#", ndmin=2)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise AdfloraError(f"matrix file {str(p)!r} does not parse: {e}",
                           "give a .npy array or CSV with n rows of n numbers") from None
    W = as_matrix(W, f"matrix in {str(p)!r}")
    validate(W, for_theory=for_theory)
    return W
