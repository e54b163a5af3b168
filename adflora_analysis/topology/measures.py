"""Topology constants without n x n work, and the effective number of neighbours (docs/topology.md).

For n in the tens of thousands no n x n matrix fits, so the constants of a sparse sampler
(``Sampler.sparse``) come from its sparse draws (:class:`~.sparse.SparseW`), each in
O(n + edges):

- **p of an exchangeable sampler** (encounter, matching on the complete graph) by the trace
  identity: E[WᵀW] = αI + βJ, so λ_max((I − J)E[WᵀW](I − J)) = α = E‖W(I − J)‖²_F / (n − 1)
  and p = 1 − E‖W(I − J)‖²_F / (n − 1), the mean of i.i.d. per-draw terms with an exact
  standard error (docs/topology.md, "p without an eigendecomposition").
- **p otherwise** by Lanczos (ARPACK ``eigsh``) on the operator v ↦ (I − J) Ê[WᵀW] (I − J) v
  applied draw by draw (exact over one period for a periodic sampler), with the delta-method
  standard error of the top eigenvalue.
- **δ** of E[W]: of the static W (sparse ARPACK), of the mean of the draws, or, for an
  exchangeable sampler, 1 − |a − b| with a = E[W_ii], b = E[W_ij] (E[W] = (a − b)I + nbJ).
- **effective number of neighbours** n_W(γ) of Vogels, Hendrikx & Jaggi, "Beyond spectral
  gap: the role of the topology in decentralized learning", NeurIPS 2022, §3: run
  x_{t+1} = W^t(√γ x_t + ξ_t) with i.i.d. unit-variance ξ; n_W(γ) is the stationary variance
  of a client without gossip, 1/(1 − γ), over the mean stationary variance with gossip,

      n_W(γ) = (1/(1 − γ)) / ((1/n) Σ_{k≥1} γ^(k−1) E‖W_k ⋯ W_1‖²_F).

  It is 1 without gossip (W = I) and n with exact averaging (W = J). Closed forms: a
  symmetric static W with eigenvalues λ_i gives (1/n) Σ_i λ_i² / (1 − γλ_i²) in the
  denominator; an exchangeable doubly stochastic sampler gives
  n_W(γ) = (1 − γα) / ((1 − γ)α + (1 − α)/n) with α = 1 − p. Otherwise the series is
  estimated with Rademacher probes (Hutchinson), one product chain per probe.

>>> from adflora_analysis.topology.samplers import make_sampler
>>> round(effective_neighbours(make_sampler("static", 8, graph="complete"), 0.9).value, 9)
8.0
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import scipy.stats as st
from scipy.sparse.csgraph import connected_components

from adflora_analysis.seeding import numpy_rng
from adflora_analysis.topology.samplers import EncounterSampler, Sampler
from adflora_analysis.topology.sparse import SparseW
from adflora_analysis.topology.spectral import snap, spectral_summary

__all__ = ["LARGE_N", "LARGE_SAMPLES", "Estimate", "effective_neighbours", "exchangeable_p",
           "large_constants", "operator_p", "symmetric_extremes"]

LARGE_N = 2048
"""From this many clients :func:`~.config.topology_constants` of a sparse sampler uses this
module (no n x n matrix)."""

LARGE_SAMPLES = 32
"""Most draws of W^t the large-n estimators take (each costs O(n + edges); at n = 100,000 the
per-draw terms of p concentrate, so 32 draws give a standard error near 1e-5)."""


@dataclass(frozen=True)
class Estimate:
    """A value with its standard error (0 when exact) and how it was obtained."""

    value: float
    stderr: float
    method: str
    samples: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready)."""
        return asdict(self)


def _draws(s: Sampler, samples: int, seed: int, stream: str, chunk: int = 16):
    """Batches of sparse draws of ``s`` (exactly ``samples`` in all)."""
    rng = numpy_rng(seed, stream)
    done = 0
    while done < samples:
        k = min(chunk, samples - done)
        yield s.sample_sparse_batch(rng, k)
        done += k


def exchangeable_p(s: Sampler, samples: int = LARGE_SAMPLES, seed: int = 0) -> Estimate:
    """p = 1 − E‖W(I − J)‖²_F / (n − 1) of an exchangeable sampler, by Monte Carlo over
    sparse draws, O(samples (n + edges)), with its exact standard error.

    >>> from adflora_analysis.topology.samplers import make_sampler
    >>> from adflora_analysis.topology.rates import consensus_rate
    >>> s = make_sampler("encounter", 10, q=0.1)
    >>> e = exchangeable_p(s, samples=20000)
    >>> round(e.value, 3), e.method, e.value == consensus_rate(s, samples=20000).p
    (0.366, 'trace-identity', True)
    """
    if not s.exchangeable:
        raise ValueError("exchangeable_p needs an exchangeable sampler")
    f = np.concatenate([W.frob_dev() for W in _draws(s, samples, seed, "consensus-rate")])
    n = s.n
    se = float(f.std(ddof=1) / math.sqrt(len(f))) / (n - 1) if len(f) > 1 else float("nan")
    return Estimate(snap(1.0 - float(f.mean()) / (n - 1)), se, "trace-identity", len(f))


def _deflated(n: int, apply) -> spla.LinearOperator:
    def mv(v):
        v = np.ravel(v)
        v = v - v.mean()
        y = apply(v)
        return y - y.mean()

    return spla.LinearOperator((n, n), matvec=mv, rmatvec=mv, dtype=np.float64)


def _phases(s: Sampler) -> list[SparseW] | None:
    period = getattr(s, "_period", None)
    if period is None or not s.sparse:
        return None
    return [s.sample_sparse(k) for k in range(period)]


def operator_p(s: Sampler, samples: int = LARGE_SAMPLES, seed: int = 0) -> Estimate:
    """p = 1 − λ_max((I − J)E[WᵀW](I − J)) by Lanczos on the sparse expected operator: exact
    for a static W and over one period of a periodic sampler, else over ``samples`` draws,
    cross-fitted from their two halves (no upward λ_max bias; standard error of the per-draw
    Rayleigh quotients)."""
    n = s.n
    if s.is_static:
        mats, method = [s.sample_sparse(0)], "lanczos-exact"
    else:
        mats = _phases(s)
        method = "lanczos-exact"
        if mats is None:
            mats = list(_draws(s, samples, seed, "consensus-rate"))
            method = "lanczos-monte-carlo"
    starts = np.cumsum([0] + [W.size for W in mats])      # first draw of each batch
    count = int(starts[-1])

    def top(lo: int, hi: int) -> tuple[float, np.ndarray]:
        """λ_max of the deflated mean of WᵀW over draws lo..hi-1, and its eigenvector."""

        def apply(v: np.ndarray) -> np.ndarray:
            out = np.zeros(n)
            for W, a in zip(mats, starts[:-1], strict=False):
                k0, k1 = max(lo - a, 0), min(hi - a, W.size)
                if k1 > k0:
                    x = np.broadcast_to(v, (W.size, n))
                    out += W.rmatvec(W.matvec(x))[k0:k1].sum(0)
            return out / (hi - lo)

        v0 = np.random.default_rng(0).standard_normal(n)
        lam, vec = spla.eigsh(_deflated(n, apply), k=1, which="LA", tol=1e-10,
                              v0=v0 - v0.mean())
        return float(lam[0]), vec[:, 0]

    def per_draw(v: np.ndarray) -> np.ndarray:
        """‖W_s v‖² for every draw s (v unit, mean zero): (count,)."""
        return np.concatenate([(W.matvec(np.broadcast_to(v, (W.size, n))) ** 2).sum(1)
                               for W in mats])

    if method != "lanczos-monte-carlo" or count < 4:
        lam, vec = top(0, count)
        se = 0.0
        if method == "lanczos-monte-carlo":
            f = per_draw(vec)
            se = float(f.std(ddof=1) / math.sqrt(len(f)))
        return Estimate(snap(1.0 - lam), se, method, 0 if se == 0.0 else count)
    # Monte Carlo: the plug-in λ_max of the draws' mean is biased upward (the maximum picks the
    # noise); cross-fitted from the two halves of the draws instead (the top eigenvector of one
    # half, its Rayleigh quotient on the other, both ways) — the same draws and the same
    # estimator as rates.consensus_rate's dense path
    half = count // 2
    v1, v2 = top(0, half)[1], top(half, count)[1]
    f = np.concatenate([per_draw(v2)[:half], per_draw(v1)[half:]])
    se = float(f.std(ddof=1) / math.sqrt(len(f)))
    return Estimate(snap(1.0 - float(f.mean())), se, method, count)


def _encounter_offdiag(s: EncounterSampler) -> float | None:
    """E[W_ij] of the encounter model in O(n) (None for max-degree and pairwise).

    The other degrees a, b of i and j are i.i.d. Binomial(n − 2, q); metropolis needs
    E[1/(2 + max(a, b))], whose law has P(max ≤ k) = F(k)²."""
    n, q, rule = s.n, s.q, s.rule
    k = np.arange(n - 1)
    if rule == "uniform":
        return q * float(st.binom.pmf(k, n - 2, q) @ (1.0 / (2.0 + k)))
    if rule not in ("metropolis", "lazy-metropolis"):
        return None
    F = st.binom.cdf(k, n - 2, q)
    pmax = np.diff(np.concatenate([[0.0], F ** 2]))
    off = q * float(pmax @ (1.0 / (2.0 + k)))
    return 0.5 * off if rule == "lazy-metropolis" else off


def _mean_sparse(s: Sampler, samples: int, seed: int) -> tuple[sp.csr_array, int]:
    if s.is_static:
        return s.csr, 0
    mats = _phases(s)
    if mats is None:
        mats = list(_draws(s, samples, seed, "topology-expected"))
    count = sum(W.size for W in mats)
    total = sum(W.csr(k) for W in mats for k in range(W.size))
    return sp.csr_array(total / count), count


def connected_fraction(s: Sampler, samples: int = LARGE_SAMPLES, seed: int = 0) -> float:
    """Fraction of draws W^t whose own graph is (strongly) connected: 1 or 0 for a static
    sampler, over one period for a periodic one, else over ``samples`` draws.

    >>> from adflora_analysis.topology.samplers import make_sampler
    >>> connected_fraction(make_sampler("matching", 6))
    0.0
    """
    if not s.sparse:
        from adflora_analysis.topology.validation import is_connected

        mats = s.support()[0] if getattr(s, "mats", None) is not None else \
            s.sample_batch(numpy_rng(seed, "topology-connected"), samples)
        return float(np.mean([is_connected(W) for W in mats]))
    mats = [s.sample_sparse(0)] if s.is_static else _phases(s) or list(
        _draws(s, samples, seed, "topology-connected"))
    ok = total = 0
    for W in mats:
        for k in range(W.size):
            ncomp = connected_components(W.csr(k), directed=not s.symmetric,
                                         connection="strong", return_labels=False)
            ok += int(ncomp == 1)
            total += 1
    return ok / total


def effective_neighbours(s: Sampler, gamma: float = 0.95, *, probes: int = 64, seed: int = 0,
                         p: Estimate | None = None, tol: float = 1e-9) -> Estimate:
    """Effective number of neighbours n_W(γ) of Vogels, Hendrikx & Jaggi (NeurIPS 2022, §3):
    see the module docstring for the definition and the closed forms used.

    Parameters
    ----------
    s : Sampler
    gamma : float in (0, 1)
        Decay of the random walk (their fitted γ on Cifar-10 was 0.951).
    probes : int
        Rademacher probes of the Hutchinson estimate (when no closed form applies).
    p : Estimate, optional
        p of an exchangeable sampler, if already computed.

    Examples
    --------
    >>> from adflora_analysis.topology.samplers import make_sampler
    >>> ring = make_sampler("static", 16, graph="ring")
    >>> round(effective_neighbours(ring, 0.9).value, 3)       # of 16 clients
    6.601
    """
    if not 0.0 < gamma < 1.0:
        raise ValueError(f"gamma = {gamma} must be in (0, 1)")
    n = s.n
    if s.exchangeable and s.doubly_stochastic:
        if p is None:
            p = exchangeable_p(s, seed=seed) if s.sparse and n >= LARGE_N else _small_p(s, seed)
        a = 1.0 - p.value

        def ne(alpha: float) -> float:
            return (1 - gamma * alpha) / ((1 - gamma) * alpha + (1 - alpha) / n)

        h = 1e-7
        slope = (ne(min(1.0, a + h)) - ne(max(0.0, a - h))) / (min(1.0, a + h) - max(0.0, a - h))
        return Estimate(ne(a), abs(slope) * p.stderr, "closed-form-from-p", p.samples)
    if s.is_static and s.symmetric and n <= 3000:
        lam = np.linalg.eigvalsh(np.asarray(s.sample(0, None)))
        var = float(np.mean(lam ** 2 / (1 - gamma * lam ** 2)))
        return Estimate((1 / (1 - gamma)) / var, 0.0, "eigenvalues")
    return _hutchinson(s, gamma, probes, seed, tol)


def _small_p(s: Sampler, seed: int) -> Estimate:
    from adflora_analysis.topology.rates import consensus_rate

    r = consensus_rate(s, seed=seed)
    return Estimate(r.p, r.stderr, r.method, r.samples)


def _hutchinson(s: Sampler, gamma: float, probes: int, seed: int, tol: float) -> Estimate:
    """Σ_k γ^(k−1) E‖W_k ⋯ W_1 z‖² over Rademacher z, one chain of draws per probe."""
    n = s.n
    rng = numpy_rng(seed, "effective-neighbours")
    z = rng.choice([-1.0, 1.0], size=(probes, n))
    steps = max(1, math.ceil(math.log(tol) / math.log(gamma)))
    ds = s.doubly_stochastic
    cons = np.zeros(probes)
    if ds:  # the consensus part stays: ‖W_k..W_1 Jz‖² = ‖Jz‖² for every k
        cons = n * z.mean(1) ** 2
        y = z - z.mean(1, keepdims=True)
    else:
        y = z.copy()
    acc = np.zeros(probes)
    phase = rng.integers(0, 1 << 30)
    draw_rng = numpy_rng(seed, "effective-neighbours-draws")
    for k in range(steps):
        if s.is_static:
            y = (s.csr @ y.T).T
        elif s.sparse and getattr(s, "_period", None) is not None:   # run in order
            y = (s.sample_sparse(int(phase + k)).csr() @ y.T).T
        elif s.sparse:
            y = s.sample_sparse_batch(draw_rng, probes).matvec(y)
        else:
            Ws = s.sample_batch(draw_rng, probes)
            y = np.einsum("bij,bj->bi", Ws, y)
        term = (y ** 2).sum(1)
        acc += gamma ** k * term
        if ds and float(term.max()) * gamma ** k < tol * n:
            break
    per = (acc + cons / (1 - gamma)) / n                          # mean variance, per probe
    mean = float(per.mean())
    se_var = float(per.std(ddof=1) / math.sqrt(probes))
    value = (1 / (1 - gamma)) / mean
    return Estimate(value, value * se_var / mean, "hutchinson", probes)


def symmetric_extremes(W: sp.csr_array, tol: float = 1e-12, maxiter: int = 400
                       ) -> tuple[float, float]:
    """(λ2, λn) of a symmetric doubly stochastic sparse W (n, n).

    Lanczos on (I − J)W(I − J) (top) and W (bottom) first; when an end of the spectrum is so
    clustered that it does not converge in ``maxiter`` restarts (a ring or torus of 10,000
    clients: λ2 − λ3 ~ 1e-7), shift-invert Lanczos about σ = 1 + 1e-8 (the eigenvalues nearest
    σ are 1 and λ2) or σ just below the Gershgorin bound λn >= min_i (2 w_ii − 1) (nearest:
    λn; the bound is attained by bipartite graphs such as even rings and tori), one sparse LU
    each.

    >>> import networkx as nx
    >>> from adflora_analysis.topology.weights import mixing_matrix
    >>> W = sp.csr_array(mixing_matrix(nx.cycle_graph(3000), "metropolis", sparse=True))
    >>> lam2, lamn = symmetric_extremes(W)
    >>> bool(np.isclose(lam2, 1 / 3 + 2 / 3 * np.cos(2 * np.pi / 3000), atol=1e-10, rtol=0))
    True
    >>> round(lamn, 9)
    -0.333333333
    """
    n = W.shape[0]
    v0 = np.random.default_rng(0).standard_normal(n)

    def nearest(sigma: float, k: int) -> np.ndarray:
        return spla.eigsh(sp.csc_array(W), k=k, sigma=sigma, which="LM", tol=tol, v0=v0,
                          return_eigenvectors=False)

    try:
        op = _deflated(n, lambda v: W @ v)
        lam2 = float(spla.eigsh(op, k=1, which="LA", tol=tol, v0=v0 - v0.mean(), maxiter=maxiter,
                                return_eigenvectors=False)[0])
    except spla.ArpackNoConvergence:
        lam2 = float(np.min(nearest(1.0 + 1e-8, 2)))
    try:
        lamn = float(spla.eigsh(W, k=1, which="SA", tol=tol, v0=v0, maxiter=maxiter,
                                return_eigenvectors=False)[0])
    except spla.ArpackNoConvergence:                # σ just below the Gershgorin bound
        low = max(-1.0, float((2.0 * W.diagonal() - 1.0).min()))     # λn >= min_i 2w_ii − 1
        lamn = float(nearest(low - 1e-8, 1)[0])
    return lam2, lamn


def large_constants(s: Sampler, samples: int = LARGE_SAMPLES, seed: int = 0,
                    gamma: float = 0.95) -> dict[str, Any]:
    """The fields of :func:`~.config.topology_constants` for a sparse sampler at large n,
    with no n x n array (see the module docstring)."""
    samples = min(int(samples), LARGE_SAMPLES)
    n = s.n
    if s.exchangeable:
        rate = exchangeable_p(s, samples, seed)
        off = _encounter_offdiag(s) if isinstance(s, EncounterSampler) else None
        if off is None:  # a = mean self-weight of the draws, b = (1 − a)/(n − 1)
            diag = np.concatenate([W.diag.ravel() for W in _draws(s, samples, seed,
                                                                 "topology-expected")])
            off = (1.0 - float(diag.mean())) / (n - 1)
        lam = 1.0 - n * off                        # a − b with a = 1 − (n − 1) b
        spec = {"lambda2": lam, "lambda_n": lam, "spectral_gap": snap(1.0 - abs(lam))}
        connected = off > 0
    else:
        EW, _ = _mean_sparse(s, samples, seed)
        if s.is_static and s.symmetric and s.doubly_stochastic:
            lam2, lamn = symmetric_extremes(EW)
            spec = {"lambda2": lam2, "lambda_n": lamn,
                    "spectral_gap": snap(1.0 - max(abs(lam2), abs(lamn)))}
        else:
            ss = spectral_summary(EW, method="sparse")
            spec = {"lambda2": ss.lambda2, "lambda_n": ss.lambda_n, "spectral_gap": ss.gap}
        if s.is_static and s.symmetric and s.doubly_stochastic:   # p = 1 − (1 − δ)²
            rate = Estimate(snap(1.0 - (1.0 - spec["spectral_gap"]) ** 2), 0.0, "exact", 0)
        else:
            rate = operator_p(s, samples, seed)
        connected = connected_components(EW, directed=True, connection="strong",
                                         return_labels=False) == 1
    rho = (1.0 - spec["spectral_gap"]) ** 2 if s.is_static and s.symmetric else None
    ne = effective_neighbours(s, gamma, seed=seed, p=rate if s.exchangeable else None,
                              probes=16)
    return {**spec, "connected": bool(connected), "p": rate.value, "p_stderr": rate.stderr,
            "p_method": rate.method, "p_samples": rate.samples, "second_moment_rate": rho,
            "effective_neighbours": ne.value, "effective_neighbours_stderr": ne.stderr,
            "effective_neighbours_gamma": gamma,
            "connected_draws": connected_fraction(s, min(samples, 8), seed)}
