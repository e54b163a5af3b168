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
- ``list``: a user's list of matrices, W^t = W_(t mod L).

>>> import numpy as np
>>> s = make_sampler("encounter", 5, q=0.3, rule="metropolis")
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
import scipy.stats as st

from adflora_analysis.errors import AdfloraError, unknown_name
from adflora_analysis.topology.graphs import build_graph, check_n
from adflora_analysis.topology.validation import as_matrix, validate
from adflora_analysis.topology.weights import (
    GRAPH_RULES,
    RULES,
    adjacency,
    mixing_matrix,
    weights_from_adjacency,
)

__all__ = ["ENCOUNTER_RULES", "SAMPLERS", "EncounterSampler", "ListSampler", "MatchingSampler",
           "OnePeerExponentialSampler", "Sampler", "StaticSampler", "make_sampler"]

ENCOUNTER_RULES = (*GRAPH_RULES, "pairwise")
"""Combination rules of the encounter model."""

SUPPORT_LIMIT = 1 << 15
"""Largest support :meth:`Sampler.support` enumerates."""


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

    def sample(self, t: int, rng: np.random.Generator) -> np.ndarray:
        """W^t, shape (n, n), float64."""
        return self.sample_batch(rng, 1)[0]

    def sample_batch(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` independent draws of W, shape (size, n, n), float64."""
        raise NotImplementedError

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

        rng = numpy_rng(seed, "topology-expected")
        total = np.zeros((self.n, self.n))
        for size in _chunks(samples, self.n):
            total += self.sample_batch(rng, size).sum(0)
        mean = total / samples
        return _exchangeable_projection(mean) if self.exchangeable else mean

    def describe(self) -> dict[str, Any]:
        """Labels of this sampler (kind, graph, rule, q, ...) for tables and meta.json."""
        return {"kind": self.kind, "n": self.n}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "kind")
        return f"{type(self).__name__}({fields})"


def _chunks(total: int, n: int, budget: int = 1 << 21) -> list[int]:
    """Split ``total`` draws into batches of at most ``budget / n²`` matrices."""
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
    W : array_like, shape (n, n)
        Validated (square, finite, nonnegative); need not be doubly stochastic.
    graph, rule : str, optional
        Labels only.
    """

    kind = "static"
    is_static = True

    def __init__(self, W: Any, graph: str | None = None, rule: str | None = None):
        W = np.array(as_matrix(W).toarray() if hasattr(W, "toarray") else as_matrix(W))
        report = validate(W, for_theory=False)
        W.setflags(write=False)
        self.W = W
        self.n = W.shape[0]
        self.report = report
        self.doubly_stochastic = report.doubly_stochastic
        self.symmetric = report.symmetric
        self.graph, self.rule = graph, rule

    def sample(self, t: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """W (read-only), whatever t."""
        return self.W

    def sample_batch(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return np.broadcast_to(self.W, (size, self.n, self.n)).copy()

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
    """

    kind = "encounter"
    exchangeable = True

    def __init__(self, n: int, q: float, rule: str = "metropolis"):
        self.n = check_n(n)
        self.q = check_q(q)
        if rule not in ENCOUNTER_RULES:
            raise unknown_name("encounter combination rule", rule, ENCOUNTER_RULES)
        self.rule = rule
        self.doubly_stochastic = rule != "uniform" or self.q == 1.0 or self.n == 2
        self.symmetric = rule not in ("uniform", "pairwise") or self.n == 2
        self._iu, self._ju = np.triu_indices(self.n, 1)

    @property
    def m(self) -> int:
        """Number of pairs n(n−1)/2."""
        return self.n * (self.n - 1) // 2

    def _adjacency(self, meet: np.ndarray) -> np.ndarray:
        a = np.zeros((meet.shape[0], self.n, self.n))
        a[:, self._iu, self._ju] = meet
        a[:, self._ju, self._iu] = meet
        return a

    def sample_batch(self, rng: np.random.Generator, size: int) -> np.ndarray:
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
    """

    kind = "matching"

    def __init__(self, n: int, graph: nx.Graph | None = None, graph_name: str | None = None):
        self.n = check_n(n)
        self.graph = graph
        self.graph_name = graph_name or ("complete" if graph is None else "custom")
        self.exchangeable = graph is None
        if graph is not None:
            if graph.number_of_nodes() != self.n or graph.is_directed():
                raise AdfloraError("matching needs an undirected graph on the n clients",
                                   "pass an undirected graph with n nodes")
            a = adjacency(graph)
            self._eu, self._ev = np.nonzero(np.triu(a, 1))

    def _from_pairs(self, u: np.ndarray, v: np.ndarray, s: np.ndarray, size: int) -> np.ndarray:
        W = np.broadcast_to(np.eye(self.n), (size, self.n, self.n)).copy()
        W[s, u, u] = W[s, v, v] = W[s, u, v] = W[s, v, u] = 0.5
        return W

    def sample_batch(self, rng: np.random.Generator, size: int) -> np.ndarray:
        if self.graph is None:
            perm = np.argsort(rng.random((size, self.n)), axis=1)
            h = self.n // 2
            u, v = perm[:, 0:2 * h:2], perm[:, 1:2 * h:2]  # (size, h)
            s = np.repeat(np.arange(size), h)
            return self._from_pairs(u.ravel(), v.ravel(), s, size)
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
        return self._from_pairs(cat(us), cat(vs), cat(ss), size)

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


class OnePeerExponentialSampler(_PeriodicSampler):
    """One-peer exponential graph (Ying et al. 2021): i averages with (i + 2^(t mod τ)) mod n."""

    kind = "one-peer-exponential"
    symmetric = False

    def __init__(self, n: int):
        self.n = check_n(n)
        tau = max(1, math.ceil(math.log2(self.n)))
        eye = np.eye(self.n)
        mats = [0.5 * (eye + np.roll(eye, (1 << k) % self.n, axis=1)) for k in range(tau)]
        self.mats = np.array(mats)
        self.mats.setflags(write=False)
        self.symmetric = bool(all(np.allclose(w, w.T) for w in mats))

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "n": self.n, "graph": "one-peer-exponential",
                "rule": "pairwise", "period": self.period}


class ListSampler(_PeriodicSampler):
    """A user's list of matrices, W^t = W_(t mod L). Each is validated (square, finite, ≥ 0)."""

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


def _static(n: int, *, graph: str | nx.Graph | None = None, rule: str = "metropolis",
            W: Any = None, seed: int | None = None, **graph_params: Any) -> StaticSampler:
    if W is not None:
        s = StaticSampler(W, graph="matrix", rule=None)
        if s.n != n:
            raise AdfloraError(f"given W is {s.n} x {s.n} but n = {n}", f"pass n = {s.n}")
        return s
    if rule not in RULES:
        raise unknown_name("weight rule", rule, RULES)
    if isinstance(graph, nx.Graph):
        g, name = graph, "custom"
    else:
        name = graph or "complete"
        g = build_graph(name, n, seed=seed, **graph_params)
    return StaticSampler(mixing_matrix(g, rule), graph=name, rule=rule)


def _matching(n: int, *, graph: str | nx.Graph | None = None, seed: int | None = None,
              **graph_params: Any) -> MatchingSampler:
    if graph is None or graph == "complete":
        return MatchingSampler(n)
    if isinstance(graph, nx.Graph):
        return MatchingSampler(n, graph)
    return MatchingSampler(n, build_graph(graph, n, seed=seed, **graph_params), graph)


SAMPLERS = {
    "static": _static,
    "encounter": lambda n, *, q=None, rule="metropolis": EncounterSampler(
        n, q if q is not None else _missing_q(), rule),
    "matching": _matching,
    "one-peer-exponential": lambda n: OnePeerExponentialSampler(n),
    "list": lambda n=None, *, matrices=(): _list(n, matrices),
}
"""Sampler kind -> factory ``f(n, **params)``."""


def _missing_q() -> float:
    raise AdfloraError("the encounter model needs an encounter probability q",
                       "pass q in (0, 1], e.g. q = 0.1")


def _list(n: int | None, matrices: Any) -> ListSampler:
    s = ListSampler(list(matrices))
    if n is not None and s.n != n:
        raise AdfloraError(f"list matrices are {s.n} x {s.n} but n = {n}", f"pass n = {s.n}")
    return s


def make_sampler(kind: str, n: int, **params: Any) -> Sampler:
    """Build a sampler of W^t.

    Parameters
    ----------
    kind : str
        ``static`` (``graph=`` name or networkx graph, ``rule=`` weight rule, graph parameters,
        ``seed=`` for random graphs; or ``W=`` a matrix), ``encounter`` (``q=``, ``rule=`` one of
        :data:`ENCOUNTER_RULES`), ``matching`` (optional ``graph=``), ``one-peer-exponential``,
        ``list`` (``matrices=``).
    n : int
        Number of clients (>= 2).

    Returns
    -------
    Sampler

    Examples
    --------
    >>> make_sampler("static", 4, graph="ring", rule="metropolis").sample(0, None)[0]
    array([0.33333333, 0.33333333, 0.        , 0.33333333])
    >>> make_sampler("one-peer-exponential", 8).period
    3
    """
    import inspect

    if kind not in SAMPLERS:
        raise unknown_name("sampler kind", kind, SAMPLERS)
    n = check_n(n)
    fn = SAMPLERS[kind]
    sig = inspect.signature(fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in sig.values()):
        extra = set(params) - set(sig)
        if extra:
            raise AdfloraError(f"sampler {kind!r} takes no parameter {sorted(extra)[0]!r}; "
                               f"valid: {', '.join(sorted(set(sig) - {'n'})) or 'none'}",
                               "drop it")
    return fn(n, **params)
