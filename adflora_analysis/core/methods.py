"""Method specs: which LoRA blocks train and which are gossiped in each phase (docs/architecture.md
§2).

A method is data, not code: adding one is :func:`register_method` with a :class:`MethodSpec`,
from your own file or package (:mod:`adflora_analysis.plugins`: a config's ``plugins = [...]``,
``ADFLORA_PLUGINS``, or entry point group ``adflora_analysis.methods``, loaded on the registry's
first use; docs/methods.md "A method of your own"). The same specs drive the synthetic testbed
and the GLUE runner through :func:`adflora_analysis.core.loop.run_rounds`. Centralized (server)
variants are the same specs run with the ``server`` topology (W^t = J).

>>> [get_method("adf-lora").trained_blocks(t, 2) for t in range(5)]
[('B',), ('B',), ('A',), ('A',), ('B',)]
>>> get_method("adf-lora").mixed_blocks(3, 2), get_method("rolora").mixed_blocks(3, 1)
(('A', 'B'), ('A',))
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from adflora_analysis.errors import AdfloraError, unknown_name

if TYPE_CHECKING:   # torch is imported where masks are built: configs and dry runs need none
    from torch import Tensor

BlockRule = Literal["phase", "A", "B", "AB"]
RULES = ("phase", "A", "B", "AB")
#: a rule per phase, ``(("A", rule in phase A), ("B", rule in phase B))``; a
#: :class:`MethodSpec` takes it as a mapping ``{"A": ..., "B": ...}`` too
PhaseRule = tuple[tuple[str, BlockRule], tuple[str, BlockRule]]
Rule = BlockRule | PhaseRule


def _blocks(rule: Rule, ph: str) -> tuple[str, ...]:
    if isinstance(rule, tuple):
        rule = dict(rule)[ph]
    if rule == "phase":
        return (ph,)
    return tuple(rule)


def _masks(rule: Rule, phase_A: Tensor) -> dict[str, Tensor]:
    import torch

    if isinstance(rule, tuple):
        in_A, in_B = _blocks(rule, "A"), _blocks(rule, "B")
        return {b: torch.where(phase_A, b in in_A, b in in_B) for b in ("A", "B")}
    if rule == "phase":
        return {"A": phase_A.clone(), "B": ~phase_A}
    return {b: torch.full_like(phase_A, b in rule) for b in ("A", "B")}


def _rule(name: Any, field: str, rule: Any) -> Rule:
    """``rule`` checked and made hashable: a :data:`BlockRule` or, per phase, a
    :data:`PhaseRule`; anything else is one :class:`AdfloraError`."""
    hint = ('blocks are "A" and "B": use "phase", "A", "B" or "AB", or one per phase, '
            'e.g. {"A": "A", "B": "AB"}')
    if isinstance(rule, Mapping):
        if set(rule) != {"A", "B"}:
            raise AdfloraError(f"method {name!r}: {field} = {dict(rule)!r} names phases "
                               f"{', '.join(map(repr, rule)) or 'none'}; the phases are "
                               "'A' and 'B'", hint)
        return (("A", _rule(name, f"{field}['A']", rule["A"])),
                ("B", _rule(name, f"{field}['B']", rule["B"])))
    if isinstance(rule, tuple) and len(rule) == 2 and all(
            isinstance(x, tuple) and len(x) == 2 for x in rule):
        return _rule(name, field, dict(rule))
    if rule not in RULES:
        raise AdfloraError(f"method {name!r}: {field} = {rule!r} declares a block that does "
                           "not exist", hint)
    return rule


@dataclass(frozen=True)
class MethodSpec:
    """One federated LoRA method.

    Attributes
    ----------
    name : registry name used in configs (``methods = [...]``).
    train : which blocks take local steps: ``"phase"`` (alternating by :func:`phase`), ``"A"``,
        ``"B"`` or ``"AB"``; or one of these per phase, ``{"A": ..., "B": ...}`` (stored as a
        :data:`PhaseRule`).
    mix : which blocks are gossiped in a round (same vocabulary; per phase, e.g.
        ``{"A": "A", "B": "AB"}``: with T = 1 the frozen factor is gossiped every other round).
    default_switch_interval : T used when the config gives none.
    summary : one line for tables and reports.

    A rule that names another block, or a phase other than "A"/"B", is one
    :class:`AdfloraError`:

    >>> MethodSpec("x", "phase", "C", 1, "")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    adflora_analysis.errors.AdfloraError: method 'x': mix = 'C' declares a block that does not ...
    >>> MethodSpec("x", "phase", {"A": "A", "B": "AB"}, 1, "").mixed_in("B")
    ('A', 'B')
    """

    name: str
    train: Rule
    mix: Rule
    default_switch_interval: int
    summary: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or self.name != \
                self.name.strip() or any(c in self.name for c in ',"\'[]=#'):
            raise AdfloraError(f"method name {self.name!r} is not a plain name",
                               'use letters, digits and dashes, e.g. "my-lora"')
        object.__setattr__(self, "train", _rule(self.name, "train", self.train))
        object.__setattr__(self, "mix", _rule(self.name, "mix", self.mix))
        T = self.default_switch_interval
        if isinstance(T, bool) or not isinstance(T, int) or T < 1:
            raise AdfloraError(f"method {self.name!r}: default_switch_interval = {T!r} must be "
                               "an integer >= 1", "use 1 (switch every round) or more")
        if not isinstance(self.summary, str):
            raise AdfloraError(f"method {self.name!r}: summary must be a string",
                               "give one line for tables and reports")

    def trained_in(self, ph: str) -> tuple[str, ...]:
        """Blocks updated by local steps in a round of phase ``ph`` ("A" or "B").

        >>> get_method("rolora").trained_in("A"), get_method("lora").trained_in("A")
        (('A',), ('A', 'B'))
        """
        return _blocks(self.train, ph)

    def mixed_in(self, ph: str) -> tuple[str, ...]:
        """Blocks gossiped with W^t in a round of phase ``ph``.

        >>> get_method("rolora").mixed_in("B"), get_method("adf-lora").mixed_in("B")
        (('B',), ('A', 'B'))
        """
        return _blocks(self.mix, ph)

    def trained_masks(self, phase_A: Tensor) -> dict[str, Tensor]:
        """Which clients train each block when each client has its own phase (clock drift,
        docs/theory.md §9): ``phase_A`` (*batch, n) bool, True where a client is in phase A;
        returns ``{"A": (*batch, n) bool, "B": ...}``.

        >>> import torch
        >>> m = get_method("rolora").trained_masks(torch.tensor([True, False]))
        >>> m["A"].tolist(), m["B"].tolist()
        ([True, False], [False, True])
        >>> get_method("lora").trained_masks(torch.tensor([True, False]))["B"].tolist()
        [True, True]
        """
        return _masks(self.train, phase_A)

    def mixed_masks(self, phase_A: Tensor) -> dict[str, Tensor]:
        """Which clients gossip each block when each client has its own phase (see
        :meth:`trained_masks`): rolora's client gossips only its phase's factor.

        >>> import torch
        >>> get_method("rolora").mixed_masks(torch.tensor([True, False]))["B"].tolist()
        [False, True]
        >>> get_method("adf-lora").mixed_masks(torch.tensor([True, False]))["B"].tolist()
        [True, True]
        """
        return _masks(self.mix, phase_A)

    def trained_blocks(self, t: int, switch_interval: int | None = None) -> tuple[str, ...]:
        """Blocks updated by local steps at round ``t`` of the periodic schedule."""
        from adflora_analysis.core.schedules import phase

        return self.trained_in(phase(t, switch_interval or self.default_switch_interval))

    def mixed_blocks(self, t: int, switch_interval: int | None = None) -> tuple[str, ...]:
        """Blocks gossiped with W^t at round ``t`` of the periodic schedule."""
        from adflora_analysis.core.schedules import phase

        return self.mixed_in(phase(t, switch_interval or self.default_switch_interval))

    @property
    def alternates(self) -> bool:
        """Whether the phase changes what the method trains or gossips (T matters).

        >>> [get_method(m).alternates for m in ("adf-lora", "rolora", "ffa-lora", "lora")]
        [True, True, False, False]
        """
        return (self.trained_in("A") != self.trained_in("B")
                or self.mixed_in("A") != self.mixed_in("B"))

    def gossips_frozen(self, block: str) -> bool:
        """Whether ``block`` is gossiped in every phase in which it is frozen (True when it is
        never frozen); what check 3 (frozen-block-consensus) expects.

        >>> [get_method(m).gossips_frozen("A") for m in ("adf-lora", "rolora", "ffa-lora")]
        [True, False, False]
        >>> half = MethodSpec("x", "phase", {"A": "A", "B": "AB"}, 1, "")
        >>> half.gossips_frozen("A"), half.gossips_frozen("B")
        (True, False)
        """
        return all(block in self.mixed_in(ph) for ph in ("A", "B")
                   if block not in self.trained_in(ph))


class _Registry(dict):
    """The method registry: a dict that loads the installed plugins (entry points of group
    ``adflora_analysis.methods`` and ``ADFLORA_PLUGINS`` files) once, on its first read."""

    def ready(self) -> None:
        """Load the installed plugins (:func:`load_installed`) unless this process did."""
        if not _LOADED[0]:
            _LOADED[0] = True
            load_installed()

    def __getitem__(self, key: str) -> MethodSpec:
        self.ready()
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.ready()
        return super().__contains__(key)

    def __iter__(self) -> Iterator[str]:
        self.ready()
        return super().__iter__()

    def __len__(self) -> int:
        self.ready()
        return super().__len__()

    def get(self, key: str, default: Any = None) -> Any:
        self.ready()
        return super().get(key, default)

    def keys(self):  # noqa: D102
        self.ready()
        return super().keys()

    def values(self):  # noqa: D102
        self.ready()
        return super().values()

    def items(self):  # noqa: D102
        self.ready()
        return super().items()


_LOADED = [False]   # whether the installed plugins were loaded (load_installed)
_ORIGIN_NOW: str | None = None   # the plugin file being imported (set by _exec_file)

METHODS: dict[str, MethodSpec] = _Registry({
    s.name: s
    for s in (
        MethodSpec("adf-lora", "phase", "AB", 5,
                   "alternate the trained factor every T rounds; gossip both factors every round"),
        MethodSpec("rolora", "phase", "phase", 1,
                   "alternate the trained factor; gossip only the trained one (naive in DFL)"),
        MethodSpec("ffa-lora", "B", "B", 1, "train and gossip B; A frozen at its shared init"),
        MethodSpec("lora", "AB", "AB", 1, "train and gossip both factors (FedAvg-LoRA)"),
    )
})
BUILTIN = tuple(dict.keys(METHODS))
"""The built-in method names."""

#: where each registered method came from (``"built in"``, ``"plugin file '...'"``, ...)
ORIGIN: dict[str, str] = dict.fromkeys(BUILTIN, "built in")


def get_method(name: str) -> MethodSpec:
    """The spec registered as ``name``; an unknown name lists the valid ones.

    >>> spec = get_method("adf-lora")
    >>> spec.default_switch_interval, [spec.trained_blocks(t) for t in (0, 4, 5, 10)]  # B first
    (5, [('B',), ('B',), ('A',), ('B',)])
    >>> get_method("adflora")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    adflora_analysis.errors.AdfloraError: unknown method 'adflora'; valid: adf-lora, ...
    """
    try:
        return METHODS[name]
    except KeyError:
        raise unknown_name("method", name, METHODS) from None


def register_method(spec: MethodSpec, origin: str | None = None) -> MethodSpec:
    """Add a method spec to :data:`METHODS`: the public way to add a method (from a plugin
    file, a package's entry point or a notebook). Refuses anything but a :class:`MethodSpec`
    and a name that is taken (built in or registered before); ``origin`` says where it came
    from in later errors (the plugin loader sets it).

    >>> spec = register_method(MethodSpec("b-only-gossip-ab", "B", "AB", 1, "doc example"))
    >>> get_method("b-only-gossip-ab").mixed_blocks(0)
    ('A', 'B')
    >>> register_method(spec)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    adflora_analysis.errors.AdfloraError: method 'b-only-gossip-ab' is already registered ...
    >>> register_method(MethodSpec("lora", "AB", "AB", 1, "mine"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    adflora_analysis.errors.AdfloraError: method 'lora' is already registered (built in) ...
    >>> register_method({"name": "x"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    adflora_analysis.errors.AdfloraError: register_method got a dict, not a MethodSpec ...
    >>> unregister_method("b-only-gossip-ab")  # the registry is global: leave it as it was
    """
    if not isinstance(spec, MethodSpec):
        raise AdfloraError(f"register_method got a {type(spec).__name__}, not a MethodSpec",
                           "pass MethodSpec(name, train, mix, default_switch_interval, "
                           "summary) from adflora_analysis.core.methods")
    if spec.name in METHODS:
        raise AdfloraError(f"method {spec.name!r} is already registered "
                           f"({ORIGIN.get(spec.name, 'registered before')})",
                           "pick another name")
    METHODS[spec.name] = spec
    ORIGIN[spec.name] = origin or _ORIGIN_NOW or "register_method"
    return spec


def unregister_method(name: str) -> None:
    """Remove a registered (not built-in) method, e.g. at the end of a test or notebook."""
    if name in BUILTIN:
        raise AdfloraError(f"method {name!r} is built in", "remove only methods you registered")
    get_method(name)
    del METHODS[name]
    ORIGIN.pop(name, None)


# ------------------------------------------------------------------ loading plugins
# (here, beside the registry that loads them on its first read, so that the registry imports no
# module above it; adflora_analysis.plugins adds the config route and re-exports these)
ENTRY_POINT_GROUP = "adflora_analysis.methods"
ENV = "ADFLORA_PLUGINS"

#: plugin files imported in this process: resolved path -> (SHA-256, method names)
PLUGIN_FILES: dict[str, tuple[str, tuple[str, ...]]] = {}


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def env_plugins() -> list[str]:
    """The files named by ``ADFLORA_PLUGINS`` (``os.pathsep``-separated; empty parts skipped)."""
    return [p for p in os.environ.get(ENV, "").split(os.pathsep) if p.strip()]


def describe(e: BaseException) -> str:
    """A user's exception in a few words.

    >>> describe(ZeroDivisionError("division by zero")), describe(SystemExit(3))
    ('ZeroDivisionError: division by zero', 'called sys.exit(3)')
    """
    if isinstance(e, SystemExit):
        return f"called sys.exit({e.code!r})"
    return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


def _exec_file(p: Path, origin: str) -> tuple[str, ...]:
    """Import file ``p`` (its exceptions propagate); the method names it registered."""
    before = set(dict.keys(METHODS))
    stem = re.sub(r"\W", "_", p.stem)
    name = f"adflora_plugin_{stem}_{len(PLUGIN_FILES)}"
    spec = importlib.util.spec_from_file_location(name, p)
    if spec is None or spec.loader is None:
        raise ImportError(f"{str(p)!r} is not a Python file")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod       # dataclasses and pickling look modules up by name
    global _ORIGIN_NOW
    saved, _ORIGIN_NOW = _ORIGIN_NOW, origin
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        _ORIGIN_NOW = saved
    return tuple(n for n in dict.keys(METHODS) if n not in before)


def load_plugin_file(path: str | Path, expect_sha256: str | None = None,
                     what: str = "plugin file") -> tuple[str, str, tuple[str, ...]]:
    """Import a Python file that calls ``register_method``; returns (resolved path, SHA-256,
    the method names it registered). ``expect_sha256``: refuse a file whose contents differ
    (a resume). Importing the same unchanged file again is a no-op.

    >>> load_plugin_file("no/such/plugin.py")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    adflora_analysis.errors.AdfloraError: plugin file 'no/such/plugin.py' does not exist ...
    """
    p = Path(path)
    try:
        ok, there = p.is_file(), p.exists()
        where = str(p.resolve())
        digest = sha256_file(p) if ok else ""
    except OSError as e:
        raise AdfloraError(f"{what} {str(p)[:200]!r} cannot be read "
                           f"({e.strerror or type(e).__name__})",
                           "check the path and its permissions") from None
    if not ok:
        raise AdfloraError(f"{what} {str(p)!r} " + ("is not a file" if there
                                                    else "does not exist"),
                           "check the path (a relative path starts at the current folder)")
    if expect_sha256 is not None and digest != expect_sha256:
        raise AdfloraError(f"{what} {where!r} changed since the run was configured: its "
                           f"SHA-256 is {digest[:12]}..., the config records "
                           f"{expect_sha256[:12]}...", "restore the file the run started "
                           "with, or start a new run directory")
    if where in PLUGIN_FILES:
        old, names = PLUGIN_FILES[where]
        if old != digest:
            raise AdfloraError(f"{what} {where!r} changed after this process imported it",
                               "start a new Python process to use the new version")
        return where, digest, names
    METHODS.ready()     # installed plugins first: their names count as taken
    saved_reg, saved_origin = dict(dict.items(METHODS)), dict(ORIGIN)
    try:
        names = _exec_file(Path(where), f"{what} {where!r}")
        if not names:
            raise AdfloraError(f"{what} {where!r} registers no method",
                               "call register_method(MethodSpec(...)) in it")
    except BaseException as e:
        dict.clear(METHODS)              # a file that fails registers nothing
        dict.update(METHODS, saved_reg)
        ORIGIN.clear()
        ORIGIN.update(saved_origin)
        if isinstance(e, AdfloraError):
            if e.problem.startswith(f"{what} {where!r}"):
                raise
            raise AdfloraError(f"{what} {where!r}: {e.problem}", e.hint) from None
        if not isinstance(e, Exception) and not isinstance(e, SystemExit):
            raise                               # KeyboardInterrupt: the user's Ctrl-C
        raise AdfloraError(f"{what} {where!r} failed to import: {describe(e)}",
                           "fix the file; it must run with `python FILE.py`") from None
    PLUGIN_FILES[where] = (digest, names)
    return where, digest, names


def _spec_of(value: Any) -> Any:
    if isinstance(value, MethodSpec) or not callable(value):
        return value
    return value()


def load_entry_points() -> list[str]:
    """Register the methods of installed packages (entry point group
    ``adflora_analysis.methods``); returns their names."""
    from importlib.metadata import entry_points

    names = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep.dist, "name", None)
        what = f"entry point {ep.name!r} ({ep.value}{', package ' + dist if dist else ''})"
        try:
            spec = _spec_of(ep.load())
        except AdfloraError as e:
            raise AdfloraError(f"{what}: {e.problem}", e.hint) from None
        except Exception as e:  # noqa: BLE001 - any failure of a user's package is bad input
            raise AdfloraError(f"{what} failed to load: {describe(e)}",
                               "fix or uninstall the package") from None
        if not isinstance(spec, MethodSpec):
            raise AdfloraError(f"{what} gives a {type(spec).__name__}, not a MethodSpec",
                               "point it at a MethodSpec or a function returning one")
        if dict.get(METHODS, spec.name) is spec:   # its module registered it on import
            ORIGIN[spec.name] = what
            names.append(spec.name)
            continue
        try:
            register_method(spec, origin=what)
        except AdfloraError as e:
            raise AdfloraError(f"{what}: {e.problem}", e.hint) from None
        names.append(spec.name)
    return names


def load_installed() -> list[str]:
    """Entry points of group ``adflora_analysis.methods``, then ``ADFLORA_PLUGINS`` files: what
    the registry loads on its first read. Returns the method names added."""
    names = load_entry_points()
    for f in env_plugins():
        names += load_plugin_file(f, what=f"plugin file (from {ENV})")[2]
    return names
