"""Graph families for the communication topology (docs/architecture.md §3).

Every builder returns a simple :class:`networkx.Graph` (the one-sided exponential graph is a
:class:`networkx.DiGraph`) on nodes ``0..n-1`` without self-loops. Random families take a
``seed``. Edges of an undirected graph mean "i and j exchange their states"; in a directed graph
an edge ``j -> i`` means "i receives from j" (rows of W are receivers, docs/architecture.md §1).

>>> sorted(build_graph("ring", 4).edges())
[(0, 1), (0, 3), (1, 2), (2, 3)]
>>> build_graph("hypercube", 8).number_of_edges()
12
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from adflora_analysis.errors import AdfloraError, unknown_name

__all__ = ["GRAPHS", "build_graph", "check_n", "read_graph_file", "seeded", "torus_shape"]


def seeded(fn: Callable) -> Callable:
    """Declare a random factory, the way networkx's ``@py_random_state`` does: the wrapped
    function takes ``seed`` (None, an int, or a ``numpy.random.Generator``, from which an int
    is drawn) and is marked ``takes_seed``, so a dispatcher passes the seed to it and to no
    deterministic factory.

    >>> @seeded
    ... def f(n, seed=None):
    ...     return seed
    >>> f(3, seed=7), f.takes_seed
    (7, True)
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, seed: Any = None, **kwargs: Any) -> Any:
        if isinstance(seed, np.random.Generator):
            seed = int(seed.integers(0, 2**63 - 1))
        elif seed is not None:
            seed = int(seed)
        return fn(*args, seed=seed, **kwargs)

    wrapper.takes_seed = True
    return wrapper


def check_n(n: Any, what: str = "n") -> int:
    """Return ``n`` as an int, refusing n < 2 (there is no gossip with one client).

    >>> check_n(3)
    3
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise AdfloraError(f"{what} = {n!r} is not an integer", f"pass {what} = 2 or more")
    if n < 2:
        raise AdfloraError(f"{what} = {n} clients is too few for gossip", f"use {what} >= 2")
    return int(n)


def _complete(n: int) -> nx.Graph:
    return nx.complete_graph(n)


def _ring(n: int) -> nx.Graph:
    return nx.cycle_graph(n)


def _path(n: int) -> nx.Graph:
    return nx.path_graph(n)


def _star(n: int) -> nx.Graph:
    return nx.star_graph(n - 1)


def torus_shape(n: int, rows: int | None = None) -> tuple[int, int]:
    """``(rows, cols)`` with ``rows * cols == n``, the most square split unless ``rows`` is given.

    >>> torus_shape(12), torus_shape(12, rows=2)
    ((3, 4), (2, 6))
    """
    if rows is None:
        rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
    rows = int(rows)
    if rows < 2 or n % rows or n // rows < 2:
        raise AdfloraError(f"a 2-D torus/grid needs n = rows x cols with rows, cols >= 2; "
                           f"n = {n} with rows = {rows} does not split",
                           "choose n with a factor >= 2 (e.g. 9, 10, 12) or pass rows=")
    return rows, n // rows


def _grid2d(n: int, rows: int | None, periodic: bool) -> nx.Graph:
    r, c = torus_shape(n, rows)
    g = nx.grid_2d_graph(r, c, periodic=periodic)
    return nx.convert_node_labels_to_integers(g, ordering="sorted")


def _torus(n: int, rows: int | None = None) -> nx.Graph:
    return _grid2d(n, rows, periodic=True)


def _grid(n: int, rows: int | None = None) -> nx.Graph:
    return _grid2d(n, rows, periodic=False)


def _hypercube(n: int) -> nx.Graph:
    d = n.bit_length() - 1
    if 1 << d != n:
        raise AdfloraError(f"hypercube needs n a power of 2, got n = {n}",
                           f"use n = {1 << d} or {1 << (d + 1)}")
    g = nx.hypercube_graph(d)
    # node (b_0, ..., b_{d-1}) -> integer with b_0 the most significant bit (sorted order)
    return nx.convert_node_labels_to_integers(g, ordering="sorted")


@seeded
def _random_regular(n: int, degree: int = 4, seed: int | None = None) -> nx.Graph:
    degree = int(degree)
    if not 0 <= degree < n or (n * degree) % 2:
        raise AdfloraError(f"random-regular needs 0 <= degree < n and n*degree even; "
                           f"got degree = {degree}, n = {n}", "change degree or n")
    return nx.random_regular_graph(degree, n, seed=seed)


@seeded
def _erdos_renyi(n: int, p: float | None = None, seed: int | None = None) -> nx.Graph:
    if p is None:
        p = min(1.0, 2.0 * math.log(n) / n)
    if not 0.0 <= float(p) <= 1.0:
        raise AdfloraError(f"erdos-renyi edge probability p = {p} is outside [0, 1]",
                           "pass p between 0 and 1")
    return nx.gnp_random_graph(n, float(p), seed=seed)


@seeded
def _watts_strogatz(n: int, k: int = 4, p: float = 0.1, seed: int | None = None) -> nx.Graph:
    k = int(k)
    if not 0 <= k < n or not 0.0 <= float(p) <= 1.0:
        raise AdfloraError(f"watts-strogatz needs 0 <= k < n and p in [0, 1]; got k = {k}, "
                           f"p = {p}, n = {n}", "pass e.g. k=4 p=0.1")
    return nx.watts_strogatz_graph(n, k, float(p), seed=seed)


@seeded
def _random_geometric(n: int, radius: float | None = None, dim: int = 2,
                      seed: int | None = None) -> nx.Graph:
    if radius is None:  # twice the connectivity threshold sqrt(log n / (pi n)) in 2-D
        radius = min(math.sqrt(2.0), 2.0 * math.sqrt(math.log(n) / (math.pi * n)))
    if float(radius) < 0:
        raise AdfloraError(f"random-geometric radius = {radius} is negative", "pass radius > 0")
    g = nx.random_geometric_graph(n, float(radius), dim=int(dim), seed=seed)
    for _, data in g.nodes(data=True):
        data.pop("pos", None)
    return g


def _exponential(n: int, sided: str = "two") -> nx.Graph:
    """Exponential graph of Ying et al. (2021): i is linked to i + 2^k mod n, k < ceil(log2 n)."""
    hops = sorted({(1 << k) % n for k in range(max(1, math.ceil(math.log2(n))))} - {0})
    if str(sided) in ("one", "1", "one-sided"):
        g = nx.DiGraph()
        g.add_nodes_from(range(n))
        # node i receives from i + 2^k: edge (i + 2^k) -> i
        g.add_edges_from(((i + h) % n, i) for i in range(n) for h in hops)
        return g
    if str(sided) not in ("two", "2", "two-sided"):
        raise unknown_name("exponential sided", str(sided), ["one", "two"])
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from((i, (i + h) % n) for i in range(n) for h in hops)
    return g


def _two_cliques(n: int, bridges: int = 1) -> nx.Graph:
    """Two cliques of sizes ceil(n/2) and floor(n/2) joined by ``bridges`` disjoint edges."""
    a = (n + 1) // 2
    b = n - a
    bridges = int(bridges)
    if not 0 <= bridges <= b:
        raise AdfloraError(f"two-cliques bridges = {bridges} must be between 0 and {b}",
                           "pass bridges=1 (bridges=0 gives a disconnected graph)")
    g = nx.disjoint_union(nx.complete_graph(a), nx.complete_graph(b))
    g.add_edges_from((i, a + i) for i in range(bridges))
    return g


def read_graph_file(path: str | Path, n: int | None = None, kind: str = "auto") -> nx.Graph:
    """Read an edge list (text: ``u v`` per line, ``#`` comments) or an adjacency matrix.

    Adjacency matrices are ``.npy`` files or CSV/whitespace text with n numbers per row (a
    nonzero entry is an edge; a non-symmetric matrix gives a directed graph, ``j -> i`` where
    entry (i, j) is nonzero). Integer node labels are kept (nodes ``0..n-1``, isolated ones
    included); other labels are relabelled ``0..`` in sorted order. ``kind`` is ``"edgelist"``,
    ``"adjacency"`` or ``"auto"`` (``.npy`` or a square table of numbers is an adjacency).

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "edges.txt"
    >>> _ = p.write_text("# a path\\n0 1\\n1 2\\n")
    >>> g = read_graph_file(p)
    >>> sorted(g.edges()), g.number_of_nodes()
    ([(0, 1), (1, 2)], 3)
    """
    p = Path(path)
    if not p.is_file():
        raise AdfloraError(f"graph file {str(p)!r} does not exist", "check the path")
    try:
        if p.suffix == ".npy" and kind != "edgelist":
            return _graph_from_adjacency(np.load(p, allow_pickle=False), p)
        text = p.read_text(encoding="utf-8")
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise AdfloraError(f"graph file {str(p)!r} does not parse: {e}",
                           "give an edge list 'u v' per line or an n x n adjacency") from None
    rows = [ln.split("#", 1)[0].replace(",", " ").split() for ln in text.splitlines()]
    rows = [r for r in rows if r]
    if not rows:
        raise AdfloraError(f"graph file {str(p)!r} is empty", "list one edge 'u v' per line")
    square = all(len(r) == len(rows) for r in rows)
    if kind == "adjacency" or (kind == "auto" and square and len(rows) > 3):
        try:
            return _graph_from_adjacency(np.array(rows, dtype=float), p)
        except ValueError as e:
            raise AdfloraError(f"adjacency file {str(p)!r} does not parse: {e}",
                               "give n rows of n numbers") from None
    bad = [i for i, r in enumerate(rows) if len(r) not in (2, 3)]
    if bad:
        raise AdfloraError(f"graph file {str(p)!r} does not parse: line {bad[0] + 1} has "
                           f"{len(rows[bad[0]])} fields", "give one edge 'u v' per line")
    g = nx.Graph()
    edges = [(r[0], r[1]) for r in rows]
    if all(u.lstrip("-").isdigit() and v.lstrip("-").isdigit() for u, v in edges):
        ints = [(int(u), int(v)) for u, v in edges]
        top = max(max(u, v) for u, v in ints)
        lo = min(min(u, v) for u, v in ints)
        size = max(top + 1, n or 0)
        if lo < 0:
            raise AdfloraError(f"graph file {str(p)!r} has a negative node label {lo}",
                               "label nodes 0..n-1")
        g.add_nodes_from(range(size))
        g.add_edges_from(ints)
    else:
        g.add_edges_from(edges)
        g = nx.convert_node_labels_to_integers(g, ordering="sorted")
    g.remove_edges_from(list(nx.selfloop_edges(g)))
    return g


def _graph_from_adjacency(a: np.ndarray, p: Path) -> nx.Graph:
    if a.ndim != 2 or a.shape[0] != a.shape[1] or not np.all(np.isfinite(a)):
        raise AdfloraError(f"adjacency in {str(p)!r} is not a finite square matrix "
                           f"(shape {a.shape})", "give an n x n matrix")
    a = (a != 0).astype(float)
    np.fill_diagonal(a, 0.0)
    directed = not np.array_equal(a, a.T)
    # entry (i, j) nonzero: i receives from j, i.e. edge j -> i
    g = nx.from_numpy_array(a.T, create_using=nx.DiGraph if directed else nx.Graph)
    return g


def _edgelist(n: int, path: str | Path | None = None) -> nx.Graph:
    if path is None:
        raise AdfloraError("graph 'edgelist' needs path=FILE", "pass path=edges.txt ('u v' lines)")
    return read_graph_file(path, n, kind="edgelist")


def _adjacency(n: int, path: str | Path | None = None) -> nx.Graph:
    if path is None:
        raise AdfloraError("graph 'adjacency' needs path=FILE", "pass path=adj.npy or adj.csv")
    return read_graph_file(path, n, kind="adjacency")


GRAPHS: dict[str, Callable[..., nx.Graph]] = {
    "complete": _complete,
    "ring": _ring,
    "path": _path,
    "star": _star,
    "torus": _torus,
    "grid": _grid,
    "hypercube": _hypercube,
    "random-regular": _random_regular,
    "erdos-renyi": _erdos_renyi,
    "watts-strogatz": _watts_strogatz,
    "random-geometric": _random_geometric,
    "exponential": _exponential,
    "two-cliques": _two_cliques,
    "edgelist": _edgelist,
    "adjacency": _adjacency,
}
"""Graph family name -> builder ``f(n, **params)``."""

# Memory of a networkx graph: a node's dict entries, and an edge stored in both endpoints'
# adjacency dicts (measured order of magnitude on CPython 3.11, rounded up).
NX_NODE_BYTES = 400
NX_EDGE_BYTES = 500


def expected_edges(name: str, n: int, **params: Any) -> float:
    """Edges graph family ``name`` has on ``n`` nodes (expected, for random families).

    >>> expected_edges("ring", 10), expected_edges("complete", 10), expected_edges("torus", 16)
    (10.0, 45.0, 32.0)
    """
    d = {"complete": (n - 1) / 2, "ring": 1.0, "path": 1.0, "star": 1.0, "torus": 2.0,
         "grid": 2.0, "hypercube": math.log2(max(n, 2)) / 2,
         "random-regular": params.get("degree", 4) / 2,
         "erdos-renyi": params.get("p", 2 * math.log(max(n, 2)) / n) * (n - 1) / 2,
         "watts-strogatz": params.get("k", 4) / 2,
         "exponential": math.log2(max(n, 2)) * (2 if params.get("sided", "two") == "two" else 1),
         "two-cliques": (n / 2 - 1) / 2}.get(name, math.log2(max(n, 2)))
    return float(n * d)


def check_fits(what: str, need_bytes: float, hint: str) -> None:
    """Refuse, in one line and before allocating, something that needs more memory than the
    machine has available (psutil), saying how much it would need.

    >>> check_fits("a graph", 1e3, "use a smaller n")
    >>> try:
    ...     check_fits("a graph", 1e30, "use a smaller n")
    ... except AdfloraError as e:
    ...     print(e.problem[:39])
    a graph would need about 1e+30 bytes of
    """
    import psutil

    avail = psutil.virtual_memory().available
    if need_bytes > avail:
        raise AdfloraError(f"{what} would need about {_bytes(need_bytes)} of memory; "
                           f"{_bytes(avail)} is available", hint)


def _bytes(x: float) -> str:
    for unit, f in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if x >= f:
            return f"{x / f:.1f} {unit}" if x < 1e15 else f"{x:.3g} bytes"
    return f"{x:.0f} bytes"


def build_graph(name: str, n: int, *, seed: int | None = None, **params: Any) -> nx.Graph:
    """Build graph family ``name`` on ``n`` nodes labelled ``0..n-1``.

    Parameters
    ----------
    name : str
        One of :data:`GRAPHS`: ``complete``, ``ring``, ``path``, ``star``, ``torus`` / ``grid``
        (2-D, ``rows=``), ``hypercube`` (n a power of 2), ``random-regular`` (``degree=4``),
        ``erdos-renyi`` (``p=``, default 2 ln n / n), ``watts-strogatz`` (``k=4, p=0.1``),
        ``random-geometric`` (``radius=``, ``dim=2``), ``exponential`` (``sided="two"`` or
        ``"one"``, the latter directed), ``two-cliques`` (``bridges=1``), ``edgelist`` /
        ``adjacency`` (``path=FILE``).
    n : int
        Number of nodes (clients), at least 2.
    seed : int, optional
        Seed of the random families (ignored by deterministic ones).
    **params
        Family parameters, as listed above; unknown ones are refused.

    Returns
    -------
    networkx.Graph or networkx.DiGraph
        Simple graph on nodes ``0..n-1``, no self-loops.

    Examples
    --------
    >>> g = build_graph("random-regular", 10, seed=0, degree=3)
    >>> sorted(d for _, d in g.degree()) == [3] * 10
    True
    >>> build_graph("two-cliques", 6).number_of_edges()
    7
    """
    import inspect

    n = check_n(n)
    if name not in GRAPHS:
        raise unknown_name("graph", name, GRAPHS)
    fn = GRAPHS[name]
    if name not in ("edgelist", "adjacency"):
        check_fits(f"graph {name!r} with n = {n}",
                   n * NX_NODE_BYTES + expected_edges(name, n, **params) * NX_EDGE_BYTES,
                   "use a smaller n")
    accepted = set(inspect.signature(fn).parameters) - {"n", "seed"}
    extra = set(params) - accepted
    if extra:
        key = sorted(extra)[0]
        raise AdfloraError(
            f"graph {name!r} takes no parameter {key!r}; valid: "
            f"{', '.join(sorted(accepted)) or 'none'}", "drop it or pick another graph")
    if getattr(fn, "takes_seed", False):
        params["seed"] = seed
    try:
        g = fn(n, **params)
    except (TypeError, ValueError, nx.NetworkXError) as e:
        if isinstance(e, AdfloraError):
            raise
        raise AdfloraError(f"graph {name!r} with n = {n} and {params} failed: {e}",
                           "check the graph parameters") from None
    if g.number_of_nodes() != n:
        raise AdfloraError(f"graph {name!r} has {g.number_of_nodes()} nodes, not n = {n}",
                           f"pass n = {g.number_of_nodes()}")
    g.remove_edges_from(list(nx.selfloop_edges(g)))
    if sorted(g.nodes()) != list(range(n)):
        g = nx.convert_node_labels_to_integers(g, ordering="sorted")
    return g
