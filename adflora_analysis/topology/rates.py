"""Consensus rates of static and random mixing (docs/architecture.md §3).

Let U be an n x (n−1) orthonormal basis of the consensus-orthogonal subspace 1^⊥ (so
UUᵀ = I − J) and B = UᵀWU the action of W on deviations from consensus.

- **Expected consensus rate** (Koloskova et al., ICML 2020, "A unified theory of decentralized
  SGD with changing topology and local updates", Assumption 4):

      p = 1 − λ_max((I − J) E[WᵀW] (I − J)) = 1 − λ_max(Uᵀ E[WᵀW] U),

  the largest p with E‖W X − X̄‖²_F ≤ (1 − p)‖X − X̄‖²_F for doubly stochastic W. For a static
  W, p = 1 − σ_max(W(I − J))²; for symmetric doubly stochastic W, p = 1 − max(|λ2|, |λn|)²
  = 1 − (1 − δ)². (For a W that is only row-stochastic the same formula is reported; it then
  also charges the drift of the mean.)
- **Exact second-moment rate**: the deviations Z_t = UᵀX_t obey Z_{t+1} = B_t Z_t, so their second
  moment S_t = E[Z_t Z_tᵀ] obeys vec(S_{t+1}) = E[B ⊗ B] vec(S_t). The spectral radius

      ρ = ρ(E[B ⊗ B]) = ρ of E[(W − J) ⊗ (W − J)] on the consensus-orthogonal subspace

  is the true asymptotic per-round decay factor of E‖X_t − X̄_t‖². The map S ↦ E[BSBᵀ] is
  completely positive, so its Perron eigenvector is PSD, and tr(E[BSBᵀ]) ≤ (1 − p) tr S gives
  ρ ≤ 1 − p: the Koloskova rate is a bound, this is the rate.

Estimation: exact for a static W; exact by enumerating the support for tiny n (all
2^(n(n−1)/2) encounter graphs, orderings too for ``pairwise``, all perfect matchings, the period
of a periodic sampler); otherwise Monte Carlo over vectorized batches. For an exchangeable
sampler (encounter, matching on the complete graph) E[WᵀW] is a·I + b·J, so
λ_max(Uᵀ E[WᵀW] U) = E‖WU‖²_F / (n − 1): an unbiased mean of i.i.d. terms with an exact standard
error. Otherwise λ_max is cross-fitted from independent halves of the draws (the top
eigenvector of one half's mean, its Rayleigh quotient on the other half, both ways), which
removes the upward bias of the plug-in λ_max(M̂) (:func:`_split_half_lambda`); standard error:
std of the per-draw ‖W_s U v‖² / √S.

>>> import numpy as np
>>> from adflora_analysis.topology import make_sampler
>>> r = consensus_rate(np.full((4, 4), 0.25))
>>> r.p, r.stderr, r.method
(1.0, 0.0, 'exact')
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from adflora_analysis.errors import AdfloraError, unknown_name
from adflora_analysis.seeding import numpy_rng
from adflora_analysis.topology.samplers import Sampler, StaticSampler, draw_batches
from adflora_analysis.topology.spectral import snap
from adflora_analysis.topology.validation import as_matrix, is_connected

__all__ = ["RateEstimate", "as_sampler", "consensus_basis", "consensus_rate", "periodic_rates",
           "require_mixing", "second_moment_rate"]

RATE_METHODS = ("auto", "exact", "enumeration", "monte-carlo")
SECOND_MOMENT_MAX_N = 64
"""Largest n for which :func:`second_moment_rate` forms E[B ⊗ B] ((n−1)² x (n−1)²)."""


@dataclass(frozen=True)
class RateEstimate:
    """An estimate of the expected consensus rate p.

    Attributes
    ----------
    p : float
        1 − λ_max((I − J) E[WᵀW] (I − J)).
    stderr : float
        Standard error of ``p`` (0 when exact).
    method : str
        ``"exact"`` (static W), ``"enumeration"`` (whole support) or ``"monte-carlo"``.
    samples : int
        Draws used (0 unless Monte Carlo; support size for enumeration).
    """

    p: float
    stderr: float
    method: str
    samples: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready)."""
        return asdict(self)


def consensus_basis(n: int) -> np.ndarray:
    """Orthonormal basis U (n, n−1) of 1^⊥: UᵀU = I, UUᵀ = I − J.

    >>> U = consensus_basis(4)
    >>> bool(np.allclose(U @ U.T, np.eye(4) - 0.25) and np.allclose(U.T @ U, np.eye(3)))
    True
    """
    q, _ = np.linalg.qr(np.column_stack([np.ones(n), np.eye(n)[:, : n - 1]]))
    return q[:, 1:]


def as_sampler(obj: Any) -> Sampler:
    """A :class:`Sampler` from a sampler or an (n, n) matrix (static).

    >>> s = as_sampler(np.eye(3))
    >>> s.kind, as_sampler(s) is s
    ('static', True)
    """
    if isinstance(obj, Sampler):
        return obj
    return StaticSampler(obj)


def _static_p(W: Any) -> float:
    """1 − σ_max(W(I − J))², dense or (large sparse) ARPACK."""
    W = as_matrix(W)
    n = W.shape[0]
    if sp.issparse(W) and n > 1500:
        rows = np.asarray(W.sum(axis=1)).ravel()
        op = spla.LinearOperator(
            (n, n), dtype=np.float64,
            matvec=lambda x: W @ np.ravel(x) - rows * np.mean(x),
            rmatvec=lambda y: W.T @ np.ravel(y) - (rows @ np.ravel(y)) / n * np.ones(n))
        s = spla.svds(op, k=1, tol=0, return_singular_vectors=False,
                      v0=np.random.default_rng(0).standard_normal(n))
        return float(1.0 - s[0] ** 2)
    A = W.toarray() if sp.issparse(W) else W
    if np.allclose(A, A.T, rtol=0, atol=1e-12) and np.allclose(A.sum(1), 1, rtol=0, atol=1e-12):
        ev = np.linalg.eigvalsh(0.5 * (A + A.T))
        # drop one eigenvalue 1 (the consensus direction) and take the largest modulus of the rest
        k = int(np.argmin(np.abs(ev - 1.0)))
        rest = np.delete(ev, k)
        return float(1.0 - np.max(np.abs(rest)) ** 2)
    B = A - A.sum(1, keepdims=True) / n  # W (I − J)
    return float(1.0 - np.linalg.svd(B, compute_uv=False)[0] ** 2)


#: the most Monte Carlo draws of W^t one estimate of p may take (refused before drawing)
MAX_SAMPLES = 10_000_000


def consensus_rate(obj: Any, *, samples: int = 20000, seed: int = 0, method: str = "auto"
                   ) -> RateEstimate:
    """Expected consensus rate p of Koloskova et al. (2020), Assumption 4.

    Parameters
    ----------
    obj : Sampler or array_like (n, n)
        A sampler of W^t, or a static W.
    samples : int
        Monte Carlo draws (when neither exact nor enumeration applies).
    seed : int
        Seed of the Monte Carlo stream (``seeding.numpy_rng(seed, "consensus-rate")``).
    method : {"auto", "exact", "enumeration", "monte-carlo"}
        ``auto``: exact for static W, enumeration when the support has at most 2^15 elements,
        else Monte Carlo.

    Returns
    -------
    RateEstimate

    Examples
    --------
    >>> import networkx as nx
    >>> from adflora_analysis.topology import mixing_matrix, make_sampler
    >>> W = mixing_matrix(nx.cycle_graph(6), "metropolis")      # λ2 = 2/3, λn = −1/3
    >>> round(consensus_rate(W).p, 12) == round(1 - (2 / 3) ** 2, 12)
    True
    >>> consensus_rate(make_sampler("encounter", 4, q=0.5)).method
    'enumeration'
    """
    if method not in RATE_METHODS:
        raise unknown_name("rate method", method, RATE_METHODS)
    if not (isinstance(samples, numbers.Integral) and not isinstance(samples, bool)
            and 1 <= samples <= MAX_SAMPLES):
        from adflora_analysis.errors import AdfloraError as _Error

        raise _Error(f"samples = {samples} must be a whole number in [1, "
                           f"{MAX_SAMPLES:,}]", "use e.g. 20000 (p's standard error shrinks "
                           "as 1/sqrt(samples))")
    if not isinstance(obj, Sampler):
        W = as_matrix(obj)
        if method in ("auto", "exact"):
            return RateEstimate(snap(_static_p(W)), 0.0, "exact", 0)
        obj = StaticSampler(W)
    s = obj
    if s.is_static and method in ("auto", "exact"):
        return RateEstimate(snap(_static_p(s.sample(0, None))), 0.0, "exact", 0)
    if method == "exact":
        raise AdfloraError(f"no exact consensus rate for a time-varying {s.kind!r} sampler",
                           "use method='auto', 'enumeration' or 'monte-carlo'")
    if method in ("auto", "enumeration"):
        sup = s.support()
        if sup is not None:
            mats, probs = sup
            U = consensus_basis(s.n)
            WU = mats @ U  # (K, n, n−1)
            M = np.einsum("k,kia,kib->ab", probs, WU, WU)
            lam = float(np.linalg.eigvalsh(0.5 * (M + M.T))[-1])
            return RateEstimate(snap(1.0 - lam), 0.0, "enumeration", len(probs))
        if method == "enumeration":
            raise AdfloraError(f"the support of this {s.kind!r} sampler is too large to "
                               "enumerate", "use method='monte-carlo' or 'auto'")
    samples = int(samples)
    if samples < 2:
        raise AdfloraError(f"samples = {samples} is too few for Monte Carlo",
                           "pass samples >= 100")
    return _monte_carlo(s, samples, seed)


def _monte_carlo(s: Sampler, samples: int, seed: int) -> RateEstimate:
    n = s.n
    U = consensus_basis(n)
    sizes = draw_batches(samples, n)
    if s.exchangeable:
        rng = numpy_rng(seed, "consensus-rate")
        f = np.concatenate([_frob_dev(s.sample_batch(rng, k)) for k in sizes])
        mean = float(f.mean())
        se = float(f.std(ddof=1) / np.sqrt(samples))
        return RateEstimate(snap(1.0 - mean / (n - 1)), se / (n - 1), "monte-carlo", samples)
    lam, se = _split_half_lambda(s, U, sizes, samples, seed)
    return RateEstimate(snap(1.0 - lam), se, "monte-carlo", samples)


def _split_half_lambda(s: Sampler, U: np.ndarray, sizes: list[int], samples: int, seed: int
                       ) -> tuple[float, float]:
    """λ_max(Uᵀ E[WᵀW] U) without the plug-in's upward bias, and its standard error.

    The top eigenvalue of a Monte Carlo mean M̂ is biased up (λ_max is convex: E λ_max(M̂) ≥
    λ_max(M), by about the noise when eigenvalues are close — on the encounter law, 9 equal
    ones, p came out 0.0049 low at 20,000 draws). Cross-fitting removes it: the top
    eigenvector v₁ of the first half's mean is evaluated on the second half's draws as the
    Rayleigh quotient mean ‖W U v₁‖², and v₂ of the second half on the first; λ̂ is the mean
    of those per-draw terms, unbiased for vᵀMv given v (≤ λ_max by a second-order amount in
    the eigenvector's error; 0 when the top eigenvalue is degenerate). Its standard error is
    that of the per-draw terms (conditionally i.i.d. given v)."""
    half = samples // 2
    m = U.shape[1]
    Ms = [np.zeros((m, m)), np.zeros((m, m))]
    rng = numpy_rng(seed, "consensus-rate")
    start = 0
    for k in sizes:
        WU = s.sample_batch(rng, k) @ U
        h = np.clip(half - start, 0, k)           # draws of this chunk in the first half
        Ms[0] += np.einsum("kia,kib->ab", WU[:h], WU[:h])
        Ms[1] += np.einsum("kia,kib->ab", WU[h:], WU[h:])
        start += k
    vs = [U @ np.linalg.eigh(0.5 * (M + M.T))[1][:, -1] for M in Ms]
    rng = numpy_rng(seed, "consensus-rate")     # the same draws again, each half with the
    f, start = [], 0                            # other half's eigenvector
    for k in sizes:
        W = s.sample_batch(rng, k)
        h = int(np.clip(half - start, 0, k))
        f.append(np.sum((W[:h] @ vs[1]) ** 2, axis=1))
        f.append(np.sum((W[h:] @ vs[0]) ** 2, axis=1))
        start += k
    fa = np.concatenate(f)
    return float(fa.mean()), float(fa.std(ddof=1) / np.sqrt(samples))


def _frob_dev(W: np.ndarray) -> np.ndarray:
    """‖W(I − J)‖²_F = ‖W‖²_F − ‖W1‖²/n per matrix of a batch (size, n, n) -> (size,)."""
    n = W.shape[-1]
    return np.einsum("kij,kij->k", W, W) - np.einsum("ki,ki->k", W.sum(-1), W.sum(-1)) / n


def _restrict(W: np.ndarray, U: np.ndarray) -> np.ndarray:
    """B = UᵀWU for a batch W (k, n, n) -> (k, n−1, n−1), as two plain GEMMs."""
    k, n, _ = W.shape
    m = U.shape[1]
    WU = (W.reshape(k * n, n) @ U).reshape(k, n, m)
    BT = (WU.transpose(0, 2, 1).reshape(k * m, n) @ U).reshape(k, m, m)  # (UᵀWU)ᵀ
    return BT.transpose(0, 2, 1)


def _spectral_radius(K: np.ndarray) -> float:
    if K.shape[0] <= 2500:
        return float(np.max(np.abs(np.linalg.eigvals(K))))
    v = spla.eigs(K, k=1, which="LM", return_eigenvectors=False,
                  v0=np.random.default_rng(0).standard_normal(K.shape[0]))
    return float(np.abs(v[0]))


def second_moment_rate(obj: Any, *, samples: int = 20000, seed: int = 0,
                       max_n: int = SECOND_MOMENT_MAX_N) -> float:
    """Exact asymptotic decay factor ρ(E[B ⊗ B]) of E‖X_t − X̄_t‖² (see the module docstring).

    Parameters
    ----------
    obj : Sampler or array_like (n, n)
    samples, seed : int
        Monte Carlo draws and seed, used only when the support is too large to enumerate.
    max_n : int
        Refuse n > max_n for time-varying samplers (E[B ⊗ B] has (n−1)⁴ entries). A static W
        needs no Kronecker product: ρ = ρ(B)², for any n.

    Returns
    -------
    float
        ρ, with ρ ≤ 1 − p.

    Examples
    --------
    >>> import numpy as np
    >>> W = np.array([[0.5, 0.5, 0], [0.25, 0.25, 0.5], [0.25, 0.25, 0.5]])  # P_12 P_01
    >>> rho, p = second_moment_rate(W), consensus_rate(W).p
    >>> round(rho, 12), round(1 - p, 12)                     # ρ(B)² < σ_max(B)² = 1 − p
    (0.0625, 0.25)
    """
    s = as_sampler(obj)
    n = s.n
    U = consensus_basis(n)
    if s.is_static:
        B = U.T @ np.asarray(s.sample(0, None)) @ U
        return snap(float(np.max(np.abs(np.linalg.eigvals(B))) ** 2))
    if n > max_n:
        raise AdfloraError(f"second-moment rate needs E[(W−J)⊗(W−J)] of size (n−1)² = "
                           f"{(n - 1) ** 2}; n = {n} is above the limit {max_n}",
                           "use consensus_rate (p) for large n, or pass max_n=")
    m = n - 1
    sup = s.support()
    if sup is not None:
        mats, probs = sup
        Bs = _restrict(mats, U).reshape(len(probs), m * m)
        G = np.einsum("k,ka,kb->ab", probs, Bs, Bs)
    else:
        rng = numpy_rng(seed, "second-moment-rate")
        G = np.zeros((m * m, m * m))
        for k in draw_batches(int(samples), n, budget=1 << 20):
            Bs = _restrict(s.sample_batch(rng, k), U).reshape(k, m * m)
            G += Bs.T @ Bs
        G /= int(samples)
    # G[(a,c),(b,d)] = E[B_ac B_bd] = (E[B ⊗ B])[(a,b),(c,d)]
    K = G.reshape(m, m, m, m).transpose(0, 2, 1, 3).reshape(m * m, m * m)
    return snap(_spectral_radius(K))


def periodic_rates(obj: Any) -> dict[str, float] | None:
    """Rates of a deterministic periodic sequence W^0, ..., W^(τ−1) run in order (or None).

    :func:`consensus_rate` and :func:`second_moment_rate` treat a periodic sampler as drawing
    a uniformly random phase each round, independently (the law of ``sample_batch``). Run in
    order, the sequence contracts per period by Π = W^(τ−1) ⋯ W^0, which Koloskova et al.
    (2020) Assumption 4 handles with τ = period:

    - ``p_period`` = 1 − σ_max(Π (I − J))², their p for blocks of τ rounds;
    - ``rate_per_round`` = ρ(UᵀΠU)^(2/τ), the exact asymptotic per-round decay factor of
      ‖X_t − X̄_t‖² along the cycle (0 for one-peer exponential with n a power of 2).

    >>> from adflora_analysis.topology import make_sampler
    >>> periodic_rates(make_sampler("one-peer-exponential", 8))
    {'period': 3, 'p_period': 1.0, 'rate_per_round': 0.0}
    """
    s = as_sampler(obj)
    mats = getattr(s, "mats", None)
    if s.is_static or mats is None:
        return None
    n = s.n
    prod = np.eye(n)
    for W in mats:
        prod = W @ prod
    U = consensus_basis(n)
    sig = np.linalg.svd(prod @ U, compute_uv=False)[0]
    rho = float(np.max(np.abs(np.linalg.eigvals(U.T @ prod @ U))))
    tau = len(mats)
    return {"period": tau, "p_period": snap(1.0 - sig ** 2),
            "rate_per_round": snap(rho ** (2.0 / tau))}


def require_mixing(obj: Any, *, tol: float = 1e-12) -> None:
    """Raise :class:`AdfloraError` if the mixing cannot reach consensus (p = 0).

    A static W must have a (strongly) connected support and p > 0; a time-varying sampler
    must have a connected E[W] (then the clients mix over time).

    >>> import numpy as np
    >>> require_mixing(np.eye(3))
    Traceback (most recent call last):
    ...
    adflora_analysis.errors.AdfloraError: graph is disconnected: p = 0, consensus cannot be reached (hint: use a connected graph or the encounter model with q > 0)
    """  # noqa: E501
    s = as_sampler(obj)
    hint = "use a connected graph or the encounter model with q > 0"
    if s.is_static:
        W = s.sample(0, None)
        if not is_connected(W):
            raise AdfloraError("graph is disconnected: p = 0, consensus cannot be reached", hint)
        p = _static_p(W)
        if p <= tol:
            raise AdfloraError(f"mixing matrix has p = {p:.3g}: consensus is not contracted "
                               "(e.g. a periodic or bipartite W without self-weights)",
                               "use lazy-metropolis weights")
        return
    if not is_connected(s.expected()):
        raise AdfloraError(f"E[W] of the {s.kind!r} sampler is disconnected: p = 0, consensus "
                           "cannot be reached", hint)
