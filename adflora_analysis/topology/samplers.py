"""Time-varying mixing: samplers that yield W^t from a seeded RNG (docs/architecture.md §3).

A :class:`Sampler` gives the mixing matrix of round t, ``sample(t, rng) -> (n, n)``, and a
vectorized batch of independent draws, ``sample_batch(rng, size) -> (size, n, n)``, used for
Monte Carlo estimates. Runs pass ``rng = seeding.numpy_rng(seed, "topology", t)`` so W^t is the
same in a resumed or split run. Deterministic periodic samplers (one-peer exponential, a user
list) ignore ``rng`` in ``sample``; their batch draws a uniformly random phase t, i.e. the
average over a period: the expected rates of :mod:`~adflora_analysis.topology.rates` then
describe a random phase each round; ``rates.periodic_rates`` gives the rates of the sequence run
in order.

Kinds (:data:`SAMPLERS`):

- ``static``: the same W every round (a graph + weight rule, or a given W).
- ``encounter``: each pair of clients meets independently with probability q each round;
  the weights are a rule on that round's encounter graph (``metropolis``, ``max-degree``,
  ``lazy-metropolis``, ``uniform``), or ``pairwise``: the encounters are applied one after the
  other in a uniformly random order, each averaging the two clients' current states
  (W = P_ek ⋯ P_e1 with P_e = I − (e_i − e_j)(e_i − e_j)ᵀ/2, doubly stochastic, not symmetric).
- ``matching``: a uniformly random perfect matching of the clients (one left out when n is odd)
  or, with ``graph=``, a random maximal matching of that graph (greedy in a random edge order);
  matched pairs average.
- ``one-peer-exponential`` (Ying et al., NeurIPS 2021): at round t client i averages with
  client (i + 2^(t mod τ)) mod n, τ = ceil(log2 n): W^t = (I + P_t)/2, P_t a cyclic shift.
  For n a power of 2 the product over one period is exactly J.
- ``k-peer-exponential``: client i averages with i + j(k + 1)^(t mod τ), j = 1..k.
- ``base-k`` (Takezawa et al., NeurIPS 2023): the Base-(k+1) graph, at most k peers a round
  and exact averaging after one period for any n (:mod:`~.finite_time`).
- ``equidyn`` / ``equistatic`` (Song et al., NeurIPS 2022, EquiTopo): one random circulant
  peer a round / a static circulant of M random offsets (:mod:`~.equitopo`).
- ``list``: a user's list of matrices, W^t = W_(t mod L).

Samplers with ``sparse = True`` also draw W^t as a :class:`~.sparse.SparseW` (self-weights and
an edge list, no n x n array): ``sample_sparse(t, rng)`` gives the same matrix as
``sample(t, rng)`` from the same generator state (to float round-off in the self-weights), so
the dense and the sparse gossip paths of a run see the same W^t.

>>> import numpy as np
>>> s = make_sampler("encounter", 5, q=0.3, weights="metropolis")
>>> W = s.sample(0, np.random.default_rng(0))
>>> W.shape, bool(np.allclose(W.sum(0), 1) and np.allclose(W.sum(1), 1))
((5, 5), True)
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import networkx as nx
import numpy as np
import scipy.sparse as sp
import scipy.stats as st

from adflora_analysis.errors import AdfloraError, unknown_name
from adflora_analysis.topology.equitopo import (
    circulant_norm,
    equi_offsets,
    equistatic_degree,
    equistatic_first_row,
    equistatic_matrix,
)
from adflora_analysis.topology.finite_time import base_rounds
from adflora_analysis.topology.graphs import build_graph, check_fits, check_n, seeded
from adflora_analysis.topology.sparse import SparseW, check_dense_fits
from adflora_analysis.topology.validation import as_matrix, validate
from adflora_analysis.topology.weights import (
    GRAPH_RULES,
    RULES,
    adjacency,
    edge_weights,
    mixing_matrix,
    weights_from_adjacency,
)

__all__ = ["ENCOUNTER_RULES", "SAMPLERS", "BaseKSampler", "EncounterSampler", "EquiDynSampler",
           "EquiStaticSampler", "KPeerExponentialSampler", "ListSampler", "MatchingSampler",
           "OnePeerExponentialSampler", "Sampler", "StaticSampler", "make_sampler"]

ENCOUNTER_RULES = (*GRAPH_RULES, "pairwise")
"""Combination rules of the encounter model."""

SUPPORT_LIMIT = 1 << 15
"""Largest support :meth:`Sampler.support` enumerates."""

SUPPORT_BYTES = 1 << 28
"""Largest dense support (bytes) :meth:`EquiDynSampler.support` enumerates (n <= 323)."""

PAIR_DRAW_LIMIT = 1 << 24
"""Up to this many client pairs the encounter model draws one uniform per pair (n <= 5,793)."""


def _bernoulli_positions(rng: np.random.Generator, m: int, q: float) -> np.ndarray:
    """Sorted positions of the successes among m independent Bernoulli(q) trials, by
    geometric gaps: O(q m) time and memory."""
    out, last = [], -1
    while True:
        k = int((m - 1 - last) * q * 1.02 + 10 * math.sqrt((m - last) * q + 1) + 16)
        pos = last + np.cumsum(rng.geometric(q, size=k))
        if pos[-1] >= m:
            out.append(pos[pos < m])
            return np.concatenate(out).astype(np.int64)
        out.append(pos)
        last = int(pos[-1])


def _pair_of_index(e: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(i, j), i < j, of pair number e in the row-major order of the upper triangle
    (the order of ``np.triu_indices(n, 1)``).

    >>> _pair_of_index(np.arange(6), 4)
    (array([0, 0, 0, 1, 1, 2]), array([1, 2, 3, 2, 3, 3]))
    """
    e = np.asarray(e, dtype=np.int64)
    start = lambda i: i * (2 * n - i - 1) // 2  # noqa: E731  first pair of row i
    i = np.floor(((2 * n - 1) - np.sqrt((2.0 * n - 1) ** 2 - 8.0 * e)) / 2).astype(np.int64)
    i = np.clip(i, 0, n - 2)
    i -= (start(i) > e)                       # float round-off: step back or forward one row
    i += (start(i + 1) <= e)
    return i, e - start(i) + i + 1


class Sampler:
    """Distribution of the mixing matrix W^t over rounds.

    Attributes
    ----------
    kind : str
        Sampler kind (see :data:`SAMPLERS`).
    n : int
        Number of clients.
    is_static : bool
        W^t is the same matrix every round.
    exchangeable : bool
        The law of W^t is invariant under relabelling the clients (then E[W] and E[WᵀW] are of
        the form a·I + b·J, which the rate estimators exploit).
    doubly_stochastic : bool
        Every W^t is doubly stochastic (the theory's assumption).
    symmetric : bool
        Every W^t is symmetric.
    """

    kind: str = "sampler"
    n: int
    is_static: bool = False
    exchangeable: bool = False
    doubly_stochastic: bool = True
    symmetric: bool = True
    sparse: bool = False

    def sample(self, t: int, rng: np.random.Generator) -> np.ndarray:
        """W^t, shape (n, n), float64."""
        return self.sample_batch(rng, 1)[0]

    def sample_batch(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` independent draws of W, shape (size, n, n), float64."""
        raise NotImplementedError

    def sample_sparse(self, t: int, rng: np.random.Generator) -> SparseW:
        """W^t as a one-matrix :class:`~.sparse.SparseW` (samplers with ``sparse = True``)."""
        return self.sample_sparse_batch(rng, 1)

    def sample_sparse_batch(self, rng: np.random.Generator, size: int) -> SparseW:
        """``size`` independent draws as one :class:`~.sparse.SparseW` batch."""
        raise AdfloraError(f"the {self.kind!r} sampler has no sparse form",
                           "use a dense W (small n) or a sparse sampler")

    def support(self, limit: int = SUPPORT_LIMIT) -> tuple[np.ndarray, np.ndarray] | None:
        """All values of W with their probabilities ``(mats (K, n, n), probs (K,))``, or None
        when the support is larger than ``limit`` or not enumerable."""
        return None

    def expected(self, samples: int = 20000, seed: int = 0) -> np.ndarray:
        """E[W], shape (n, n): exact where a closed form or a small support exists, else a
        Monte Carlo mean of ``samples`` draws (projected on a·I + b·J if exchangeable)."""
        sup = self.support()
        if sup is not None:
            mats, probs = sup
            return np.einsum("k,kij->ij", probs, mats)
        from adflora_analysis.seeding import numpy_rng

        check_dense_fits(self.n, 1, "E[W]")
        rng = numpy_rng(seed, "topology-expected")
        total = np.zeros((self.n, self.n))
        for size in draw_batches(samples, self.n):
            total += self.sample_batch(rng, size).sum(0)
        mean = total / samples
        return _exchangeable_projection(mean) if self.exchangeable else mean

    def describe(self) -> dict[str, Any]:
        """Labels of this sampler (kind, graph, rule, q, ...) for tables and meta.json."""
        return {"kind": self.kind, "n": self.n}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "kind")
        return f"{type(self).__name__}({fields})"


def draw_batches(total: int, n: int, budget: int = 1 << 21) -> list[int]:
    """Sizes of the batches ``total`` draws of n x n matrices are split into: at most
    ``budget / n²`` matrices (float64 entries) a batch.

    >>> draw_batches(5, 1000, budget=2_000_000)
    [2, 2, 1]
    """
    step = max(1, budget // (n * n))
    return [min(step, total - i) for i in range(0, total, step)]


def _exchangeable_projection(M: np.ndarray) -> np.ndarray:
    """Average M over client relabellings: a·I + b·(11ᵀ − I) with a = mean diag, b = mean off."""
    n = M.shape[0]
    a = float(np.trace(M)) / n
    b = (float(M.sum()) - a * n) / (n * (n - 1))
    return np.full((n, n), b) + (a - b) * np.eye(n)


class StaticSampler(Sampler):
    """The same W every round.

    Parameters
    ----------
    W : array_like or scipy sparse, shape (n, n)
        Validated (square, finite, nonnegative); need not be doubly stochastic. A sparse W is
        kept sparse (the dense view :attr:`W` is built on first use, refused when too large).
    graph, rule : str, optional
        Labels only.

    >>> s = StaticSampler(np.full((3, 3), 1 / 3), graph="complete", rule="metropolis")
    >>> s.kind, s.is_static, bool((s.sample(5, None) == s.W).all())
    ('static', True, True)
    """

    kind = "static"
    is_static = True
    sparse = True

    def __init__(self, W: Any, graph: str | None = None, rule: str | None = None):
        W = as_matrix(W)
        report = validate(W, for_theory=False)
        if sp.issparse(W):
            self._csr, self._W = sp.csr_array(W), None
        else:
            self._W = np.array(W)
            self._W.setflags(write=False)
            self._csr = None
        self.n = W.shape[0]
        self.report = report
        self.doubly_stochastic = report.doubly_stochastic
        self.symmetric = report.symmetric
        self.graph, self.rule = graph, rule
        self._sw: SparseW | None = None

    @property
    def W(self) -> np.ndarray:
        """The dense W (n, n), read-only."""
        if self._W is None:
            check_dense_fits(self.n)
            self._W = self._csr.toarray()
            self._W.setflags(write=False)
        return self._W

    @property
    def csr(self) -> sp.csr_array:
        """W as a scipy CSR array."""
        if self._csr is None:
            self._csr = sp.csr_array(self._W)
        return self._csr

    def sample(self, t: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """W (read-only), whatever t."""
        return self.W

    def sample_batch(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return np.broadcast_to(self.W, (size, self.n, self.n)).copy()

    def sample_sparse(self, t: int, rng: np.random.Generator | None = None) -> SparseW:
        if self._sw is None:
            self._sw = SparseW.from_csr(self.csr)
        return self._sw

    def sample_sparse_batch(self, rng: np.random.Generator, size: int) -> SparseW:
        return SparseW.stack([self.sample_sparse(0)] * size)

    def support(self, limit: int = SUPPORT_LIMIT) -> tuple[np.ndarray, np.ndarray]:
        return self.W[None].copy(), np.ones(1)

    def expected(self, samples: int = 0, seed: int = 0) -> np.ndarray:
        return np.array(self.W)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "n": self.n, "graph": self.graph, "rule": self.rule}


class EncounterSampler(Sampler):
    """Random encounters: each of the n(n−1)/2 pairs meets w.p. ``q`` per round, independently.

    Parameters
    ----------
    n : int
        Clients (>= 2).
    q : float
        Encounter probability per pair and round, in (0, 1].
    rule : str
        Combination rule on the encounter graph: one of :data:`ENCOUNTER_RULES`.

    Notes
    -----
    E[W] has a closed form for ``metropolis``, ``lazy-metropolis`` and ``uniform``: the degrees
    of i and j other than their common edge are independent Binomial(n − 2, q), so
    E[W_ij] = q · E[1 / (2 + max(a, b))] (metropolis) or q · E[1 / (2 + a)] (uniform).

    >>> s = EncounterSampler(10, q=0.1)
    >>> W = s.sample(0, np.random.default_rng(0))
    >>> W.shape, np.allclose(W, W.T), np.allclose(W.sum(1), 1), bool((W >= 0).all())
    ((10, 10), True, True, True)
    """

    kind = "encounter"
    exchangeable = True

    def __init__(self, n: int, q: float, rule: str = "metropolis"):
        self.n = check_n(n)
        self.q = check_q(q)
        if rule not in ENCOUNTER_RULES:
            raise unknown_name("encounter combination rule", rule, ENCOUNTER_RULES)
        self.rule = rule
        # one draw holds its edges (indices and weights, ~40 bytes each, with temporaries)
        check_fits(f"an encounter draw with n = {self.n} and q = {self.q}",
                   40.0 * self.q * self.n * (self.n - 1) / 2 + 16.0 * self.n,
                   "use a smaller n or q (q n is the expected number of peers a round)")
        self.doubly_stochastic = rule != "uniform" or self.q == 1.0 or self.n == 2
        self.symmetric = rule not in ("uniform", "pairwise") or self.n == 2
        self.sparse = rule != "pairwise"  # a product of pair averages fills in
        self._triu: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def _iu(self) -> np.ndarray:
        return self._pairs_index()[0]

    @property
    def _ju(self) -> np.ndarray:
        return self._pairs_index()[1]

    def _pairs_index(self) -> tuple[np.ndarray, np.ndarray]:
        if self._triu is None:
            self._triu = np.triu_indices(self.n, 1)
        return self._triu

    @property
    def m(self) -> int:
        """Number of pairs n(n−1)/2."""
        return self.n * (self.n - 1) // 2

    def _meetings(self, rng: np.random.Generator, size: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The encounters of ``size`` rounds: (round, i, j) arrays with i < j.

        Up to :data:`PAIR_DRAW_LIMIT` pairs, one uniform per pair (``rng.random((size, m)) <
        q``, the draw of :meth:`sample_batch`); above, the same law by geometric skips between
        successive encounters in the pair order, O(q m) per round instead of O(m)."""
        if self.m <= PAIR_DRAW_LIMIT:
            b, e = np.nonzero(rng.random((size, self.m)) < self.q)
            iu, ju = self._pairs_index()
            return b, iu[e], ju[e]
        bs, es = [], []
        for k in range(size):
            e = _bernoulli_positions(rng, self.m, self.q)
            bs.append(np.full(e.shape, k, dtype=np.int64))
            es.append(e)
        e = np.concatenate(es)
        i, j = _pair_of_index(e, self.n)
        return np.concatenate(bs), i, j

    def sample_sparse_batch(self, rng: np.random.Generator, size: int) -> SparseW:
        if not self.sparse:
            return super().sample_sparse_batch(rng, size)
        b, i, j = self._meetings(rng, size)
        return edge_weights(self.rule, self.n, np.concatenate([i, j]), np.concatenate([j, i]),
                            np.concatenate([b, b]), size)

    def _adjacency(self, meet: np.ndarray) -> np.ndarray:
        a = np.zeros((meet.shape[0], self.n, self.n))
        a[:, self._iu, self._ju] = meet
        a[:, self._ju, self._iu] = meet
        return a

    def sample_batch(self, rng: np.random.Generator, size: int) -> np.ndarray:
        check_dense_fits(self.n, size)
        if self.m > PAIR_DRAW_LIMIT and self.rule != "pairwise":
            return self.sample_sparse_batch(rng, size).dense()
        meet = rng.random((size, self.m)) < self.q  # (size, m)
        if self.rule != "pairwise":
            return weights_from_adjacency(self._adjacency(meet), self.rule)
        # random order of each sample's encounters: active pairs first, shuffled
        keys = rng.random((size, self.m)) + (~meet)
        order = np.argsort(keys, axis=1)
        return self._pairwise(order, meet.sum(1))

    def _pairwise(self, order: np.ndarray, count: np.ndarray) -> np.ndarray:
        """Apply the first ``count[s]`` pairs of ``order[s]`` in turn (vectorized over s)."""
        size = order.shape[0]
        W = np.broadcast_to(np.eye(self.n), (size, self.n, self.n)).copy()
        for k in range(int(count.max(initial=0))):  # loop over slots, not over samples
            s = np.nonzero(count > k)[0]
            e = order[s, k]
            i, j = self._iu[e], self._ju[e]
            avg = 0.5 * (W[s, i, :] + W[s, j, :])
            W[s, i, :] = avg
            W[s, j, :] = avg
        return W

    def support(self, limit: int = SUPPORT_LIMIT) -> tuple[np.ndarray, np.ndarray] | None:
        m = self.m
        if self.rule == "pairwise":
            size = sum(math.comb(m, k) * math.factorial(k) for k in range(m + 1))
            if size > limit:
                return None
            orders, counts, probs = [], [], []
            for k in range(m + 1):  # every ordered sequence of k distinct encounters
                pk = self.q ** k * (1 - self.q) ** (m - k) / math.factorial(k)
                for seq in itertools.permutations(range(m), k):
                    orders.append(list(seq) + [0] * (m - k))
                    counts.append(k)
                    probs.append(pk)
            order = np.array(orders, dtype=np.int64).reshape(len(orders), m)
            return self._pairwise(order, np.array(counts)), np.array(probs)
        if (1 << m) > limit:
            return None
        bits = ((np.arange(1 << m)[:, None] >> np.arange(m)) & 1).astype(bool)
        k = bits.sum(1)
        probs = self.q ** k * (1 - self.q) ** (m - k)
        return weights_from_adjacency(self._adjacency(bits), self.rule), probs

    def expected(self, samples: int = 20000, seed: int = 0) -> np.ndarray:
        n, q = self.n, self.q
        if self.rule in ("metropolis", "lazy-metropolis", "uniform"):
            check_dense_fits(n, 1, "E[W]")
            b = st.binom.pmf(np.arange(n - 1), n - 2, q)  # other-degree law
            if self.rule == "uniform":
                off = q * float(b @ (1.0 / (2.0 + np.arange(n - 1))))
            else:
                mx = np.maximum.outer(np.arange(n - 1), np.arange(n - 1))
                off = q * float(b @ (1.0 / (2.0 + mx)) @ b)
            E = np.full((n, n), off)
            np.fill_diagonal(E, 1.0 - (n - 1) * off)
            return 0.5 * (E + np.eye(n)) if self.rule == "lazy-metropolis" else E
        return super().expected(samples, seed)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "n": self.n, "graph": "encounter", "rule": self.rule,
                "q": self.q}


class MatchingSampler(Sampler):
    """A random matching per round; matched pairs average (w_ii = w_ij = 1/2).

    Parameters
    ----------
    n : int
    graph : networkx.Graph, optional
        Restrict pairs to this graph's edges (random maximal matching); default: any pair
        (uniformly random perfect matching, one client idle if n is odd).

    >>> W = MatchingSampler(4).sample(0, np.random.default_rng(0))
    >>> sorted(np.round(W.diagonal(), 2).tolist()), int((W > 0).sum())  # two pairs average
    ([0.5, 0.5, 0.5, 0.5], 8)
    """

    kind = "matching"
    sparse = True

    def __init__(self, n: int, graph: nx.Graph | None = None, graph_name: str | None = None):
        self.n = check_n(n)
        self.graph = graph
        self.graph_name = graph_name or ("complete" if graph is None else "custom")
        self.exchangeable = graph is None
        if graph is not None:
            if graph.number_of_nodes() != self.n or graph.is_directed():
                raise AdfloraError("matching needs an undirected graph on the n clients",
                                   "pass an undirected graph with n nodes")
            a = sp.triu(adjacency(graph, sparse=True), 1).tocoo()
            order = np.lexsort((a.col, a.row))          # row-major, as np.nonzero
            self._eu, self._ev = a.row[order].astype(np.int64), a.col[order].astype(np.int64)

    def _pairs(self, rng: np.random.Generator, size: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Matched pairs of ``size`` draws: (draw, u, v)."""
        if self.graph is None:
            perm = np.argsort(rng.random((size, self.n)), axis=1)
            h = self.n // 2
            u, v = perm[:, 0:2 * h:2], perm[:, 1:2 * h:2]  # (size, h)
            return np.repeat(np.arange(size), h), u.ravel(), v.ravel()
        m = len(self._eu)
        order = np.argsort(rng.random((size, m)), axis=1)
        matched = np.zeros((size, self.n), dtype=bool)
        rows = np.arange(size)
        us, vs, ss = [], [], []
        for k in range(m):  # greedy over edge slots, vectorized over samples
            e = order[:, k]
            u, v = self._eu[e], self._ev[e]
            ok = ~matched[rows, u] & ~matched[rows, v]
            matched[rows[ok], u[ok]] = True
            matched[rows[ok], v[ok]] = True
            us.append(u[ok])
            vs.append(v[ok])
            ss.append(rows[ok])
        cat = np.concatenate
        return cat(ss), cat(us), cat(vs)

    def sample_sparse_batch(self, rng: np.random.Generator, size: int) -> SparseW:
        s, u, v = self._pairs(rng, size)
        diag = np.ones((size, self.n))
        diag[s, u] = diag[s, v] = 0.5
        return SparseW.from_edges(self.n, diag, np.concatenate([u, v]), np.concatenate([v, u]),
                                  np.full(2 * len(u), 0.5), np.concatenate([s, s]))

    def sample_batch(self, rng: np.random.Generator, size: int) -> np.ndarray:
        check_dense_fits(self.n, size)
        return self.sample_sparse_batch(rng, size).dense()

    def support(self, limit: int = SUPPORT_LIMIT) -> tuple[np.ndarray, np.ndarray] | None:
        if self.graph is not None:
            return None
        n = self.n
        count = math.prod(range(1, n, 2)) * (n if n % 2 else 1)
        if count > limit:
            return None
        mats = []
        idle = range(n) if n % 2 else [None]
        for left in idle:
            nodes = [i for i in range(n) if i != left]
            for pairs in _perfect_matchings(nodes):
                W = np.eye(n)
                for u, v in pairs:
                    W[u, u] = W[v, v] = W[u, v] = W[v, u] = 0.5
                mats.append(W)
        return np.array(mats), np.full(len(mats), 1.0 / len(mats))

    def expected(self, samples: int = 20000, seed: int = 0) -> np.ndarray:
        if self.graph is not None:
            return super().expected(samples, seed)
        n = self.n
        paired = 1.0 if n % 2 == 0 else (n - 1) / n  # P(a given client is matched)
        E = np.full((n, n), paired / (2 * (n - 1)))
        np.fill_diagonal(E, 1.0 - paired / 2)
        return E

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "n": self.n, "graph": self.graph_name, "rule": "pairwise"}


def _perfect_matchings(nodes: list[int]):
    if not nodes:
        yield []
        return
    a, rest = nodes[0], nodes[1:]
    for k, b in enumerate(rest):
        for tail in _perfect_matchings(rest[:k] + rest[k + 1:]):
            yield [(a, b), *tail]


class _PeriodicSampler(Sampler):
    """W^t = mats[t mod L]; a batch draws uniformly random phases."""

    mats: np.ndarray

    def sample(self, t: int, rng: np.random.Generator | None = None) -> np.ndarray:
        return self.mats[int(t) % len(self.mats)]

    def sample_batch(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return self.mats[rng.integers(0, len(self.mats), size)]

    def support(self, limit: int = SUPPORT_LIMIT) -> tuple[np.ndarray, np.ndarray]:
        L = len(self.mats)
        return self.mats.copy(), np.full(L, 1.0 / L)

    @property
    def period(self) -> int:
        """Number of distinct rounds before the sequence repeats."""
        return len(self.mats)


class _SparsePeriodicSampler(_PeriodicSampler):
    """A periodic sampler defined by its sparse phases ``_phase(k) -> SparseW``; the dense
    ``mats`` (L, n, n) are built on first use (refused when too large)."""

    sparse = True
    _period: int

    def _phase(self, k: int) -> SparseW:
        raise NotImplementedError

    @property
    def period(self) -> int:
        return self._period

    @property
    def mats(self) -> np.ndarray:
        if getattr(self, "_mats", None) is None:
            check_dense_fits(self.n, self._period)
            self._mats = np.concatenate([self._phase(k).dense() for k in range(self._period)])
            self._mats.setflags(write=False)
        return self._mats

    def sample_sparse(self, t: int, rng: np.random.Generator | None = None) -> SparseW:
        return self._phase(int(t) % self._period)

    def sample_sparse_batch(self, rng: np.random.Generator, size: int) -> SparseW:
        ks = rng.integers(0, self._period, size)
        return SparseW.stack([self._phase(int(k)) for k in ks])


class OnePeerExponentialSampler(_SparsePeriodicSampler):
    """One-peer exponential graph (Ying et al. 2021): i averages with (i + 2^(t mod τ)) mod n.

    >>> s = OnePeerExponentialSampler(8)
    >>> P = s.sample(2, None) @ s.sample(1, None) @ s.sample(0, None)  # one period, n = 2^3
    >>> np.allclose(P, np.full((8, 8), 1 / 8))
    True
    """

    kind = "one-peer-exponential"

    def __init__(self, n: int):
        self.n = check_n(n)
        tau = max(1, math.ceil(math.log2(self.n)))
        self._hops = [(1 << k) % self.n for k in range(tau)]
        self._period = tau
        # (I + P)/2 is symmetric iff the shift is its own inverse
        self.symmetric = all((2 * h) % self.n == 0 for h in self._hops)

    def _phase(self, k: int) -> SparseW:
        i = np.arange(self.n)
        return SparseW.from_edges(self.n, np.full((1, self.n), 0.5), i,
                                  (i + self._hops[k]) % self.n, np.full(self.n, 0.5))

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "n": self.n, "graph": "one-peer-exponential",
                "rule": "pairwise", "period": self.period}


class KPeerExponentialSampler(_SparsePeriodicSampler):
    """k-peer exponential graph ("Revisiting 1-peer exponential graph for enhancing
    decentralized learning efficiency", NeurIPS 2025; k = 1 is the one-peer exponential graph): at
    round t client i averages, with weights 1/(k + 1), itself and clients
    i + j (k + 1)^(t mod τ) mod n for j = 1..k, τ = ceil(log_(k+1) n). For n a power of k + 1
    the product over one period is exactly J (each round fixes one base-(k + 1) digit)."""

    kind = "k-peer-exponential"

    def __init__(self, n: int, k: int = 2):
        self.n = check_n(n)
        k = int(k)
        if not 1 <= k < self.n:
            raise AdfloraError(f"k-peer exponential needs 1 <= k < n, got k = {k}, n = {n}",
                               "pass k = 1, 2, ... below n")
        self.k = k
        tau, size = 0, 1
        while size < self.n:
            size *= k + 1
            tau += 1
        self._period = max(1, tau)
        self._steps = [(k + 1) ** e for e in range(self._period)]
        self.symmetric = self.n == 2

    def _phase(self, t: int) -> SparseW:
        i = np.arange(self.n)
        shifts = sorted({(j * self._steps[t]) % self.n for j in range(1, self.k + 1)} - {0})
        dst = np.tile(i, len(shifts))
        src = np.concatenate([(i + h) % self.n for h in shifts])
        w = 1.0 / (len(shifts) + 1)
        return SparseW.from_edges(self.n, np.full((1, self.n), w), dst, src,
                                  np.full(len(dst), w))

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "n": self.n, "graph": "k-peer-exponential",
                "rule": "uniform", "k": self.k, "period": self.period}


class EquiDynSampler(Sampler):
    """One random peer a round on a circulant: OD-EquiDyn of Song et al., "Communication-efficient
    topologies for decentralized learning with O(1) consensus rate", NeurIPS 2022 (the
    ``M = n − 1`` form of their code, ``ODEquiDynComplete``). Each round draws one offset u
    uniformly from {1, ..., n − 1} for all clients and W = (1 − η)I + η A(u) with
    A(u) = I/n + ((n − 1)/n) P_u (:mod:`~.equitopo`): client i keeps 1 − η(n − 1)/n of its
    state and takes η(n − 1)/n from client i + u.

    E[A(u)] = J and E[A(u)ᵀA(u)] = ((n − 2)/n) I + (2/n) J on 1^⊥, so
    p = 1 − (1 − η)² − η²(n − 2)/n. The default η = n/(2(n − 1)) maximises it (the authors'
    scripts use η = 0.53 at n = 17): then W = (I + P_u)/2 and p = 1/2 + 1/(2(n − 1)), a
    consensus rate that does not decay with n at one message a client a round. With η = 1
    (W = A(u)) p = 2/n does decay.

    >>> s = EquiDynSampler(5)
    >>> W = s.sample(0, np.random.default_rng(0))
    >>> sorted(set(np.round(W.ravel(), 2).tolist()))
    [0.0, 0.5]
    """

    kind = "equidyn"
    sparse = True
    exchangeable = True   # E[WᵀW] and E[W] are of the form aI + bJ (the rates use only that)
    symmetric = False

    def __init__(self, n: int, eta: float | None = None):
        self.n = check_n(n)
        self.symmetric = self.n == 2
        if eta is None:
            self.eta, self._peer = self.n / (2.0 * (self.n - 1)), 0.5
        else:
            eta = float(eta)
            if not 0.0 < eta <= 1.0:
                raise AdfloraError(f"equidyn weight eta = {eta} is outside (0, 1]",
                                   "pass eta in (0, 1], e.g. eta = 0.5, or leave the default")
            self.eta, self._peer = eta, eta * (self.n - 1) / self.n
        self._self = 1.0 - self._peer

    def _shifts(self, u: np.ndarray) -> SparseW:
        size, i = len(u), np.arange(self.n)
        return SparseW.from_edges(self.n, np.full((size, self.n), self._self), np.tile(i, size),
                                  ((i[None, :] + u[:, None]) % self.n).ravel(),
                                  np.full(size * self.n, self._peer),
                                  np.repeat(np.arange(size), self.n))

    def sample_sparse_batch(self, rng: np.random.Generator, size: int) -> SparseW:
        return self._shifts(rng.integers(1, self.n, size))

    def sample_batch(self, rng: np.random.Generator, size: int) -> np.ndarray:
        check_dense_fits(self.n, size)
        return self.sample_sparse_batch(rng, size).dense()

    def support(self, limit: int = SUPPORT_LIMIT) -> tuple[np.ndarray, np.ndarray] | None:
        if self.n - 1 > limit or 8 * self.n * self.n * (self.n - 1) > SUPPORT_BYTES:
            return None
        return self._shifts(np.arange(1, self.n)).dense(), np.full(self.n - 1, 1.0 / (self.n - 1))

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "n": self.n, "graph": "equidyn", "rule": "pairwise",
                "eta": self.eta}


class EquiStaticSampler(StaticSampler):
    """D-EquiStatic (or U-EquiStatic) of Song et al. (NeurIPS 2022): the static
    W = (1/M) Σ_m A(u_m) over M offsets drawn uniformly from {1, ..., n − 1}
    (:mod:`~.equitopo`); ‖W − J‖₂ <= ε w.p. >= 1 − δ once M >= 8 ln(2n/δ)/(3ε²).

    Parameters
    ----------
    n : int
    offsets : array_like of int, shape (M,)
        The offsets u_m, each in 1..n − 1.
    undirected : bool
        U-EquiStatic, W = (1/(2M)) Σ_m (A(u_m) + A(u_m)ᵀ).

    >>> s = EquiStaticSampler(16, [3, 5, 11])
    >>> s.kind, s.is_static, round(s.consensus_norm(), 6) == round(
    ...     float(np.linalg.norm(s.W - 1 / 16, 2)), 6)
    ('static', True, True)
    """

    def __init__(self, n: int, offsets: Any, undirected: bool = False):
        n = check_n(n)
        u = np.asarray(offsets, dtype=np.int64).ravel()
        if len(u) == 0 or (u < 1).any() or (u >= n).any():
            raise AdfloraError(f"equistatic offsets must be M >= 1 integers in 1..n − 1 = "
                               f"{n - 1}", "pass M = 1 or more, or leave M to eps and delta")
        check_fits(f"equistatic with n = {n} and M = {len(u)}", 48.0 * n * (len(u) + 1) *
                   (2 if undirected else 1), "use a smaller n or M")
        super().__init__(equistatic_matrix(n, u, bool(undirected), sparse=n >= STATIC_SPARSE_N),
                         graph="equistatic", rule="equitopo")
        self.offsets, self.undirected = u, bool(undirected)

    def consensus_norm(self) -> float:
        """‖W − J‖₂ exactly, by one FFT of the first row (W is circulant), O(n log n)."""
        return circulant_norm(equistatic_first_row(self.n, self.offsets, self.undirected))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "M": len(self.offsets), "undirected": self.undirected}


class BaseKSampler(_SparsePeriodicSampler):
    """Base-(k+1) graph of Takezawa et al., "Beyond Exponential Graph: Communication-Efficient
    Topologies for Decentralized Learning via Finite-time Convergence" (NeurIPS 2023): a
    periodic sequence in which every client has at most k peers a round, every W^t is
    symmetric and doubly stochastic, and the product over one period is exactly J for any n
    (construction in :mod:`~.finite_time`).

    >>> s = BaseKSampler(6, k=1)
    >>> P = np.eye(6)
    >>> for t in range(s.period):
    ...     P = s.sample(t, None) @ P
    >>> s.period, bool(np.allclose(P, 1 / 6))
    (4, True)
    """

    kind = "base-k"
    symmetric = True

    def __init__(self, n: int, k: int = 1):
        self.n = check_n(n)
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise AdfloraError(f"base-k needs an integer maximum degree k >= 1, got k = {k!r}",
                               "pass k = 1, 2, ...")
        self.k = int(k)
        check_fits(f"base-k with n = {self.n}", 200.0 * self.n * (self.k + 1) *
                   (2 * math.log(self.n) / math.log(self.k + 1) + 2), "use a smaller n")
        self._rounds = base_rounds(self.n, self.k)
        self._period = len(self._rounds)

    def _phase(self, k: int) -> SparseW:
        return self._rounds[k]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "n": self.n, "graph": "base-k", "rule": "base-k",
                "k": self.k, "period": self.period}


class ListSampler(_PeriodicSampler):
    """A user's list of matrices, W^t = W_(t mod L). Each is validated (square, finite, ≥ 0).

    >>> I, J = np.eye(2), np.full((2, 2), 0.5)
    >>> s = ListSampler([I, J])
    >>> [float(s.sample(t, None)[0, 1]) for t in range(4)]  # cycles through the list
    [0.0, 0.5, 0.0, 0.5]
    """

    kind = "list"

    def __init__(self, matrices: list[Any]):
        if len(matrices) == 0:
            raise AdfloraError("sampler 'list' got no matrices", "pass matrices=[W0, W1, ...]")
        mats = [np.array(as_matrix(m, f"matrix {k} of the list")) for k, m in enumerate(matrices)]
        shapes = {m.shape for m in mats}
        if len(shapes) > 1:
            raise AdfloraError(f"sampler 'list' matrices have different shapes {sorted(shapes)}",
                               "give matrices of one size n x n")
        reports = [validate(m, for_theory=False) for m in mats]
        self.mats = np.array(mats)
        self.mats.setflags(write=False)
        self.n = self.mats.shape[1]
        self.doubly_stochastic = all(r.doubly_stochastic for r in reports)
        self.symmetric = all(r.symmetric for r in reports)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "n": self.n, "period": self.period}


def check_q(q: Any) -> float:
    """Encounter probability as a float in (0, 1]; anything else raises.

    >>> check_q(0.1)
    0.1
    """
    try:
        qf = float(q)
    except (TypeError, ValueError):
        raise AdfloraError(f"encounter probability q = {q!r} is not a number",
                           "pass q in (0, 1], e.g. q = 0.1") from None
    if not 0.0 < qf <= 1.0 or math.isnan(qf):
        raise AdfloraError(f"encounter probability q = {q} is outside (0, 1]",
                           "pass q in (0, 1], e.g. q = 0.1")
    return qf


STATIC_SPARSE_N = 2048
"""From this many clients a static graph's weights are computed and kept sparse."""


@seeded
def _static(n: int, *, graph: str | nx.Graph | None = None, weights: str = "metropolis",
            W: Any = None, seed: int | None = None, **graph_params: Any) -> StaticSampler:
    if W is not None:
        s = StaticSampler(W, graph="matrix", rule=None)
        if s.n != n:
            raise AdfloraError(f"given W is {s.n} x {s.n} but n = {n}", f"pass n = {s.n}")
        return s
    if weights not in RULES:
        raise unknown_name("weight rule", weights, RULES)
    name = "custom" if isinstance(graph, nx.Graph) else (graph or "complete")
    if weights == "server":  # W = J whatever the graph (the centralized baseline)
        check_dense_fits(n, 1, "W = J (server)")
        return StaticSampler(np.full((n, n), 1.0 / n), graph=name, rule="server")
    g = graph if isinstance(graph, nx.Graph) else build_graph(name, n, seed=seed,
                                                             **graph_params)
    big = n >= STATIC_SPARSE_N and weights != "fastest-mixing"
    return StaticSampler(mixing_matrix(g, weights, sparse=big), graph=name, rule=weights)


def _encounter(n: int, *, q: float | None = None, weights: str = "metropolis"
               ) -> EncounterSampler:
    if q is None:
        raise AdfloraError("the encounter model needs an encounter probability q",
                           "pass q in (0, 1], e.g. q = 0.1")
    return EncounterSampler(n, q, weights)


@seeded
def _matching(n: int, *, graph: str | nx.Graph | None = None, seed: int | None = None,
              **graph_params: Any) -> MatchingSampler:
    if graph is None or graph == "complete":
        return MatchingSampler(n)
    if isinstance(graph, nx.Graph):
        return MatchingSampler(n, graph)
    return MatchingSampler(n, build_graph(graph, n, seed=seed, **graph_params), graph)


@seeded
def _equistatic(n: int, *, M: int | None = None, eps: float = 0.5, delta: float = 0.1,
                undirected: bool = False, seed: int | None = None) -> EquiStaticSampler:
    if M is None:
        if not (0.0 < float(eps) <= 1.0 and 0.0 < float(delta) < 1.0):
            raise AdfloraError(f"equistatic needs eps in (0, 1] and delta in (0, 1), got "
                               f"eps = {eps}, delta = {delta}", "pass e.g. eps=0.5 delta=0.1")
        M = equistatic_degree(n, float(eps), float(delta))
    if isinstance(M, bool) or not isinstance(M, int | np.integer) or M < 1:
        raise AdfloraError(f"equistatic needs an integer number of offsets M >= 1, got {M!r}",
                           "pass M = 1, 2, ... (or leave M to eps and delta)")
    return EquiStaticSampler(n, equi_offsets(n, int(M), np.random.default_rng(seed)),
                             bool(undirected))


def _list(n: int | None, *, matrices: Any = ()) -> ListSampler:
    s = ListSampler(list(matrices))
    if n is not None and s.n != n:
        raise AdfloraError(f"list matrices are {s.n} x {s.n} but n = {n}", f"pass n = {s.n}")
    return s


SAMPLERS = {
    "static": _static,
    "encounter": _encounter,
    "matching": _matching,
    "one-peer-exponential": lambda n: OnePeerExponentialSampler(n),
    "k-peer-exponential": lambda n, *, k=2: KPeerExponentialSampler(n, k),
    "equidyn": lambda n, *, eta=None: EquiDynSampler(n, eta),
    "equistatic": _equistatic,
    "base-k": lambda n, *, k=1: BaseKSampler(n, k),
    "list": _list,
}
"""Sampler kind -> factory ``f(n, **params)``; factories that draw a random graph are
decorated with :func:`~.graphs.seeded` and get the ``seed`` of :func:`make_sampler`."""


def make_sampler(kind: str, n: int | None, *, seed: Any = None, **params: Any) -> Sampler:
    """Build a sampler of W^t — the one dispatch over sampler kinds.

    Parameters
    ----------
    kind : str
        ``static`` (``graph=`` name or networkx graph, ``weights=`` rule, graph parameters;
        or ``W=`` a matrix), ``encounter`` (``q=``, ``weights=`` one of
        :data:`ENCOUNTER_RULES`), ``matching`` (optional ``graph=``), ``one-peer-exponential``,
        ``k-peer-exponential`` (``k=2``), ``base-k`` (``k=1``), ``equidyn`` (``eta=``),
        ``equistatic`` (``M=``, or ``eps=0.5, delta=0.1``; ``undirected=False``),
        ``list`` (``matrices=``).
    n : int
        Number of clients (>= 2); None for ``list`` (taken from the matrices).
    seed : None, int or numpy Generator
        Seed of random graphs (passed only to the kinds that draw one).
    **params
        The kind's parameters; unknown ones are refused.

    Returns
    -------
    Sampler

    Examples
    --------
    >>> make_sampler("static", 4, graph="ring", weights="metropolis").sample(0, None)[0]
    array([0.33333333, 0.33333333, 0.        , 0.33333333])
    >>> make_sampler("one-peer-exponential", 8).period
    3
    """
    import inspect

    if kind not in SAMPLERS:
        raise unknown_name("sampler kind", kind, SAMPLERS)
    if n is not None or kind != "list":
        n = check_n(n)
    fn = SAMPLERS[kind]
    sig = inspect.signature(fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in sig.values()):
        extra = set(params) - set(sig)
        if extra:
            raise AdfloraError(f"sampler {kind!r} takes no parameter {sorted(extra)[0]!r}; "
                               f"valid: {', '.join(sorted(set(sig) - {'n', 'seed'})) or 'none'}",
                               "drop it")
    if getattr(fn, "takes_seed", False):
        params["seed"] = seed
    return fn(n, **params)
