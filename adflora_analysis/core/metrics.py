"""Consensus and aggregation metrics of stacked LoRA states (docs/architecture.md §4).

All functions take stacked tensors with the client axis at ``-3`` (``A: (*batch, n, r, d_in)``,
``B: (*batch, n, d_out, r)``) and return one value per batch entry, computed in float64.

Definitions (n clients, bars are client means):

- consensus error  Ξ_X = (1/n) Σ_i ‖X_i − X̄‖_F²
- cross term       C = ‖(1/n) Σ_i B_i A_i − B̄ Ā‖_F = ‖(1/n) Σ_i (B_i − B̄)(A_i − Ā)‖_F
  (the second form is the one computed: no cancellation). By Cauchy–Schwarz C ≤ sqrt(Ξ_A Ξ_B).
- product consensus (1/n) Σ_i ‖B_i A_i − P̄‖_F², P̄ = (1/n) Σ_j B_j A_j.
"""

from __future__ import annotations

import torch
from torch import Tensor

from adflora_analysis.core.backend import LOCAL, Backend
from adflora_analysis.core.reduce import (
    METRICS_BUDGET,
    client_chunks,
    client_mean,
    consensus_error,
    means_and_count,
)
from adflora_analysis.core.state import LoraState

__all__ = ["PARTIAL_SUM_MIN_N", "client_means", "consensus_error", "cross_term",
           "layer_metrics", "partial_sum_metrics", "product_consensus", "round_metrics",
           "total_over_layers"]

client_means = means_and_count   # the name of earlier releases

# Client chunks bound every float64 temporary at reduce.METRICS_BUDGET elements (512 KiB), so the
# metrics of a round add a transient that does not grow with n (one client at a time when a
# client's block is larger than that, e.g. a d_out x d_in product).


def _chunks(n: int, per_client: int) -> list[slice]:
    """:func:`~.reduce.client_chunks` with the metrics' budget."""
    return client_chunks(n, per_client, METRICS_BUDGET)


def _sum_of_products(B: Tensor, A: Tensor) -> Tensor:
    """Σ_m B_m A_m for B (*b, m, o, r), A (*b, m, r, i) -> (*b, o, i), as one matmul over the
    joint (m, r) axis (never materialising the m products)."""
    m, o, r, i = B.shape[-3], B.shape[-2], B.shape[-1], A.shape[-1]
    Bt = B.transpose(-3, -2).reshape(*B.shape[:-3], o, m * r)
    return Bt @ A.reshape(*A.shape[:-3], m * r, i)


def cross_term(A: Tensor, B: Tensor) -> Tensor:
    """C = ‖(1/n) Σ_i (B_i − B̄)(A_i − Ā)‖_F for A (*b, n, r, d_in), B (*b, n, d_out, r).

    >>> A = torch.tensor([[[1.0, 0.0]], [[-1.0, 0.0]]])     # (n=2, r=1, d_in=2)
    >>> B = torch.tensor([[[2.0]], [[-2.0]]])               # (n=2, d_out=1, r=1)
    >>> cross_term(A, B)  # (1/2) * ((2)(1) + (-2)(-1)) = 2, Frobenius norm of [[2, 0]]
    tensor(2., dtype=torch.float64)
    >>> cross_term(A, B.flip(0) * 0 + 1)  # B in consensus: no cross term
    tensor(0., dtype=torch.float64)
    """
    n = A.shape[-3]
    Am, Bm = client_mean(A), client_mean(B)
    per = A[..., :1, :, :].numel() + B[..., :1, :, :].numel()
    M = sum(_sum_of_products(B[..., s, :, :].double() - Bm, A[..., s, :, :].double() - Am)
            for s in _chunks(n, per))
    return (M / n).pow(2).sum((-2, -1)).sqrt()


def product_consensus(A: Tensor, B: Tensor) -> Tensor:
    """(1/n) Σ_i ‖B_i A_i − P̄‖_F² for A (*b, n, r, d_in), B (*b, n, d_out, r).

    >>> A = torch.tensor([[[1.0, 0.0]], [[-1.0, 0.0]]])     # (n=2, r=1, d_in=2)
    >>> B = torch.tensor([[[2.0]], [[-2.0]]])               # B_i A_i = [[2, 0]] for both clients
    >>> product_consensus(A, B)
    tensor(0., dtype=torch.float64)
    """
    n, d_out, d_in = A.shape[-3], B.shape[-2], A.shape[-1]
    per = max(1, A[..., 0, 0, 0].numel()) * d_out * d_in      # one client's product
    chunks = list(_chunks(n, per))

    def prod(s: slice) -> Tensor:
        return torch.einsum("...nor,...nri->...noi", B[..., s, :, :].double(),
                            A[..., s, :, :].double())

    Pbar = sum(_sum_of_products(B[..., s, :, :].double(), A[..., s, :, :].double())
               for s in _chunks(n, A[..., :1, :, :].numel() + B[..., :1, :, :].numel())) / n
    total = sum((prod(s) - Pbar.unsqueeze(-3)).pow(2).sum((-3, -2, -1)) for s in chunks)
    return total / n


def _centred_sums(A: Tensor, B: Tensor, Am: Tensor, Bm: Tensor, full: bool) -> Tensor:
    """This process's per-layer partial sums over its clients, centred at the GLOBAL means
    ``Am`` (*b, r, d_in), ``Bm`` (*b, d_out, r), for A (*b, m, r, d_in), B (*b, m, d_out, r).

    With a_i = A_i − Ā, b_i = B_i − B̄ the rows of the result (*b, 8 + d_out d_in) hold
    Σ‖a_i‖², Σ‖b_i‖², then (``full`` only, else zeros) s1 = Σ‖b_i Ā‖², s2 = Σ‖B̄ a_i‖²,
    q4 = Σ‖b_i a_i‖², x1 = Σ⟨b_i Ā, B̄ a_i⟩, x2 = Σ⟨b_i Ā, b_i a_i⟩, x3 = Σ⟨B̄ a_i, b_i a_i⟩ and
    M = Σ b_i a_i (d_out x d_in). Each scalar is a trace of r x r matrices (‖b a‖² =
    ⟨bᵀb, a aᵀ⟩, ⟨b Ā, B̄ a⟩ = ⟨B̄ᵀ b, a Āᵀ⟩, ...), so the cost is O(m r² d) plus the one
    (d_out x m r) @ (m r x d_in) product of M; no client's d_out x d_in product is formed.
    """
    m = A.shape[-3]
    batch = A.shape[:-3]
    d_out, d_in = B.shape[-2], A.shape[-1]
    acc = torch.zeros(*batch, 8, dtype=torch.float64, device=A.device)
    M = torch.zeros(*batch, d_out, d_in, dtype=torch.float64, device=A.device)
    AmT = Am.transpose(-1, -2).unsqueeze(-3)                   # (*b, 1, d_in, r)
    BmT = Bm.transpose(-1, -2).unsqueeze(-3)                   # (*b, 1, r, d_out)
    per = A[..., :1, :, :].numel() + B[..., :1, :, :].numel()
    for s in _chunks(m, per):
        a = A[..., s, :, :].double() - Am.unsqueeze(-3)        # (*b, c, r, d_in)
        b = B[..., s, :, :].double() - Bm.unsqueeze(-3)        # (*b, c, d_out, r)
        cols = [a.pow(2).sum((-3, -2, -1)), b.pow(2).sum((-3, -2, -1))]
        if full:
            bb = b.transpose(-1, -2) @ b                         # (*b, c, r, r)  b_iᵀ b_i
            aa = a @ a.transpose(-1, -2)                         # a_i a_iᵀ
            u = BmT @ b                                          # B̄ᵀ b_i
            v = a @ AmT                                          # a_i Āᵀ
            ABt = Am @ Am.transpose(-1, -2)                      # Ā Āᵀ   (*b, r, r)
            BtB = Bm.transpose(-1, -2) @ Bm                      # B̄ᵀ B̄
            cols += [(bb * ABt.unsqueeze(-3)).sum((-3, -2, -1)),
                     (aa * BtB.unsqueeze(-3)).sum((-3, -2, -1)),
                     (bb * aa).sum((-3, -2, -1)), (u * v).sum((-3, -2, -1)),
                     (bb * v).sum((-3, -2, -1)), (u * aa).sum((-3, -2, -1))]
            M += _sum_of_products(b, a)
        else:
            cols += [torch.zeros_like(cols[0])] * 6
        acc += torch.stack(cols, -1)
    return torch.cat([acc, M.flatten(-2)], -1)


def partial_sum_metrics(state: LoraState, backend: Backend = LOCAL,
                        full: bool = True) -> dict[str, Tensor]:
    """:func:`layer_metrics` from per-process partial sums: linear in n, no gathered state.

    Two ``all_sum`` collectives for all layers together: the client sums Σ A_i, Σ B_i (and the
    count n), giving the global means Ā, B̄; then this process's sums of
    :func:`_centred_sums` about them. Each metric is a function of those sums, centred at the
    global means (no Σ‖X_i‖² − n‖X̄‖² cancellation):

    - Ξ_A = (1/n) Σ‖a_i‖², Ξ_B = (1/n) Σ‖b_i‖² (a_i = A_i − Ā, b_i = B_i − B̄);
    - C = ‖M‖_F / n with M = Σ b_i a_i (d_out x d_in);
    - product consensus: B_i A_i = B̄Ā + b_iĀ + B̄a_i + b_ia_i and P̄ = B̄Ā + M/n, so
      B_i A_i − P̄ = b_iĀ + B̄a_i + (b_ia_i − M/n). Squaring, the terms linear in a single
      a_i or b_i vanish when summed (Σ a_i = Σ b_i = 0), leaving
      n·PC = Σ‖b_iĀ‖² + Σ‖B̄a_i‖² + (Σ‖b_ia_i‖² − ‖M‖²/n) + 2 Σ(⟨b_iĀ, B̄a_i⟩ + ⟨b_iĀ, b_ia_i⟩
      + ⟨B̄a_i, b_ia_i⟩), clamped at 0 (only the fourth-order bracket can cancel, at the
      round-off of Σ‖b_ia_i‖²).

    ``full=False`` returns xi_A and xi_B only. Shapes: each (*batch, L) float64; A blocks
    (*batch, n_local, r, d_in), B blocks (*batch, n_local, d_out, r).

    >>> g = torch.Generator().manual_seed(0)
    >>> s = LoraState([torch.randn(5, 2, 3, generator=g)], [torch.randn(5, 4, 2, generator=g)])
    >>> fast, ref = partial_sum_metrics(s), layer_metrics(s)
    >>> all(torch.allclose(fast[k], ref[k], rtol=1e-12) for k in ref)
    True
    """
    L = len(state.A)
    means, n = means_and_count([*state.A, *state.B], backend)
    parts = [_centred_sums(a, b, am, bm, full) for a, b, am, bm in
             zip(state.A, state.B, means[:L], means[L:], strict=True)]
    flat = backend.all_sum(torch.cat([p.reshape(-1) for p in parts]))
    cols: dict[str, list[Tensor]] = {"xi_A": [], "xi_B": [], "cross_term": [],
                                     "product_consensus": []}
    off = 0
    for p in parts:
        tot = flat[off:off + p.numel()].reshape(p.shape)
        off += p.numel()
        xa, xb, s1, s2, q4, x1, x2, x3 = tot[..., :8].unbind(-1)
        cols["xi_A"].append(xa / n)
        cols["xi_B"].append(xb / n)
        if full:
            M2 = tot[..., 8:].pow(2).sum(-1)
            cols["cross_term"].append(M2.sqrt() / n)
            pc = s1 + s2 + (q4 - M2 / n) + 2 * (x1 + x2 + x3)
            cols["product_consensus"].append(pc.clamp_min(0) / n)
    return {k: torch.stack(v, -1) for k, v in cols.items() if v}


def layer_metrics(state: LoraState) -> dict[str, Tensor]:
    """Per-layer metrics, each of shape (*batch, L): xi_A, xi_B, cross_term, product_consensus.

    >>> from adflora_analysis.core.state import LoraState
    >>> s = LoraState([torch.ones(3, 2, 4)], [torch.arange(3.0).view(3, 1, 1).expand(3, 4, 2)],
    ...               ["q"])
    >>> {k: [round(float(x), 4) for x in v] for k, v in layer_metrics(s).items()}
    {'xi_A': [0.0], 'xi_B': [5.3333], 'cross_term': [0.0], 'product_consensus': [42.6667]}
    """
    return {
        "xi_A": torch.stack([consensus_error(a) for a in state.A], -1),
        "xi_B": torch.stack([consensus_error(b) for b in state.B], -1),
        "cross_term": torch.stack([cross_term(a, b) for a, b in zip(state.A, state.B,
                                                                     strict=True)], -1),
        "product_consensus": torch.stack([product_consensus(a, b) for a, b in
                                          zip(state.A, state.B, strict=True)], -1),
    }


PARTIAL_SUM_MIN_N = 1024
"""From this many clients an in-process run computes the round's metrics by
:func:`partial_sum_metrics` (linear in n). Below it the two-pass functions above are kept, so
the shipped studies (n <= 1,000) give bit-identical rows to earlier releases (the partial sums
agree to float round-off only). Under torch.distributed the partial sums are always used. The
synthetic problem's minibatch gradients are computed in client chunks from the same n on."""


def round_metrics(state: LoraState, backend: Backend = LOCAL,
                  full: bool = True) -> dict[str, Tensor]:
    """The per-layer metrics of a round, each (*batch, L) float64, over every process's clients:
    :func:`layer_metrics` (``full``) or xi_A and xi_B only. In-process below
    :data:`PARTIAL_SUM_MIN_N` clients the two-pass functions; otherwise
    :func:`partial_sum_metrics` (two small all-reduces, never a gathered state).

    >>> s = LoraState([torch.ones(3, 2, 4)], [torch.zeros(3, 4, 2)])
    >>> sorted(round_metrics(s, full=False))
    ['xi_A', 'xi_B']
    """
    if backend.world_size == 1 and state.n_clients < PARTIAL_SUM_MIN_N:
        if full:
            return layer_metrics(state)
        return {f"xi_{b}": torch.stack([consensus_error(x) for x in state.block(b)], -1)
                for b in ("A", "B")}
    return partial_sum_metrics(state, backend, full)


def total_over_layers(name: str, per_layer: Tensor) -> Tensor:
    """The ``"all"`` value of a per-layer metric (*batch, L) -> (*batch,).

    Squared norms add over layers; the cross term of the block-diagonal stack of layers is the
    root of the sum of squares.

    >>> total_over_layers("xi_A", torch.tensor([1.0, 2.0])), total_over_layers(
    ...     "cross_term", torch.tensor([3.0, 4.0]))
    (tensor(3.), tensor(5.))
    """
    if name == "cross_term":
        return per_layer.pow(2).sum(-1).sqrt()
    return per_layer.sum(-1)
