"""Stacked LoRA client states (docs/architecture.md §1): the client axis is first after any batch axes.

``A[l]`` has shape ``(*batch, n, r, d_in_l)`` and ``B[l]`` has ``(*batch, n, d_out_l, r)`` for
layer ``l``; ``batch`` is ``(S,)`` (a seed axis) in the synthetic testbed and ``()`` in the GLUE
runner. Helpers here return new states; the round loop, though, owns the state it runs and
overwrites its blocks in place (gossip, the GLUE local update) so that memory stays at one copy
of the adapters: :meth:`LoraState.clone` a state to keep its values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class LoraState:
    """Per-layer stacked factors. ``layers`` names the layers (metrics rows use them)."""

    A: list[Tensor]
    B: list[Tensor]
    layers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.A) != len(self.B):
            raise ValueError(f"{len(self.A)} A blocks but {len(self.B)} B blocks")
        if not self.layers:
            self.layers = [f"layer{i}" for i in range(len(self.A))]

    def block(self, name: str) -> list[Tensor]:
        """The list of tensors of block ``"A"`` or ``"B"``."""
        return self.A if name == "A" else self.B

    def map_blocks(self, fn: Callable[[Tensor], Tensor], blocks: tuple[str, ...] = ("A", "B"),
                   ) -> LoraState:
        """A new state with ``fn`` applied to every tensor of ``blocks`` (others shared)."""
        A = [fn(a) for a in self.A] if "A" in blocks else list(self.A)
        B = [fn(b) for b in self.B] if "B" in blocks else list(self.B)
        return LoraState(A, B, list(self.layers))

    def clone(self) -> LoraState:
        """A deep copy."""
        return self.map_blocks(lambda x: x.clone())

    @property
    def n_clients(self) -> int:
        return self.A[0].shape[-3]

    @property
    def batch_shape(self) -> torch.Size:
        return self.A[0].shape[:-3]

    def bytes_per_client(self, block: str) -> int:
        """Bytes one client sends when it shares ``block`` (all layers)."""
        return sum(x[..., 0, :, :].numel() // max(1, _prod(self.batch_shape)) * x.element_size()
                   for x in self.block(block))

    def to_dict(self) -> dict:
        """Plain tensors for checkpoints."""
        return {"A": [a.detach().cpu() for a in self.A], "B": [b.detach().cpu() for b in self.B],
                "layers": list(self.layers)}

    @classmethod
    def from_dict(cls, d: dict) -> LoraState:
        return cls(list(d["A"]), list(d["B"]), list(d["layers"]))


def _prod(shape) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out
