"""Config keys every federated run shares (synthetic testbed and GLUE runner), in one place.

:class:`FederationConfig` holds the keys users and tests rely on under the same names in both
layers (``n_clients``, ``rounds``, ``local_steps``, ``lr``, ``rank``, ``switch_interval``,
``seeds``, ``methods``, ``[topology]``), plus checkpointing, device, threads and the
torch.distributed keys. Each layer's config subclasses it (changing defaults, adding its own
keys) and calls :meth:`FederationConfig.check_federation` from its ``__post_init__``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from adflora_analysis.core.methods import METHODS, get_method
from adflora_analysis.errors import AdfloraError
from adflora_analysis.seeding import expand_seeds
from adflora_analysis.topology import TopologyConfig


def paper_topology() -> TopologyConfig:
    """The paper's default topology: encounter model, q = 0.1, Metropolis weights."""
    return TopologyConfig(graph="encounter", weights="metropolis", q=0.1)


@dataclass
class FederationConfig:
    """Shared keys.

    n_clients, rounds, local_steps (K), lr, rank (r), switch_interval (T; None = each method's
    default: adf-lora 5, others 1), seeds (a count n -> seeds 0..n-1, or a list), methods (names
    in :data:`adflora_analysis.core.methods.METHODS`), topology (``[topology]``: graph, weights,
    q, params, matrix), checkpoint_every (rounds between checkpoints, 0 = none), device,
    threads (torch CPU threads; 0 = the layer's automatic choice), backend (``auto``:
    torch.distributed exactly when launched by torchrun; ``local``; ``torch``), exchange
    (``allgather`` or ``neighbor``), dist_timeout_s (how long a process waits for a dead peer).
    """

    n_clients: int = 10
    rounds: int = 100
    local_steps: int = 5
    lr: float = 0.05
    rank: int = 2
    switch_interval: int | None = None
    seeds: int | list[int] = 1
    methods: list[str] = field(default_factory=lambda: ["adf-lora", "rolora", "ffa-lora",
                                                        "lora"])
    topology: TopologyConfig = field(default_factory=paper_topology)
    checkpoint_every: int = 0
    device: str = "cpu"
    threads: int = 0
    backend: Literal["auto", "local", "torch"] = "auto"
    exchange: Literal["allgather", "neighbor"] = "allgather"
    dist_timeout_s: float = 60.0

    def check_federation(self) -> None:
        """Validate the shared keys; one clear :class:`AdfloraError` for the first problem."""
        def need(ok: bool, problem: str, hint: str) -> None:
            if not ok:
                raise AdfloraError(problem, hint)

        need(self.n_clients >= 1, f"n_clients = {self.n_clients} must be at least 1",
             "use n_clients = 2 or more")
        need(self.rounds >= 1, f"rounds = {self.rounds} must be at least 1", "use rounds >= 1")
        need(self.local_steps >= 1, f"local_steps = {self.local_steps} must be at least 1",
             "use local_steps = 1 or more")
        need(self.lr > 0, f"lr = {self.lr} must be positive", "use a positive step size")
        need(self.rank >= 1, f"rank = {self.rank} must be at least 1", "use e.g. rank = 8")
        need(self.switch_interval is None or self.switch_interval >= 1,
             f"switch_interval T = {self.switch_interval} must be at least 1",
             "use T = 1 (switch every round) or more")
        need(self.checkpoint_every >= 0, "checkpoint_every must be >= 0", "use 0 for none")
        need(self.threads >= 0, "threads must be >= 0", "use 0 for automatic")
        need(self.dist_timeout_s > 0, "dist_timeout_s must be positive", "use e.g. 60")
        need(bool(self.methods), "methods is empty", f"list some of {', '.join(METHODS)}")
        for m in self.methods:
            get_method(m)  # unknown name -> lists the valid ones
        need(len(set(self.methods)) == len(self.methods), "methods lists a method twice",
             "list each method once")
        try:
            seeds = self.seed_list
        except TypeError as e:
            raise AdfloraError(f"seeds: {e}", "write seeds = 3 or seeds = [0, 1, 2]") from None
        need(len(set(seeds)) == len(seeds), "seeds lists a seed twice", "list each seed once")

    @property
    def seed_list(self) -> list[int]:
        return expand_seeds(self.seeds)

    def switch_for(self, method: str) -> int:
        """T that ``method`` runs with: the config's ``switch_interval`` or its default."""
        return self.switch_interval or get_method(method).default_switch_interval

    def as_dict(self) -> dict:
        from adflora_analysis.config import to_dict

        return to_dict(self)
