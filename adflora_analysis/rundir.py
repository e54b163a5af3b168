"""Run directories: resolved config, ``meta.json`` and tidy metrics (docs/architecture.md §8).

Layout of a run directory::

    config.toml       the resolved config (after overrides)
    meta.json         seed(s), package versions, git revision, topology constants, timestamps
    metrics.jsonl     tidy rows appended every round
    metrics.parquet   the same rows, written at the end
"""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from adflora_analysis import fileio
from adflora_analysis.config import dump_toml

PACKAGES = ("adflora-analysis", "torch", "numpy", "scipy", "networkx", "pandas", "pyarrow",
            "transformers", "peft", "datasets", "tokenizers", "seaborn", "matplotlib")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``names`` (None where not installed)."""
    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    out["python"] = platform.python_version()
    return out


def git_revision(start: str | Path | None = None) -> str | None:
    """The git commit of the source tree (``-dirty`` appended if modified), or None."""
    where = Path(start) if start else Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                             text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=where, capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def make_meta(seeds: Any, **extra: Any) -> dict[str, Any]:
    """The ``meta.json`` content: seeds, versions, git revision, UTC time, plus ``extra``."""
    return {
        "seeds": seeds,
        "versions": package_versions(),
        "git_revision": git_revision(),
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        **extra,
    }


def init_run_dir(out: str | Path, config: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Create ``out`` and write ``config.toml`` and ``meta.json`` atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fileio.write_text(out / "config.toml", dump_toml(config))
    fileio.write_json(out / "meta.json", meta)
    return out


def update_meta(out: str | Path, **fields: Any) -> None:
    """Merge ``fields`` into an existing ``meta.json`` (atomically)."""
    import json

    p = Path(out) / "meta.json"
    meta = json.loads(p.read_text()) if p.exists() else {}
    meta.update(fields)
    fileio.write_json(p, meta)
