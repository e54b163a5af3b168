"""Mixers: how a round gossips its mixed blocks (docs/architecture.md §9).

A mixer is a pair of pure functions over a carried state (optax's ``init``/``update`` idea)::

    carry = mixer.init(state)
    state, carry, sent = mixer.mix(carry, state, blocks, W, t, backend=..., server=...)

``blocks`` are the names of the state's blocks to gossip this round (the method's mixed LoRA
factors, plus any extra gossiped block such as a GLUE classifier head), ``W`` is the round's
W^t, and ``sent`` (*batch,) is the bytes the round's messages carry (what ``bytes_sent``
reports). ``carry`` holds what the mixer remembers between rounds (e.g. stale copies of the
neighbours' blocks); the round loop checkpoints it, so a resumed run continues exactly.
:func:`synchronous` — every client averages its neighbours' current blocks through W^t — is
today's gossip and the default.

>>> import torch
>>> from adflora_analysis.core.state import LoraState
>>> st = LoraState([torch.tensor([[[1.0]], [[3.0]]])], [torch.zeros(2, 1, 1)], ["l0"])
>>> m = synchronous()
>>> st, carry, sent = m.mix(m.init(st), st, ("A",), torch.full((2, 2), 0.5), 0)
>>> st.A[0].flatten().tolist(), int(sent)
([2.0, 2.0], 8)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from adflora_analysis.core.backend import LOCAL, Backend
from adflora_analysis.core.gossip import messages
from adflora_analysis.core.state import LoraState

MixerState = dict[str, Any]
MixFn = Callable[..., tuple[LoraState, MixerState, Tensor]]


@dataclass(frozen=True)
class Mixer:
    """Gossip of the mixed blocks, with state carried between rounds.

    Attributes
    ----------
    name : short label for tables.
    init : ``(state) -> carry``, before the first round (from the initial client state).
    mix : ``(carry, state, blocks, W, t, *, backend=LOCAL, server=False) -> (state, carry,
        sent)``. May overwrite ``state``'s blocks in place (the loop owns the state); ``sent``
        is the bytes sent this round, shape (*batch,).
    """

    name: str
    init: Callable[[LoraState], MixerState]
    mix: MixFn


def bytes_per_message(state: LoraState, blocks: Sequence[str]) -> int:
    """Bytes one client sends one neighbour for ``blocks`` (every layer).

    >>> import torch
    >>> st = LoraState([torch.zeros(3, 2, 4)], [torch.zeros(3, 5, 2)], ["l0"])
    >>> bytes_per_message(st, ("A", "B"))
    72
    """
    return sum(state.bytes_per_client(b) for b in blocks)


def synchronous() -> Mixer:
    """Every client replaces each mixed block by ``sum_j W_ij X_j`` of the current blocks
    (in place, through the backend); stateless. ``sent`` counts one message per nonzero
    off-diagonal entry of W^t (2n with a ``server``, see :func:`~.gossip.messages`).
    """

    def mix(carry: MixerState, state: LoraState, blocks: Sequence[str], W: Tensor, t: int, *,
            backend: Backend = LOCAL, server: bool = False
            ) -> tuple[LoraState, MixerState, Tensor]:
        state = state.map_blocks(lambda X: backend.mix(W, X), tuple(blocks))
        sent = messages(W, server).double() * bytes_per_message(state, blocks)
        return state, carry, sent

    return Mixer("synchronous", init=lambda _state: {}, mix=mix)
