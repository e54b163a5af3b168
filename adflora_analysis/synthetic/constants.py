"""Constants of the quadratic LoRA problem, measured along the trajectory (docs/architecture.md §5,
§6).

The theory (Koloskova et al. 2020, Assumptions 1-3; Lian et al. 2017, Assumption 1) needs
L (smoothness of every f_i), sigma^2 (variance of a client's stochastic gradient), zeta^2
(gradient dissimilarity) and f* (the minimum of f). None is assumed here. The functions take
arrays (the problem's data and factors), so this module imports nothing of the problem; the
problem calls them (:meth:`QuadraticProblem.measure_constants`, ``evaluate``):

- **f*** is exact: :meth:`QuadraticProblem._f_star` solves the rank-r reduced-rank regression.
- **sigma^2** is exact at a point: :func:`sigma_sq` computes the variance of the minibatch
  gradient from the per-sample gradients (no sampling); for additive noise it is the configured
  variance; logged every round at every client (``sigma_sq_max`` = max over clients).
- **zeta^2** = (1/n) sum_i ||grad f_i(x_bar) - grad f(x_bar)||^2 at the averaged model, every round.
- **L**: the quadratic LoRA loss is *not* globally L-smooth (its Hessian grows with ||A||, ||B||),
  so L is only defined on a region. Two numbers:

  * ``L_hull`` (:func:`smoothness_bound`, rigorous): for any point z with
    ||A_z||_2 <= a and ||B_z||_2 <= b, ``||hess f_i(z)|| <= s^2 lam_i (a^2 + b^2) + s (s lam_i a b +
    ||C_i||_2)`` with lam_i = lam_max(S_i) (derivation in docs/theory.md §3). With a, b the running
    maxima of the Frobenius norms over every client and every inner step so far, this bounds L
    on the convex hull of all iterates, which contains every averaged model and every segment
    the descent lemma uses.
  * ``L_power`` (:func:`hessian_norm`, a lower estimate): ||H v|| after Hessian-vector power
    iteration at the client points and the averaged model, every ``constants_every`` rounds.
    Power iteration never overestimates, so L_power <= true local L <= L_hull.
"""

from __future__ import annotations

import torch
from torch import Tensor

from adflora_analysis.seeding import torch_generator


def sigma_sq(X: Tensor, R: Tensor, s: float, A: Tensor, B: Tensor, *, noise_kind: str,
             noise: float, batch_size: int) -> Tensor:
    """E||g_i(x_i) - grad f_i(x_i)||^2 of one local step's stochastic gradient, (S, n).

    ``X: (S, n, L, m, d_in)`` and ``R: (S, n, L, m, d_out)`` are the clients' rows,
    ``A: (S, n, L, r, d_in)``, ``B: (S, n, L, d_out, r)``. Minibatch of b rows drawn i.i.d.
    (with replacement) from m: Var = pop_var / b, with
    pop_var = (1/m) sum_j ||g_j||^2 - ||g_bar||^2 and per-sample gradients g_j
    (grad_B = s e_j z_j^T, grad_A = s (B^T e_j) x_j^T, e_j = s B A x_j - r_j, z_j = A x_j); layers
    draw independent rows, so variances add over layers. ``noise_kind`` "additive" has variance
    ``noise``, "none" zero.

    >>> X = torch.ones(1, 1, 1, 2, 1, dtype=torch.float64)
    >>> R = torch.tensor([[[[[0.0], [2.0]]]]], dtype=torch.float64)
    >>> A, B = torch.ones(1, 1, 1, 1, 1), torch.zeros(1, 1, 1, 1, 1)
    >>> float(sigma_sq(X, R, 1.0, A.double(), B.double(), noise_kind="minibatch", noise=0.0,
    ...                batch_size=1))   # per-row grad_B = -r_j: variance of {0, -2} is 1
    1.0
    """
    S, n = A.shape[0], A.shape[1]
    if noise_kind == "none":
        return torch.zeros(S, n, dtype=torch.float64, device=A.device)
    if noise_kind == "additive":
        return torch.full((S, n), noise, dtype=torch.float64, device=A.device)
    X, R = X.double(), R.double()
    m, b = X.shape[-2], batch_size
    Z = X @ A.transpose(-1, -2)                          # (S, n, L, m, r)
    E = s * Z @ B.transpose(-1, -2) - R                  # (S, n, L, m, do)
    per = s * s * (E.pow(2).sum(-1) * Z.pow(2).sum(-1)
                   + (E @ B).pow(2).sum(-1) * X.pow(2).sum(-1))   # (S, n, L, m)
    gB = (s / m) * E.transpose(-1, -2) @ Z
    gA = (s / m) * (E @ B).transpose(-1, -2) @ X
    mean_sq = gA.pow(2).sum((-2, -1)) + gB.pow(2).sum((-2, -1))
    pop = (per.mean(-1) - mean_sq).clamp_min(0)          # (S, n, L)
    return (pop / b).sum(-1)


def smoothness_bound(s: float, max_fro_A: Tensor, max_fro_B: Tensor, lam_sigma: Tensor,
                     norm_C: Tensor) -> Tensor:
    """Rigorous L over the convex hull of every client iterate so far, per seed (S,).

    ``max_{i,l} s^2 lam_il (a_l^2 + b_l^2) + s (s lam_il a_l b_l + ||C_il||_2)`` with
    a_l, b_l the running maxima of ||A_i^l||_F, ||B_i^l||_F (>= spectral norms),
    ``max_fro_A``/``max_fro_B`` (S, L), and ``lam_sigma`` = λmax(Σ_il), ``norm_C`` = ||C_il||_2,
    both (S, n, L).

    >>> one = torch.ones(1, 1)
    >>> float(smoothness_bound(1.0, one, one, torch.ones(1, 1, 1), torch.ones(1, 1, 1)))
    4.0
    """
    s = float(s)
    a = max_fro_A.unsqueeze(1)                           # (S, 1, L)
    b = max_fro_B.unsqueeze(1)
    lam, cn = lam_sigma, norm_C                          # (S, n, L)
    val = s * s * lam * (a * a + b * b) + s * (s * lam * a * b + cn)
    return val.flatten(1).amax(-1)


def point_bound(s: float, A: Tensor, B: Tensor, Sig: Tensor, C: Tensor) -> Tensor:
    """The same Hessian bound at given points with spectral norms and the exact G:
    ``s^2 lam (||A||_2^2 + ||B||_2^2) + s ||G||_2``, G = s B A S - C. Shapes broadcast."""
    lam = torch.linalg.eigvalsh(Sig).amax(-1)
    na = torch.linalg.matrix_norm(A, ord=2)
    nb = torch.linalg.matrix_norm(B, ord=2)
    G = s * B @ (A @ Sig) - C
    return s * s * lam * (na ** 2 + nb ** 2) + s * torch.linalg.matrix_norm(G, ord=2)


def hvp(s: float, A: Tensor, B: Tensor, U: Tensor, V: Tensor, Sig: Tensor,
        C: Tensor) -> tuple[Tensor, Tensor]:
    """Hessian-vector product of f = 1/2 tr(P S P^T) - <P, C>, P = s B A, at (A, B) in the
    direction (U, V) (U like A, V like B)::

        dP = s (V A + B U),   G = P S - C
        H_A = s V^T G + s B^T (dP S),   H_B = s G U^T + s (dP S) A^T
    """
    G = s * B @ (A @ Sig) - C
    dPS = s * (V @ A + B @ U) @ Sig
    HA = s * V.transpose(-1, -2) @ G + s * B.transpose(-1, -2) @ dPS
    HB = s * G @ U.transpose(-1, -2) + s * dPS @ A.transpose(-1, -2)
    return HA, HB


def hessian_norm(s: float, A: Tensor, B: Tensor, Sig: Tensor, C: Tensor, *,
                 iters: int = 20, seed: int = 0,
                 clients: tuple[int, slice] | None = None) -> Tensor:
    """||hess f|| by power iteration at every point of a batch (per layer: the Hessian is
    block diagonal over layers), returned with the point's leading shape.

    Returns ``||H v_k||`` for the k-th unit iterate, a lower bound of the largest absolute
    eigenvalue for every k that converges to it (no sign ambiguity, unlike the Rayleigh quotient).
    ``clients = (n, sl)``: the points are clients ``sl`` of n on axis 1 (one process's share
    under torch.distributed); the start vectors are those of the whole batch, so the estimate
    equals the one computed with every client in one process.
    """
    g = torch_generator(seed, "power-iteration")
    if clients is None:
        U = torch.randn(A.shape, generator=g, dtype=torch.float64).to(A.device)
        V = torch.randn(B.shape, generator=g, dtype=torch.float64).to(A.device)
    else:
        n, sl = clients
        U = torch.randn((A.shape[0], n, *A.shape[2:]), generator=g,
                        dtype=torch.float64)[:, sl].to(A.device)
        V = torch.randn((B.shape[0], n, *B.shape[2:]), generator=g,
                        dtype=torch.float64)[:, sl].to(A.device)
    A, B, Sig, C = A.double(), B.double(), Sig.double(), C.double()
    est = torch.zeros(A.shape[:-2], dtype=torch.float64, device=A.device)
    for _ in range(iters):
        nrm = (U.pow(2).sum((-2, -1)) + V.pow(2).sum((-2, -1))).sqrt().clamp_min(1e-300)
        U, V = U / nrm[..., None, None], V / nrm[..., None, None]
        U, V = hvp(s, A, B, U, V, Sig, C)
        est = (U.pow(2).sum((-2, -1)) + V.pow(2).sum((-2, -1))).sqrt()
    return est
