"""The GLUE :class:`~adflora_analysis.core.loop.Problem`: K local AdamW steps per client on the
one shared model, for :func:`adflora_analysis.core.loop.run_rounds` (docs/architecture.md §2, §7).

For each client i at round t: copy its factors (and its head, with ``train_head``) into the
model, make only the trained block(s) require grad (the inactive factor gets no gradient and no
optimizer state, and comes back bit-identical: it is never read back), build a fresh AdamW
(the default; ``optimizer_reset = "never"`` keeps each client's AdamW state across rounds),
take K steps of ``batch_size`` rows, and write the trained block(s) back into the stacked state
in place (reporting each client's displacement first), so a round adds no per-client copy of
the adapters.

Randomness is counter-based (:mod:`adflora_analysis.seeding`), so a resumed run repeats the
uninterrupted one exactly without saved generator states:

- data order: client i's rows are visited epoch by epoch, epoch e in the order
  ``numpy_rng(seed, "data", i, e).permutation(m_i)``; local step k of round t takes positions
  ``[(t K + k) b, (t K + k + 1) b)`` of that endless sequence (b = batch_size);
- dropout (model and LoRA): the global torch RNG is seeded from ``(seed, "dropout", i, t)``
  before client i's steps of round t.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from adflora_analysis.core.backend import LOCAL, Backend
from adflora_analysis.core.displacement import DisplacementStats
from adflora_analysis.core.loop import Problem
from adflora_analysis.core.metrics import consensus_error
from adflora_analysis.core.reduce import process_sums
from adflora_analysis.core.state import LoraState
from adflora_analysis.errors import DivergenceError
from adflora_analysis.glue.data import Encoded
from adflora_analysis.glue.model import GlueModel
from adflora_analysis.seeding import int_seed, numpy_rng


class ClientBatches:
    """Stateless epoch-wise sampling without replacement of one client's rows."""

    def __init__(self, rows: np.ndarray, seed: int, client: int):
        self.rows = np.asarray(rows)
        self.seed, self.client = seed, client
        self._cache: dict[int, np.ndarray] = {}

    def _perm(self, e: int) -> np.ndarray:
        if e not in self._cache:
            if len(self._cache) > 4:
                self._cache.clear()
            self._cache[e] = numpy_rng(self.seed, "data", self.client, e).permutation(
                len(self.rows))
        return self._cache[e]

    def batch(self, step: int, batch_size: int) -> np.ndarray:
        """Row indices of global local step ``step`` (= t K + k)."""
        m = len(self.rows)
        pos = np.arange(step * batch_size, (step + 1) * batch_size)
        ep, off = pos // m, pos % m
        return np.array([self.rows[self._perm(int(e))[o]] for e, o in zip(ep, off, strict=True)])


class GlueProblem(Problem):
    """Local AdamW steps of every client on the shared :class:`GlueModel` (see module doc).

    Parameters
    ----------
    gm : the shared model (one per process; several problems may take turns on it).
    train : the encoded training rows of the task.
    parts : each client's row indices into ``train``.
    method, seed : for messages, data order and dropout streams.
    local_steps, batch_size, lr, weight_decay : the local AdamW steps.
    head0 : the head every client starts from (:meth:`GlueModel.initial_head`).
    train_head : train each client's head and gossip it with W^t every round.
    optimizer_reset : ``"round"`` (fresh AdamW per client per round) or ``"never"``.
    lr_at : ``t -> eta_t``, the step-size schedule (core/lr_schedules.py); None: ``lr``.
    backend : where the clients live; under torch.distributed this process trains only its
        clients (``backend.client_slice``), whose state, heads and optimizer states it holds.
    """

    def __init__(self, gm: GlueModel, train: Encoded, parts: list[np.ndarray], *, method: str,
                 seed: int, local_steps: int, batch_size: int, lr: float,
                 weight_decay: float = 0.0, head0: dict[str, Tensor] | None = None,
                 train_head: bool = False, optimizer_reset: str = "round",
                 backend: Backend = LOCAL, lr_at: Callable[[int], float] | None = None):
        self.gm, self.train, self.method, self.seed = gm, train, method, seed
        self.lr_at = lr_at
        self.n = len(parts)
        self.backend = backend
        sl = backend.client_slice(self.n)
        self.local_ids = list(range(sl.start, sl.stop))   # global ids of this process's clients
        n_loc = len(self.local_ids)
        self.K, self.bs, self.lr, self.wd = local_steps, batch_size, lr, weight_decay
        self.train_head = train_head
        self.optimizer_reset = optimizer_reset
        self.clients = [ClientBatches(p, seed, i) for i, p in enumerate(parts)]
        self.head0 = {k: v.detach().clone() for k, v in (head0 or gm.initial_head(seed)).items()}
        self.n_local = n_loc
        self.opt_state: list[dict[str, dict]] = [{} for _ in range(n_loc)]
        self.last_loss = float("nan")
        self.last_steps = 0
        self.rounds_done = -1

    # --- the model is shared: make it ours ------------------------------------------------

    def activate(self) -> None:
        """Put this problem's shared head into the model (problems take turns on one model)."""
        if self.gm.owner is not self:
            self.gm.load_head(self.head0)
            self.gm.owner = self

    # --- the trained head is a gossiped block of the state ------------------------------

    def attach_heads(self, state: LoraState) -> LoraState:
        """With ``train_head``, add every local client's copy of ``head0`` to ``state`` as the
        gossiped block ``"head"``: one (n_local, 1, P) tensor per head parameter (the round
        loop's mixer gossips it with the factors and counts it in ``bytes_sent``)."""
        if self.train_head:
            state.extra["head"] = [v.reshape(1, 1, -1).repeat(self.n_local, 1, 1).clone()
                                   for v in self.head0.values()]
        return state

    def client_head(self, state: LoraState, li: int) -> dict[str, Tensor]:
        """The head of this process's ``li``-th client (``head0`` when heads are not trained)."""
        if "head" not in state.extra:
            return self.head0
        return {k: x[li].reshape(v.shape)
                for (k, v), x in zip(self.head0.items(), state.extra["head"], strict=True)}

    def all_heads(self, state: LoraState) -> dict[str, Tensor] | None:
        """Every client's head (n, *shape) (gathered under torch.distributed), or None if not
        trained."""
        if "head" not in state.extra:
            return None
        return {k: self.backend.gather(x).reshape(-1, *v.shape)
                for (k, v), x in zip(self.head0.items(), state.extra["head"], strict=True)}

    def mean_head(self, state: LoraState) -> dict[str, Tensor]:
        """The client-mean head (a collective under torch.distributed)."""
        heads = self.all_heads(state)
        return {k: v.mean(0) for k, v in heads.items()} if heads is not None else self.head0

    # --- Problem protocol -------------------------------------------------------------------

    def local_update(self, state: LoraState, blocks: tuple[str, ...], t: int,
                     disp: DisplacementStats | None = None, *,
                     train_mask: dict[str, Tensor] | None = None
                     ) -> tuple[LoraState, dict[str, Tensor]]:
        """K AdamW steps of every local client on ``blocks`` (and its head with
        ``train_head``), written into ``state`` in place (A: (n_local, r, d_in), B:
        (n_local, d_out, r) per layer, head: (n_local, 1, P) per parameter); returns ``state``
        and the mean local loss over every client's steps (``local_loss``) and the round's
        AdamW step size (``eta``, from ``lr_at``; ``lr`` when it is None).

        ``train_mask`` (clock drift, docs/theory.md §9): ``{block: (n_local,) bool}``; client
        ``li`` trains the blocks of ``blocks`` whose mask is True at ``li`` (a block without a
        mask: every client), and reports a zero displacement for the others."""
        gm = self.gm
        lr = self.lr_at(t) if self.lr_at is not None else self.lr
        self.activate()
        gm.model.train()
        losses = []
        diverged = torch.zeros(self.n, dtype=torch.float64)   # 1 where a client's loss blew up
        for li, i in enumerate(self.local_ids):   # li: index in this process, i: client id
            mine = blocks if not train_mask else tuple(
                b for b in blocks if b not in train_mask or bool(train_mask[b][li]))
            gm.load_client(state, li)
            if self.train_head:
                gm.load_head(self.client_head(state, li))
            params = gm.set_trainable(mine, self.train_head)
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=self.wd)
            if self.optimizer_reset == "never":
                self._restore_opt(opt, li)
                for group in opt.param_groups:   # the round's step, not a restored one
                    group["lr"] = lr
            torch.manual_seed(int_seed(self.seed, "dropout", i, t))
            for k in range(self.K):
                rows = self.clients[i].batch(t * self.K + k, self.bs)
                out = gm.model(**self.train.batch(rows, gm.device))
                loss = out.loss
                lv = float(loss.detach())
                if not np.isfinite(lv):
                    if self.backend.world_size == 1:
                        raise self._diverged(t, i, lv, k)
                    diverged[i] = 1.0   # the other processes learn of it below
                    break
                losses.append(lv)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            if diverged[i]:
                break
            with torch.no_grad():
                for b in blocks:
                    factors = gm.lora_A if b == "A" else gm.lora_B
                    for layer, (X, p) in enumerate(zip(state.block(b), factors, strict=True)):
                        if b not in mine:      # clock drift: not this client's phase
                            if disp is not None:
                                disp.add(b, layer, torch.zeros_like(X[li]).unsqueeze(0))
                            continue
                        if disp is not None:
                            disp.add(b, layer, (p.to(X.device) - X[li]).unsqueeze(0))
                        X[li].copy_(p)
                if self.train_head:
                    for k_, x in zip(self.head0, state.extra["head"], strict=True):
                        x[li].copy_(gm.head[k_].reshape(1, -1))
            if self.optimizer_reset == "never":
                self._save_opt(opt, li)
            del opt
        gm.set_trainable((), False)
        # mean local loss over every client's steps (summed over processes when distributed)
        tot, diverged = process_sums(self.backend, torch.tensor(
            [float(np.sum(losses)), float(len(losses))], dtype=torch.float64), diverged)
        if diverged.any():   # every process stops, naming the first client that diverged
            raise self._diverged(t, int(diverged.nonzero()[0]))
        self.last_loss = float(tot[0] / tot[1])
        self.last_steps = int(tot[1])
        self.rounds_done = t
        return state, {"local_loss": torch.tensor(self.last_loss, dtype=torch.float64),
                       "eta": torch.tensor(lr, dtype=torch.float64)}

    def _diverged(self, t: int, client: int, loss: float | None = None,
                  step: int | None = None) -> DivergenceError:
        what = f"non-finite loss ({loss})" if loss is not None else "non-finite loss"
        where = f", local step {step}" if step is not None else ""
        return DivergenceError(
            f"{what} at round {t}, client {client}{where} "
            f"(method {self.method}, seed {self.seed})",
            "lower lr; the metrics so far and the last good checkpoint are kept "
            "in the run directory")

    def evaluate(self, state: LoraState, t: int) -> dict[str, Tensor]:
        """``xi_head``: the consensus error of the trained heads after gossip (if trained)."""
        out = {}
        heads = self.all_heads(state)
        if heads is not None:
            xi = sum(consensus_error(v.reshape(self.n, 1, -1)) for v in heads.values())
            out["xi_head"] = torch.as_tensor(xi, dtype=torch.float64)
        return out

    # --- optimizer state across rounds (optimizer_reset = "never") ------------------------

    def _restore_opt(self, opt: torch.optim.Optimizer, li: int) -> None:
        saved = self.opt_state[li]
        names = {id(p): n for n, p in self.gm.named_trainable().items()}
        for group in opt.param_groups:
            for p in group["params"]:
                s = saved.get(names[id(p)])
                if s is not None:
                    opt.state[p] = {k: v.clone() for k, v in s.items()}

    def _save_opt(self, opt: torch.optim.Optimizer, li: int) -> None:
        names = {id(p): n for n, p in self.gm.named_trainable().items()}
        for p, s in opt.state.items():
            self.opt_state[li][names[id(p)]] = {k: v.detach().clone() for k, v in s.items()}

    # --- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """What a checkpoint needs beyond the stacked state (which holds adapters and trained
        heads): optimizer states where kept. Data order and dropout are functions of (seed,
        client, round), so no generator state is saved; the record says so."""
        return {"opt_state": self.opt_state if self.optimizer_reset ==
                "never" else None, "round": self.rounds_done,
                "rng": "counter-based: data (seed, 'data', client, epoch), dropout "
                       "(seed, 'dropout', client, round)"}

    def load_state_dict(self, d: dict) -> None:
        if d.get("opt_state") is not None:
            self.opt_state = d["opt_state"]
        self.rounds_done = int(d.get("round", -1))
