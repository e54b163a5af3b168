"""Consensus rate of stale-read and partial gossip, and of the AD-PSGD and push-sum asynchrony
models (:func:`model_consensus_rate`; docs/theory.md §9), computed before a run.

With staleness τ, client i mixes its own current block with its neighbours' blocks of τ rounds
ago, and with participation π each client is active with probability π (an inactive client's
row and column of W^t are the identity's). Writing W' = D + O (diagonal and off-diagonal part
of the round's masked W^t), a block that only mixes obeys

    X_{t+1} = D_t X_t + O_t X_{t−τ},

so the augmented state Z_t = (X_t, X_{t−1}, …, X_{t−τ}) ∈ R^{(τ+1)n} evolves by the random
companion matrix M_t = [[D_t, 0, …, O_t], [I, 0, …], …, [0, …, I, 0]]. M_t 1 = 1, so the
consensus direction is invariant and the disagreement lives on its quotient; with B_t = UᵀM_tU
(U an orthonormal basis of 1^⊥ in R^{(τ+1)n}) the second moment S_t = E[Z_t Z_tᵀ] on that
quotient obeys vec(S_{t+1}) = E[B ⊗ B] vec(S_t). The predicted rate

    ρ_τ,π = ρ(E[B ⊗ B])

is the asymptotic per-round decay factor of E Ξ(X_t) (τ = 0, π = 1: the second-moment rate of
:func:`~adflora_analysis.topology.rates.second_moment_rate`, ≤ 1 − p, equal for an exchangeable
sampler). Two ways to compute it:

- **full** operator: only the first block row of M_t is random, so E[M S Mᵀ] needs just
  E[Y ⊗ Y] for Y = [D | O] (n × 2n); the operator is applied matrix-free and its spectral
  radius found by ARPACK on the quotient (Π S = P S P, P = I − 11ᵀ/N). Exact for a static W and
  for an enumerable support (with π < 1 when support × 2ⁿ masks is enumerable too), else a
  Monte Carlo mean over ``samples`` draws of (W, mask) (``monte-carlo``, s.e. from ``batches``
  sub-means).
- **reduced** operator, for a sampler whose law is invariant under relabelling the clients
  (:func:`exchangeable_law`): the operator maps lag-block matrices S_ab ∈ span{I, 11ᵀ} to
  themselves and attains ρ there (docs/theory.md §9, step 5), so ρ is the spectral radius of a
  2(τ+1)² matrix (:func:`reduced_rate`) built from seven scalar moments of W's off-diagonal
  entries (:data:`PATTERNS`); the mask multiplies them by π², π³ or π⁴ exactly. The rate is
  taken over the modes that Ξ of the current lag sees (with a deterministic diagonal of W',
  e.g. a static aI + bJ, the quotient also holds a slower mode of the lags' means drifting
  apart that Ξ never sees; the full operator reports that one). The moments are
  exact for a static aI + bJ, an enumerable support, the encounter model with the metropolis,
  lazy-metropolis and uniform rules (enumeration over the degree laws) and random perfect
  matchings (``exact-reduced``); otherwise a symmetrized Monte Carlo mean (every pattern
  averaged over all index tuples of every draw, ``monte-carlo-reduced``).

Sources: Boyd et al. 2006 (randomized gossip, second-moment operator), Lian et al. 2018
(AD-PSGD, bounded staleness), Assran et al. 2019 (SGP, delayed messages and the augmented
state), Evans & Høegh-Krohn 1978 (Perron–Frobenius for positive maps).

>>> W = np.full((4, 4), 0.25)
>>> r = async_consensus_rate(W)
>>> round(r.rate, 12), r.method
(0.0, 'exact-reduced')
>>> r1 = async_consensus_rate(W, staleness=1)      # z' = (z − z_{t−1})/4: |λ|² = 1/4
>>> full = async_consensus_rate(W, staleness=1, method="full")
>>> round(r1.rate, 12), r1.method, round(full.rate, 4)
(0.25, 'exact-reduced', 0.5625)

(The full operator's 0.5625 is the lags' means drifting apart, (3/4)², a mode Ξ never sees
here: docs/theory.md §9, step 5 i.)
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.sparse.linalg as spla
import scipy.stats as st

from adflora_analysis.errors import AdfloraError, unknown_name
from adflora_analysis.seeding import numpy_rng
from adflora_analysis.topology.asynchrony import MODELS
from adflora_analysis.topology.rates import as_sampler
from adflora_analysis.topology.samplers import SUPPORT_LIMIT, draw_batches

__all__ = ["LAG_STARTS", "PATTERNS", "AsyncRate", "async_consensus_rate", "exchangeable_law",
           "exchangeable_moments", "masked", "pattern_moments", "reduced_operator",
           "model_consensus_rate", "reduced_rate", "simulate_models", "window_rates"]

MAX_AUGMENTED = 400
"""Largest (τ + 1) n for which the full operator is formed (((τ + 1) n)² entries per state)."""
MAX_REDUCED_LAGS = 24
"""Largest τ + 1 for the reduced operator (a dense 2(τ+1)² matrix); above, the full one."""
RATE_METHODS = ("auto", "full", "reduced")
PATTERNS = ("w_ij", "w_ij^2", "w_ij w_ji", "w_ij w_ik", "w_ij w_kj", "w_ij w_jk", "w_ij w_kl")
"""The moments of an exchangeable W's off-diagonal entries the reduced operator needs:
E[W_ij] and E[W_ab W_cd] for the six index-equality patterns of two off-diagonal entries
(i, j, k, l distinct): same entry, transposed, same row, same column, chain, disjoint."""
MASK_POWER = np.array([2, 2, 2, 3, 3, 3, 4])
"""Distinct clients in each pattern: the mask multiplies it by π to this power."""
FULLY_EXCHANGEABLE = ("encounter", "matching")
"""Sampler kinds whose ``exchangeable`` flag means the whole law is permutation invariant
(EquiDyn's is invariant under cyclic shifts only: its E[WᵀW] is aI + bJ, its E[W ⊗ W] not)."""


@dataclass(frozen=True)
class AsyncRate:
    """Predicted per-round decay factor of E Ξ under staleness and partial participation.

    ``method``: ``exact`` / ``monte-carlo`` (full operator), ``exact-reduced`` /
    ``monte-carlo-reduced`` (exchangeable reduction); ``moments``: where the expectation came
    from; ``samples``: draws (Monte Carlo) or support size (enumeration), 0 for closed forms;
    ``patterns``, ``n``: the unmasked :data:`PATTERNS` and the clients of a reduction (so that
    check 7 can rebuild the operator: :func:`window_rates`); ``model``: the asynchrony model
    (:data:`MODELS`; :func:`model_consensus_rate`).
    """

    rate: float
    stderr: float
    method: str
    staleness: int
    participation: float
    samples: int
    moments: str = ""
    patterns: list[float] | None = None
    n: int = 0
    model: str = "stale-read"

    def as_dict(self) -> dict[str, Any]:
        """The fields; ``model`` only when it is not stale-read (the meta.json of stale-read
        runs is unchanged)."""
        d = asdict(self)
        if d["model"] == "stale-read":
            del d["model"]
        return d


def masked(W: np.ndarray, active: np.ndarray) -> np.ndarray:
    """W (…, n, n) with inactive clients' rows and columns set to the identity's; active clients
    keep their inactive neighbours' weight on the diagonal (numpy twin of
    :func:`adflora_analysis.core.mixers.participating`).

    >>> masked(np.full((2, 2), 0.5), np.array([True, False])).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    a = active.astype(W.dtype)
    off = W * a[..., :, None] * a[..., None, :]
    idx = np.arange(W.shape[-1])
    off[..., idx, idx] = 0.0
    out = off.copy()
    out[..., idx, idx] = 1.0 - off.sum(-1)
    return out


# ---------------------------------------------------------------- exchangeable reduction
def exchangeable_law(obj: Any) -> bool:
    """Whether the law of W^t is invariant under every relabelling of the clients: a static
    W = aI + b(11ᵀ − I), the encounter model (any rule), random perfect matchings.

    >>> from adflora_analysis.topology import make_sampler
    >>> [exchangeable_law(make_sampler(k, 6)) for k in ("matching", "equidyn")]
    [True, False]
    >>> exchangeable_law(np.full((3, 3), 1 / 3)), exchangeable_law(np.eye(3)[[1, 2, 0]])
    (True, False)
    """
    s = as_sampler(obj)
    if s.is_static:
        W = np.asarray(s.sample(0, None), float)
        n = W.shape[0]
        off = W[~np.eye(n, dtype=bool)]
        return bool(np.ptp(np.diag(W)) <= 1e-12 and np.ptp(off) <= 1e-12)
    return bool(s.exchangeable) and s.kind in FULLY_EXCHANGEABLE


def _draw_patterns(W: np.ndarray) -> np.ndarray:
    """Each pattern of :data:`PATTERNS` averaged over all index tuples of each draw:
    W (K, n, n) -> (K, 7). Vectorized over draws and clients (sums of row/column sums)."""
    K, n, _ = W.shape
    O = W.copy()
    idx = np.arange(n)
    O[:, idx, idx] = 0.0
    r, c = O.sum(2), O.sum(1)
    tot = r.sum(1)
    sq = np.einsum("kij,kij->k", O, O)
    tr = np.einsum("kij,kji->k", O, O)
    row = (r * r).sum(1) - sq                     # Σ O_ij O_ik, j ≠ k
    col = (c * c).sum(1) - sq                     # Σ O_ij O_kj, i ≠ k
    chain = (r * c).sum(1) - tr                   # Σ O_ij O_jk, i ≠ k
    disj = tot * tot - sq - tr - row - col - 2 * chain
    counts = [n * (n - 1)] * 3 + [n * (n - 1) * (n - 2)] * 3 + [n * (n - 1) * (n - 2) * (n - 3)]
    sums = [tot, sq, tr, row, col, chain, disj]
    return np.stack([s / m if m else np.zeros(K) for s, m in zip(sums, counts, strict=True)], 1)


def pattern_moments(W: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The moments :data:`PATTERNS` of a law given by draws W (K, n, n) with probabilities
    ``weights`` (K,) (default uniform): each pattern averaged over all its index tuples of every
    draw (the symmetrization that an exchangeable law allows), then over the draws. (7,).

    >>> pattern_moments(np.full((1, 4, 4), 0.25)).tolist()   # every entry 1/4
    [0.25, 0.0625, 0.0625, 0.0625, 0.0625, 0.0625, 0.0625]
    """
    W = np.asarray(W, float)
    w = np.full(len(W), 1.0 / len(W)) if weights is None else np.asarray(weights, float)
    return w @ _draw_patterns(W)


def _encounter_patterns(n: int, q: float, rule: str) -> np.ndarray:
    """Exact :data:`PATTERNS` of the encounter model's W for a local rule, by enumeration: a
    pattern's m ≤ 4 clients need its entries' edges, the other pairs among them are free, and
    each client's degree is its edges inside plus an independent Binomial(n − m, q)."""
    def phi(du, dv):
        if rule == "uniform":
            return 1.0 / (1.0 + du + 0 * dv)
        w = 1.0 / (1.0 + np.maximum(du, dv))
        return 0.5 * w if rule == "lazy-metropolis" else w

    specs = [((0, 1),), ((0, 1), (0, 1)), ((0, 1), (1, 0)), ((0, 1), (0, 2)), ((0, 1), (2, 1)),
             ((0, 1), (1, 2)), ((0, 1), (2, 3))]
    out = []
    for entries in specs:
        m = 1 + max(v for e in entries for v in e)
        if n < m:
            out.append(0.0)
            continue
        req = {frozenset(e) for e in entries}
        free = [frozenset(p) for p in itertools.combinations(range(m), 2)
                if frozenset(p) not in req]
        ext = np.arange(n - m + 1, dtype=float)
        pmf = st.binom.pmf(np.arange(n - m + 1), n - m, q)
        letters = "abcd"
        subs = ",".join(letters[a] + letters[b] for a, b in entries) + "," \
            + ",".join(letters[:m]) + "->"
        total = 0.0
        for bits in itertools.product((0, 1), repeat=len(free)):
            edges = req | {p for p, b in zip(free, bits, strict=True) if b}
            prob = q ** (len(req) + sum(bits)) * (1 - q) ** (len(free) - sum(bits))
            deg = [sum(v in p for p in edges) for v in range(m)]
            tables = [phi(deg[a] + ext[:, None], deg[b] + ext[None, :]) for a, b in entries]
            total += prob * float(np.einsum(subs, *tables, *([pmf] * m), optimize=True))
        out.append(total)
    return np.array(out)


def _matching_patterns(n: int) -> np.ndarray:
    """Exact :data:`PATTERNS` of a uniformly random perfect matching (one idle if n is odd):
    W_ij = 1/2 iff i, j are matched, so only same-pair and disjoint-pair products survive."""
    p1 = 1.0 / (n - 1) if n % 2 == 0 else 1.0 / n               # P(i ~ j)
    p2 = p1 / (n - 3 if n % 2 == 0 else n - 2) if n >= 4 else 0.0  # P(i ~ j, k ~ l)
    return np.array([p1 / 2, p1 / 4, p1 / 4, 0.0, 0.0, 0.0, p2 / 4])


def exchangeable_moments(obj: Any, *, samples: int = 4000, seed: int = 0, batches: int = 4
                         ) -> tuple[np.ndarray, np.ndarray | None, str, int]:
    """:data:`PATTERNS` of an exchangeable sampler's unmasked W (π enters by
    :data:`MASK_POWER`): ``(moments (7,), batch means (batches, 7) or None when exact,
    source, draws)``.

    >>> from adflora_analysis.topology import make_sampler
    >>> m, _, src, _ = exchangeable_moments(make_sampler("encounter", 10, q=0.1))
    >>> src, round(float(m[0]), 6)                     # E[W_ij]
    ('encounter metropolis: exact over the degree laws', 0.033189)
    """
    s = as_sampler(obj)
    if not exchangeable_law(s):
        raise AdfloraError(f"the {s.kind!r} sampler's law is not invariant under relabelling "
                           "the clients", "use the full operator (method='full')")
    if s.is_static:
        return pattern_moments(np.asarray(s.sample(0, None), float)[None]), None, \
            "static aI + bJ: exact", 1
    rule = getattr(s, "rule", None)
    if s.kind == "encounter" and rule in ("metropolis", "lazy-metropolis", "uniform"):
        return _encounter_patterns(s.n, s.q, rule), None, \
            f"encounter {rule}: exact over the degree laws", 0
    if s.kind == "matching":
        return _matching_patterns(s.n), None, "random perfect matching: exact", 0
    sup = s.support()
    if sup is not None:
        return pattern_moments(*sup), None, f"support enumerated ({len(sup[1])} draws)", \
            len(sup[1])
    rng = numpy_rng(seed, "async-rate")
    per = np.concatenate([_draw_patterns(np.asarray(s.sample_batch(rng, k), float))
                          for k in draw_batches(int(samples), s.n)])
    parts = np.array_split(per, max(1, batches)) if len(per) >= 2 * batches else None
    sub = None if parts is None else np.stack([p.mean(0) for p in parts])
    return per.mean(0), sub, f"symmetrized Monte Carlo ({len(per)} draws)", len(per)


def _coefficients(mom: np.ndarray, n: int) -> dict[str, float]:
    """The scalar second moments of (D, O) the reduced operator needs, from the (masked)
    :data:`PATTERNS`, using d_i = 1 − r_i (W' row stochastic), r = O1."""
    e, p1, p2, p3, p4, p5, p7 = (float(x) for x in mom)
    Er = (n - 1) * e
    Er2 = (n - 1) * p1 + (n - 1) * (n - 2) * p3                       # E r_i²
    Erirj = p2 + 2 * (n - 2) * p5 + (n - 2) * p4 + (n - 2) * (n - 3) * p7  # E r_i r_j
    return {"dd": 1 - 2 * Er + Er2, "didj": 1 - 2 * Er + Erirj,           # E d_i², E d_i d_j
            "d_oji": e - p2 - (n - 2) * p5,                               # E d_i O_ji
            "d_ri": Er - Er2, "d_rj": Er - Erirj,                         # E d_i r_i, E d_i r_j
            "oo": (n - 1) * p1, "oo_ij": (n - 2) * p4,                    # E(OOᵀ)_ii, _ij
            "rr": Er2, "rr_ij": Erirj, "ed": 1 - Er, "eo": e}


def _reduced_map(mom: np.ndarray, n: int, staleness: int, project: bool = True):
    """S ↦ E[M S Mᵀ] on lag-block matrices S_ab = X_ab I + Y_ab 11ᵀ (a, b = 0..τ), as a map of
    batches (X, Y) (k, τ+1, τ+1) each; ``project``: composed with S ↦ PSP on both sides (the
    quotient by the consensus direction). ``mom``: masked :data:`PATTERNS`."""
    c = _coefficients(mom, n)
    N = (staleness + 1) * n
    t = staleness

    def pair(A, x, y):                     # (x, y) of xI + yJ -> (x', y') of E[.] applied
        return A[0][0] * x + A[0][1] * y, A[1][0] * x + A[1][1] * y

    # columns: input I, input J; rows: output I coefficient, output J coefficient
    A_dd = ((c["dd"], c["dd"] - c["didj"]), (0.0, c["didj"]))
    A_do = ((-c["d_oji"], c["d_ri"] - c["d_rj"]), (c["d_oji"], c["d_rj"]))
    A_oo = ((c["oo"] - c["oo_ij"], c["rr"] - c["rr_ij"]), (c["oo_ij"], c["rr_ij"]))
    ed, eo = c["ed"], c["eo"]

    def proj(X, Y):
        if not project:
            return X, Y
        Z = X + n * Y
        rows, cols = Z.sum(-1, keepdims=True), Z.sum(-2, keepdims=True)
        tot = Z.sum((-2, -1), keepdims=True)
        return X, Y - (cols + rows) / N + n * tot / N ** 2

    def apply(X, Y):
        X, Y = proj(X, Y)
        Xn, Yn = np.zeros_like(X), np.zeros_like(Y)
        terms = [pair(A_dd, X[:, 0, 0], Y[:, 0, 0]), pair(A_do, X[:, 0, t], Y[:, 0, t]),
                 pair(A_do, X[:, t, 0], Y[:, t, 0]), pair(A_oo, X[:, t, t], Y[:, t, t])]
        Xn[:, 0, 0] = sum(u for u, _ in terms)
        Yn[:, 0, 0] = sum(v for _, v in terms)
        if t:
            Xn[:, 0, 1:] = ed * X[:, 0, :-1] - eo * X[:, t, :-1]
            Yn[:, 0, 1:] = ed * Y[:, 0, :-1] + eo * (X[:, t, :-1] + (n - 1) * Y[:, t, :-1])
            Xn[:, 1:, 0] = ed * X[:, :-1, 0] - eo * X[:, :-1, t]
            Yn[:, 1:, 0] = ed * Y[:, :-1, 0] + eo * (X[:, :-1, t] + (n - 1) * Y[:, :-1, t])
            Xn[:, 1:, 1:] = X[:, :-1, :-1]
            Yn[:, 1:, 1:] = Y[:, :-1, :-1]
        return proj(Xn, Yn)

    return apply


def reduced_operator(mom: np.ndarray, n: int, staleness: int, project: bool = True
                     ) -> np.ndarray:
    """The matrix (2(τ+1)², 2(τ+1)²) of :func:`_reduced_map` on vec(X, Y). With ``project``
    its nonzero spectrum is the quotient operator's on the permutation-invariant subspace.

    >>> R = reduced_operator(pattern_moments(np.full((1, 4, 4), 0.25)), 4, 1)
    >>> R.shape
    (8, 8)
    """
    L = staleness + 1
    apply = _reduced_map(mom, n, staleness, project)
    basis = np.eye(2 * L * L).reshape(2 * L * L, 2, L, L)
    Xo, Yo = apply(basis[:, 0], basis[:, 1])
    return np.concatenate([Xo.reshape(-1, L * L), Yo.reshape(-1, L * L)], 1).T


def reduced_rate(moments: np.ndarray, n: int, staleness: int = 0,
                 participation: float = 1.0, observable: bool = True) -> float:
    """ρ_τ,π of an exchangeable sampler from its unmasked :data:`PATTERNS` ``moments`` (7,),
    from the 2(τ+1)²-dimensional reduced operator (docs/theory.md §9, step 5), by dense
    eigenvalues (a second at τ = 16, 7 s at τ = 23 here).

    ``observable`` (default): the largest eigenvalue among the modes that Ξ(X_t), the
    disagreement of the current lag, can see — eigenvectors with an X_00 component (step 5 i);
    the decay rate of E Ξ. Otherwise the spectral radius of the whole
    quotient, which also holds the lags' means drifting apart: the same number unless W''s
    diagonal is deterministic (static aI + bJ, perfect matchings with n even, no mask).

    >>> from adflora_analysis.topology import make_sampler, consensus_rate
    >>> s = make_sampler("encounter", 10, q=0.1)
    >>> m, *_ = exchangeable_moments(s)
    >>> round(reduced_rate(m, 10), 4), round(1 - consensus_rate(s, samples=20000).p, 3)
    (0.6343, 0.634)
    >>> round(reduced_rate(m, 10, staleness=2), 4), round(reduced_rate(m, 10, 2, 0.8), 4)
    (0.7239, 0.7939)
    >>> J = pattern_moments(np.full((1, 5, 5), 0.2))   # z' = (z − z_{t−1})/5: |λ|² = 1/5
    >>> round(reduced_rate(J, 5, 1), 6), round(reduced_rate(J, 5, 1, observable=False), 6)
    (0.2, 0.64)
    """
    mom = np.asarray(moments, float) * float(participation) ** MASK_POWER
    w, V = np.linalg.eig(reduced_operator(mom, n, int(staleness)))
    if observable:      # modes whose eigenvector has an X_00 component (Ξ reads X_00 only)
        seen = np.abs(V[0]) > 1e-9 * np.linalg.norm(V, axis=0)
        w = w[seen] if seen.any() else np.zeros(1)
    return float(np.max(np.abs(w)))


LAG_STARTS = ("identical", "independent", "lag 0 only", "old lags only")
"""Lag structures of the augmented state at the start of a frozen stretch (X_ab of S_ab =
X_ab I): all lags equal, uncorrelated, only the current one or only the stale ones disagree."""


def window_rates(patterns: np.ndarray, n: int, staleness: int, participation: float,
                 skip: int, length: int) -> dict[str, float]:
    """The geometric rate that a fit of log E Ξ over rounds ``skip`` .. ``length`` − 1 of a
    frozen stretch would read, from each start of :data:`LAG_STARTS`, by iterating the exact
    reduced operator (no projection: Ξ reads X_00 only). Close to ρ_τ,π when the subdominant
    eigenvalues are far below it; apart when the window is still transient.

    >>> from adflora_analysis.topology import make_sampler
    >>> m, *_ = exchangeable_moments(make_sampler("encounter", 10, q=0.1))
    >>> w = window_rates(m, 10, 2, 1.0, 3, 20)
    >>> round(min(w.values()), 4), round(max(w.values()), 4)   # ρ = 0.7239
    (0.7236, 0.7247)
    """
    L = staleness + 1
    R = reduced_operator(np.asarray(patterns, float) * float(participation) ** MASK_POWER, n,
                         staleness, project=False)
    starts = [np.ones((L, L)), np.eye(L), np.diag([1.0] + [0.0] * staleness),
              np.diag([0.0] + [1.0] * staleness)]
    v = np.stack([np.concatenate([X.ravel(), np.zeros(L * L)]) for X in starts], 1)
    xi = []
    for _ in range(length):
        v = R @ v
        xi.append(v[0])
    xi = np.array(xi)[skip:]                                      # (k, 4)
    keep = [j for j in range(len(starts)) if len(xi) > 1 and (xi[:, j] > 0).all()]
    y = np.log(xi[:, keep])                    # τ = 0: "old lags only" is no disagreement
    k = np.arange(len(y)) - (len(y) - 1) / 2
    slope = (k @ (y - y.mean(0))) / (k @ k)
    return {LAG_STARTS[j]: float(v) for j, v in zip(keep, np.exp(slope), strict=True)}


# ---------------------------------------------------------------- full operator
def _draws(s, participation: float, samples: int, seed: int
           ) -> tuple[np.ndarray, np.ndarray, str]:
    """(W' draws (K, n, n), weights (K,), method): exact where the support (and, with π < 1,
    every mask of it) can be enumerated."""
    sup = (np.asarray(s.sample(0, None), float)[None], np.ones(1)) if s.is_static \
        else s.support()
    if sup is not None and participation == 1:
        return np.asarray(sup[0], float), np.asarray(sup[1], float), "exact"
    if sup is not None and len(sup[1]) << s.n <= SUPPORT_LIMIT:
        a = ((np.arange(1 << s.n)[:, None] >> np.arange(s.n)) & 1).astype(bool)
        pa = participation ** a.sum(1) * (1 - participation) ** (s.n - a.sum(1))
        mats = np.asarray(sup[0], float)
        W = masked(np.repeat(mats, len(a), 0), np.tile(a, (len(mats), 1)))
        return W, np.outer(np.asarray(sup[1], float), pa).ravel(), "exact"
    rng = numpy_rng(seed, "async-rate")
    mats = []
    for k in draw_batches(int(samples), s.n):
        W = np.asarray(s.sample_batch(rng, k), float)
        if participation < 1:
            W = masked(W, rng.random((k, s.n)) < participation)
        mats.append(W)
    W = np.concatenate(mats)
    return W, np.full(len(W), 1.0 / len(W)), "monte-carlo"


def _radius(W: np.ndarray, w: np.ndarray, tau: int) -> float:
    """ρ of S ↦ Π E[M S Mᵀ] Π on the quotient, for draws W (K, n, n) with weights w (K,)."""
    K, n, _ = W.shape
    N = (tau + 1) * n
    idx = np.arange(n)
    if tau == 0:
        Y = W                                            # lag 0 and lag τ coincide
        cols = np.arange(n)
    else:
        D = np.zeros_like(W)
        D[:, idx, idx] = W[:, idx, idx]
        Y = np.concatenate([D, W - D], -1)               # (K, n, 2n): [D | O]
        cols = np.concatenate([np.arange(n), np.arange(tau * n, N)])
    m = Y.shape[-1]
    Yf = Y.reshape(K, n * m)
    G = ((Yf * w[:, None]).T @ Yf).reshape(n, m, n, m).transpose(0, 2, 1, 3) \
        .reshape(n * n, m * m)                                         # E[Y ⊗ Y]
    EY = np.einsum("k,kab->ab", w, Y)
    P = np.eye(N) - 1.0 / N

    def apply(v: np.ndarray) -> np.ndarray:
        S = P @ v.reshape(N, N) @ P
        out = np.zeros_like(S)
        sub = S[np.ix_(cols, cols)]
        out[:n, :n] = (G @ sub.reshape(-1)).reshape(n, n)
        if tau:
            out[n:, n:] = S[:-n, :-n]                     # lags shift down
            out[:n, n:] = EY @ S[cols, :-n]               # new lag 0 against old lags
            out[n:, :n] = S[:-n, cols] @ EY.T
        return (P @ out @ P).reshape(-1)

    size = N * N
    if size <= 100:
        A = np.stack([apply(e) for e in np.eye(size)], 1)
        return float(np.max(np.abs(np.linalg.eigvals(A))))
    op = spla.LinearOperator((size, size), matvec=apply, dtype=float)
    v0 = (P @ np.random.default_rng(0).standard_normal((N, N)) @ P).reshape(-1)
    val = spla.eigs(op, k=1, which="LM", v0=v0, return_eigenvectors=False, tol=1e-10,
                    maxiter=20000)
    return float(np.abs(val[0]))


def _full(s, tau: int, pi: float, samples: int, seed: int, batches: int) -> AsyncRate:
    if (tau + 1) * s.n > MAX_AUGMENTED:
        raise AdfloraError(f"the augmented state has (τ + 1) n = {(tau + 1) * s.n} entries, above "
                           f"the limit {MAX_AUGMENTED}", "use fewer clients or a smaller τ")
    W, w, method = _draws(s, pi, samples, seed)
    rate = _radius(W, w, tau)
    se = 0.0
    if method == "monte-carlo" and batches > 1 and len(W) >= 2 * batches:
        parts = np.array_split(np.arange(len(W)), batches)
        sub = [_radius(W[i], np.full(len(i), 1.0 / len(i)), tau) for i in parts]
        se = float(np.std(sub, ddof=1) / math.sqrt(batches))
    src = "draws of (W, mask)" if method == "monte-carlo" else "support and masks enumerated"
    return AsyncRate(min(max(rate, 0.0), 1.0), se, method, tau, pi, int(len(W)),
                     f"full operator, {src}")


def _reduced(s, tau: int, pi: float, samples: int, seed: int, batches: int) -> AsyncRate:
    mom, sub, src, k = exchangeable_moments(s, samples=samples, seed=seed, batches=batches)
    rate = reduced_rate(mom, s.n, tau, pi)
    se = 0.0
    if sub is not None and len(sub) > 1:
        vals = [reduced_rate(m, s.n, tau, pi) for m in sub]
        se = float(np.std(vals, ddof=1) / math.sqrt(len(vals)))
    method = "monte-carlo-reduced" if sub is not None or "Monte Carlo" in src \
        else "exact-reduced"
    return AsyncRate(min(max(rate, 0.0), 1.0), se, method, tau, pi, k,
                     f"exchangeable reduction, {src}", [float(x) for x in mom], s.n)


def async_consensus_rate(obj: Any, *, staleness: int = 0, participation: float = 1.0,
                         samples: int = 4000, seed: int = 0, batches: int = 4,
                         method: str = "auto") -> AsyncRate:
    """Predicted decay factor per round of the frozen block's E Ξ under staleness τ and
    participation π (see the module docstring).

    Parameters
    ----------
    obj : a Sampler or a static (n, n) matrix.
    staleness : τ >= 0 rounds.
    participation : π in (0, 1].
    samples, seed : Monte Carlo draws of (W, mask) and the seed of their stream.
    batches : independent sub-means for the Monte Carlo standard error.
    method : ``auto`` (the reduction when :func:`exchangeable_law` holds and τ + 1 <=
        :data:`MAX_REDUCED_LAGS`, else the full operator), ``full`` or ``reduced``.

    Returns
    -------
    AsyncRate (rate in [0, 1], stderr 0 when exact).

    >>> from adflora_analysis.topology import make_sampler
    >>> s = make_sampler("static", 6, graph="ring")
    >>> [round(async_consensus_rate(s, staleness=t).rate, 4) for t in (0, 1, 2)]
    [0.4444, 0.6667, 0.8597]
    >>> r = async_consensus_rate(make_sampler("encounter", 10, q=0.1), staleness=2)
    >>> round(r.rate, 4), r.stderr, r.method
    (0.7239, 0.0, 'exact-reduced')
    """
    tau, pi = int(staleness), float(participation)
    if tau < 0:
        raise AdfloraError(f"staleness = {tau} must be >= 0", "use 0 or more rounds")
    if not 0 < pi <= 1:
        raise AdfloraError(f"participation = {pi} must lie in (0, 1]", "use e.g. 0.8")
    if method not in RATE_METHODS:
        raise unknown_name("async rate method", method, RATE_METHODS)
    s = as_sampler(obj)
    exch = exchangeable_law(s)
    if method == "reduced" and not exch:
        raise AdfloraError(f"the {s.kind!r} sampler's law is not invariant under relabelling "
                           "the clients: no exchangeable reduction", "use method='full'")
    if method == "reduced" or (method == "auto" and exch and tau + 1 <= MAX_REDUCED_LAGS):
        if tau + 1 > MAX_REDUCED_LAGS:
            raise AdfloraError(f"staleness = {tau} is above the reduction's limit "
                               f"{MAX_REDUCED_LAGS - 1}", "use a smaller τ")
        return _reduced(s, tau, pi, samples, seed, batches)
    return _full(s, tau, pi, samples, seed, batches)


# ---------------------------------------------------------------- the three asynchrony models
def _step(model: str, W: np.ndarray, x: np.ndarray, w: np.ndarray, lags: list) -> tuple:
    """One round of a frozen block under ``model``: (x, w, lags) -> the same after gossip.
    W (P, n, n) masked, x and w (P, n); ``lags``: stale-read's τ pre-gossip copies (oldest
    first) or push-sum's τ rounds of messages in transit (x part, w part)."""
    idx = np.arange(W.shape[-1])
    if model == "ad-psgd" or (not lags and model == "stale-read"):
        return np.einsum("pij,pj->pi", W, x), w, lags
    if model == "stale-read":
        d = W[:, idx, idx]
        new = d * x + np.einsum("pij,pj->pi", W, lags[0]) - d * lags[0]
        return new, w, [*lags[1:], x]
    P = np.swapaxes(W, -1, -2)
    d = P[:, idx, idx]
    send = (np.einsum("pij,pj->pi", P, x) - d * x, np.einsum("pij,pj->pi", P, w) - d * w)
    queue = [*lags, send]
    (mx, mw), queue = queue[0], queue[1:]
    return d * x + mx, d * w + mw, queue


def simulate_models(obj: Any, *, model: str = "stale-read", staleness: int = 0,
                    participation: float = 1.0, paths: int = 4000, rounds: int = 40,
                    warmup: int = 0, seed: int = 0, batches: int = 4,
                    fit_from: int = 0) -> dict[str, Any]:
    """Direct simulation of a frozen, gossiped block (one coordinate per client) under one
    asynchrony ``model``, from a random start: the rate of E Ξ(z) (z = x / w for push-sum, the
    block itself otherwise) fitted over rounds max(τ + 1, ``fit_from``) .. ``rounds``
    (log-linear least squares on the path mean, points above 1e-24 Ξ₀; s.e. from ``batches``
    sub-means), and the drift of the consensus value,
    E[(z̄_end − z̄_0)²] / E Ξ(z_0) (0 when the model conserves the clients' mean; meaningful
    with ``warmup`` = 0, the start of a run). With ``warmup`` > 0 push-sum's weights first run
    that many rounds from 1 (the weight vector's own transient, as in a run whose block is
    frozen after many rounds; its weights in transit kept, its values in transit zeroed).

    >>> from adflora_analysis.topology import make_sampler
    >>> ring = make_sampler("static", 6, graph="ring")     # exact rate 0.4444 (τ = 0)
    >>> r = simulate_models(ring, model="push-sum", paths=2000, rounds=30)
    >>> round(r["rate"], 2), r["drift"] < 1e-20
    (0.44, True)
    """
    if model not in MODELS:
        raise unknown_name("asynchrony model", model, MODELS)
    tau, pi = int(staleness), float(participation)
    s = as_sampler(obj)
    n = s.n
    rng = numpy_rng(seed, "async-models")

    def draw() -> np.ndarray:
        W = np.asarray(s.sample_batch(rng, paths), float) if not s.is_static else \
            np.broadcast_to(np.asarray(s.sample(0, None), float), (paths, n, n)).copy()
        return masked(W, rng.random((paths, n)) < pi) if pi < 1 else W

    w = np.ones((paths, n))
    lags: list = []
    if model == "push-sum":
        lags = [(np.zeros((paths, n)), np.zeros((paths, n))) for _ in range(tau)]
        for _ in range(warmup):
            _, w, lags = _step(model, draw(), np.zeros((paths, n)), w, lags)
        lags = [(np.zeros((paths, n)), mw) for _, mw in lags]
    z0 = rng.standard_normal((paths, n))
    x = w * z0
    if model == "stale-read":
        lags = [x.copy() for _ in range(tau)]
    xi = [((z0 - z0.mean(1, keepdims=True)) ** 2).mean(1)]
    for _ in range(rounds):
        x, w, lags = _step(model, draw(), x, w, lags)
        z = x / w
        xi.append(((z - z.mean(1, keepdims=True)) ** 2).mean(1))
    xi_arr = np.array(xi)                                   # (rounds + 1, paths)
    drift = float(((z.mean(1) - z0.mean(1)) ** 2).mean() / xi_arr[0].mean())
    ks = np.arange(max(tau + 1, int(fit_from)), rounds + 1)

    def fit(cols: np.ndarray) -> float:
        m = xi_arr[ks][:, cols].mean(1)
        ok = m > 1e-24 * xi_arr[0].mean()
        if ok.sum() < 2:
            return 0.0
        return float(np.exp(np.polyfit(ks[ok], np.log(m[ok]), 1)[0]))

    rate = fit(np.arange(paths))
    sub = [fit(c) for c in np.array_split(np.arange(paths), batches)]
    se = float(np.std(sub, ddof=1) / math.sqrt(batches)) if batches > 1 else 0.0
    return {"model": model, "staleness": tau, "participation": pi, "rate": rate,
            "stderr": se, "drift": drift, "paths": paths, "rounds": rounds}


def model_consensus_rate(obj: Any, *, model: str = "stale-read", staleness: int = 0,
                         participation: float = 1.0, samples: int = 4000, seed: int = 0,
                         batches: int = 4) -> AsyncRate:
    """Predicted decay factor of a frozen block's E Ξ under one asynchrony ``model``
    (docs/theory.md §9), with ``method`` saying how it was obtained:

    - ``stale-read``: :func:`async_consensus_rate` (the augmented companion operator).
    - ``ad-psgd``: averaging uses current models, so a frozen block mixes synchronously through
      W': the τ = 0 rate at participation π, derived exactly as for stale-read (the staleness
      only delays gradients; ``staleness`` is kept so check 7 drops the same rounds).
    - ``push-sum``: with a symmetric W^t and τ = 0 the weights stay 1 and z = x mixes through
      W': the same derived rate. Otherwise (delays, or a W^t that is not symmetric) no closed
      form is derived here: the rate is *measured* by :func:`simulate_models` (``method =
      "simulated"``, s.e. from its sub-means), independently of any training run: the
      asymptotic rate, fitted over rounds 20–80 after 40 rounds of the weights' own transient
      (like the full operator's radius, an upper bound of what a short window after a switch
      reads on a sampler that is not exchangeable; check 7 tests it one-sided there).

    >>> from adflora_analysis.topology import make_sampler
    >>> s = make_sampler("encounter", 10, q=0.1)
    >>> r = model_consensus_rate(s, model="ad-psgd", staleness=2)
    >>> round(r.rate, 4), r.method, r.staleness, r.model
    (0.6343, 'exact-reduced', 2, 'ad-psgd')
    """
    if model not in MODELS:
        raise unknown_name("asynchrony model", model, MODELS)
    tau, pi = int(staleness), float(participation)
    if model == "stale-read":
        return async_consensus_rate(obj, staleness=tau, participation=pi, samples=samples,
                                    seed=seed, batches=batches)
    s = as_sampler(obj)
    symmetric = _always_symmetric(s, seed)
    if model == "ad-psgd" or (tau == 0 and symmetric):
        r = async_consensus_rate(s, staleness=0, participation=pi, samples=samples, seed=seed,
                                 batches=batches)
        return AsyncRate(**{**r.as_dict(), "staleness": tau, "model": model})
    if tau < 0:
        raise AdfloraError(f"staleness = {tau} must be >= 0", "use 0 or more rounds")
    if not 0 < pi <= 1:
        raise AdfloraError(f"participation = {pi} must lie in (0, 1]", "use e.g. 0.8")
    sim = simulate_models(s, model=model, staleness=tau, participation=pi,
                          paths=max(int(samples), 400), rounds=80, warmup=40, seed=seed,
                          batches=batches, fit_from=20)
    return AsyncRate(sim["rate"], sim["stderr"], "simulated", tau, pi, sim["paths"],
                     f"direct simulation of the push-sum recursion, {sim['paths']} paths, "
                     f"rounds {max(tau + 1, 20)}..{sim['rounds']} fitted", model=model)


def _always_symmetric(s, seed: int, draws: int = 64) -> bool:
    """Whether the sampler's W^t is symmetric (static: exactly; random: on ``draws`` draws)."""
    if s.is_static:
        W = np.asarray(s.sample(0, None), float)
        return bool(np.allclose(W, W.T))
    W = np.asarray(s.sample_batch(numpy_rng(seed, "async-symmetry"), draws), float)
    return bool(np.allclose(W, np.swapaxes(W, -1, -2)))
