"""Mixers: how a round gossips its mixed blocks (docs/architecture.md §9).

A mixer is a pair of pure functions over a carried state (optax's ``init``/``update`` idea)::

    carry = mixer.init(state)
    state, carry, sent = mixer.mix(carry, state, blocks, W, t, backend=..., server=...)

``blocks`` are the names of the state's blocks to gossip this round (the method's mixed LoRA
factors, plus any extra gossiped block such as a GLUE classifier head), ``W`` is the round's
W^t, and ``sent`` (*batch,) is the bytes the round's messages carry (what ``bytes_sent``
reports). ``carry`` holds what the mixer remembers between rounds (e.g. stale copies of the
neighbours' blocks); the round loop checkpoints it, so a resumed run continues exactly.
:func:`synchronous` — every client averages its neighbours' current blocks through W^t — is
today's gossip and the default.

>>> import torch
>>> from adflora_analysis.core.state import LoraState
>>> st = LoraState([torch.tensor([[[1.0]], [[3.0]]])], [torch.zeros(2, 1, 1)], ["l0"])
>>> m = synchronous()
>>> st, carry, sent = m.mix(m.init(st), st, ("A",), torch.full((2, 2), 0.5), 0)
>>> st.A[0].flatten().tolist(), int(sent)
([2.0, 2.0], 8)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from adflora_analysis.core.backend import LOCAL, Backend
from adflora_analysis.core.gossip import messages
from adflora_analysis.core.sparse import SparseMix
from adflora_analysis.core.state import LoraState
from adflora_analysis.errors import AdfloraError

MixerState = dict[str, Any]
MixFn = Callable[..., tuple[LoraState, MixerState, Tensor]]


@dataclass(frozen=True)
class Mixer:
    """Gossip of the mixed blocks, with state carried between rounds.

    Attributes
    ----------
    name : short label for tables.
    init : ``(state) -> carry``, before the first round (from the initial client state).
    mix : ``(carry, state, blocks, W, t, *, backend=LOCAL, server=False) -> (state, carry,
        sent)``. May overwrite ``state``'s blocks in place (the loop owns the state); ``sent``
        is the bytes sent this round, shape (*batch,). The mixers here also take ``masks``
        (``{block: (*batch, n) bool}``, the clients that gossip that block this round, under
        clock drift; :func:`block_weights`); the round loop passes it only when some client
        does not gossip a mixed block, so a mixer without the keyword still serves every run
        without clock drift.
    """

    name: str
    init: Callable[[LoraState], MixerState]
    mix: MixFn


def bytes_per_message(state: LoraState, blocks: Sequence[str]) -> int:
    """Bytes one client sends one neighbour for ``blocks`` (every layer).

    >>> import torch
    >>> st = LoraState([torch.zeros(3, 2, 4)], [torch.zeros(3, 5, 2)], ["l0"])
    >>> bytes_per_message(st, ("A", "B"))
    72
    """
    return sum(state.bytes_per_client(b) for b in blocks)


def block_weights(W: Tensor | SparseMix, blocks: Sequence[str],
                  masks: dict[str, Tensor] | None) -> dict[str, Tensor | SparseMix]:
    """W^t for each block: restricted by :func:`participating` to the clients that gossip the
    block where ``masks`` names it (``{block: (*batch, n) bool}``), W^t itself otherwise. A
    sparse W^t stays sparse (:meth:`~.sparse.SparseMix.restricted`, O(edges)). Blocks with the
    same mask share one matrix.

    >>> import torch
    >>> W = torch.full((3, 3), 1 / 3)
    >>> Ws = block_weights(W, ("A", "B"), {"A": torch.tensor([True, True, False])})
    >>> Ws["B"] is W, Ws["A"].mul(6).round()[2].tolist()
    (True, [0.0, 0.0, 6.0])
    """
    out: dict[str, Tensor | SparseMix] = {}
    seen: list[tuple[Tensor, Tensor]] = []
    for b in blocks:
        m = (masks or {}).get(b)
        if m is None:
            out[b] = W
            continue
        hit = next((Wm for mm, Wm in seen if torch.equal(mm, m)), None)
        if hit is None:
            hit = (W.restricted(m) if isinstance(W, SparseMix)
                   else participating(W, m.to(W.device)))
            seen.append((m, hit))
        out[b] = hit
    return out


def _diagonal_and_rest(W: Tensor | SparseMix) -> tuple[Tensor, Tensor | SparseMix]:
    """(self-weights (*batch, n), W^t with its diagonal zeroed), dense or sparse."""
    if isinstance(W, SparseMix):
        return W.diagonal(), W.off_diagonal()
    d = W.diagonal(dim1=-2, dim2=-1)
    return d, W - torch.diag_embed(d)


def _mix_blocks(state: LoraState, blocks: Sequence[str], W: Tensor | SparseMix,
                masks: dict[str, Tensor] | None, backend: Backend, server: bool
                ) -> tuple[LoraState, Tensor]:
    """Gossip ``blocks`` of ``state`` with W^t restricted per block (:func:`block_weights`);
    returns the state and the bytes sent (*batch,)."""
    Ws = block_weights(W, blocks, masks)
    for b in blocks:
        state = state.map_blocks(lambda X, Wb=Ws[b]: backend.mix(Wb, X), (b,))
    sent = sum(messages(Ws[b], server).double() * bytes_per_message(state, (b,))
               for b in blocks)
    return state, sent


def synchronous() -> Mixer:
    """Every client replaces each mixed block by ``sum_j W_ij X_j`` of the current blocks
    (in place, through the backend); stateless. ``sent`` counts one message per nonzero
    off-diagonal entry of W^t (2n with a ``server``, see :func:`~.gossip.messages`).

    >>> import torch
    >>> from adflora_analysis.core.state import LoraState
    >>> st = LoraState([torch.tensor([1.0, 3.0, 5.0]).view(3, 1, 1)], [torch.zeros(3, 1, 1)])
    >>> W = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    >>> m = synchronous()
    >>> st, carry, sent = m.mix(m.init(st), st, ("A",), W, 0)
    >>> st.A[0].flatten().tolist(), int(sent), carry   # 2 messages of 4 bytes, no state
    ([2.0, 2.0, 5.0], 8, {})
    """

    def mix(carry: MixerState, state: LoraState, blocks: Sequence[str], W: Tensor, t: int, *,
            backend: Backend = LOCAL, server: bool = False,
            masks: dict[str, Tensor] | None = None) -> tuple[LoraState, MixerState, Tensor]:
        if masks:
            state, sent = _mix_blocks(state, blocks, W, masks, backend, server)
            return state, carry, sent
        state = state.map_blocks(lambda X: backend.mix(W, X), tuple(blocks))
        sent = messages(W, server).double() * bytes_per_message(state, blocks)
        return state, carry, sent

    return Mixer("synchronous", init=lambda _state: {}, mix=mix)


def participating(W: Tensor, active: Tensor) -> Tensor:
    """W^t restricted to the active clients: an inactive client's row and column become the
    identity's, and an active client keeps the weight of its inactive neighbours on its
    diagonal (rows still sum to 1; a symmetric W stays symmetric, hence doubly stochastic).

    Parameters
    ----------
    W : (*batch, n, n) dense mixing matrix.
    active : (*batch, n) bool.

    >>> import torch
    >>> W = torch.full((3, 3), 1 / 3)
    >>> participating(W, torch.tensor([True, True, False])).mul(6).round().tolist()
    [[4.0, 2.0, 0.0], [2.0, 4.0, 0.0], [0.0, 0.0, 6.0]]
    """
    a = active.to(W.dtype)
    off = W * a.unsqueeze(-1) * a.unsqueeze(-2)
    off = off - torch.diag_embed(off.diagonal(dim1=-2, dim2=-1))
    return off + torch.diag_embed(1 - off.sum(-1))


def active_clients(seeds: Sequence[int], n: int, t: int, participation: float) -> Tensor:
    """Which clients take part in round ``t``: Bernoulli(``participation``) per client from the
    counter-based stream (seed, "participation", t), shape (len(seeds), n) bool.

    >>> active_clients([0, 1], 4, 3, 1.0).all().item()
    True
    >>> bool((active_clients([0], 4, 3, 0.5) == active_clients([0, 9], 4, 3, 0.5)[:1]).all())
    True
    """
    from adflora_analysis.seeding import torch_generator

    return torch.stack([torch.rand(n, generator=torch_generator(s, "participation", t),
                                   dtype=torch.float64) < participation for s in seeds])


def asynchronous(staleness: int = 0, participation: float = 1.0,
                 seeds: Sequence[int] = (0,)) -> Mixer:
    """Stale and partial gossip (docs/theory.md §9): client i replaces a mixed block by

        X_i <- W'_ii X_i^t + sum_{j != i} W'_ij X_j^{t - τ},

    its own current block and its neighbours' blocks as they were ``staleness`` = τ rounds ago
    (before that round's gossip, whether or not the block was gossiped then; the initial blocks
    before round 0), with W' = :func:`participating` (W^t, active) for the round's active
    clients (:func:`active_clients`). An inactive client neither trains nor gossips: its blocks
    are put back to what they were after the previous round's gossip (so the problem's local
    update of it is discarded). τ = 0 and ``participation`` = 1 is :func:`synchronous`.

    The carry holds the τ last pre-gossip copies of every block (this process's clients; the
    backend exchanges them like current blocks, so it runs under torch.distributed) and, when
    ``participation`` < 1, the post-gossip blocks of the last round; it is checkpointed, so a
    resumed run is exact. ``seeds``: the batch's seeds (one mask stream per seed); a state with
    no batch axis uses ``seeds[0]``. ``W`` dense or a :class:`~.sparse.SparseMix` (from 1,024
    clients; masked and split into diagonal and rest in O(edges)).

    >>> import torch
    >>> from adflora_analysis.core.state import LoraState
    >>> st = LoraState([torch.tensor([[[1.0]], [[3.0]]])], [torch.zeros(2, 1, 1)], ["l0"])
    >>> m = asynchronous(staleness=1)
    >>> carry = m.init(st)
    >>> _ = st.A[0].add_(1.0)  # a local update: A = (2, 4); the neighbours still see (1, 3)
    >>> st, carry, sent = m.mix(carry, st, ("A",), torch.full((2, 2), 0.5), 0)
    >>> st.A[0].flatten().tolist()
    [2.5, 2.5]
    """
    tau, pi = int(staleness), float(participation)
    if tau < 0:
        raise AdfloraError(f"gossip.staleness = {tau} must be >= 0",
                           "use 0 (fresh messages) or a positive number of rounds")
    if not 0 < pi <= 1:
        raise AdfloraError(f"gossip.participation = {pi} must lie in (0, 1]",
                           "use 1 (every client every round) or e.g. 0.8")
    if tau == 0 and pi == 1:
        return synchronous()
    seeds = [int(s) for s in seeds]

    def names(state: LoraState) -> tuple[str, ...]:
        return ("A", "B", *state.extra)

    def copy(state: LoraState) -> dict[str, list[Tensor]]:
        return {b: [x.detach().clone() for x in state.block(b)] for b in names(state)}

    def init(state: LoraState) -> MixerState:
        carry: MixerState = {"history": [copy(state) for _ in range(tau)]}
        if pi < 1:
            carry["prev"] = copy(state)
        return carry

    def mix(carry: MixerState, state: LoraState, blocks: Sequence[str], W: Tensor, t: int, *,
            backend: Backend = LOCAL, server: bool = False,
            masks: dict[str, Tensor] | None = None) -> tuple[LoraState, MixerState, Tensor]:
        sparse = isinstance(W, SparseMix)
        n = W.n if sparse else W.shape[-1]
        sl = backend.client_slice(n)
        if pi < 1:
            batch = tuple(state.batch_shape)
            act = active_clients(seeds[:batch[0]] if batch else seeds[:1], n, t, pi)
            act = act.reshape(*batch, n).to(W.weight.device if sparse else W.device)
            W = W.restricted(act) if sparse else participating(W, act)
            idle = ~act[..., sl]
            for b in names(state):
                for x, old in zip(state.block(b), carry["prev"][b], strict=True):
                    x[idle] = old.to(x.dtype)[idle]
        history = carry.get("history", [])
        pre = copy(state) if tau else None
        if tau:
            Ws = block_weights(W, blocks, masks)   # W^t for every block without clock drift
            for b in blocks:
                diag, off = _diagonal_and_rest(Ws[b])
                diag = diag[..., sl]
                for x, old in zip(state.block(b), history[0][b], strict=True):
                    d = diag.to(x.dtype).reshape(*diag.shape, *([1] * (x.dim() - diag.dim())))
                    x.copy_(d * x + backend.mix(off, old.clone()))
            sent = sum(messages(Ws[b], server).double() * bytes_per_message(state, (b,))
                       for b in blocks) if masks else None
        elif masks:
            state, sent = _mix_blocks(state, blocks, W, masks, backend, server)
        else:
            state = state.map_blocks(lambda X: backend.mix(W, X), tuple(blocks))
        out: MixerState = {"history": [*history[1:], pre] if tau else []}
        if pi < 1:
            out["prev"] = copy(state)
        if not masks:
            sent = messages(W, server).double() * bytes_per_message(state, blocks)
        return state, out, sent

    return Mixer(f"asynchronous(staleness={tau},participation={pi:g})", init=init, mix=mix)
