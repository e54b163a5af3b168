"""Multi-process runs on torch.distributed with the in-process gossip semantics."""

from adflora_analysis.distributed.backend import (
    EXCHANGES,
    TorchDistBackend,
    init_distributed,
    launched_by_torchrun,
    split_clients,
)

__all__ = ["EXCHANGES", "TorchDistBackend", "init_distributed", "launched_by_torchrun",
           "split_clients"]
