"""The one round loop shared by the synthetic testbed and the GLUE runner (docs/architecture.md §1, §2).

Round t: local update of the trained block(s) (K steps, done by the problem), gossip of the
mixed block(s) with W^t, then metrics. The loop is a generator: the caller writes metrics and
checkpoints between rounds and may stop early; a resumed run passes ``start_round`` and the
checkpointed state. Randomness lives in the problem and the mixing schedule, both keyed by
(seed, t), so resuming reproduces the uninterrupted run exactly.

The loop owns the state it is given: gossip overwrites the mixed blocks in place (and the GLUE
problem writes each client's update in place), so an in-process GLUE round holds one copy of
the stacked adapters plus chunk-sized temporaries, whatever the number of clients (the
vectorized synthetic problem builds its new trained blocks beside the old ones, and under
torch.distributed the metrics work on gathered copies). ``RoundResult.state`` is that live
state; a caller that keeps a round's values past the next round clones them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from adflora_analysis.core.backend import LOCAL, Backend
from adflora_analysis.core.displacement import DisplacementStats
from adflora_analysis.core.gossip import messages
from adflora_analysis.core.methods import MethodSpec
from adflora_analysis.core.metrics import consensus_error, layer_metrics
from adflora_analysis.core.state import LoraState
from adflora_analysis.errors import DivergenceError


class Problem(Protocol):
    """What a testbed supplies to :func:`run_rounds`."""

    def local_update(self, state: LoraState, blocks: tuple[str, ...], t: int,
                     disp: DisplacementStats | None = None) -> LoraState:
        """K local steps on ``blocks`` for every client at round ``t``; other blocks must come
        back bit-identical. The update may be written into ``state`` in place. Each client's
        displacement of each trained block and layer is reported to ``disp`` (when given)."""

    def evaluate(self, state: LoraState, t: int) -> dict[str, Tensor]:
        """Extra per-round metrics, each of shape (*batch,) (e.g. loss, grad_norm_sq)."""


@dataclass
class RoundResult:
    """What one round produced. Per-layer tensors are (*batch, L); scalars are (*batch,).

    ``layer`` holds xi_A, xi_B, cross_term, product_consensus after gossip, and
    ``xi_A_local``/``xi_B_local`` (after the local update, before gossip) and
    ``disp_A``/``disp_B`` = ‖(I − J) Δ_t‖²_F / n, the consensus error of the round's local
    displacement Δ_t (theory check 4). ``scalar`` holds the problem's metrics and ``bytes_sent``.
    """

    t: int
    state: LoraState
    trained: tuple[str, ...]
    mixed: tuple[str, ...]
    W: Tensor
    layer: dict[str, Tensor]
    scalar: dict[str, Tensor]


def _per_layer(blocks: Iterable[Tensor]) -> Tensor:
    return torch.stack([consensus_error(x) for x in blocks], -1)


def _gather(state: LoraState, backend: Backend) -> LoraState:
    return state if backend.world_size == 1 else state.map_blocks(backend.gather)


def _check_reported(disp: DisplacementStats, trained: tuple[str, ...], state: LoraState,
                    problem: Problem) -> None:
    """Every trained block's displacement must have been reported for every local client."""
    n = state.n_clients
    for b in trained:
        for li in range(len(state.layers)):
            if disp.count(b, li) != n:
                raise RuntimeError(
                    f"{type(problem).__name__}.local_update reported the displacement of block "
                    f"{b}, layer {li} for {disp.count(b, li)} of {n} clients; it must call "
                    f"disp.add(block, layer, delta) for every client it updates")


def check_finite(state: LoraState, t: int, method: str, where: str) -> None:
    """Raise :class:`DivergenceError` naming round, method and client at the first non-finite
    value of ``state``."""
    for name in ("A", "B"):
        for li, X in enumerate(state.block(name)):
            bad = ~torch.isfinite(X)
            if bad.any():
                idx = bad.flatten(-2).any(-1).nonzero()[0].tolist()
                client = idx[-1]
                batch = idx[:-1]
                raise DivergenceError(
                    f"non-finite {name} in layer {state.layers[li]} at round {t} {where} "
                    f"(method {method}, client {client}"
                    + (f", batch index {batch}" if batch else "") + ")",
                    "lower the step size (lr); metrics up to the previous round are kept")


def run_rounds(problem: Problem, spec: MethodSpec, state: LoraState,
               mixing: Callable[[int], Tensor], *, rounds: int, switch_interval: int | None = None,
               start_round: int = 0, backend: Backend = LOCAL,
               server: bool = False) -> Iterator[RoundResult]:
    """Run rounds ``start_round .. rounds-1`` of method ``spec``; yield a :class:`RoundResult`
    after each.

    Parameters
    ----------
    problem : local updates and evaluation (synthetic quadratic or GLUE model).
    spec : the method (which blocks train / gossip at round t).
    state : client factors at the start of ``start_round``.
    mixing : ``t -> W^t`` of shape (*batch, n, n) (see
        :func:`adflora_analysis.core.gossip.mixing_schedule`).
    switch_interval : T; the spec's default when None.
    backend : where the clients live. In-process (default), ``state`` holds every client; under
        torch.distributed it holds this process's clients, gossip exchanges blocks between
        processes, and metrics are computed on the gathered state (identical on every rank).
    server : W^t = J is realised by a server (topology weights ``"server"``): ``bytes_sent``
        counts 2n messages per gossiped block instead of W's off-diagonal entries.
    """
    T = switch_interval or spec.default_switch_interval
    for t in range(start_round, rounds):
        trained = spec.trained_blocks(t, T)
        mixed = spec.mixed_blocks(t, T)
        disp = DisplacementStats()
        state = problem.local_update(state, trained, t, disp)
        _check_reported(disp, trained, state, problem)
        full_local = _gather(state, backend)
        check_finite(full_local, t, spec.name, "after the local update")
        local = {f"xi_{b}_local": _per_layer(full_local.block(b)) for b in ("A", "B")}
        del full_local
        L = len(state.layers)
        disp_m = {f"disp_{b}": disp.consensus(b, L, backend, tuple(state.batch_shape),
                                              state.A[0].device)
                  for b in ("A", "B")}
        W = mixing(t)
        state = state.map_blocks(lambda X, W=W: backend.mix(W, X), mixed)
        full = _gather(state, backend)
        check_finite(full, t, spec.name, "after gossip")
        layer = {**layer_metrics(full), **local, **disp_m}
        scalar = dict(problem.evaluate(state, t))
        msgs = messages(W, server).double()
        scalar["bytes_sent"] = msgs * sum(full.bytes_per_client(b) for b in mixed)
        yield RoundResult(t, state, trained, mixed, W, layer, scalar)
