"""Choosing the backend for a run: in-process, or torch.distributed when started by torchrun.

Config keys (shared by the synthetic and GLUE runners): ``backend = "auto" | "local" |
"torch"`` (auto: torch.distributed exactly when launched by torchrun), ``exchange =
"auto" | "allgather" | "neighbor"`` (auto: point-to-point for a sparse W^t) and
``dist_timeout_s`` (how long a process waits for a dead peer).
"""

from __future__ import annotations

from adflora_analysis.core.backend import LOCAL, Backend
from adflora_analysis.distributed.backend import (
    TorchDistBackend,
    init_distributed,
    launched_by_torchrun,
)
from adflora_analysis.errors import AdfloraError, unknown_name

BACKENDS = ("auto", "local", "torch")


def make_backend(n_clients: int, backend: str = "auto", exchange: str = "auto",
                 timeout_s: float = 60.0) -> Backend:
    """The backend a run uses (see the module docstring)."""
    if backend not in BACKENDS:
        raise unknown_name("backend", backend, BACKENDS)
    use_torch = backend == "torch" or (backend == "auto" and launched_by_torchrun())
    if not use_torch:
        return LOCAL
    if not init_distributed(timeout_s=timeout_s):
        raise AdfloraError("backend = 'torch' but this process was not started by torchrun",
                           "launch with: torchrun --standalone --nproc-per-node=P -m "
                           "adflora_analysis ...")
    return TorchDistBackend(n_clients, exchange)


def shutdown(backend: Backend) -> None:
    """Tear down the process group of a torch.distributed run (no-op in-process)."""
    import torch.distributed as dist

    if backend.world_size > 1 or isinstance(backend, TorchDistBackend):
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
