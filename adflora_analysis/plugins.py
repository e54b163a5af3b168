"""Method plugins: a fifth method from your own file or package, without editing the toolkit.

A plugin adds :class:`~adflora_analysis.core.methods.MethodSpec`\\ s to the method registry
(:data:`~adflora_analysis.core.methods.METHODS`) with
:func:`~adflora_analysis.core.methods.register_method`. Three routes (docs/methods.md, "A method
of your own"):

- a study config's ``plugins = ["path/to/my_method.py"]``: each file is imported when the config
  is validated (relative paths from the current folder), and the resolved config records it as
  ``"/abs/path/my_method.py#sha256=<hex>"``, so ``--resume`` imports the same file only if its
  SHA-256 still matches (:func:`resolve_plugins`);
- the environment variable ``ADFLORA_PLUGINS`` (files separated by ``os.pathsep``): imported on
  the registry's first read, and added to every config's ``plugins``;
- entry point group ``adflora_analysis.methods`` of an installed package: each entry point's
  value is a ``MethodSpec`` or a zero-argument callable returning one, loaded on the registry's
  first read (:func:`load_installed`).

Every failure is one :class:`~adflora_analysis.errors.AdfloraError` naming the file or entry
point; a file that fails registers nothing. A file is imported once per process (again only if
its contents changed, which is refused).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Any

from adflora_analysis.errors import AdfloraError

ENTRY_POINT_GROUP = "adflora_analysis.methods"
ENV = "ADFLORA_PLUGINS"
_SHA = "#sha256="

#: plugin files imported in this process: resolved path -> (SHA-256, method names)
_FILES: dict[str, tuple[str, tuple[str, ...]]] = {}


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def split_entry(entry: str) -> tuple[str, str | None]:
    """``"path#sha256=<hex>"`` -> ``(path, hex)``; a plain path -> ``(path, None)``.

    >>> split_entry("my_method.py"), split_entry("/x/m.py#sha256=" + "0" * 64)[1][:4]
    (('my_method.py', None), '0000')
    """
    path, sep, digest = entry.rpartition(_SHA)
    if sep and re.fullmatch(r"[0-9a-f]{64}", digest):
        return path, digest
    return entry, None


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
    from adflora_analysis.core import methods

    before = set(dict.keys(methods.METHODS))
    stem = re.sub(r"\W", "_", p.stem)
    name = f"adflora_plugin_{stem}_{len(_FILES)}"
    spec = importlib.util.spec_from_file_location(name, p)
    if spec is None or spec.loader is None:
        raise ImportError(f"{str(p)!r} is not a Python file")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod       # dataclasses and pickling look modules up by name
    saved, methods._ORIGIN_NOW = methods._ORIGIN_NOW, origin
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        methods._ORIGIN_NOW = saved
    return tuple(n for n in dict.keys(methods.METHODS) if n not in before)


def load_plugin_file(path: str | Path, expect_sha256: str | None = None,
                     what: str = "plugin file") -> tuple[str, str, tuple[str, ...]]:
    """Import a Python file that calls ``register_method``; returns (resolved path, SHA-256,
    the method names it registered). ``expect_sha256``: refuse a file whose contents differ
    (a resume). Importing the same unchanged file again is a no-op.

    >>> load_plugin_file("no/such/plugin.py")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    adflora_analysis.errors.AdfloraError: plugin file 'no/such/plugin.py' does not exist ...
    """
    from adflora_analysis.core import methods

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
    if where in _FILES:
        old, names = _FILES[where]
        if old != digest:
            raise AdfloraError(f"{what} {where!r} changed after this process imported it",
                               "start a new Python process to use the new version")
        return where, digest, names
    methods.METHODS._ready()     # installed plugins first: their names count as taken
    saved_reg, saved_origin = dict(dict.items(methods.METHODS)), dict(methods.ORIGIN)
    try:
        names = _exec_file(Path(where), f"{what} {where!r}")
        if not names:
            raise AdfloraError(f"{what} {where!r} registers no method",
                               "call register_method(MethodSpec(...)) in it")
    except BaseException as e:
        dict.clear(methods.METHODS)              # a file that fails registers nothing
        dict.update(methods.METHODS, saved_reg)
        methods.ORIGIN.clear()
        methods.ORIGIN.update(saved_origin)
        if isinstance(e, AdfloraError):
            if e.problem.startswith(f"{what} {where!r}"):
                raise
            raise AdfloraError(f"{what} {where!r}: {e.problem}", e.hint) from None
        if not isinstance(e, Exception) and not isinstance(e, SystemExit):
            raise                               # KeyboardInterrupt: the user's Ctrl-C
        raise AdfloraError(f"{what} {where!r} failed to import: {describe(e)}",
                           "fix the file; it must run with `python FILE.py`") from None
    _FILES[where] = (digest, names)
    return where, digest, names


#: plugin files the user named in this process (a CONFIG's ``plugins``, ADFLORA_PLUGINS):
#: only those are imported again when a resolved config (from a run directory) names them
_NAMED: set[str] = set()


def _key(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def resolve_plugins(entries: list[str]) -> list[str]:
    """The config route: import each entry of a config's ``plugins`` (a path, or a path with
    the ``#sha256=<hex>`` a resolved config records, which must still match) and then the
    ``ADFLORA_PLUGINS`` files; returns the resolved entries, ``"/abs/path.py#sha256=<hex>"``,
    each file once, for the resolved config.

    >>> resolve_plugins([])
    []
    """
    out: dict[str, str] = {}
    named = {_key(e) for e in env_plugins()}
    for entry in [*entries, *env_plugins()]:
        if not isinstance(entry, str) or not entry.strip():
            raise AdfloraError(f"plugins entry {entry!r} is not a file name",
                               'write plugins = ["path/to/my_method.py"]')
        path, digest = split_entry(entry)
        if digest is None:
            _NAMED.add(_key(path))   # the user named it (a study CONFIG, an override)
        elif _key(path) not in _NAMED | named:
            # a recorded entry comes from a run directory's config.toml: untrusted input,
            # which never makes the toolkit import code on its own
            raise AdfloraError(f"the run's config names the plugin file {path!r}, which this "
                               "command was not given", f"a run directory never runs code on "
                               f"its own: name the file yourself, e.g. {ENV}={path} adflora "
                               "... --resume DIR")
        where, sha, _ = load_plugin_file(path, digest)
        out.setdefault(where, f"{where}{_SHA}{sha}")
    return list(out.values())


def _spec_of(value: Any) -> Any:
    from adflora_analysis.core.methods import MethodSpec

    if isinstance(value, MethodSpec) or not callable(value):
        return value
    return value()


def load_entry_points() -> list[str]:
    """Register the methods of installed packages (entry point group
    ``adflora_analysis.methods``); returns their names."""
    from importlib.metadata import entry_points

    from adflora_analysis.core.methods import METHODS, ORIGIN, MethodSpec, register_method

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
