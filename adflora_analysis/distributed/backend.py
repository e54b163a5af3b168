"""Gossip over torch.distributed with the in-process semantics (docs/architecture.md §1, §7).

Clients are split into contiguous ranges, one per process (several clients per process
allowed). Every process draws the same W^t from the shared seed (counter-based streams), so no
matrix is communicated. Two exchanges implement ``X_i <- sum_j W_ij X_j`` for the local rows:

- ``"allgather"``: every process gathers the whole block (simple; P − 1 copies of each part).
- ``"neighbor"``: point-to-point sends of exactly the client blocks that some receiving
  process's rows of W^t need (nonzero W_ij, i on the receiver, j on the sender); better when
  W^t is sparse (encounter model, ring).

Both apply the same matmul to the same numbers as :func:`adflora_analysis.core.gossip.gossip`,
so results match the in-process run to rounding. The client axis of every block is ``-3``
(``A: (*batch, n, r, d_in)``, ``B: (*batch, n, d_out, r)``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from adflora_analysis.errors import AdfloraError

EXCHANGES = ("allgather", "neighbor")


class PeerLostError(AdfloraError):
    """A collective failed: another process died or stopped answering within the timeout."""


def _peer_lost(rank: int, peers: list[int], what: str, err: Exception) -> PeerLostError:
    first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
    who = f"rank {peers[0]}" if len(peers) == 1 else f"one of ranks {peers}"
    return PeerLostError(
        f"rank {rank}: lost contact with {who} during {what} ({first}); stopping",
        "torchrun's summary names the failed rank; the last complete checkpoint stays valid: "
        "rerun with --resume and the same --nproc-per-node")


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
    exchange : ``"allgather"`` or ``"neighbor"``.

    ``bytes_sent`` accumulates the payload bytes this process sent (for benchmarks).
    """

    def __init__(self, n_clients: int, exchange: str = "allgather"):
        if not dist.is_initialized():
            raise AdfloraError("torch.distributed is not initialized",
                               "launch with torchrun, or call init_distributed() first")
        if exchange not in EXCHANGES:
            raise AdfloraError(f"unknown exchange {exchange!r}; valid: {', '.join(EXCHANGES)}",
                               'use exchange = "allgather" or "neighbor"')
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.n = n_clients
        self.exchange = exchange
        self.ranges = split_clients(n_clients, self.world_size)
        self.bytes_sent = 0

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
            raise _peer_lost(self.rank, self._others(), "all-gather", e) from None
        self.bytes_sent += Xc.numel() * Xc.element_size() * (self.world_size - 1)
        full = torch.cat([p[: b - a] for p, (a, b) in zip(parts, self.ranges, strict=True)])
        return full.movedim(0, -3)

    def _others(self) -> list[int]:
        return [r for r in range(self.world_size) if r != self.rank]

    def all_sum(self, x: Tensor) -> Tensor:
        y = x.clone()
        try:
            dist.all_reduce(y)
        except (RuntimeError, dist.DistError) as e:
            raise _peer_lost(self.rank, self._others(), "all-reduce", e) from None
        return y

    def mix(self, W: Tensor, X: Tensor) -> Tensor:
        """Overwrite X (*batch, n_local, a, b) with the local rows of ``W @ X_full`` for
        W (*batch, n, n); return X (the in-place contract of the round loop's backends)."""
        full = self.gather(X) if self.exchange == "allgather" else self._neighbor_full(W, X)
        lo, hi = self.ranges[self.rank]
        nb = W.ndim - 2
        flat = full.reshape(*full.shape[:nb], self.n, -1)
        out = W[..., lo:hi, :].to(X.dtype) @ flat
        return X.copy_(out.reshape(X.shape))

    def _needs(self, W: Tensor, receiver: int, sender: int) -> np.ndarray:
        """Sender's client indices (global) that the receiver's rows of W use."""
        ra, rb = self.ranges[receiver]
        sa, sb = self.ranges[sender]
        block = W[..., ra:rb, sa:sb].abs().reshape(-1, rb - ra, sb - sa)
        cols = (block > 0).any(dim=(0, 1)).nonzero().flatten().cpu().numpy()
        return cols + sa

    def _neighbor_full(self, W: Tensor, X: Tensor) -> Tensor:
        """(*batch, n, a, b) holding the local clients and every remote client this process's
        rows of W use (others are zeros, multiplied by zero weights)."""
        lo, hi = self.ranges[self.rank]
        Xc = X.movedim(-3, 0).contiguous()
        full = torch.zeros((self.n, *Xc.shape[1:]), dtype=X.dtype, device=X.device)
        full[lo:hi] = Xc
        ops, recv = [], []
        for other in range(self.world_size):
            if other == self.rank:
                continue
            send_idx = self._needs(W, other, self.rank)
            if len(send_idx):
                buf = Xc[torch.as_tensor(send_idx - lo)].contiguous()
                ops.append(dist.P2POp(dist.isend, buf, other))
                self.bytes_sent += buf.numel() * buf.element_size()
            recv_idx = self._needs(W, self.rank, other)
            if len(recv_idx):
                rbuf = torch.empty((len(recv_idx), *Xc.shape[1:]), dtype=X.dtype,
                                   device=X.device)
                ops.append(dist.P2POp(dist.irecv, rbuf, other))
                recv.append((recv_idx, rbuf))
        if ops:
            peers = sorted({op.peer for op in ops})
            try:
                for req in dist.batch_isend_irecv(ops):
                    req.wait()
            except (RuntimeError, dist.DistError) as e:
                raise _peer_lost(self.rank, peers, "neighbor exchange", e) from None
        for idx, rbuf in recv:
            full[torch.as_tensor(idx)] = rbuf
        return full.movedim(0, -3)


def init_distributed(backend: str | None = None, timeout_s: float = 60.0) -> bool:
    """Initialise torch.distributed from torchrun's environment; False when not under torchrun.

    ``backend`` defaults to gloo, also on GPU machines: the collectives carry the stacked
    adapters, losses and metrics, which the GLUE runner keeps on the CPU, and NCCL accepts only
    CUDA tensors. On a GPU machine each process takes the GPU of its LOCAL_RANK, so
    ``device = "cuda"`` puts the processes of a node on different GPUs. ``timeout_s`` bounds how
    long a collective waits for a dead peer before raising.
    """
    import datetime
    import os

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    if dist.is_initialized():
        return True
    if backend is None:
        backend = "gloo"
    if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return True


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (its environment variables are set)."""
    import os

    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ
