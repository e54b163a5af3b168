"""Seeded, counter-based random streams.

Every random draw in a run comes from a stream named by ``(seed, stream, *counters)``, e.g.
``(seed, "topology", t)`` for the mixing matrix of round t. Streams are independent of the order
in which they are created, so a resumed run, a run split over several processes, and an
uninterrupted run draw exactly the same numbers without saving generator states.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

import hashlib

import numpy as np

SEED_BITS = 64


def _key(seed: int, stream: str, counters: tuple[int, ...]) -> list[int]:
    """The SeedSequence entropy of a stream: ``[seed low word, stream hash, *counters]``.

    Seeds are 64-bit: the high word (zero for seeds below 2**32, whose keys are unchanged) is
    hashed into the stream word, so ``seed`` and ``seed + 2**32`` draw different numbers.
    """
    seed = int(seed)
    if not 0 <= seed < 2 ** SEED_BITS:
        from adflora_analysis.errors import AdfloraError

        raise AdfloraError(f"seed {seed} does not fit in {SEED_BITS} bits",
                           f"use seeds in [0, 2**{SEED_BITS})")
    hi = seed >> 32
    name = stream.encode() + (b"\0seed-hi=%d" % hi if hi else b"")
    digest = hashlib.blake2b(name, digest_size=8).digest()
    return [seed & 0xFFFFFFFF, int.from_bytes(digest, "little") & 0xFFFFFFFF,
            *(int(c) & 0xFFFFFFFF for c in counters)]


def numpy_rng(seed: int, stream: str, *counters: int) -> np.random.Generator:
    """A numpy Generator for stream ``stream`` at ``counters`` under ``seed``.

    >>> a = numpy_rng(0, "topology", 3).random()
    >>> b = numpy_rng(0, "topology", 3).random()
    >>> a == b and a != numpy_rng(0, "topology", 4).random()
    True
    """
    return np.random.default_rng(np.random.SeedSequence(_key(seed, stream, counters)))


def torch_generator(seed: int, stream: str, *counters: int,
                    device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator seeded from the same counter-based key as :func:`numpy_rng`.

    >>> import torch
    >>> a = torch.rand(2, generator=torch_generator(0, "init", 1))
    >>> torch.equal(a, torch.rand(2, generator=torch_generator(0, "init", 1)))
    True
    """
    ss = np.random.SeedSequence(_key(seed, stream, counters))
    import torch

    g = torch.Generator(device=device)
    g.manual_seed(int(ss.generate_state(1, dtype=np.uint64)[0] & 0x7FFF_FFFF_FFFF_FFFF))
    return g


def int_seed(seed: int, stream: str, *counters: int) -> int:
    """A 63-bit integer seed derived from the stream key (for libraries that take an int).

    >>> s = int_seed(0, "graph")
    >>> s == int_seed(0, "graph") != int_seed(1, "graph"), 0 <= s < 2 ** 63
    (True, True)
    """
    ss = np.random.SeedSequence(_key(seed, stream, counters))
    return int(ss.generate_state(1, dtype=np.uint64)[0] & 0x7FFF_FFFF_FFFF_FFFF)


#: the most seeds one study may run (a larger count is refused before anything is built)
MAX_SEEDS = 100_000


def expand_seeds(seeds: int | list[int]) -> list[int]:
    """Config ``seeds``: a count n means ``[0, .., n-1]``; a list is taken as given.

    >>> expand_seeds(3), expand_seeds([7, 9])
    ([0, 1, 2], [7, 9])
    >>> numpy_rng(0, "x").random() == numpy_rng(2**32, "x").random()  # 64-bit seeds
    False
    """
    if isinstance(seeds, bool):
        raise TypeError("seeds must be an int count or a list of ints")
    from adflora_analysis.errors import AdfloraError

    if isinstance(seeds, int):
        if seeds < 1:
            raise AdfloraError(f"seeds = {seeds} is not a positive count", "use seeds = 1 or more")
        if seeds > MAX_SEEDS:   # refused before a list of that size is built
            raise AdfloraError(f"seeds = {seeds} is more than {MAX_SEEDS:,} seeds",
                               "split the study into runs of fewer seeds")
        return list(range(seeds))
    if not isinstance(seeds, list | tuple):
        raise TypeError("seeds must be an int count or a list of ints")
    if len(seeds) > MAX_SEEDS:
        raise AdfloraError(f"seeds lists {len(seeds):,} seeds, more than {MAX_SEEDS:,}",
                           "split the study into runs of fewer seeds")

    if not seeds:
        raise AdfloraError("seeds = [] lists no seed", "use seeds = 1 or a non-empty list")
    out = [int(s) for s in seeds]
    bad = [s for s in out if not 0 <= s < 2 ** SEED_BITS]
    if bad:
        raise AdfloraError(f"seed {bad[0]} does not fit in {SEED_BITS} bits",
                           f"use seeds in [0, 2**{SEED_BITS})")
    return out
