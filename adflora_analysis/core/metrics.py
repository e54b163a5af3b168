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

from adflora_analysis.core.state import LoraState

# Client chunks bound every float64 temporary at _CHUNK_ELEMS elements (512 KiB), so the metrics
# of a round add a transient that does not grow with n (one client at a time when a client's
# block is larger than that, e.g. a d_out x d_in product).
_CHUNK_ELEMS = 2**16


def _chunks(n: int, per_client: int):
    """Slices of at most ``_CHUNK_ELEMS // per_client`` (at least 1) clients covering 0..n."""
    step = max(1, _CHUNK_ELEMS // max(1, per_client))
    return (slice(s, min(n, s + step)) for s in range(0, n, step))


def _parts(X: Tensor, ax: int) -> list[Tensor]:
    """``X`` split along the client axis ``ax`` into chunks of at most _CHUNK_ELEMS elements
    (views, no copy)."""
    n = X.shape[ax]
    return [X.narrow(ax, s.start, s.stop - s.start) for s in _chunks(n, X.numel() // max(1, n))]


def _client_mean(X: Tensor, ax: int = -3) -> Tensor:
    """Mean over the client axis ``ax`` in float64, keepdim, accumulated chunk by chunk."""
    ax = ax % X.ndim
    return sum(p.double().sum(ax, keepdim=True) for p in _parts(X, ax)) / X.shape[ax]


def _sum_of_products(B: Tensor, A: Tensor) -> Tensor:
    """Σ_m B_m A_m for B (*b, m, o, r), A (*b, m, r, i) -> (*b, o, i), as one matmul over the
    joint (m, r) axis (never materialising the m products)."""
    m, o, r, i = B.shape[-3], B.shape[-2], B.shape[-1], A.shape[-1]
    Bt = B.transpose(-3, -2).reshape(*B.shape[:-3], o, m * r)
    return Bt @ A.reshape(*A.shape[:-3], m * r, i)


def consensus_error(X: Tensor, client_axis: int = -3) -> Tensor:
    """Ξ = (1/n) Σ_i ‖X_i − X̄‖_F², reduced over every axis after the client axis.

    >>> import torch
    >>> consensus_error(torch.tensor([[[1.0]], [[3.0]]]))
    tensor(1., dtype=torch.float64)
    """
    ax = client_axis % X.ndim
    mean = _client_mean(X, ax)
    # the centred chunk is a fresh tensor: flattening it is a view, never a copy of the block
    total = sum((p.double() - mean).pow(2).flatten(ax).sum(-1) for p in _parts(X, ax))
    return total / X.shape[ax]


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
    Am, Bm = _client_mean(A), _client_mean(B)
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
