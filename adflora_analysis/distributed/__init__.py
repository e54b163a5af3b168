"""Multi-process runs on torch.distributed with the in-process gossip semantics."""

from adflora_analysis.distributed.backend import (
    EXCHANGES,
    PeerLostError,
    TorchDistBackend,
    init_distributed,
    launched_by_torchrun,
    split_clients,
)
from adflora_analysis.distributed.setup import BACKENDS, make_backend, shutdown

__all__ = ["BACKENDS", "EXCHANGES", "PeerLostError", "TorchDistBackend", "init_distributed",
           "launched_by_torchrun", "make_backend", "shutdown", "split_clients"]
