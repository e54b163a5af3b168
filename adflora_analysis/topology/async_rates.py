"""Consensus rate of stale and partial gossip (docs/theory.md §9), computed before a run.

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
sampler). Only the first block row of M_t is random, so E[M S Mᵀ] needs just E[Y ⊗ Y] for
Y = [D | O] (n × 2n); the operator is applied matrix-free and its spectral radius found by
ARPACK on the quotient (Π S = P S P, P = I − 11ᵀ/N).

Expectation: exact for a static W with π = 1 and for a sampler whose support can be enumerated
(with π = 1); otherwise a Monte Carlo mean over ``samples`` draws of (W, mask) from their own
stream, with a standard error from ``batches`` independent sub-means. Sources: Boyd et al. 2006
(randomized gossip, second-moment operator), Lian et al. 2018 (AD-PSGD, bounded staleness),
Assran et al. 2019 (SGP, delayed messages and the augmented state).

>>> import numpy as np
>>> W = np.full((4, 4), 0.25)
>>> r = async_consensus_rate(W)
>>> round(r.rate, 12), r.method
(0.0, 'exact')
>>> r1 = async_consensus_rate(W, staleness=1)
>>> 0 < r1.rate < 1, r1.method
(True, 'exact')
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.sparse.linalg as spla

from adflora_analysis.errors import AdfloraError
from adflora_analysis.seeding import numpy_rng
from adflora_analysis.topology.rates import as_sampler
from adflora_analysis.topology.samplers import _chunks

__all__ = ["AsyncRate", "async_consensus_rate", "masked"]

MAX_AUGMENTED = 400
"""Largest (τ + 1) n for which the rate is computed (the operator has ((τ + 1) n)² entries per
state)."""


@dataclass(frozen=True)
class AsyncRate:
    """Predicted per-round decay factor of E Ξ under staleness and partial participation."""

    rate: float
    stderr: float
    method: str
    staleness: int
    participation: float
    samples: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def _draws(s, participation: float, samples: int, seed: int
           ) -> tuple[np.ndarray, np.ndarray, str]:
    """(W' draws (K, n, n), weights (K,), method)."""
    if participation == 1:
        if s.is_static:
            return np.asarray(s.sample(0, None), float)[None], np.ones(1), "exact"
        sup = s.support()
        if sup is not None:
            return np.asarray(sup[0], float), np.asarray(sup[1], float), "exact"
    rng = numpy_rng(seed, "async-rate")
    mats = []
    for k in _chunks(int(samples), s.n):
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


def async_consensus_rate(obj: Any, *, staleness: int = 0, participation: float = 1.0,
                         samples: int = 4000, seed: int = 0, batches: int = 4) -> AsyncRate:
    """Predicted decay factor per round of the frozen block's E Ξ under staleness τ and
    participation π (see the module docstring).

    Parameters
    ----------
    obj : a Sampler or a static (n, n) matrix.
    staleness : τ >= 0 rounds.
    participation : π in (0, 1].
    samples, seed : Monte Carlo draws of (W, mask) and the seed of their stream.
    batches : independent sub-means for the Monte Carlo standard error.

    Returns
    -------
    AsyncRate (rate in [0, 1], stderr 0 when exact).

    >>> from adflora_analysis.topology import make_sampler
    >>> s = make_sampler("static", 6, graph="ring")
    >>> [round(async_consensus_rate(s, staleness=t).rate, 4) for t in (0, 1, 2)]
    [0.4444, 0.6667, 0.8597]
    """
    tau, pi = int(staleness), float(participation)
    if tau < 0:
        raise AdfloraError(f"staleness = {tau} must be >= 0", "use 0 or more rounds")
    if not 0 < pi <= 1:
        raise AdfloraError(f"participation = {pi} must lie in (0, 1]", "use e.g. 0.8")
    s = as_sampler(obj)
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
    return AsyncRate(min(max(rate, 0.0), 1.0), se, method, tau, pi, int(len(W)))
