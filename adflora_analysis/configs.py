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

import re
from dataclasses import dataclass
from pathlib import Path

from adflora_analysis.errors import AdfloraError

#: Folder of the shipped configs (package data).
SHIPPED = Path(__file__).resolve().parent / "configs"
GROUPS = ("synthetic", "glue_runs", "lm_runs")


@dataclass(frozen=True)
class ShippedConfig:
    """One shipped TOML: ``group/name`` and the first paragraph of its leading comment."""

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
    """The first paragraph of the file's leading comment, joined into one line (it ends at a
    blank comment line, an indented example command or the first setting)."""
    lines: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        s = line.strip()
        if not s:
            if lines:
                break
            continue
        if not s.startswith("#"):
            break
        body = s[1:]
        if not body.strip() or (lines and body.startswith("   ")):
            if lines:
                break
            continue
        lines.append(body.strip())
    return " ".join(lines)


_SENTENCE_END = re.compile(r"(?<=[a-z0-9)\]][.?!])\s+(?=[A-Z(`])")


def short_summary(text: str, width: int = 80) -> str:
    """``text``'s first sentence if it fits in ``width`` characters, else its words up to the
    width and an ellipsis: never a word cut in two.

    >>> short_summary("Scale: 1,000 clients, two methods. Encounter with q = 0.01.")
    'Scale: 1,000 clients, two methods.'
    >>> short_summary("one two three four", width=12)
    'one two…'
    >>> short_summary("A study (issue 12; the theory) of many words", width=22)
    'A study…'
    """
    text = " ".join(text.split())
    first = _SENTENCE_END.split(text, maxsplit=1)[0]
    if len(first) <= width:
        return first
    head = first[: width]
    clause = max(head.rfind(sep) for sep in (", ", "; ", ": ", " ("))
    cut = head[:clause] if clause > width // 2 else head.rsplit(" ", 1)[0]
    if cut.count("(") > cut.count(")"):   # no parenthesis left open
        cut = cut[:cut.rfind("(")]
    return cut.rstrip(",;:=(-— ") + "…"


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
