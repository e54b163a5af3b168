"""Tidy metric rows from a :class:`~adflora_analysis.core.loop.RoundResult` (docs/architecture.md
§4, §8).

One row per (method, seed, round, layer); ``layer == "all"`` holds totals over layers and the
problem's scalar metrics (loss, grad_norm_sq, bytes_sent, ...), which are NaN on per-layer rows.
Under clock drift (docs/theory.md §9) ``phase_frac_A`` is such a scalar and every row of a seed
carries ``phase_clients`` (its clients' phases, up to :data:`PHASE_RIBBON_MAX_N` clients).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from adflora_analysis.core.loop import RoundResult
from adflora_analysis.core.metrics import total_over_layers


def round_rows(res: RoundResult, method: str, seeds: Sequence[int],
               extra: dict | None = None) -> list[dict]:
    """Rows for every batch entry (seed) of one round. ``seeds`` indexes the batch axis; a
    state without a batch axis takes ``seeds`` of length 1.

    >>> import torch
    >>> from adflora_analysis.core.state import LoraState
    >>> st = LoraState([torch.zeros(2, 1, 1)], [torch.zeros(2, 1, 1)], ["q"])
    >>> res = RoundResult(t=3, state=st, trained=("B",), mixed=("A", "B"), W=torch.eye(2),
    ...                   layer={"xi_A": torch.tensor([[0.5]])},
    ...                   scalar={"loss": torch.tensor([2.0])}, phase="B")
    >>> [(r["layer"], r["round"], r["xi_A"], r["loss"]) for r in round_rows(res, "adf-lora", [7])]
    [('q', 3, 0.5, nan), ('all', 3, 0.5, 2.0)]
    """
    layer_vals = {k: v.detach().cpu().reshape(len(seeds), -1) for k, v in res.layer.items()}
    totals = {k: total_over_layers(k, v) for k, v in layer_vals.items()}
    scal = {k: v.detach().cpu().double().reshape(len(seeds)) for k, v in res.scalar.items()}
    base = {"method": method, "round": res.t, "phase": res.phase,
            "trained": "".join(res.trained), "mixed": "".join(res.mixed), **(extra or {})}
    ribbon = _phase_strings(res, len(seeds))
    rows: list[dict] = []
    for si, seed in enumerate(seeds):
        if ribbon is not None:
            base["phase_clients"] = ribbon[si]
        for li, name in enumerate(res.state.layers):
            row = {**base, "seed": int(seed), "layer": name}
            row.update({k: float(v[si, li]) for k, v in layer_vals.items()})
            row.update({k: math.nan for k in scal})
            rows.append(row)
        row = {**base, "seed": int(seed), "layer": "all"}
        row.update({k: float(v[si]) for k, v in totals.items()})
        row.update({k: float(v[si]) for k, v in scal.items()})
        rows.append(row)
    return rows


PHASE_RIBBON_MAX_N = 64
"""Up to this many clients, a round under clock drift records every client's phase as a
string (column ``phase_clients``, e.g. ``"BBAB"``) for the reports' per-client phase ribbon."""


def _phase_strings(res: RoundResult, n_seeds: int) -> list[str] | None:
    """Each seed's clients' phases as a string ("A"/"B" per client), or None (no clock drift,
    or more than :data:`PHASE_RIBBON_MAX_N` clients)."""
    if res.client_phases is None:
        return None
    ph = res.client_phases.detach().cpu().reshape(n_seeds, -1)
    if ph.shape[-1] > PHASE_RIBBON_MAX_N:
        return None
    return ["".join("A" if a else "B" for a in row.tolist()) for row in ph]
