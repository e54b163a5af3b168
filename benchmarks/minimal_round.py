"""A minimal, independent torch implementation of one adf-lora round (not a test; the speed
reference of ``benchmarks/synthetic.py`` and ``tests/test_minimal_reference.py``).

What a researcher would write for the quadratic LoRA problem with the method alone: all
clients batched, K minibatch SGD steps on the round's trained block (each step gathers
``b`` of every client's ``m`` rows of (X_i, R_i) and takes one gradient), then sparse gossip of
both factors through ``index_add_`` over the edges of W^t. No bookkeeping, no chunking, no
checks. It shares nothing with the package but the inputs (data rows, minibatch indices, W^t
as COO), so the equality test compares two independent codes.

Shapes (one seed, one layer): A (n, r, d_in), B (n, d_out, r), XR (n, m, d_in + d_out),
idx (K, n, b) int64 row indices in [0, m); W^t as ``(dst, src, w)`` over its stored entries
(self-weights included): X_new[dst] += w * X[src].

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> n, r, di, do, m, b, K = 3, 1, 2, 2, 4, 2, 2
>>> A, B = torch.randn(n, r, di, generator=g), torch.zeros(n, do, r)
>>> XR = torch.randn(n, m, di + do, generator=g)
>>> idx = torch.randint(0, m, (K, n, b), generator=g)
>>> dst = src = torch.arange(n); w = torch.ones(n)          # W = I: no mixing
>>> A1, B1 = minimal_round(A, B, XR, idx, (dst, src, w), lr=0.1, s=1.0, block="B")
>>> torch.equal(A1, A), bool(B1.abs().sum() > 0)
(True, True)
"""

from __future__ import annotations

import torch
from torch import Tensor


def local_steps(A: Tensor, B: Tensor, XR: Tensor, idx: Tensor, lr: float, s: float,
                block: str) -> tuple[Tensor, Tensor]:
    """K minibatch SGD steps on ``block`` ("A" or "B") for every client at once."""
    n, m, dx = XR.shape
    di = A.shape[-1]
    b = idx.shape[-1]
    flat = XR.reshape(n * m, dx)
    base = (torch.arange(n, device=XR.device) * m).unsqueeze(-1)      # (n, 1)
    for k in range(idx.shape[0]):
        rows = flat.index_select(0, (idx[k] + base).reshape(-1)).reshape(n, b, dx)
        X, R = rows[..., :di], rows[..., di:]
        Z = X @ A.transpose(-1, -2)                                    # (n, b, r)
        E = s * (Z @ B.transpose(-1, -2)) - R                          # (n, b, d_out)
        if block == "B":
            B = B - (lr * s / b) * (E.transpose(-1, -2) @ Z)
        else:
            A = A - (lr * s / b) * ((E @ B).transpose(-1, -2) @ X)
    return A, B


def gossip(X: Tensor, edges: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """sum_j W_ij X_j over the stored entries (dst, src, w) of W^t: one gather, one
    ``index_add_``."""
    dst, src, w = edges
    out = torch.zeros_like(X)
    return out.index_add_(0, dst, X.index_select(0, src) * w.to(X.dtype).view(-1, 1, 1))


def minimal_round(A: Tensor, B: Tensor, XR: Tensor, idx: Tensor,
                  edges: tuple[Tensor, Tensor, Tensor], *, lr: float, s: float,
                  block: str) -> tuple[Tensor, Tensor]:
    """One adf-lora round: K local steps on ``block``, then gossip of A and B."""
    A, B = local_steps(A, B, XR, idx, lr, s, block)
    return gossip(A, edges), gossip(B, edges)


def edges_of(W) -> tuple[Tensor, Tensor, Tensor]:
    """(dst, src, w) of one seed's W^t: a dense (n, n) tensor or the package's SparseMix of one
    seed (read through its public CSR fields only)."""
    if isinstance(W, Tensor):
        dst, src = W.nonzero(as_tuple=True)
        return dst, src, W[dst, src]
    counts = W.crow[1:] - W.crow[:-1]
    dst = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    return dst, W.col, W.weight
