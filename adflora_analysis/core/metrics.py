"""Consensus and aggregation metrics of stacked LoRA states (DESIGN §4).

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

from adflora_analysis.core.state import LoraState

# Client chunk for the product-consensus loop: bounds memory at chunk * d_out * d_in per batch
# (2**20 float64 elements = 8 MiB per temporary, so the transient does not grow with n).
_CHUNK_ELEMS = 2**20


def consensus_error(X: Tensor, client_axis: int = -3) -> Tensor:
    """Ξ = (1/n) Σ_i ‖X_i − X̄‖_F², reduced over every axis after the client axis.

    >>> import torch
    >>> consensus_error(torch.tensor([[[1.0]], [[3.0]]]))
    tensor(1., dtype=torch.float64)
    """
    X = X.double()
    ax = client_axis % X.ndim
    D = X - X.mean(dim=ax, keepdim=True)
    return D.pow(2).flatten(ax).sum(-1) / X.shape[ax]


def cross_term(A: Tensor, B: Tensor) -> Tensor:
    """C = ‖(1/n) Σ_i (B_i − B̄)(A_i − Ā)‖_F for A (*b, n, r, d_in), B (*b, n, d_out, r)."""
    A, B = A.double(), B.double()
    n = A.shape[-3]
    Ac = A - A.mean(-3, keepdim=True)
    Bc = B - B.mean(-3, keepdim=True)
    M = torch.einsum("...nor,...nri->...oi", Bc, Ac) / n
    return M.pow(2).sum((-2, -1)).sqrt()


def product_consensus(A: Tensor, B: Tensor) -> Tensor:
    """(1/n) Σ_i ‖B_i A_i − P̄‖_F² for A (*b, n, r, d_in), B (*b, n, d_out, r)."""
    A, B = A.double(), B.double()
    n, d_out, d_in = A.shape[-3], B.shape[-2], A.shape[-1]
    batch = max(1, A[..., 0, 0, 0].numel())
    Pbar = torch.einsum("...nor,...nri->...oi", B, A) / n
    chunk = max(1, _CHUNK_ELEMS // max(1, d_out * d_in * batch))
    total = torch.zeros(A.shape[:-3], dtype=torch.float64, device=A.device)
    for s in range(0, n, chunk):  # chunks of clients, not one client at a time
        P = torch.einsum("...nor,...nri->...noi", B[..., s:s + chunk, :, :],
                         A[..., s:s + chunk, :, :])
        total = total + (P - Pbar.unsqueeze(-3)).pow(2).sum((-3, -2, -1))
    return total / n


def layer_metrics(state: LoraState) -> dict[str, Tensor]:
    """Per-layer metrics, each of shape (*batch, L): xi_A, xi_B, cross_term, product_consensus."""
    return {
        "xi_A": torch.stack([consensus_error(a) for a in state.A], -1),
        "xi_B": torch.stack([consensus_error(b) for b in state.B], -1),
        "cross_term": torch.stack([cross_term(a, b) for a, b in zip(state.A, state.B,
                                                                     strict=True)], -1),
        "product_consensus": torch.stack([product_consensus(a, b) for a, b in
                                          zip(state.A, state.B, strict=True)], -1),
    }


def total_over_layers(name: str, per_layer: Tensor) -> Tensor:
    """The ``"all"`` value of a per-layer metric (*batch, L) -> (*batch,).

    Squared norms add over layers; the cross term of the block-diagonal stack of layers is the
    root of the sum of squares.
    """
    if name == "cross_term":
        return per_layer.pow(2).sum(-1).sqrt()
    return per_layer.sum(-1)
