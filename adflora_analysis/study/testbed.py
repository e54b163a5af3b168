"""Testbeds as declarations: what a run kind is, in one registration (docs/architecture.md §8).

A :class:`Testbed` says what the one run sequence (:func:`adflora_analysis.study.sequence.
run_testbed`) needs to turn a config of its kind into a run directory: the config class, how its
jobs are built, its ``meta.json`` entries, what it must refuse before anything is allocated
(resource needs), the tables it writes, the theory checks that apply to its runs and its report
sections. A new kind is a new folder whose ``testbed.py`` calls :func:`register_testbed` once
(as peft's ``register_peft_method``); the shipped ones are ``synthetic``, ``glue`` and ``lm``.

Bad declarations are one :class:`~adflora_analysis.errors.AdfloraError` line each: a kind
registered twice, a table the run sequence does not know (:data:`TABLES`), a check that is not
in :data:`adflora_analysis.theory.REGISTRY` (validated at the kind's first use, since the theory
wing is imported lazily), an unknown kind (also one read from a run directory's ``meta.json``):

>>> from adflora_analysis.study.runconfig import FederationConfig
>>> tb = Testbed("doc-kind", FederationConfig, build=lambda cfg, ctx: None)
>>> register_testbed(tb) is tb, get_testbed("doc-kind").tables
(True, ('metrics',))
>>> register_testbed(tb)  # doctest: +ELLIPSIS
Traceback (most recent call last):
adflora_analysis.errors.AdfloraError: testbed 'doc-kind' is registered twice (hint: ...)
>>> get_testbed("doc-knd")  # doctest: +ELLIPSIS
Traceback (most recent call last):
adflora_analysis.errors.AdfloraError: unknown run kind 'doc-knd' (hint: did you mean ...)
>>> unregister_testbed("doc-kind")
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adflora_analysis.errors import AdfloraError

TABLES: dict[str, str] = {
    "metrics": "metrics.jsonl/.parquet: one row per job, seed, round and layer (core/rows.py)",
    "eval": "eval.jsonl/.parquet: evaluation rows of a round hook (GLUE, LM)",
    "constants": "constants.parquet: measured and analytic constants (synthetic)",
    "mixing": "mixing.parquet: how far every W^t is from doubly stochastic (check 1)",
    "label_counts": "label_counts.csv: per seed and client, rows per label (GLUE, LM)",
    "summary": "summary.csv: per job, the last round's totals and evaluation",
}
"""The tables the run sequence knows (name: file and content); a testbed declares a subset."""

def shipped() -> dict[str, str]:
    """The shipped testbeds: every sub-package ``adflora_analysis.<kind>`` holding a
    ``testbed.py`` (found on disk, not listed anywhere, so a new kind is its folder alone),
    kind -> the module that registers it (imported on first :func:`get_testbed`).

    >>> sorted(shipped())
    ['glue', 'lm', 'synthetic']
    """
    import pkgutil

    # the package's folder from this file (importing the package root would be an import cycle)
    root = Path(__file__).resolve().parents[1]
    return {m.name: f"adflora_analysis.{m.name}.testbed"
            for m in pkgutil.iter_modules([str(root)])
            if m.ispkg and m.name != __name__.split(".")[1]   # this registry's own package
            # on disk, not find_spec: that imports the package (distributed/ imports torch)
            and (root / m.name / "testbed.py").is_file()}


def lazy(target: str) -> Callable[..., Any]:
    """A hook ``"package.module:function"`` imported at its first call, so that a declaration
    costs no import of its runner (and of torch) until a run needs it (``--dry-run`` stays
    light).

    >>> f = lazy("adflora_analysis.seeding:expand_seeds")
    >>> f(3), f.target
    ([0, 1, 2], 'adflora_analysis.seeding:expand_seeds')
    """
    module, _, name = target.partition(":")

    def hook(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    hook.target = target  # type: ignore[attr-defined]
    hook.__name__ = hook.__qualname__ = name
    return hook


@dataclass
class Built:
    """What a testbed's ``build`` hands the run sequence: the jobs
    (:class:`~adflora_analysis.study.experiment.Job`), the round hook (extra rows by table),
    the tables to write once before the first round (name with suffix: DataFrame, also on
    resume), ``state``: whatever ``meta`` and ``fits`` read (data, models), and ``samplers``:
    the topology sampler of each variant label, when the testbed drew one for its meta (the
    gossip entries then use it; else the first seed's is drawn)."""

    jobs: list[Any]
    on_round: Callable[..., dict[str, list[dict]]] | None = None
    files: dict[str, Any] = field(default_factory=dict)
    state: Any = None
    samplers: dict[str, Any] = field(default_factory=dict)


@dataclass
class BuildContext:
    """The run a ``build`` runs for: ``run`` (the claimed
    :class:`~adflora_analysis.rundir.RunDir`, None in memory), ``backend``, ``mode`` ("new",
    "resume", "overwrite") and the command's options (e.g. ``log``, a preloaded ``gm``)."""

    run: Any
    backend: Any
    mode: str = "new"
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def out(self) -> Path | None:
        return None if self.run is None else self.run.path


@dataclass
class Testbed:
    """One run kind, declared.

    kind : the name in ``meta.json`` and the manifest (``adflora <kind> run``).
    config : the config class (a :class:`~adflora_analysis.study.runconfig.FederationConfig`).
    build : ``build(cfg, ctx: BuildContext) -> Built``: how its jobs are built (data, models).
    meta : ``meta(cfg, built, backend) -> dict``: its ``meta.json`` entries (the sequence adds
        kind, seeds, versions, status, world size and the topology and gossip entries).
    needs : ``needs(cfg, out, backend)``: refuse what does not fit (device, memory, disk)
        before the run directory is touched.
    fits : ``fits(cfg, built, out)``: the same once data and models are loaded (a refusal
        removes what this run wrote).
    summary : ``summary(run_dir) -> DataFrame``: what the run returns (and writes as
        ``summary.csv``); None: the metrics table.
    threads : ``threads(cfg) -> int``: torch CPU threads for the run (restored after).
    tables, checks, report_sections : what it writes (names of :data:`TABLES`), the theory
        checks that apply to its runs (names of :data:`adflora_analysis.theory.REGISTRY`), the
        report sections its runs get.
    """

    kind: str
    config: type
    build: Callable[[Any, BuildContext], Built]
    meta: Callable[[Any, Built, Any], dict[str, Any]] | None = None
    needs: Callable[[Any, Path, Any], None] | None = None
    fits: Callable[[Any, Built, Path], None] | None = None
    summary: Callable[[Path], Any] | None = None
    threads: Callable[[Any], int] | None = None
    tables: tuple[str, ...] = ("metrics",)
    checks: tuple[str, ...] = ()
    report_sections: tuple[str, ...] = ()
    description: str = ""

    __test__ = False   # not a pytest class (its name starts with "Test")


_REGISTRY: dict[str, Testbed] = {}
_CHECKED: set[str] = set()


def _did_you_mean(name: str, names: Any) -> str:
    close = difflib.get_close_matches(name, sorted(names), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def register_testbed(tb: Testbed) -> Testbed:
    """Add ``tb`` to the registry (once per kind); its tables are checked now, its checks at
    the kind's first use (:func:`get_testbed`)."""
    if tb.kind in _REGISTRY:
        raise AdfloraError(f"testbed {tb.kind!r} is registered twice",
                           "register each kind once, in its package's testbed.py (or "
                           "unregister_testbed first)")
    bad = [t for t in tb.tables if t not in TABLES]
    if bad:
        raise AdfloraError(f"testbed {tb.kind!r} declares table {bad[0]!r} that the run "
                           "sequence does not write",
                           f"{_did_you_mean(bad[0], TABLES)}known tables: {', '.join(TABLES)}")
    if "metrics" not in tb.tables:
        raise AdfloraError(f"testbed {tb.kind!r} does not declare the metrics table",
                           "every run writes metrics: add 'metrics' to tables")
    from adflora_analysis.rundir.kinds import add_kind

    add_kind(tb.kind)   # run directories of this kind are known from now on
    _REGISTRY[tb.kind] = tb
    return tb


def unregister_testbed(kind: str) -> None:
    """Remove a registration (tests, plugins that replace one)."""
    _REGISTRY.pop(kind, None)
    _CHECKED.discard(kind)


def get_testbed(kind: str | None, *, validate: bool = True) -> Testbed:
    """The testbed of ``kind`` (the shipped ones are imported on demand); an unknown kind, or
    one that declares a check the theory wing does not have, is one error line. ``validate``
    False skips the checks' validation (it imports the theory wing; ``--dry-run`` needs only
    the config class)."""
    ours = shipped() if kind not in _REGISTRY else {}
    if kind in ours:
        importlib.import_module(ours[kind])
    tb = _REGISTRY.get(kind)  # type: ignore[arg-type]
    if tb is None:
        known = sorted(set(_REGISTRY) | set(ours))
        raise AdfloraError(f"unknown run kind {kind!r}",
                           f"{_did_you_mean(str(kind), known)}known kinds: {', '.join(known)}")
    if validate and kind not in _CHECKED:
        _check_checks(tb)
        _CHECKED.add(tb.kind)
    return tb


def registered() -> dict[str, Testbed]:
    """Every registered testbed by kind (the shipped ones included)."""
    for kind in shipped():
        get_testbed(kind)
    return dict(_REGISTRY)


def of_run(run_dir: str | Path) -> Testbed:
    """The testbed of the run in ``run_dir`` (its ``meta.json`` kind); a run of an unknown
    kind is one error line naming the directory."""
    from adflora_analysis.rundir import load_run

    run = load_run(run_dir)
    try:
        return get_testbed(run.kind)
    except AdfloraError as e:
        raise AdfloraError(f"{str(run.path)!r} holds a run of unknown kind {run.kind!r}",
                           e.hint or "") from None


def _check_checks(tb: Testbed) -> None:
    """Every declared check exists in the theory registry; the built-in ones then apply to
    this kind (their ``kinds`` gain it, so ``adflora check`` judges its runs)."""
    if not tb.checks:
        return
    import dataclasses

    from adflora_analysis.theory import REGISTRY

    bad = [c for c in tb.checks if c not in REGISTRY]
    if bad:
        raise AdfloraError(f"testbed {tb.kind!r} declares check {bad[0]!r} that does not exist",
                           f"{_did_you_mean(bad[0], REGISTRY)}checks: {', '.join(REGISTRY)}")
    for name in tb.checks:
        c = REGISTRY[name]
        if tb.kind not in c.kinds:
            REGISTRY[name] = dataclasses.replace(c, kinds=(*c.kinds, tb.kind))
