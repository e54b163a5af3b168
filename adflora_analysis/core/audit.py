"""Audits of a round from the states (issue 20 item 1): what happened, not what was logged.

The round loop (:func:`adflora_analysis.core.loop.run_rounds`) calls a :class:`RoundAudit`
around the local update and the gossip of every round and adds its numbers to the round's
scalar metrics (columns ``audit_*``, each (*batch,) float64); the theory checks of
:mod:`adflora_analysis.theory.audits` read them. Each costs a few norms a round:

- **step** (``audit_step_err``, ``audit_step_scale``, ``audit_step_cond``): a few clients a
  round (a seeded choice)
  are replayed through the problem's :meth:`~adflora_analysis.core.loop.Problem.replay_sgd`
  from their state before the local steps; ``err`` = ||Δ_taken − Δ_replay|| / ||Δ_replay||
  and ``scale`` = ||Δ_taken|| / ||Δ_replay|| over the replayed clients' trained blocks
  (0 and 1 when the problem takes the SGD steps it says), ``cond`` = ||X_before|| /
  ||Δ_replay|| (the round-off of a step is relative to the state); the same clients of all n on
  every process. Absent (no column) for a problem without ``replay_sgd`` (GLUE/LM: AdamW
  steps).
- **frozen** (``audit_frozen_move``): every client's frozen blocks projected on a random probe
  v before and after the local steps; (1/n) Σ_i (vᵀΔ_i)² estimates the mean ||Δ_i||² of the
  blocks the method says are frozen this round (E over v). Exactly 0 when nothing moved.
- **gossip** (``audit_gossip_err``, ``audit_gossip_over``): every gossiped block projected on
  a random probe, p_i = <v, X_i>, before and after gossip; ``err`` = ||p_post − W p_pre|| /
  ||(W − I) p_pre|| (relative to the gossip's own movement) and ``over`` counts the
  (client, block, layer) projections with |p_post − W p_pre|_i > n ε Σ_j |W_ij| <|v|, |X_j|>,
  beyond the rounding bound of W X in the state's dtype (0 for any summation order, so the
  same in-process and over processes). Synchronous gossip only (also
  under clock drift, against the restricted W of :func:`~.mixers.block_weights`); absent for
  stale/partial mixers, which apply other matrices to copies of other rounds.
- **bytes** (``audit_bytes``): the bytes the round's messages carry, recomputed from W^t's
  nonzero off-diagonal entries (2n with a server) times the gossiped blocks' per-client bytes;
  the check compares it with ``bytes_sent``. Synchronous gossip only.

``audit_eps`` is the machine epsilon of the state's dtype (the checks' tolerances scale with
it).

Under torch.distributed each process audits its clients and the sums are all-reduced (the
projections p are exchanged as (n,) vectors), so every rank logs the same numbers.

>>> import torch
>>> from adflora_analysis.core.mixers import synchronous
>>> from adflora_analysis.core.state import LoraState
>>> st = LoraState([torch.ones(1, 2, 1, 2)], [torch.tensor([1.0, 3.0]).view(1, 2, 1, 1)])
>>> W, mixer = torch.full((1, 2, 2), 0.5), synchronous()
>>> au = RoundAudit(None, t=0)
>>> au.before_gossip(st, ("B",), None)
>>> st, _, sent = mixer.mix({}, st, ("B",), W, 0)        # B <- W B: both clients at 2
>>> out = au.after_gossip(st, W, sent, mixer.name)
>>> float(out["audit_gossip_err"]), float(out["audit_gossip_over"]), float(out["audit_bytes"])
(0.0, 0.0, 8.0)
>>> au = RoundAudit(None, t=0)
>>> au.before_gossip(st, ("B",), None)
>>> _ = st.B[0].mul_(1.5)                                # not what W^t does to the state
>>> float(RoundAudit.after_gossip(au, st, W, sent, mixer.name)["audit_gossip_err"]) > 1e10
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from adflora_analysis.core.backend import LOCAL, Backend
from adflora_analysis.core.sparse import SparseMix
from adflora_analysis.core.state import LoraState

AUDIT_CLIENTS = 4
"""Clients replayed by the step audit per round (all of them when fewer)."""

_HUGE = 1e300    # a finite stand-in for x / 0 (rows must stay finite)


def _probe(audit: RoundAudit, name: str, li: int, shape: Sequence[int], device) -> Tensor:
    """A Gaussian probe (float64) of one client's block ``shape``, drawn once per round from
    the stream (round, "audit-probe") in the order the audit asks for them (the same on every
    process), then reused within the round."""
    key = (name, li, tuple(shape))
    if key not in audit._probes:
        if audit._gen is None:
            from adflora_analysis.seeding import torch_generator

            audit._gen = torch_generator(audit.t, "audit-probe")
        audit._probes[key] = torch.randn(*shape, generator=audit._gen,
                                         dtype=torch.float64).to(device)
    return audit._probes[key]


def _project(X: Tensor, v: Tensor, absolute: bool = False) -> Tensor:
    """<v, X_i> over a client's block, in float64: X (*batch, n, a, b) -> (*batch, n)."""
    Xd = X.detach().flatten(-2).double()
    vd = v.flatten()
    return (Xd.abs() @ vd.abs()) if absolute else Xd @ vd


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den, finite: 0 where both are 0, a huge number where only den is."""
    out = num / den.clamp_min(1e-300)
    out = torch.where(num == 0, torch.zeros_like(out), out)
    return out.clamp(max=_HUGE)


def _full(p: Tensor, n: int, backend: Backend) -> Tensor:
    """Every process's (*batch, n_local) part of a per-client vector as (*batch, n)."""
    if backend.world_size == 1:
        return p
    full = p.new_zeros(*p.shape[:-1], n)
    full[..., backend.client_slice(n)] = p
    return backend.all_sum(full)


def _matvec(W: Tensor | SparseMix, p: Tensor, absolute: bool = False) -> Tensor:
    """W p over the client axis, float64: W (*batch, n, n) or sparse, p (*batch, n)."""
    if isinstance(W, SparseMix):
        w = W.weight.double()
        csr = torch.sparse_csr_tensor(W.crow, W.col, w.abs() if absolute else w,
                                      size=(W.crow.numel() - 1,) * 2)
        return (csr @ p.reshape(-1, 1)).reshape(p.shape)
    Wd = W.double()
    return ((Wd.abs() if absolute else Wd) @ p.unsqueeze(-1)).squeeze(-1)


def off_diagonal_nonzeros(W: Tensor | SparseMix) -> Tensor:
    """Nonzero off-diagonal entries of W^t, (*batch,) int64, counted from its entries
    (independently of :func:`~.gossip.messages`).

    >>> off_diagonal_nonzeros(torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0, 0, 1.0]]))
    tensor(2)
    """
    if isinstance(W, SparseMix):
        rows = torch.repeat_interleave(torch.arange(W.crow.numel() - 1, device=W.crow.device),
                                       W.crow.diff())
        keep = (rows != W.col) & (W.weight != 0)
        B = int(torch.tensor(W.batch_shape).prod()) if W.batch_shape else 1
        cnt = torch.bincount(rows[keep] // W.n, minlength=B)
        return cnt.reshape(W.batch_shape)
    n = W.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=W.device)
    return ((W != 0) & ~eye).sum((-2, -1))


class RoundAudit:
    """The audits of one round (module docstring). Call :meth:`before_local`, then
    :meth:`after_local` with the updated state, then :meth:`before_gossip` and
    :meth:`after_gossip`; :meth:`columns` returns the round's ``audit_*`` scalars."""

    def __init__(self, problem: Any, t: int, backend: Backend = LOCAL):
        self.problem, self.t, self.backend = problem, t, backend
        self.out: dict[str, Tensor] = {}
        self._frozen: dict[tuple[str, int], Tensor] = {}
        self._replay: dict[str, Any] | None = None
        self._gossip: dict[tuple[str, int], tuple[Tensor, Tensor]] = {}
        self._gossip_blocks: tuple[str, ...] = ()
        self._masks: dict[str, Tensor] | None = None
        self._probes: dict[tuple, Tensor] = {}
        self._gen: torch.Generator | None = None

    # ------------------------------------------------------------------ local steps
    def before_local(self, state: LoraState, trained: tuple[str, ...],
                     train_mask: dict[str, Tensor] | None = None) -> None:
        """Fingerprint the frozen blocks; copy the state of the replayed clients."""
        self.trained, self.train_mask = trained, train_mask or {}
        for b in ("A", "B"):
            if b in trained and b not in self.train_mask:
                continue             # trained by every client: nothing frozen
            for li, X in enumerate(state.block(b)):
                v = _probe(self, b, li, X.shape[-2:], X.device)
                self._frozen[(b, li)] = _project(X, v)
        replay = getattr(self.problem, "replay_sgd", None)
        if replay is None or not trained:
            return
        from adflora_analysis.seeding import torch_generator

        # the same k clients of all n on every process (and every batch entry), so a run split
        # over processes audits the clients the in-process run audits
        batch = tuple(state.batch_shape)
        n = self._n(state)
        sl = self.backend.client_slice(n)
        pick = torch.randperm(n, generator=torch_generator(self.t, "audit-clients"))
        pick = pick[:min(AUDIT_CLIENTS, n)].sort().values
        here = pick[(pick >= sl.start) & (pick < sl.stop)] - sl.start
        idx = here.to(state.A[0].device).expand(*batch, len(here))
        self._replay = {"fn": replay, "clients": idx,
                        "before": {b: [_take(X, idx).double() for X in state.block(b)]
                                   for b in ("A", "B")}}

    def after_local(self, state: LoraState) -> None:
        """Frozen and step audits against the state after the local steps."""
        bs = tuple(state.batch_shape)
        dev = state.A[0].device
        move = torch.zeros(bs, dtype=torch.float64, device=dev)
        for (b, li), before in self._frozen.items():
            X = state.block(b)[li]
            v = _probe(self, b, li, X.shape[-2:], X.device)
            d2 = (_project(X, v) - before).pow(2)
            if b in self.trained:                  # clock drift: frozen on the masked clients
                d2 = d2 * (~self.train_mask[b]).to(d2.dtype)
            move = move + d2.sum(-1)
        self.out["audit_frozen_move"] = self._sum(move) / self._n(state)
        self.out["audit_eps"] = torch.full(bs, torch.finfo(state.A[0].dtype).eps,
                                           dtype=torch.float64, device=dev)
        if self._replay is not None:
            self._step(state)

    def _step(self, state: LoraState) -> None:
        r = self._replay
        idx = r["clients"]
        mask = {b: _take(m, idx) for b, m in self.train_mask.items()}
        want = (r["fn"](r["before"], self.trained, self.t, idx, train_mask=mask or None)
                if idx.shape[-1] else r["before"])     # no audited client on this process
        bs = tuple(state.batch_shape)
        z = torch.zeros(bs, dtype=torch.float64, device=state.A[0].device)
        diff, ref, taken, size = z.clone(), z.clone(), z.clone(), z.clone()
        for b in self.trained:
            for li, X in enumerate(state.block(b)):
                before = r["before"][b][li]
                d_taken = _take(X, idx).double() - before
                d_want = want[b][li].double() - before
                red = tuple(range(len(bs), d_taken.dim()))
                diff += (d_taken - d_want).pow(2).sum(red)
                ref += d_want.pow(2).sum(red)
                taken += d_taken.pow(2).sum(red)
                size += before.pow(2).sum(red)
        diff, ref, taken, size = (self._sum(x) for x in (diff, ref, taken, size))
        self.out["audit_step_err"] = _ratio(diff.sqrt(), ref.sqrt())
        # ||X_before|| / ||Δ_replay||: the round-off of a step is relative to the state, so the
        # relative error's tolerance scales with it (theory/audits.py, STEP_TOL)
        self.out["audit_step_cond"] = _ratio(size.sqrt(), ref.sqrt())
        scale = _ratio(taken.sqrt(), ref.sqrt())
        self.out["audit_step_scale"] = torch.where((taken == 0) & (ref == 0),
                                                   torch.ones_like(scale), scale)

    # ------------------------------------------------------------------ gossip
    def before_gossip(self, state: LoraState, blocks: tuple[str, ...],
                      masks: dict[str, Tensor] | None) -> None:
        """Project the gossiped blocks on their probes (the pre-gossip state)."""
        self._gossip_blocks, self._masks = tuple(blocks), masks
        for b in blocks:
            for li, X in enumerate(state.block(b)):
                v = _probe(self, "gossip-" + b, li, X.shape[-2:], X.device)
                self._gossip[(b, li)] = (_project(X, v), _project(X, v, absolute=True))

    def after_gossip(self, state: LoraState, W: Tensor | SparseMix, sent: Tensor,
                     mixer_name: str, server: bool = False) -> dict[str, Tensor]:
        """Gossip and bytes audits (synchronous gossip only); returns every audit column."""
        if mixer_name != "synchronous":
            return self.out
        from adflora_analysis.core.mixers import block_weights

        n = W.n if isinstance(W, SparseMix) else W.shape[-1]
        bs = tuple(state.batch_shape)
        dev = state.A[0].device
        Ws = block_weights(W, self._gossip_blocks, self._masks)
        eps = torch.finfo(state.A[0].dtype).eps
        z = torch.zeros(bs, dtype=torch.float64, device=dev)
        num, mov, over, nbytes = z.clone(), z.clone(), z.clone(), z.clone()
        sl = self.backend.client_slice(n)
        for (b, li), (pre, pre_abs) in self._gossip.items():
            X = state.block(b)[li]
            v = _probe(self, "gossip-" + b, li, X.shape[-2:], X.device)
            post = _project(X, v)
            full, full_abs = (_full(x, n, self.backend) for x in (pre, pre_abs))
            want = _matvec(Ws[b], full)[..., sl]
            bound = n * eps * _matvec(Ws[b], full_abs, absolute=True)[..., sl]
            d = post - want
            num = num + d.pow(2).sum(-1)
            mov = mov + (want - pre).pow(2).sum(-1)
            over = over + (d.abs() > bound).sum(-1).double()
        for b in self._gossip_blocks:
            per = sum(x[(0,) * len(bs)][0].numel() * x.element_size() for x in state.block(b))
            msgs = (torch.full(bs, 2 * n, dtype=torch.float64, device=dev) if server
                    else off_diagonal_nonzeros(Ws[b]).double().to(dev))
            nbytes = nbytes + msgs * per
        num, mov, over = self._sum(num), self._sum(mov), self._sum(over)
        self.out["audit_gossip_err"] = _ratio(num.sqrt(), mov.sqrt())
        self.out["audit_gossip_over"] = over
        self.out["audit_bytes"] = nbytes
        return self.out

    # ------------------------------------------------------------------ helpers
    def _sum(self, x: Tensor) -> Tensor:
        return x if self.backend.world_size == 1 else self.backend.all_sum(x)

    def _n(self, state: LoraState) -> int:
        n = state.n_clients
        if self.backend.world_size > 1:
            n = int(self.backend.all_sum(torch.tensor([float(n)], device=state.A[0].device)))
        return n


def _take(X: Tensor, idx: Tensor) -> Tensor:
    """Clients ``idx`` (*batch, k) of X (*batch, n, ...) -> (*batch, k, ...)."""
    nb = idx.dim() - 1
    if nb == 0:
        return X[idx]
    rows = 1
    for d in idx.shape[:-1]:
        rows *= int(d)
    flat_idx = idx.reshape(rows, idx.shape[-1])
    Xf = X.reshape(rows, *X.shape[nb:])
    ar = torch.arange(Xf.shape[0], device=X.device)[:, None]
    out = Xf[ar, flat_idx]
    return out.reshape(*idx.shape, *X.shape[nb + 1:])
