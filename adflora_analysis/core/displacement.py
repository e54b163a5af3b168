"""Consensus error of a round's local displacement, accumulated client by client
(docs/architecture.md §4).

Theory check 4 needs, per block and layer, Ξ(Δ_t) = (1/n) Σ_i ‖Δ_i − Δ̄‖²_F of the displacement
Δ_i = X_i(after the local update) − X_i(before). Keeping the pre-update state to subtract it
would double the memory of the stacked adapters, so the problem reports each client's (or a
group of clients') displacement as it writes the update, and :class:`DisplacementStats` merges
the groups with the pairwise update of Chan, Golub & LeVeque (1979): a group of m values with
mean μ_b and centred sum of squares M2_b joins (c, μ, M2) as

    μ ← μ + (μ_b − μ) m / (c + m),    M2 ← M2 + M2_b + ‖μ_b − μ‖² c m / (c + m).

This is as accurate as the two-pass formula (no Σ‖Δ_i‖² − n‖Δ̄‖² cancellation) and keeps one
client's block per layer in float64. Across processes the per-process (c, μ, M2) are combined
with two sums: μ = Σ_r c_r μ_r / n and M2 = Σ_r (M2_r + c_r ‖μ_r − μ‖²).

>>> import torch
>>> d = DisplacementStats()
>>> d.add("A", 0, torch.tensor([[[1.0]]]))   # client 0 moved by 1
>>> d.add("A", 0, torch.tensor([[[3.0]]]))   # client 1 moved by 3
>>> d.consensus("A", n_layers=1)
tensor([1.], dtype=torch.float64)
"""

from __future__ import annotations

import torch
from torch import Tensor

from adflora_analysis.core.backend import LOCAL, Backend
from adflora_analysis.core.reduce import process_sums
from adflora_analysis.core.state import LoraState


class DisplacementStats:
    """Running (count, mean, centred sum of squares) of Δ per (block, layer); see module doc."""

    def __init__(self) -> None:
        self._acc: dict[tuple[str, int], tuple[int, Tensor | None, Tensor | None]] = {}

    def add(self, block: str, layer: int, delta: Tensor) -> None:
        """Report the displacement of m clients: ``delta`` (*batch, m, a, b) (client axis -3)."""
        d = delta.detach().double()
        m = d.shape[-3]
        mu_b = d.mean(-3)
        m2_b = (d - mu_b.unsqueeze(-3)).pow(2).sum((-3, -2, -1))
        key = (block, layer)
        if key in self._acc and self._acc[key][1] is None:    # skipped: stays unmeasured
            self._acc[key] = (self._acc[key][0] + m, None, None)
            return
        if key not in self._acc:
            self._acc[key] = (m, mu_b, m2_b)
            return
        c, mu, m2 = self._acc[key]
        step = mu_b - mu
        tot = c + m
        self._acc[key] = (tot, mu + step * (m / tot),
                          m2 + m2_b + step.pow(2).sum((-2, -1)) * (c * m / tot))

    def skip(self, block: str, layer: int, m: int) -> None:
        """Report that ``m`` clients updated ``(block, layer)`` without their displacement (a
        round whose Ξ(Δ) nobody reads): the count is kept, :meth:`consensus` gives NaN.

        >>> d = DisplacementStats()
        >>> d.skip("B", 0, 3)
        >>> d.count("B", 0), d.consensus("B", n_layers=1)
        (3, tensor([nan], dtype=torch.float64))
        """
        c = self._acc[(block, layer)][0] if (block, layer) in self._acc else 0
        self._acc[(block, layer)] = (c + m, None, None)

    def add_states(self, before: LoraState, after: LoraState, blocks: tuple[str, ...]) -> None:
        """Report every client's displacement ``after − before`` of ``blocks`` (all layers), for
        problems that update all their clients at once and return a new state."""
        for b in blocks:
            for li, (x1, x0) in enumerate(zip(after.block(b), before.block(b), strict=True)):
                self.add(b, li, x1 - x0)

    def count(self, block: str, layer: int) -> int:
        """Clients reported for ``(block, layer)`` in this process."""
        return self._acc[(block, layer)][0] if (block, layer) in self._acc else 0

    def consensus(self, block: str, n_layers: int, backend: Backend = LOCAL,
                  batch_shape: tuple[int, ...] = (),
                  device: str | torch.device = "cpu") -> Tensor:
        """Ξ(Δ) per layer, (*batch, n_layers), over the clients of every process, on ``device``
        (where the state lives: collectives and arithmetic stay on one device).

        A block nobody reported did not move (Δ = 0): its entries are 0.
        """
        if not any((block, li) in self._acc for li in range(n_layers)):
            return torch.zeros(*batch_shape, n_layers, dtype=torch.float64, device=device)
        parts = [self._acc[(block, li)] for li in range(n_layers)]
        if any(mu is None for _, mu, _ in parts):
            return torch.full((*batch_shape, n_layers), torch.nan, dtype=torch.float64,
                              device=device)
        counts = torch.tensor([float(c) for c, _, _ in parts], dtype=torch.float64,
                              device=parts[0][1].device)
        # process-level sums: one collective per stage for all layers together
        flat = torch.cat([(c * mu).reshape(-1) for c, mu, _ in parts])
        tot_n, tot_mu = process_sums(backend, counts, flat)
        out, off = [], 0
        for li, (c, mu, m2) in enumerate(parts):
            k = mu.numel()
            mean = tot_mu[off:off + k].reshape(mu.shape) / tot_n[li]
            off += k
            out.append(m2 + (mu - mean).pow(2).sum((-2, -1)) * c)
        m2_all = process_sums(backend, torch.stack(out, -1))[0]
        return m2_all / tot_n
