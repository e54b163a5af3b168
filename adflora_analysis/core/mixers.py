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
today's gossip and the default. Three asynchrony models (docs/theory.md §9; :func:`make_mixer`
picks one from ``[gossip] model``): :func:`stale_read` (this round's W^t applied to τ-old copies
of the neighbours' blocks; formerly ``asynchronous``, still importable under that name),
:func:`ad_psgd` (Lian et al. 2018: gradients at τ-old models, averaging of current models) and
:func:`push_sum` (Assran et al. 2019, SGP: column-stochastic weights, a weight vector, the
de-biased z = x / w, delayed messages, mass conserved).

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
from adflora_analysis.topology.asynchrony import MODELS as MODELS  # re-exported
from adflora_analysis.topology.asynchrony import check_gossip  # [gossip]: one validation

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
    local_update: Callable[..., tuple[Any, MixerState]] | None = None
    """Optional ``(carry, problem, state, blocks, t, disp, **kw) -> (problem's output, carry)``:
    runs the round's local update in the mixer's place (:func:`ad_psgd`: gradients at τ-old
    models); None (every other mixer): the loop calls ``problem.local_update`` itself."""


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


def stale_read(staleness: int = 0, participation: float = 1.0,
               seeds: Sequence[int] = (0,)) -> Mixer:
    """Stale-read gossip with partial participation (docs/theory.md §9; the ``[gossip] model =
    "stale-read"`` default): this round's W^t applied to τ-old copies. Client i replaces a
    mixed block by

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
    check_gossip(tau, pi)
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

    return Mixer(f"stale-read(staleness={tau},participation={pi:g})", init=init, mix=mix)


asynchronous = stale_read
"""The stale-read mixer's former name (kept importable: ``af.core.asynchronous``)."""


def _names(state: LoraState) -> tuple[str, ...]:
    return ("A", "B", *state.extra)


def _copy(state: LoraState) -> dict[str, list[Tensor]]:
    return {b: [x.detach().clone() for x in state.block(b)] for b in _names(state)}


def _as_state(like: LoraState, blocks: dict[str, list[Tensor]]) -> LoraState:
    """A LoraState with ``like``'s layers and the (cloned) tensors of ``blocks``."""
    return LoraState([x.clone() for x in blocks["A"]], [x.clone() for x in blocks["B"]],
                     list(like.layers), {k: [x.clone() for x in blocks[k]] for k in like.extra})


def ad_psgd(staleness: int = 0, participation: float = 1.0,
            seeds: Sequence[int] = (0,)) -> Mixer:
    """AD-PSGD-style asynchrony (Lian et al. 2018, round form; docs/theory.md §9): the round's
    local update is computed at the client's model of τ rounds ago, and averaging uses the
    *current* models,

        X_i <- sum_j W'_ij (X_j^t + Δ_j(X^{t-τ})),   Δ_j(Y) = (K local steps from Y) − Y,

    with W' = :func:`participating` (W^t, active) as in :func:`stale_read` (an inactive client
    neither trains nor gossips). The gradients are stale, the averaging is not: W' is doubly
    stochastic for a symmetric W^t, so gossip preserves the clients' mean exactly and a frozen
    block's consensus error decays at the synchronous rate of W' (staleness 0).

    The τ-old models live in the carry (the states at the start of the last τ rounds); the
    mixer's ``local_update`` hands the problem a copy of the oldest one and adds the
    displacement it returns to the current state (blocks the problem leaves alone get exactly
    0). τ = 0: the same numbers as ``stale_read(0, participation)``.

    >>> import torch
    >>> from adflora_analysis.core.state import LoraState
    >>> class Seen:   # records the A it is asked to update, then steps A by -A
    ...     seen = []
    ...     def local_update(self, st, blocks, t, disp=None):
    ...         self.seen.append(st.A[0].flatten().tolist())
    ...         st.A[0].mul_(0.0)
    ...         return st, {}
    >>> st = LoraState([torch.tensor([[[1.0]], [[3.0]]])], [torch.zeros(2, 1, 1)], ["l0"])
    >>> m, p = ad_psgd(staleness=1), Seen()
    >>> carry = m.init(st)
    >>> _ = st.A[0].add_(1.0)   # the model moved since the carry was made: (2, 4)
    >>> (st, _), carry = m.local_update(carry, p, st, ("A",), 0, None)
    >>> p.seen, st.A[0].flatten().tolist()   # gradient at (1, 3); step -1, -3 applied to (2, 4)
    ([[1.0, 3.0]], [1.0, 1.0])
    """
    tau, pi = int(staleness), float(participation)
    check_gossip(tau, pi)
    inner = stale_read(0, pi, seeds)

    def init(state: LoraState) -> MixerState:
        return {"mix": inner.init(state), "history": [_copy(state) for _ in range(tau)]}

    def local_update(carry: MixerState, problem: Any, state: LoraState,
                     blocks: tuple[str, ...], t: int, disp: Any = None,
                     **kw: Any) -> tuple[Any, MixerState]:
        if not tau:
            return problem.local_update(state, blocks, t, disp, **kw), carry
        history = carry["history"]
        now = _copy(state)
        stale = _as_state(state, history[0])
        out = problem.local_update(stale, blocks, t, disp, **kw)
        new, measured = out if isinstance(out, tuple) else (out, {})
        for b in _names(state):
            for x, after, before in zip(state.block(b), new.block(b), history[0][b],
                                        strict=True):
                if not torch.equal(after, before):
                    x.add_(after - before.to(after.dtype))
        return (state, measured), {**carry, "history": [*history[1:], now]}

    def mix(carry: MixerState, state: LoraState, blocks: Sequence[str], W: Tensor, t: int,
            **kw: Any) -> tuple[LoraState, MixerState, Tensor]:
        state, inner_carry, sent = inner.mix(carry["mix"], state, blocks, W, t, **kw)
        return state, {**carry, "mix": inner_carry}, sent

    return Mixer(f"ad-psgd(staleness={tau},participation={pi:g})", init=init, mix=mix,
                 local_update=local_update)


def push_sum(staleness: int = 0, participation: float = 1.0,
             seeds: Sequence[int] = (0,)) -> Mixer:
    """Push-sum / stochastic gradient push (Assran et al. 2019; Kempe et al. 2003; docs/theory.md
    §9) with messages τ rounds in transit.

    Each client holds, per block, a numerator x_i and a weight w_i (1 at the start); the state
    holds the de-biased z_i = x_i / w_i (what the problem trains and the metrics read). With
    P = W'ᵀ (W' = :func:`participating` (W^t, active): P is column stochastic whenever W^t is
    row stochastic, e.g. ``weights = "uniform"``, and equals W' for a symmetric W^t), a mixed
    block does

        x_i <- P_ii x_i + (sum_{j != i} P_ij x_j sent τ rounds ago),  likewise w,  z = x / w,

    with x = w z taken after the local update (SGP's step on x scaled by w_i). Client j keeps
    P_jj of its mass and sends the rest, so Σ_i x_i plus the mass in transit never changes
    (mass conservation) and z converges to the initial average for any column-stochastic P —
    no doubly stochastic W needed. The carry holds w per block and the τ rounds of messages in
    transit (a message for a block arrives even in a round that does not mix it); an inactive
    client neither trains nor sends (its column of P is the identity's), messages already in
    transit still arrive. ``sent`` counts one message per nonzero off-diagonal entry of P, each
    carrying its block and one weight. Dense W^t only.

    >>> import torch
    >>> from adflora_analysis.core.state import LoraState
    >>> st = LoraState([torch.tensor([1.0, 5.0]).view(2, 1, 1)], [torch.zeros(2, 1, 1)], ["l0"])
    >>> W = torch.tensor([[0.5, 0.5], [0.25, 0.75]])   # row stochastic; P = Wᵀ is not
    >>> m = push_sum()
    >>> carry = m.init(st)
    >>> for t in range(60):
    ...     st, carry, sent = m.mix(carry, st, ("A",), W, t)
    >>> [round(v, 6) for v in st.A[0].flatten().tolist()]   # the initial average (W^t X: 11/3)
    [3.0, 3.0]
    """
    tau, pi = int(staleness), float(participation)
    check_gossip(tau, pi)
    seeds = [int(s) for s in seeds]

    def weight(x: Tensor) -> Tensor:
        return torch.ones(*x.shape[:-2], 1, 1, dtype=x.dtype, device=x.device)

    def init(state: LoraState) -> MixerState:
        carry: MixerState = {"w": {b: weight(state.block(b)[0]) for b in _names(state)},
                             "transit": [{} for _ in range(tau)]}
        if pi < 1:
            carry["prev"] = _copy(state)
        return carry

    def mix(carry: MixerState, state: LoraState, blocks: Sequence[str], W: Tensor, t: int, *,
            backend: Backend = LOCAL, server: bool = False,
            masks: dict[str, Tensor] | None = None) -> tuple[LoraState, MixerState, Tensor]:
        if isinstance(W, SparseMix):
            raise AdfloraError("gossip.model = 'push-sum' needs a dense W^t (below 1,024 "
                               "clients)", "use fewer clients or gossip.model = 'stale-read'")
        n = W.shape[-1]
        if pi < 1:
            batch = tuple(state.batch_shape)
            act = active_clients(seeds[:batch[0]] if batch else seeds[:1], n, t, pi)
            act = act.reshape(*batch, n).to(W.device)
            W = participating(W, act)
            idle = ~act[..., backend.client_slice(n)]
            for b in _names(state):
                for x, old in zip(state.block(b), carry["prev"][b], strict=True):
                    x[idle] = old.to(x.dtype)[idle]
        Ws = block_weights(W, blocks, masks)
        w = dict(carry["w"])
        x: dict[str, list[Tensor]] = {}
        sending: dict[str, tuple[list[Tensor], Tensor]] = {}
        for b in blocks:
            P = Ws[b].transpose(-1, -2)
            diag, off = _diagonal_and_rest(P)
            diag = diag[..., backend.client_slice(n)]
            xs = [w[b].to(z.dtype) * z for z in state.block(b)]
            d = diag.reshape(*diag.shape, 1, 1)
            sending[b] = ([backend.mix(off, xi.clone()) for xi in xs],
                          backend.mix(off, w[b].clone()))
            x[b] = [d.to(xi.dtype) * xi for xi in xs]
            w[b] = d.to(w[b].dtype) * w[b]
        transit = [*carry["transit"], sending]
        arrived, transit = transit[0], transit[1:]
        for b, (mx, mw) in arrived.items():
            if b not in x:
                x[b] = [w[b].to(z.dtype) * z for z in state.block(b)]
            x[b] = [xi + m.to(xi.dtype) for xi, m in zip(x[b], mx, strict=True)]
            w[b] = w[b] + mw
        for b, xs in x.items():
            for z, xi in zip(state.block(b), xs, strict=True):
                z.copy_(xi / w[b].to(xi.dtype))
        out: MixerState = {"w": w, "transit": transit}
        if pi < 1:
            out["prev"] = _copy(state)
        scalar = state.A[0].element_size()
        sent = sum(messages(Ws[b], server).double()
                   * (bytes_per_message(state, (b,)) + scalar) for b in blocks)
        if not blocks:
            sent = messages(W, server).double() * 0
        return state, out, sent

    return Mixer(f"push-sum(staleness={tau},participation={pi:g})", init=init, mix=mix)


def make_mixer(model: str = "stale-read", staleness: int = 0, participation: float = 1.0,
               seeds: Sequence[int] = (0,)) -> Mixer:
    """The mixer of ``[gossip] model`` (:data:`MODELS`) at staleness τ and participation π.

    >>> make_mixer("push-sum", 2, 0.8).name, make_mixer("stale-read").name
    ('push-sum(staleness=2,participation=0.8)', 'synchronous')
    """
    check_gossip(int(staleness), float(participation), model)
    return {"stale-read": stale_read, "ad-psgd": ad_psgd, "push-sum": push_sum}[model](
        staleness, participation, seeds)
