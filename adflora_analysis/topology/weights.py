"""Weight rules: from a graph to a mixing matrix W (docs/architecture.md §3).

Rows of W are receivers: one gossip step is ``X <- W @ X`` (docs/architecture.md §1), so
``W[i, j] > 0`` means client i takes a share of client j's state. d_i is the degree of i
(in-degree for a directed graph), d_max the largest degree.

========================  =====================================================  ==============
rule                      weights                                                 stochastic
========================  =====================================================  ==============
``metropolis``            w_ij = 1 / (1 + max(d_i, d_j)) on edges, w_ii = rest      doubly, sym.
``max-degree``            w_ij = 1 / (1 + d_max) on edges, w_ii = rest              doubly, sym.
``lazy-metropolis``       (I + W_metropolis) / 2                                  doubly, sym.
``uniform``               w_ij = 1 / (d_i + 1) on edges and the diagonal          rows only
``server``                W = J = 11ᵀ/n (exact averaging; ignores the graph)      doubly, sym.
``fastest-mixing``        argmin ‖W − J‖₂ over symmetric stochastic W ≥ 0 on the   doubly, sym.
                          graph (Boyd, Diaconis & Xiao 2004; cvxpy SDP)
========================  =====================================================  ==============

Metropolis–Hastings weights: Xiao & Boyd, "Fast linear iterations for distributed averaging"
(2004); Boyd, Diaconis & Xiao, "Fastest mixing Markov chain on a graph", SIAM Review (2004).

>>> import networkx as nx
>>> mixing_matrix(nx.path_graph(3), "metropolis")
array([[0.66666667, 0.33333333, 0.        ],
       [0.33333333, 0.33333333, 0.33333333],
       [0.        , 0.33333333, 0.66666667]])
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import scipy.sparse as sp

from adflora_analysis.errors import AdfloraError, unknown_name
from adflora_analysis.topology.sparse import SparseW

__all__ = ["GRAPH_RULES", "ROW_STOCHASTIC_ONLY", "RULES", "adjacency", "edge_weights",
           "mixing_matrix", "weights_from_adjacency"]

RULES = ("metropolis", "max-degree", "lazy-metropolis", "uniform", "server", "fastest-mixing")
"""Every weight rule :func:`mixing_matrix` knows."""

GRAPH_RULES = ("metropolis", "max-degree", "lazy-metropolis", "uniform")
"""Local rules, computable from degrees alone (usable on random encounter graphs)."""

ROW_STOCHASTIC_ONLY = frozenset({"uniform"})
"""Rules whose W is row-stochastic but in general not doubly stochastic (flagged)."""


def adjacency(graph: nx.Graph, *, sparse: bool = False) -> np.ndarray | sp.csr_array:
    """0/1 receiver adjacency ``A[i, j] = 1`` iff i receives from j, shape (n, n), no diagonal.

    For an undirected graph A is symmetric; for a directed graph an edge ``j -> i`` sets A[i, j].

    >>> adjacency(nx.path_graph(3)).tolist()
    [[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    >>> adjacency(nx.DiGraph([(0, 1)])).tolist()  # 1 receives from 0
    [[0.0, 0.0], [1.0, 0.0]]
    """
    n = graph.number_of_nodes()
    a = nx.to_scipy_sparse_array(graph, nodelist=range(n), weight=None, format="csr",
                                 dtype=np.float64)
    if graph.is_directed():
        a = a.T.tocsr()
    a.setdiag(0.0)
    a.eliminate_zeros()
    a.data[:] = 1.0
    return a if sparse else a.toarray()


def _check_rule(rule: str, allowed: tuple[str, ...] = RULES) -> None:
    if rule not in allowed:
        raise unknown_name("weight rule", rule, allowed)


def weights_from_adjacency(a: np.ndarray, rule: str) -> np.ndarray:
    """Local weight rule applied to a batch of 0/1 adjacencies, vectorized.

    Parameters
    ----------
    a : ndarray, shape (..., n, n)
        Receiver adjacencies (``a[..., i, j] = 1`` iff i receives from j), zero diagonal.
    rule : str
        One of :data:`GRAPH_RULES` or ``"server"``.

    Returns
    -------
    ndarray, shape (..., n, n), float64

    Examples
    --------
    >>> a = np.array([[[0, 1], [1, 0]], [[0, 0], [0, 0]]], dtype=float)
    >>> weights_from_adjacency(a, "metropolis")
    array([[[0.5, 0.5],
            [0.5, 0.5]],
    <BLANKLINE>
           [[1. , 0. ],
            [0. , 1. ]]])
    """
    _check_rule(rule, (*GRAPH_RULES, "server"))
    a = np.asarray(a, dtype=np.float64)
    n = a.shape[-1]
    eye = np.eye(n)
    if rule == "server":
        return np.broadcast_to(np.full((n, n), 1.0 / n), a.shape).copy()
    d = a.sum(-1)  # (..., n) in-degrees
    if rule == "uniform":
        return (a + eye) * _pair_weight(rule, d[..., :, None], None, None)
    w = a * _pair_weight(rule, d[..., :, None], d[..., None, :], d.max(-1)[..., None, None])
    w = w + eye * (1.0 - w.sum(-1))[..., :, None]
    return _lazy(rule, w, eye)


def _pair_weight(rule: str, d_i, d_j, d_max):
    """The weight w_ij of an edge (i receives from j) under a local rule — the one place each
    rule is written; the dense and the edge-list forms both call it (arrays broadcast).

    The self-weight is 1/(d_i + 1) for ``uniform`` and the rest of the row otherwise; the lazy
    rule then halves everything and adds 1/2 on the diagonal (:func:`_lazy`).
    """
    if rule == "uniform":
        return 1.0 / (d_i + 1.0)
    if rule == "max-degree":
        return 1.0 / (1.0 + d_max)
    return 1.0 / (1.0 + np.maximum(d_i, d_j))  # metropolis, lazy-metropolis


def _lazy(rule: str, w, eye):
    return 0.5 * (w + eye) if rule == "lazy-metropolis" else w


def edge_weights(rule: str, n: int, dst: np.ndarray, src: np.ndarray,
                 batch: np.ndarray | None = None, size: int = 1) -> SparseW:
    """A local weight rule on a batch of edge lists, as a :class:`SparseW` (no n x n array).

    Parameters
    ----------
    rule : str
        One of :data:`GRAPH_RULES`.
    n : int
    dst, src : ndarray, shape (E,)
        Receiver / sender of each directed edge (list both directions of an undirected edge),
        no self-loops, no duplicates.
    batch : ndarray, shape (E,), optional
        Which of the ``size`` graphs each edge belongs to (default: all in graph 0).

    Examples
    --------
    >>> W = edge_weights("metropolis", 3, np.array([0, 1]), np.array([1, 0]))
    >>> W.dense()[0]
    array([[0.5, 0.5, 0. ],
           [0.5, 0.5, 0. ],
           [0. , 0. , 1. ]])
    """
    _check_rule(rule, GRAPH_RULES)
    dst = np.asarray(dst, dtype=np.int64)
    src = np.asarray(src, dtype=np.int64)
    batch = np.zeros_like(dst) if batch is None else np.asarray(batch, dtype=np.int64)
    d = np.bincount(batch * n + dst, minlength=size * n).astype(np.float64).reshape(size, n)
    vals = _pair_weight(rule, d[batch, dst], d[batch, src], d.max(1)[batch])
    if rule == "uniform":
        diag = _pair_weight(rule, d, None, None)
    else:
        rows = np.bincount(batch * n + dst, weights=vals, minlength=size * n)
        diag = 1.0 - rows.reshape(size, n)
    if rule == "lazy-metropolis":
        vals, diag = 0.5 * vals, 0.5 * (diag + 1.0)
    return SparseW(n, diag, batch, dst, src, vals)


def _sparse_weights(a: sp.csr_array, rule: str) -> sp.csr_array:
    coo = a.tocoo()
    return edge_weights(rule, a.shape[0], coo.row, coo.col).csr()


def mixing_matrix(graph: nx.Graph, rule: str, *, sparse: bool = False
                  ) -> np.ndarray | sp.csr_array:
    """Mixing matrix W of ``graph`` under weight ``rule`` (see the module table).

    Parameters
    ----------
    graph : networkx.Graph or networkx.DiGraph
        Nodes ``0..n-1`` (see :func:`~adflora_analysis.topology.graphs.build_graph`).
    rule : str
        One of :data:`RULES`. ``metropolis``, ``max-degree``, ``lazy-metropolis`` and
        ``fastest-mixing`` need an undirected graph; ``uniform`` takes in-neighbours of a
        directed graph (on the one-sided exponential graph it gives Ying et al.'s circulant).
    sparse : bool
        Return a ``scipy.sparse.csr_array`` (for large graphs) instead of a dense array.

    Returns
    -------
    ndarray or csr_array, shape (n, n), float64

    Examples
    --------
    >>> import networkx as nx
    >>> W = mixing_matrix(nx.complete_graph(4), "metropolis")
    >>> bool(np.allclose(W, 0.25))
    True
    """
    _check_rule(rule)
    n = graph.number_of_nodes()
    if n < 2:
        raise AdfloraError(f"graph has {n} node(s); gossip needs n >= 2", "use n >= 2")
    if graph.is_directed() and rule not in ("uniform", "server"):
        raise AdfloraError(f"weight rule {rule!r} needs an undirected graph",
                           "use weights 'uniform' on a directed graph (e.g. one-sided "
                           "exponential) or the two-sided version")
    if rule == "fastest-mixing":
        w = _fastest_mixing(adjacency(graph))
        return sp.csr_array(w) if sparse else w
    if rule == "server":
        w = np.full((n, n), 1.0 / n)
        return sp.csr_array(w) if sparse else w
    if sparse:
        return _sparse_weights(adjacency(graph, sparse=True), rule)
    return weights_from_adjacency(adjacency(graph), rule)


def _fastest_mixing(a: np.ndarray) -> np.ndarray:
    """Fastest-mixing symmetric W on the support of ``a`` (Boyd, Diaconis & Xiao 2004).

    Solves the SDP  minimize ‖W − J‖₂  s.t.  W = Wᵀ, W1 = 1, W ≥ 0, W_ij = 0 off the graph.
    """
    try:
        import cvxpy as cp
    except ImportError:
        raise AdfloraError("weight rule 'fastest-mixing' needs cvxpy, which is not installed",
                           "pip install 'adflora-analysis[sdp]' or use metropolis") from None
    n = a.shape[0]
    if n > 200:
        raise AdfloraError(f"fastest-mixing SDP with n = {n} is too large (limit 200)",
                           "use metropolis or lazy-metropolis weights")
    allowed = a + np.eye(n)
    w = cp.Variable((n, n), symmetric=True)
    constraints = [w @ np.ones(n) == np.ones(n), w >= 0, cp.multiply(w, 1.0 - allowed) == 0]
    prob = cp.Problem(cp.Minimize(cp.norm(w - np.full((n, n), 1.0 / n), 2)), constraints)
    try:
        prob.solve()
    except cp.error.SolverError as e:
        raise AdfloraError(f"fastest-mixing SDP failed: {e}",
                           "use metropolis weights or install an SDP solver (SCS)") from None
    if w.value is None:
        raise AdfloraError(f"fastest-mixing SDP returned status {prob.status}",
                           "use metropolis weights")
    x = np.clip(0.5 * (w.value + w.value.T), 0.0, None) * allowed
    # polish: make rows sum to exactly 1 by adjusting the diagonal
    np.fill_diagonal(x, 0.0)
    x /= max(1.0, float(x.sum(1).max()))  # a scalar keeps symmetry; keeps the diagonal >= 0
    np.fill_diagonal(x, 1.0 - x.sum(1))
    return x
