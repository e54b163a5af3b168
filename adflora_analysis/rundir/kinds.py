"""Run kinds: the one place that says which kind a run directory holds.

The kind is what ``meta.json`` records (``kind``; runs written before it was a key said
``study``/``layer``, and ``topology-sweep`` for a sweep), else the manifest's ``kind``, else,
for a run that recorded none, what its tables show (a ``sweep`` table: ``sweep``; metrics with
an ``eval`` table or a ``task`` in the config: ``glue``; other metrics: ``synthetic``). A
recorded kind that is neither built in (:data:`KINDS`) nor added by a testbed
(:func:`add_kind`) is one :class:`~adflora_analysis.errors.AdfloraError` line.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any

from adflora_analysis.errors import AdfloraError

#: the kinds the toolkit ships (a testbed registered by a user adds its own: :func:`add_kind`)
KINDS = ("synthetic", "glue", "lm", "sweep", "report")
#: names older runs recorded for a kind
LEGACY_KINDS = {"topology-sweep": "sweep"}
_ADDED: set[str] = set()


def normal_kind(kind: str) -> str:
    """``kind`` under its current name (``topology-sweep`` is ``sweep``).

    >>> normal_kind("topology-sweep"), normal_kind("glue")
    ('sweep', 'glue')
    """
    return LEGACY_KINDS.get(kind, kind)


def add_kind(kind: str) -> None:
    """Make ``kind`` known to run directories (a testbed's registration calls this)."""
    _ADDED.add(kind)


def known_kinds() -> tuple[str, ...]:
    """The built-in kinds, then those added, sorted."""
    return KINDS + tuple(sorted(_ADDED - set(KINDS)))


def kind_of(meta: Mapping[str, Any]) -> str | None:
    """The run kind recorded in ``meta`` (older runs said ``study``/``layer``/``topology-sweep``),
    unchecked; None if it records none.

    >>> kind_of({"kind": "topology-sweep"}), kind_of({"layer": "glue"}), kind_of({})
    ('sweep', 'glue', None)
    """
    k = meta.get("kind") or meta.get("study") or meta.get("layer")
    return normal_kind(k) if isinstance(k, str) and k else None


def check_kind(kind: str, where: str = "") -> str:
    """``kind`` if it is known; otherwise one :class:`AdfloraError` naming it (and ``where``).

    >>> check_kind("glue")
    'glue'
    >>> check_kind("glu", "runs/a")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    adflora_analysis.errors.AdfloraError: unknown run kind 'glu' in 'runs/a' (hint: did you ...
    """
    known = known_kinds()
    if kind in known:
        return kind
    close = difflib.get_close_matches(kind, known, n=1)
    hint = (f"did you mean {close[0]!r}? " if close else "") + (
        f"known kinds: {', '.join(known)}; a run of another kind needs its testbed imported "
        "(registered) first")
    raise AdfloraError(f"unknown run kind {kind!r}" + (f" in {where!r}" if where else ""), hint)


def detect_kind(meta: Mapping[str, Any], manifest: Mapping[str, Any] | None = None, *,
                has_table: Callable[[str], bool] | None = None,
                config: Mapping[str, Any] | None = None, where: str = "") -> str | None:
    """The kind of a run directory: recorded in ``meta`` or the ``manifest`` (checked by
    :func:`check_kind`), else guessed from its tables (``has_table(stem)``) and ``config``;
    None when nothing tells.

    >>> detect_kind({"kind": "synthetic"}), detect_kind({}, {"kind": "glue"})
    ('synthetic', 'glue')
    >>> detect_kind({}, has_table=lambda s: s in ("metrics", "eval"))
    'glue'
    >>> detect_kind({}, has_table=lambda s: s == "metrics", config={"rounds": 3})
    'synthetic'
    >>> detect_kind({}, has_table=lambda s: False) is None
    True
    """
    k = kind_of(meta)
    if k is None and manifest:
        m = manifest.get("kind")
        k = normal_kind(m) if isinstance(m, str) and m else None
    if k is not None:
        return check_kind(k, where)
    if has_table is None:
        return None
    if has_table("sweep"):
        return "sweep"
    if has_table("metrics"):
        return "glue" if "task" in (config or {}) or has_table("eval") else "synthetic"
    return None
