"""Graph sequences with exact consensus in finite time: the k-peer hyper-hypercube, the Simple
Base-(k+1) and the Base-(k+1) graph of Takezawa, Sato, Bao, Niwa and Yamada, "Beyond
Exponential Graph: Communication-Efficient Topologies for Decentralized Learning via Finite-time
Convergence" (NeurIPS 2023), after the definitions in their paper and released code
(github.com/yukiTakezawa/BaseGraph), re-implemented here on edge lists (docs/topology.md).

Each function returns the rounds of one period as :class:`~.sparse.SparseW` (one matrix each,
no n x n array): every round is symmetric and doubly stochastic, every client has at most k
peers in a round, and the product of the rounds of one period is exactly J = 11ᵀ/n, for any n.

- **k-peer hyper-hypercube** (n whose prime factors are all <= k + 1): write n = f_1 ⋯ f_L
  with 2 <= f_l <= k + 1 and give each client the mixed-radix digits of its index; round l
  averages (weights 1/f_l) the f_l clients that differ only in digit l. After the L rounds
  every client holds the mean.
- **Simple Base-(k+1)** (any n): write n in base k + 1, n = Σ_l a_l (k + 1)^(p_l) with
  p_1 > p_2 > ⋯ and 1 <= a_l <= k, and split the clients into consecutive sets V_l of those
  sizes, each cut into a_l groups of (k + 1)^(p_l). (1) Every V_l runs its hyper-hypercube
  (the shorter ones repeat), so V_l holds its own mean. (2) For l = 1 … L − 1 in turn, every
  client of the rest R_l = V_(l+1) ∪ ⋯ ∪ V_L meets one client of each group of V_l, with weight
  |V_l| / (a_l (|V_l| + |R_l|)) (self-weight 1 − |V_l|/(|V_l| + |R_l|) for the client of R_l,
  1 − that weight for its partner; the clients of V_l left over average in cliques of up to
  k + 1, which changes nothing at consensus); then each group of V_l runs the hyper-hypercube
  of its (k + 1)^(p_l) clients. Every group of V_l then holds the mean of V_l ∪ R_l, which is
  the global mean, and the last R_l receives it at the last meeting.
- **Base-(k+1)**: n = n_s · n_r with n_s the largest divisor of n whose prime factors are all
  <= k + 1; the n_s consecutive blocks of n_r clients run the Simple Base-(k+1) graph side by
  side, then the n_r strided sets {j, j + n_r, …} run the hyper-hypercube of n_s clients. The
  shorter of this and the Simple Base-(k+1) graph on all n clients is used (as in the
  authors' code).

>>> rounds = base_rounds(6, 1)               # the paper's Figure: n = 6, one peer a round
>>> len(rounds), [int(W.messages()[0]) for W in rounds]
(4, [4, 4, 4, 6])
>>> P = np.eye(6)
>>> for W in rounds:
...     P = W.dense()[0] @ P
>>> bool(np.allclose(P, 1 / 6, atol=1e-15, rtol=0))
True
"""

from __future__ import annotations

import math

import numpy as np

from adflora_analysis.topology.sparse import SparseW

__all__ = ["base_rounds", "hyper_hypercube_rounds", "simple_base_rounds", "smooth_factors"]


class _Round:
    """One mixing matrix under construction: self-weights of the clients it touches and
    symmetric edges ``dst <- src`` (untouched clients keep self-weight 1)."""

    def __init__(self) -> None:
        self.nodes: list[np.ndarray] = []
        self.self_w: list[np.ndarray] = []
        self.dst: list[np.ndarray] = []
        self.src: list[np.ndarray] = []
        self.w: list[np.ndarray] = []

    def clique(self, groups: np.ndarray) -> _Round:
        """Average each row of ``groups`` (G, f) of client ids, weights 1/f."""
        f = groups.shape[1]
        if f < 2:
            return self
        self.nodes.append(groups.ravel())
        self.self_w.append(np.full(groups.size, 1.0 / f))
        for a in range(f):
            for b in range(f):
                if a != b:
                    self.dst.append(groups[:, a])
                    self.src.append(groups[:, b])
                    self.w.append(np.full(groups.shape[0], 1.0 / f))
        return self

    def pairs(self, u: np.ndarray, v: np.ndarray, w: float) -> None:
        """Symmetric edges u_e <-> v_e of weight w (self-weights set by the caller)."""
        self.dst += [u, v]
        self.src += [v, u]
        self.w += [np.full(len(u), w), np.full(len(u), w)]

    def merge(self, other: _Round) -> _Round:
        """Add the parts of ``other`` (on clients disjoint from this round's)."""
        for name in ("nodes", "self_w", "dst", "src", "w"):
            getattr(self, name).extend(getattr(other, name))
        return self

    def sparse(self, n: int) -> SparseW:
        diag = np.ones(n)
        if self.nodes:
            diag[np.concatenate(self.nodes)] = np.concatenate(self.self_w)
        cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0))  # noqa: E731
        return SparseW.from_edges(n, diag[None], cat(self.dst).astype(np.int64),
                                  cat(self.src).astype(np.int64), cat(self.w))


def smooth_factors(m: int, k: int) -> list[int] | None:
    """Factors f_l in [2, k + 1] with product m, largest taken first (the authors' split), or
    None when m has a prime factor above k + 1.

    >>> smooth_factors(12, 2), smooth_factors(25, 4), smooth_factors(10, 2), smooth_factors(1, 3)
    ([2, 2, 3], [5, 5], None, [])
    """
    out, rest = [], int(m)
    for f in range(k + 1, 1, -1):
        while rest % f == 0:
            out.append(f)
            rest //= f
    return sorted(out) if rest == 1 else None


def _hhc(nodes: np.ndarray, k: int) -> list[_Round]:
    """Rounds of the k-peer hyper-hypercube on ``nodes`` (their count must be (k+1)-smooth)."""
    factors = smooth_factors(len(nodes), k)
    if factors is None:
        raise ValueError(f"{len(nodes)} has a prime factor above k + 1 = {k + 1}")
    rounds, stride, m = [], 1, len(nodes)
    idx = np.arange(m)
    for f in factors:
        groups = idx.reshape(m // (stride * f), f, stride).transpose(0, 2, 1).reshape(-1, f)
        rounds.append(_Round().clique(nodes[groups]))
        stride *= f
    return rounds


def _side_by_side(parts: list[list[_Round]]) -> list[_Round]:
    """Round-wise union of sequences on disjoint clients (shorter ones simply stop)."""
    length = max((len(p) for p in parts), default=0)
    out = []
    for r in range(length):
        rnd = _Round()
        for p in parts:
            if r < len(p):
                rnd.merge(p[r])
        out.append(rnd)
    return out


def _base_digits(m: int, k: int) -> list[tuple[int, int]]:
    """(a_l, p_l) with m = Σ a_l (k + 1)^(p_l), p decreasing, 1 <= a_l <= k."""
    b, p = k + 1, 0
    while b ** (p + 1) <= m:
        p += 1
    out, rest = [], m
    for q in range(p, -1, -1):
        a = rest // b ** q
        if a:
            out.append((a, q))
            rest -= a * b ** q
    return out


def _simple_base(nodes: np.ndarray, k: int) -> list[_Round]:
    m = len(nodes)
    if m == 1:
        return []
    if smooth_factors(m, k) is not None:
        return _hhc(nodes, k)
    digits = _base_digits(m, k)
    sizes = [a * (k + 1) ** p for a, p in digits]
    starts = np.cumsum([0] + sizes)
    sets = [nodes[starts[i]:starts[i + 1]] for i in range(len(sizes))]
    L = len(sets)
    first = [_hhc(V, k) for V in sets]
    longest = max(len(r) for r in first)
    rounds = []
    for r in range(longest):           # (1) each set reaches its own mean
        rnd = _Round()
        for seq in first:
            if seq:
                rnd.merge(seq[r % len(seq)])
        rounds.append(rnd)
    groups = [V.reshape(a, -1) for V, (a, _) in zip(sets, digits, strict=True)]  # (a_l, (k+1)^p)
    inner = [_side_by_side([_hhc(g, k) for g in G]) if G.shape[1] > 1 else _hhc(V, k)
             for G, V in zip(groups, sets, strict=True)]
    done = [0] * L
    step = 0
    while step <= L - 2 or done[0] < len(inner[0]):
        rnd = _Round()
        for l in range(min(step, L)):   # (2b) sets already met: their groups re-average
            if inner[l]:
                rnd.merge(inner[l][done[l] % len(inner[l])])
                done[l] += 1
        if step <= L - 2:               # (2a) the rest meets one client of each group of V_step
            G, rest = groups[step], np.concatenate(sets[step + 1:])
            size = sets[step].size
            total = size + rest.size
            w = size / (G.shape[0] * total)
            used = G[:, :rest.size]                    # (a, |R|): column t meets rest[t]
            rnd.nodes += [rest, used.ravel()]
            rnd.self_w += [np.full(rest.size, 1.0 - size / total), np.full(used.size, 1.0 - w)]
            rnd.pairs(np.tile(rest, G.shape[0]), used.ravel(), w)
            idle = G[:, rest.size:].ravel()
            cut = (idle.size // (k + 1)) * (k + 1)
            rnd.clique(idle[:cut].reshape(-1, k + 1))
            if idle.size - cut > 1:
                rnd.clique(idle[cut:][None])
        rounds.append(rnd)
        step += 1
    return rounds


def hyper_hypercube_rounds(n: int, k: int) -> list[SparseW]:
    """The k-peer hyper-hypercube on n clients (all prime factors of n at most k + 1).

    >>> [int(W.messages()[0]) for W in hyper_hypercube_rounds(12, 2)]  # 12 = 2 * 2 * 3
    [12, 12, 24]
    """
    return [r.sparse(n) for r in _hhc(np.arange(n), k)]


def simple_base_rounds(n: int, k: int) -> list[SparseW]:
    """The Simple Base-(k+1) graph on n clients (any n), one period.

    >>> len(simple_base_rounds(5, 1))       # 5 = 4 + 1: 2 rounds, 1 meeting, 2 rounds
    5
    """
    return [r.sparse(n) for r in _simple_base(np.arange(n), k)]


def base_rounds(n: int, k: int) -> list[SparseW]:
    """The Base-(k+1) graph on n clients (any n, at most k peers a round), one period."""
    if n < 2 or k < 1:
        raise ValueError("base_rounds needs n >= 2 and k >= 1")
    nodes = np.arange(n)
    smooth = math.prod(p ** _valuation(n, p) for p in range(2, k + 2) if _is_prime(p))
    rest = n // smooth
    simple = _simple_base(nodes, k)
    if rest > 1 and smooth > 1:
        blocks = nodes.reshape(smooth, rest)
        split = (_side_by_side([_simple_base(b, k) for b in blocks])
                 + _side_by_side([_hhc(blocks[:, j], k) for j in range(rest)]))
        if len(split) <= len(simple):
            simple = split
    return [r.sparse(n) for r in simple]


def _valuation(n: int, p: int) -> int:
    v = 0
    while n % p == 0:
        n //= p
        v += 1
    return v


def _is_prime(p: int) -> bool:
    return p >= 2 and all(p % d for d in range(2, math.isqrt(p) + 1))
