"""Gossip over torch.distributed with the in-process semantics (docs/architecture.md §1, §7).

Clients are split into contiguous ranges, one per process (several clients per process
allowed). Every process draws the same W^t from the shared seed (counter-based streams), so no
matrix is communicated. Two exchanges implement ``X_i <- sum_j W_ij X_j`` for the local rows:

- ``"allgather"``: every process gathers the whole block (simple; P − 1 copies of each part).
- ``"neighbor"``: point-to-point sends of exactly the client blocks that some receiving
  process's rows of W^t need: block (seed s, client j) goes from j's process to i's process
  iff W^t_ij ≠ 0 for some client i of the receiver (in seed s). Better when W^t is sparse
  (encounter model, ring): bytes proportional to the edges that cross processes.
- ``"auto"`` (the default): ``"neighbor"`` when W^t is sparse (a
  :class:`~adflora_analysis.core.sparse.SparseMix`, or a dense W^t with at most half of its
  off-diagonal entries nonzero), ``"allgather"`` otherwise.

W^t may be dense (*batch, n, n) or a :class:`~adflora_analysis.core.sparse.SparseMix` (what
:func:`~adflora_analysis.core.gossip.mixing_schedule` gives from n = 1,024 on): then each
process multiplies only its rows of the CSR operator by the blocks it holds or received, so
no n x n tensor and no full state is formed. Both apply the same products to the same numbers
as :func:`adflora_analysis.core.gossip.gossip_`, so results match the in-process run to
rounding. The client axis of every block is ``-3`` (``A: (*batch, n, r, d_in)``,
``B: (*batch, n, d_out, r)``).

When a process dies or stops answering, a collective of every other process fails (gloo:
connection closed or reset, or the timeout ``dist_timeout_s``); each survivor raises one
:class:`PeerLostError` naming the lost rank (a process on the same host is seen to have ended)
and the way to resume, and from then on ignores the SIGTERM torchrun sends the survivors, so
that its error line and the run's status are written before it exits (``adflora`` exits 2).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import threading
import time
import warnings

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from adflora_analysis.core.sparse import SparseMix
from adflora_analysis.errors import AdfloraError

EXCHANGES = ("auto", "allgather", "neighbor")
_STOPPING = False   # set when a collective lost a peer: this process is on its way out
_TIMEOUT_S: float | None = None   # the collectives' timeout, when init_distributed set it


class PeerLostError(AdfloraError):
    """A collective failed: another process died or stopped answering within the timeout.
    Each surviving process raises it naming the lost rank(s); the checkpoints every rank
    completed stay valid, so the run is resumable."""


def _reason(err: Exception) -> str:
    """The gist of a gloo/c10d error in a few words (no source paths), e.g. ``connection
    reset by peer`` or ``timed out waiting 60000ms for recv operation to complete``."""
    text = " ".join(str(err).split())
    known = re.search(r"(connection (?:reset|closed) by peer|broken pipe|connection refused|"
                      r"timed out[^.;\]]*)", text, re.IGNORECASE)
    if known:
        return known.group(1).lower()
    text = re.sub(r"\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*", "", text)   # "[.../pair.cc:537] "
    return (text.split(". ")[0][:100] or type(err).__name__).rstrip(".")


def _on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM of a torchrun'd process outside the run loop (whose own handler stops the run
    resumably). torchrun sends it to every survivor as soon as one process has exited: a
    process that is already stopping with its own error (a lost peer, or an
    :class:`AdfloraError` being handled: divergence, bad input) ignores it, so its error line,
    status and tables are written before it exits (torchrun sends SIGKILL 30 s later if it
    never does). Any other SIGTERM terminates the process, as by default."""
    if _STOPPING or isinstance(sys.exc_info()[1], AdfloraError):
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _guard_sigterm() -> None:
    """Route SIGTERM through :func:`_on_sigterm` (main thread; only over the default
    disposition, never over a handler someone else installed)."""
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, _on_sigterm):
        signal.signal(signal.SIGTERM, _on_sigterm)


def split_clients(n: int, world_size: int) -> list[tuple[int, int]]:
    """Contiguous ``(start, stop)`` client ranges, sizes differing by at most one.

    >>> split_clients(10, 3)
    [(0, 4), (4, 7), (7, 10)]
    """
    if world_size > n:
        raise AdfloraError(f"{world_size} processes for {n} clients",
                           "use at most as many processes as clients")
    sizes = [len(a) for a in np.array_split(np.arange(n), world_size)]
    starts = np.cumsum([0, *sizes[:-1]])
    return [(int(s), int(s + z)) for s, z in zip(starts, sizes, strict=True)]


class TorchDistBackend:
    """Clients of this process and collectives to gossip and gather their blocks.

    Parameters
    ----------
    n_clients : total number of clients n.
    exchange : ``"auto"``, ``"allgather"`` or ``"neighbor"`` (see the module docstring).

    ``bytes_sent`` accumulates the payload bytes this process sent (for benchmarks).
    """

    def __init__(self, n_clients: int, exchange: str = "auto"):
        if not dist.is_initialized():
            raise AdfloraError("torch.distributed is not initialized",
                               "launch with torchrun, or call init_distributed() first")
        if exchange not in EXCHANGES:
            raise AdfloraError(f"unknown exchange {exchange!r}; valid: {', '.join(EXCHANGES)}",
                               'use exchange = "auto", "allgather" or "neighbor"')
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.n = n_clients
        self.exchange = exchange
        self.ranges = split_clients(n_clients, self.world_size)
        self.bytes_sent = 0
        self._plan: tuple[object, dict] | None = None   # (W, what is derived from it)
        where: list[tuple[str, int] | None] = [None] * self.world_size
        dist.all_gather_object(where, (socket.gethostname(), os.getpid()))
        self._where: list[tuple[str, int]] = where   # (host, pid) of every rank

    def client_slice(self, n: int) -> slice:
        if n != self.n:
            raise ValueError(f"backend built for {self.n} clients, asked for {n}")
        return slice(*self.ranges[self.rank])

    # -- collectives -------------------------------------------------------------------------
    def gather(self, X: Tensor) -> Tensor:
        """All-gather the client axis (-3): (*batch, n_local, a, b) -> (*batch, n, a, b)."""
        m = max(b - a for a, b in self.ranges)
        Xc = X.movedim(-3, 0).contiguous()
        pad = torch.zeros((m, *Xc.shape[1:]), dtype=X.dtype, device=X.device)
        pad[: Xc.shape[0]] = Xc
        parts = [torch.empty_like(pad) for _ in range(self.world_size)]
        try:
            dist.all_gather(parts, pad)
        except (RuntimeError, dist.DistError) as e:
            raise self._lost(self._others(), "all-gather", e) from None
        self.bytes_sent += Xc.numel() * Xc.element_size() * (self.world_size - 1)
        full = torch.cat([p[: b - a] for p, (a, b) in zip(parts, self.ranges, strict=True)])
        return full.movedim(0, -3)

    def _others(self) -> list[int]:
        return [r for r in range(self.world_size) if r != self.rank]

    # -- a lost peer ---------------------------------------------------------------------------
    def lost_ranks(self, wait_s: float = 0.0) -> list[int]:
        """Ranks on this host whose process has ended (gone or a zombie), polled for up to
        ``wait_s`` seconds until one shows (a process that just died may still be exiting).
        Ranks on other hosts are not seen."""
        import psutil

        host = socket.gethostname()
        deadline = time.monotonic() + wait_s
        while True:
            gone = []
            for r, (h, pid) in enumerate(getattr(self, "_where", [])):
                if r == self.rank or h != host:
                    continue
                try:
                    if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                        gone.append(r)
                except psutil.NoSuchProcess:
                    gone.append(r)
                except psutil.Error:
                    pass
            if gone or time.monotonic() >= deadline:
                return gone
            time.sleep(0.02)

    def _lost(self, peers: list[int], what: str, err: Exception) -> PeerLostError:
        """The one-line error for a collective with ``peers`` that raised ``err``; from here
        on this process ignores torchrun's SIGTERM (:func:`_on_sigterm`) while it stops."""
        global _STOPPING
        _STOPPING = True
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _on_sigterm)
        reason = _reason(err)
        timed_out = reason.startswith("timed out")
        dead = self.lost_ranks(0.0 if timed_out else 2.0)
        names = ", ".join(map(str, dead or peers))
        if dead:
            who = f"process rank {names} was lost" if len(dead) == 1 else \
                f"processes of ranks {names} were lost"
        elif timed_out:
            limit = f"{_TIMEOUT_S:g} s (dist_timeout_s)" if _TIMEOUT_S else "dist_timeout_s"
            who = (f"process rank {names}" if len(peers) == 1 else
                   f"a process of ranks {names}") + f" did not answer within {limit}"
        else:
            who = f"process rank {names} was lost" if len(peers) == 1 else \
                f"a process of ranks {names} was lost"
        return PeerLostError(
            f"{who}: rank {self.rank}'s {what} failed ({reason}); this process stopped",
            "the checkpoints every rank completed are kept: once the cause is fixed, resume "
            "with --resume DIR (the run's --out) and the same --nproc-per-node")

    def all_sum(self, x: Tensor) -> Tensor:
        y = x.clone()
        try:
            dist.all_reduce(y)
        except (RuntimeError, dist.DistError) as e:
            raise self._lost(self._others(), "all-reduce", e) from None
        return y

    def all_max(self, x: Tensor) -> Tensor:
        y = x.clone()
        try:
            dist.all_reduce(y, op=dist.ReduceOp.MAX)
        except (RuntimeError, dist.DistError) as e:
            raise self._lost(self._others(), "all-reduce", e) from None
        return y

    def exchange_for(self, W: Tensor | SparseMix) -> str:
        """The exchange used for ``W``: the configured one, or ``"auto"``'s choice."""
        if self.exchange != "auto":
            return self.exchange
        if isinstance(W, SparseMix):
            return "neighbor"
        n = W.shape[-1]
        off = int((W != 0).sum()) - int((W.diagonal(dim1=-2, dim2=-1) != 0).sum())
        return "neighbor" if off <= 0.5 * (W.numel() // (n * n)) * n * (n - 1) else "allgather"

    def mix(self, W: Tensor | SparseMix, X: Tensor) -> Tensor:
        """Overwrite X (*batch, n_local, a, b) with the local rows of ``W @ X_full`` for
        W (*batch, n, n) or a :class:`SparseMix`; return X (the in-place contract of the round
        loop's backends)."""
        lo, hi = self.ranges[self.rank]
        batch = X.shape[:-3]
        B, m = int(np.prod(batch, dtype=np.int64)), hi - lo
        Xf = X.reshape(B, m, -1)                                      # (B, n_local, a b)
        if self.exchange_for(W) == "allgather":
            got = self.gather(Xf.unsqueeze(-1)).squeeze(-1).reshape(B * self.n, -1)
            have = torch.arange(B * self.n, device=X.device)
        else:
            have, got = self._neighbor_blocks(W, Xf)
        if isinstance(W, SparseMix):
            out = self._sparse_rows(W, have, got, X.dtype)
        else:
            full = torch.zeros(B * self.n, Xf.shape[-1], dtype=X.dtype, device=X.device)
            full[have] = got
            rows = W[..., lo:hi, :].reshape(B, m, self.n).to(X.dtype)
            out = rows @ full.reshape(B, self.n, -1)
        return X.copy_(out.reshape(X.shape))

    def _sparse_rows(self, W: SparseMix, have: Tensor, got: Tensor, dtype: torch.dtype
                     ) -> Tensor:
        """This process's rows of the (B n, B n) CSR operator times the blocks it holds:
        ``have`` (k,) sorted flat (seed, client) indices, ``got`` (k, a b) their values.
        Columns are renumbered monotonically, so every row sums in the in-process order. The
        operator is built once per W^t, dtype and set of held blocks."""
        cache = self._round(W)
        key = (dtype, have.numel())
        if key not in cache:
            rows, cols, vals = self._entries(W)
            mine = self._owner(rows % W.n) == self.rank
            rows, cols, vals = rows[mine], cols[mine], vals[mine]
            lo, hi = self.ranges[self.rank]
            B, m = int(np.prod(W.batch_shape, dtype=np.int64)), hi - lo
            local_row = (rows // W.n) * m + (rows % W.n - lo)
            crow = torch.zeros(B * m + 1, dtype=torch.int64, device=cols.device)
            crow[1:] = torch.cumsum(torch.bincount(local_row, minlength=B * m), 0)
            pos = torch.searchsorted(have.to(cols.device), cols)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
                cache[key] = torch.sparse_csr_tensor(crow, pos, vals.to(dtype),
                                                     (B * m, have.numel()))
        return cache[key] @ got

    def _round(self, W: Tensor | SparseMix) -> dict:
        """What is derived from one W^t (exchange plan, local operator), kept while the
        round's blocks are mixed with the same W."""
        if self._plan is None or self._plan[0] is not W:
            self._plan = (W, {})
        return self._plan[1]

    def _owner(self, clients: Tensor) -> Tensor:
        """The rank holding each client index."""
        starts = torch.tensor([a for a, _ in self.ranges], device=clients.device)
        return torch.searchsorted(starts, clients, right=True) - 1

    def _entries(self, W: SparseMix) -> tuple[Tensor, Tensor, Tensor]:
        """(row, col, weight) of every stored entry (flat (seed, client) indices, CSR order)."""
        cache = self._round(W)
        if "entries" not in cache:
            rows, cols = W.coo()
            cache["entries"] = (rows, cols, W.weight)
        return cache["entries"]

    def _needs(self, W: Tensor | SparseMix, receiver: int, sender: int) -> np.ndarray:
        """Flat (seed, client) indices ``s n + j`` (sorted) of the sender's client blocks that
        the receiver's rows of W use (W_ij ≠ 0, i on the receiver, j on the sender, in seed s);
        for an unbatched W (n, n) these are client indices."""
        if isinstance(W, SparseMix):
            rows, cols, vals = self._entries(W)
            cache = self._round(W)
            if "owners" not in cache:
                cache["owners"] = (self._owner(rows % W.n), self._owner(cols % W.n))
            orow, ocol = cache["owners"]
            c = cols[(vals != 0) & (orow == receiver) & (ocol == sender)]
            return torch.unique(c).cpu().numpy()
        sa, sb = self.ranges[sender]
        ra, rb = self.ranges[receiver]
        n = W.shape[-1]
        block = W[..., ra:rb, sa:sb].reshape(-1, rb - ra, sb - sa)
        s, j = (block != 0).any(dim=1).nonzero(as_tuple=True)
        return (s * n + sa + j).cpu().numpy()

    def _exchange_plan(self, W: Tensor | SparseMix) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Per other rank: (flat indices this process sends it, flat indices it receives);
        computed once per W^t (every block of a round reuses it)."""
        cache = self._round(W)
        if "plan" not in cache:
            cache["plan"] = {o: (self._needs(W, o, self.rank), self._needs(W, self.rank, o))
                             for o in self._others()}
        return cache["plan"]

    def _neighbor_blocks(self, W: Tensor | SparseMix, Xf: Tensor) -> tuple[Tensor, Tensor]:
        """Point-to-point exchange of the needed blocks. Xf (B, n_local, a b) holds this
        process's clients; returns (flat indices (k,) sorted, their blocks (k, a b)): the local
        clients and every remote block this process's rows of W use."""
        lo, hi = self.ranges[self.rank]
        B, m = Xf.shape[0], hi - lo
        n = self.n
        local = Xf.reshape(B * m, -1)
        ops, recv = [], []
        for other, (send_idx, recv_idx) in self._exchange_plan(W).items():
            if len(send_idx):
                sel = torch.as_tensor((send_idx // n) * m + send_idx % n - lo)
                buf = local[sel.to(Xf.device)].contiguous()
                ops.append(dist.P2POp(dist.isend, buf, other))
                self.bytes_sent += buf.numel() * buf.element_size()
            if len(recv_idx):
                rbuf = torch.empty((len(recv_idx), local.shape[-1]), dtype=Xf.dtype,
                                   device=Xf.device)
                ops.append(dist.P2POp(dist.irecv, rbuf, other))
                recv.append((recv_idx, rbuf))
        if ops:
            peers = sorted({op.peer for op in ops})
            try:
                for req in dist.batch_isend_irecv(ops):
                    req.wait()
            except (RuntimeError, dist.DistError) as e:
                raise self._lost(peers, "neighbor exchange", e) from None
        own = (np.arange(B)[:, None] * n + np.arange(lo, hi)[None, :]).reshape(-1)
        idx = np.concatenate([own, *(i for i, _ in recv)])
        order = np.argsort(idx, kind="stable")
        vals = torch.cat([local, *(b for _, b in recv)])[torch.as_tensor(order).to(Xf.device)]
        return torch.as_tensor(idx[order], device=Xf.device), vals


def init_distributed(backend: str | None = None, timeout_s: float = 60.0) -> bool:
    """Initialise torch.distributed from torchrun's environment; False when not under torchrun.

    ``backend`` defaults to gloo, also on GPU machines: the collectives carry the stacked
    adapters, losses and metrics, which the GLUE runner keeps on the CPU, and NCCL accepts only
    CUDA tensors. On a GPU machine each process takes the GPU of its LOCAL_RANK, so
    ``device = "cuda"`` puts the processes of a node on different GPUs. ``timeout_s`` bounds how
    long a collective waits for a dead peer before raising.
    """
    import datetime

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    if dist.is_initialized():
        return True
    if backend is None:
        backend = "gloo"
    if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    global _TIMEOUT_S
    _TIMEOUT_S = timeout_s
    _guard_sigterm()
    return True


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (its environment variables are set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ
