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

import re
from pathlib import Path

from adflora_analysis.core.methods import (
    ENTRY_POINT_GROUP,
    ENV,
    PLUGIN_FILES,
    describe,
    env_plugins,
    load_entry_points,
    load_installed,
    load_plugin_file,
    sha256_file,
)
from adflora_analysis.errors import AdfloraError

__all__ = ["ENTRY_POINT_GROUP", "ENV", "describe", "env_plugins", "load_entry_points",
           "load_installed", "load_plugin_file", "resolve_plugins", "sha256_file", "split_entry"]

_SHA = "#sha256="
_FILES = PLUGIN_FILES   # plugin files imported in this process (the registry's, core/methods.py)


def split_entry(entry: str) -> tuple[str, str | None]:
    """``"path#sha256=<hex>"`` -> ``(path, hex)``; a plain path -> ``(path, None)``.

    >>> split_entry("my_method.py"), split_entry("/x/m.py#sha256=" + "0" * 64)[1][:4]
    (('my_method.py', None), '0000')
    """
    path, sep, digest = entry.rpartition(_SHA)
    if sep and re.fullmatch(r"[0-9a-f]{64}", digest):
        return path, digest
    return entry, None


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
