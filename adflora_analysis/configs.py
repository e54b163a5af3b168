"""The shipped study configs, installed with the package (docs/architecture.md §8).

The TOMLs live in ``adflora_analysis/configs/<group>/`` (groups ``synthetic`` and ``glue_runs``;
the repository root's ``synthetic/`` and ``glue_runs/`` are links to them). Every command that
takes a CONFIG accepts a path, or a shipped config by name from any directory: ``bounds``,
``bounds.toml``, ``synthetic/bounds`` or ``synthetic/bounds.toml``.

    adflora configs list
    adflora configs show bounds
    adflora configs copy smoke my_smoke.toml
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adflora_analysis.errors import AdfloraError

#: Folder of the shipped configs (package data).
SHIPPED = Path(__file__).resolve().parent / "configs"
GROUPS = ("synthetic", "glue_runs")


@dataclass(frozen=True)
class ShippedConfig:
    """One shipped TOML: ``group/name`` and the first line of its leading comment."""

    group: str
    name: str
    path: Path
    summary: str

    @property
    def qualified(self) -> str:
        """``"synthetic/bounds"``."""
        return f"{self.group}/{self.name}"


def list_configs() -> list[ShippedConfig]:
    """Every shipped config, sorted by group then name.

    >>> any(c.qualified == "synthetic/bounds" for c in list_configs())
    True
    """
    out = []
    for group in GROUPS:
        for p in sorted((SHIPPED / group).glob("*.toml")):
            out.append(ShippedConfig(group, p.stem, p, _summary(p)))
    return out


def _summary(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        s = line.strip()
        if not s:
            continue
        if not s.startswith("#"):
            return ""
        s = s.lstrip("#").strip()
        if s:
            return s
    return ""


def find_shipped(name: str) -> ShippedConfig:
    """The shipped config called ``name`` (``bounds``, ``synthetic/bounds.toml``, ...).

    >>> find_shipped("synthetic/bounds.toml").qualified
    'synthetic/bounds'
    >>> find_shipped("bound")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    adflora_analysis.errors.AdfloraError: unknown shipped config 'bound' ... 'synthetic/bounds'?)
    """
    key = name.strip().removesuffix(".toml")
    shipped = list_configs()
    if "/" in key:  # GROUP/NAME, or a path ending in it given from another directory
        hits = [c for c in shipped if "/".join(key.split("/")[-2:]) == c.qualified]
    else:
        hits = [c for c in shipped if c.name == key]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise AdfloraError(f"config name {name!r} is ambiguous: "
                           f"{', '.join(c.qualified for c in hits)}", "write GROUP/NAME")
    import difflib

    names = {c.name: c.qualified for c in shipped} | {c.qualified: c.qualified for c in shipped}
    close = difflib.get_close_matches(key, list(names), n=1)
    hint = f"did you mean {names[close[0]]!r}?" if close else "adflora configs list shows them"
    raise AdfloraError(f"unknown shipped config {name!r} (and no such file)", hint)


def resolve_config(name_or_path: str | Path) -> Path:
    """A CONFIG argument as a file: an existing path, else a shipped config by name.

    >>> resolve_config("bounds").name
    'bounds.toml'
    """
    p = Path(name_or_path)
    if p.is_file():
        return p
    s = str(name_or_path)
    if p.suffix not in ("", ".toml") or s.startswith((".", "~")) or p.is_absolute():
        raise AdfloraError(f"config file {s!r} does not exist",
                           "check the path, or name a shipped config (adflora configs list)")
    return find_shipped(s).path


def copy_config(name: str, dest: str | Path, force: bool = False) -> Path:
    """Copy the shipped config ``name`` to ``dest`` (a file, or a folder to put NAME.toml in).

    An existing file is refused unless ``force``. Returns the written path.
    """
    from adflora_analysis import fileio

    src = find_shipped(name)
    target = Path(dest)
    if target.is_dir():
        target = target / src.path.name
    if target.exists() and not force:
        raise AdfloraError(f"{str(target)!r} already exists", "pick another DEST or pass --force")
    fileio.write_text(target, src.path.read_text(encoding="utf-8"))
    return target
