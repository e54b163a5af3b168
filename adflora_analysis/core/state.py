"""Stacked LoRA client states (docs/architecture.md §1): the client axis is first after any batch
axes.

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
    """Per-layer stacked factors. ``layers`` names the layers (metrics rows use them).

    ``extra`` holds further per-client blocks that are gossiped every round beside the mixed
    factors but are not LoRA factors (no consensus metrics of A/B): e.g. the GLUE runner's
    trained classifier head, ``{"head": [tensor (n, 1, P) per head parameter]}``.

    >>> st = LoraState([torch.zeros(3, 2, 4)], [torch.zeros(3, 5, 2)])
    >>> st.n_clients, st.layers, st.bytes_per_client("A")
    (3, ['layer0'], 32)
    """

    A: list[Tensor]
    B: list[Tensor]
    layers: list[str] = field(default_factory=list)
    extra: dict[str, list[Tensor]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.A) != len(self.B):
            raise ValueError(f"{len(self.A)} A blocks but {len(self.B)} B blocks")
        if not self.layers:
            self.layers = [f"layer{i}" for i in range(len(self.A))]

    def block(self, name: str) -> list[Tensor]:
        """The list of tensors of block ``"A"``, ``"B"`` or an ``extra`` block."""
        if name == "A":
            return self.A
        if name == "B":
            return self.B
        return self.extra[name]

    def map_blocks(self, fn: Callable[[Tensor], Tensor], blocks: tuple[str, ...] = ("A", "B"),
                   ) -> LoraState:
        """A new state with ``fn`` applied to every tensor of ``blocks`` (others shared)."""
        A = [fn(a) for a in self.A] if "A" in blocks else list(self.A)
        B = [fn(b) for b in self.B] if "B" in blocks else list(self.B)
        extra = {k: [fn(x) for x in v] if k in blocks else list(v)
                 for k, v in self.extra.items()}
        return LoraState(A, B, list(self.layers), extra)

    def clone(self) -> LoraState:
        """A deep copy."""
        return self.map_blocks(lambda x: x.clone(), ("A", "B", *self.extra))

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
                "layers": list(self.layers),
                "extra": {k: [x.detach().cpu() for x in v] for k, v in self.extra.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> LoraState:
        return cls(list(d["A"]), list(d["B"]), list(d["layers"]),
                   {k: list(v) for k, v in d.get("extra", {}).items()})

    def to(self, like: Tensor) -> LoraState:
        """The same blocks with the device (and dtype of A/B) of ``like``."""
        return LoraState([a.to(like) for a in self.A], [b.to(like) for b in self.B],
                         list(self.layers),
                         {k: [x.to(like.device) for x in v] for k, v in self.extra.items()})


def _prod(shape) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out
