"""The one round loop shared by the synthetic testbed and the GLUE runner (docs/architecture.md §1,
§2).

Round t: local update of the trained block(s) (K steps, done by the problem), gossip of the
mixed block(s) with W^t, then metrics. The loop is a generator: the caller writes metrics and
checkpoints between rounds and may stop early; a resumed run passes ``start_round`` and the
checkpointed state. Randomness lives in the problem and the mixing schedule, both keyed by
(seed, t), so resuming reproduces the uninterrupted run exactly.

The loop owns the state it is given: gossip overwrites the mixed blocks in place (and the GLUE
problem writes each client's update in place), so an in-process GLUE round holds one copy of
the stacked adapters plus chunk-sized temporaries, whatever the number of clients (the
vectorized synthetic problem builds its new trained blocks beside the old ones; under
torch.distributed the metrics come from per-process partial sums, never a gathered state).
``RoundResult.state`` is that live state; a caller that keeps a round's values past the next
round clones them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from adflora_analysis.core.audit import RoundAudit
from adflora_analysis.core.backend import LOCAL, Backend
from adflora_analysis.core.displacement import DisplacementStats
from adflora_analysis.core.methods import MethodSpec
from adflora_analysis.core.metrics import round_metrics
from adflora_analysis.core.mixers import Mixer, synchronous
from adflora_analysis.core.schedules import SwitchSchedule, periodic
from adflora_analysis.core.state import LoraState
from adflora_analysis.errors import DivergenceError


class Problem(Protocol):
    """What a testbed supplies to :func:`run_rounds` (docs/architecture.md §9).

    Subclass it explicitly to inherit the default checkpoint hooks (a problem with no state of
    its own beyond the stacked factors)."""

    def local_update(self, state: LoraState, blocks: tuple[str, ...], t: int,
                     disp: DisplacementStats | None = None, *,
                     train_mask: dict[str, Tensor] | None = None
                     ) -> tuple[LoraState, dict[str, Tensor]]:
        """K local steps on ``blocks`` for every client at round ``t``; other blocks must come
        back bit-identical. The update may be written into ``state`` in place. Each client's
        displacement of each trained block and layer is reported to ``disp`` (when given).
        ``train_mask`` (clock drift only; the loop passes it only then): ``{block: (*batch,
        n_local) bool}``, the clients that train that block of ``blocks`` this round; a client
        outside it returns the block bit-identical (displacement 0) and a block it does not
        name trains on every client.

        Returns the new state and what the local steps measured: per-batch scalars (*batch,)
        (e.g. the consensus error at the inner steps), which become columns of the round's
        metrics. A problem that measures nothing may return the state alone.

        Optional (the step audit of :mod:`.audit`; not defined here, so a problem without it
        is simply not step-audited, e.g. GLUE/LM, whose steps are AdamW's): a problem whose
        local steps are plain SGD may define ``replay_sgd(before, blocks, t, clients, *,
        train_mask=None) -> {block: [Tensor per layer]}``. ``before`` is ``{"A": [...], "B":
        [...]}``, each layer's (*batch, k, ...) float64 state of the clients ``clients``
        (*batch, k) (this process's indices) before round ``t``'s local steps; it returns their
        blocks of ``blocks`` after the same K steps (same step sizes, same seeded minibatch or
        noise draws; ``train_mask`` (*batch, k) as in ``local_update``), recomputed
        independently of ``local_update`` (e.g. by autograd), in float64. The loop compares
        that with the step the clients actually took (``audit_step_err``).

        Optional: ``thinned_columns`` (frozenset of column names), the columns the problem
        leaves NaN on a round it does not measure (a ``measured`` column of 0,
        ``measure_every > 1``); the run driver allows NaN there in those columns only."""

    def evaluate(self, state: LoraState, t: int) -> dict[str, Tensor]:
        """Extra per-round metrics after gossip, each of shape (*batch,) (e.g. loss,
        grad_norm_sq)."""

    def state_dict(self) -> dict:
        """What a checkpoint must hold beyond the stacked state (default: nothing)."""
        return {}

    def load_state_dict(self, d: dict) -> None:
        """Restore :meth:`state_dict` on resume (default: nothing to restore)."""


@dataclass
class RoundResult:
    """What one round produced. Per-layer tensors are (*batch, L); scalars are (*batch,).

    ``layer`` holds xi_A, xi_B, cross_term, product_consensus after gossip, and
    ``xi_A_local``/``xi_B_local`` (after the local update, before gossip) and
    ``disp_A``/``disp_B`` = ‖(I − J) Δ_t‖²_F / n, the consensus error of the round's local
    displacement Δ_t (theory check 4). ``scalar`` holds what the local update measured, the
    problem's metrics, ``bytes_sent`` and the round's audits (``audit_*``, :mod:`.audit`).
    Columns that no selected theory check reads (a problem's ``columns.need``, synthetic config
    ``checks``) are left out: the audits, cross_term and product_consensus, disp_A/disp_B and
    (with a fixed switching interval) xi_A_local/xi_B_local; ``checks = "none"`` keeps
    xi_A, xi_B and the problem's own metrics.
    ``phase`` is the schedule's phase of the round ("A" or "B"; alternating methods train that
    factor). ``carry`` is the schedule's and the mixer's
    state after the round (``{"schedule": ..., "mixer": ...}``): a checkpoint saves it and a
    resume passes it back to :func:`run_rounds`. Under clock drift (a schedule with
    ``clients``, docs/theory.md §9) ``client_phases`` (*batch, n) bool is True where a client was
    in phase A, ``phase`` is the reference clock's, ``trained``/``mixed`` are the blocks some
    client trained / gossiped, and ``scalar["phase_frac_A"]`` is the fraction of clients in
    phase A.
    """

    t: int
    state: LoraState
    trained: tuple[str, ...]
    mixed: tuple[str, ...]
    W: Tensor
    layer: dict[str, Tensor]
    scalar: dict[str, Tensor]
    phase: str = ""
    carry: dict[str, Any] = field(default_factory=dict)
    client_phases: Tensor | None = None


def _blocks_and_masks(masks: dict[str, Tensor]) -> tuple[tuple[str, ...], dict[str, Tensor]]:
    """The blocks some client takes (in A, B order) and the masks of those that not every
    client takes (an all-True mask is left out, so a round where every client agrees runs as
    without clock drift)."""
    blocks = tuple(b for b in ("A", "B") if bool(masks[b].any()))
    return blocks, {b: masks[b] for b in blocks if not bool(masks[b].all())}


def _client_phases(schedule: SwitchSchedule, s_state: Any, t: int, spec: MethodSpec,
                   state: LoraState, backend: Backend
                   ) -> tuple[Tensor, tuple[str, ...], tuple[str, ...], dict, dict] | None:
    """Per-client phases of round ``t`` under clock drift (docs/theory.md §9): (phases
    (*batch, n) bool, True = phase A; the blocks some client trains; the blocks some client
    gossips; the local update's keywords ``{"train_mask": ...}`` with this process's clients'
    masks (*batch, n_local); the mixer's ``{"masks": ...}`` with every client's (*batch, n)).
    None without drift or for a method that does not alternate: the round is as before."""
    if schedule.clients is None or not spec.alternates:
        return None
    ph = schedule.clients(s_state, t)
    n = ph.shape[-1]
    ph = ph.reshape(*state.batch_shape, n).to(state.A[0].device)
    trained, tmask = _blocks_and_masks(spec.trained_masks(ph))
    mixed, mmask = _blocks_and_masks(spec.mixed_masks(ph))
    sl = backend.client_slice(n)
    train_kw = {"train_mask": {b: m[..., sl] for b, m in tmask.items()}} if tmask else {}
    mix_kw = {"masks": mmask} if mmask else {}
    return ph, trained, mixed, train_kw, mix_kw


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


def check_finite(state: LoraState, t: int, method: str, where: str,
                 backend: Backend = LOCAL) -> None:
    """Raise :class:`DivergenceError` naming round, method and client at the first non-finite
    value of ``state`` (first block, layer, then batch entry and client in row-major order).

    Under torch.distributed each process checks its own clients and one ``all_sum`` of a small
    (P, 1 + 3 · blocks) table (its client count and, per block and layer, whether, at which
    batch entry and local client it found one) tells every process the first one, by global
    client index: all processes stop with the same message.

    >>> st = LoraState([torch.tensor([[[1.0]], [[float("nan")]]])], [torch.zeros(2, 1, 1)], ["q"])
    >>> try:
    ...     check_finite(st, 7, "adf-lora", "after gossip")
    ... except DivergenceError as e:
    ...     print(e.problem)
    non-finite A in layer q at round 7 after gossip (method adf-lora, client 1)
    """
    blocks = [(name, li, X) for name in ("A", "B") for li, X in enumerate(state.block(name))]
    n_loc, batch_shape = state.n_clients, tuple(state.batch_shape)
    info = torch.zeros(backend.world_size, 1 + 3 * len(blocks), dtype=torch.float64)
    info[backend.rank, 0] = n_loc
    for k, (_, _, X) in enumerate(blocks):
        rows = (~torch.isfinite(X)).flatten(-2).any(-1).reshape(-1, n_loc)   # (batch, n_loc)
        if rows.any():
            b, c = rows.nonzero()[0].tolist()
            info[backend.rank, 1 + 3 * k:4 + 3 * k] = torch.tensor([1.0, b, c])
    if backend.world_size > 1:
        info = backend.all_sum(info.to(state.A[0].device)).cpu()
    offsets = torch.cumsum(info[:, 0], 0) - info[:, 0]
    for k, (name, li, _) in enumerate(blocks):
        found = info[:, 1 + 3 * k] > 0
        if found.any():
            b, client = min((int(info[r, 2 + 3 * k]), int(offsets[r] + info[r, 3 + 3 * k]))
                            for r in found.nonzero().flatten().tolist())
            batch = [int(i) for i in torch.unravel_index(torch.tensor(b), batch_shape)] \
                if batch_shape else []
            raise DivergenceError(
                f"non-finite {name} in layer {state.layers[li]} at round {t} {where} "
                f"(method {method}, client {client}"
                + (f", batch index {batch}" if batch else "") + ")",
                "lower the step size (lr); metrics up to the previous round are kept")


def _columns_read(problem: Problem) -> frozenset[str] | None:
    """The metric columns the run's selected theory checks read: the problem's ``columns.need``
    (the synthetic problem's config ``checks``), None (every column, today's rows) for a problem
    without one (GLUE/LM) or with the default ``checks = "all"``.

    >>> class P: pass
    >>> _columns_read(P()) is None
    True
    """
    return getattr(getattr(problem, "columns", None), "need", None)


def run_rounds(problem: Problem, spec: MethodSpec, state: LoraState,
               mixing: Callable[[int], Tensor], *, rounds: int, switch_interval: int | None = None,
               schedule: SwitchSchedule | None = None, mixer: Mixer | None = None,
               carry: dict[str, Any] | None = None, start_round: int = 0,
               backend: Backend = LOCAL, server: bool = False) -> Iterator[RoundResult]:
    """Run rounds ``start_round .. rounds-1`` of method ``spec``; yield a :class:`RoundResult`
    after each.

    Parameters
    ----------
    problem : local updates and evaluation (synthetic quadratic or GLUE model).
    spec : the method (which blocks train / gossip in each phase).
    state : client factors at the start of ``start_round``.
    mixing : ``t -> W^t`` of shape (*batch, n, n) (see
        :func:`adflora_analysis.core.gossip.mixing_schedule`).
    switch_interval : T of the default schedule ``periodic(T)``; the spec's default when None.
    schedule : the switching schedule (:mod:`.schedules`); overrides ``switch_interval``.
    mixer : how mixed blocks are gossiped (:mod:`.mixers`); :func:`~.mixers.synchronous` when
        None. Blocks of ``state.extra`` (e.g. a GLUE head) are gossiped every round with the
        mixed factors.
    carry : the schedule's and mixer's state to resume from (``RoundResult.carry`` of the
        checkpointed round); fresh (``init``) when None.
    backend : where the clients live. In-process (default), ``state`` holds every client; under
        torch.distributed it holds this process's clients, gossip exchanges blocks between
        processes, and metrics come from all-reduced per-process partial sums
        (:func:`~.metrics.round_metrics`; identical on every rank).
    server : W^t = J is realised by a server (topology weights ``"server"``): ``bytes_sent``
        counts 2n messages per gossiped block instead of W's off-diagonal entries.

    A problem whose local steps change nothing shows pure gossip: under ``adf-lora`` both factors
    are mixed every round, so their consensus errors fall round by round.

    >>> class Still:
    ...     def local_update(self, state, blocks, t, disp):
    ...         for b in blocks:
    ...             for li, X in enumerate(state.block(b)):
    ...                 disp.add(b, li, torch.zeros_like(X))
    ...         return state, {}
    ...     def evaluate(self, state, t):
    ...         return {}
    >>> from adflora_analysis.core.methods import get_method
    >>> g = torch.Generator().manual_seed(0)
    >>> st = LoraState([torch.randn(4, 1, 3, generator=g)], [torch.randn(4, 3, 1, generator=g)])
    >>> ring = 0.5 * torch.eye(4) + 0.25 * (torch.eye(4).roll(1, 0) + torch.eye(4).roll(-1, 0))
    >>> res = list(run_rounds(Still(), get_method("adf-lora"), st, lambda t: ring, rounds=3))
    >>> [r.phase for r in res], [r.mixed for r in res]
    (['B', 'B', 'B'], [('A', 'B'), ('A', 'B'), ('A', 'B')])
    >>> xi = [float(r.layer["xi_A"][0]) for r in res]
    >>> xi[0] > xi[1] > xi[2] > 0
    True
    """
    schedule = schedule or periodic(switch_interval or spec.default_switch_interval)
    mixer = mixer or synchronous()
    need = _columns_read(problem)
    audit_on = need is None or any(c.startswith("audit_") for c in need)
    full = need is None or bool({"cross_term", "product_consensus"} & need)
    # a schedule without a fixed interval may read the round's consensus errors (feedback)
    xi_local = (need is None or schedule.interval is None
                or bool({"xi_A_local", "xi_B_local"} & need))
    disp_on = need is None or bool({"disp_A", "disp_B"} & need)
    carry = carry or {"schedule": schedule.init(), "mixer": mixer.init(state)}
    s_state, m_state = carry["schedule"], carry["mixer"]
    for t in range(start_round, rounds):
        ph = schedule.phase(s_state, t)
        trained, mixed = spec.trained_in(ph), spec.mixed_in(ph)
        client_ph, train_kw, mix_kw, ph_cols = None, {}, {}, {}
        drift = _client_phases(schedule, s_state, t, spec, state, backend)
        if drift is not None:
            client_ph, trained, mixed, train_kw, mix_kw = drift
            ph_cols = {"phase_frac_A": client_ph.double().mean(-1)}
        disp = DisplacementStats()
        audit = RoundAudit(problem if getattr(mixer, "local_update", None) is None else None,
                           t, backend) if audit_on else None   # no replay when the mixer updates
        if audit is not None:
            audit.before_local(state, trained, train_kw.get("train_mask"))
        if mixer.local_update is None:
            out = problem.local_update(state, trained, t, disp, **train_kw)
        else:   # the mixer runs the update (mixers.ad_psgd: gradients at τ-old models)
            out, m_state = mixer.local_update(m_state, problem, state, trained, t, disp,
                                              **train_kw)
        state, measured = out if isinstance(out, tuple) else (out, {})
        _check_reported(disp, trained, state, problem)
        if need is None or need:   # checks off: one check, after gossip (which spreads a NaN)
            check_finite(state, t, spec.name, "after the local update", backend)
        if audit is not None:
            audit.after_local(state)
        local = ({f"{k}_local": v for k, v in round_metrics(state, backend, full=False).items()}
                 if xi_local else {})
        L = len(state.layers)
        disp_m = {f"disp_{b}": disp.consensus(b, L, backend, tuple(state.batch_shape),
                                              state.A[0].device)
                  for b in ("A", "B")} if disp_on else {}
        W = mixing(t)
        if audit is not None:
            audit.before_gossip(state, (*mixed, *state.extra), mix_kw.get("masks"))
        state, m_state, sent = mixer.mix(m_state, state, (*mixed, *state.extra), W, t,
                                         backend=backend, server=server, **mix_kw)
        check_finite(state, t, spec.name, "after gossip", backend)
        audits = (audit.after_gossip(state, W, sent, mixer.name, server)
                  if audit is not None else {})
        layer = {**round_metrics(state, backend, full=full), **local, **disp_m}
        scalar = {**measured, **problem.evaluate(state, t), "bytes_sent": sent, **ph_cols,
                  **audits}
        res = RoundResult(t, state, trained, mixed, W, layer, scalar, ph,
                          client_phases=client_ph)
        s_state = schedule.update(s_state, res)
        res.carry = {"schedule": s_state, "mixer": m_state}
        yield res
