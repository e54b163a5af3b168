"""``meta.json`` content: seeds, versions, git revision, times, and the config hash that ties a
run's rows and checkpoints to its config."""

from __future__ import annotations

import datetime as _dt
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from adflora_analysis.rundir.kinds import normal_kind

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


def now_utc() -> str:
    """The UTC time now, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def make_meta(seeds: Any, **extra: Any) -> dict[str, Any]:
    """The ``meta.json`` content: seeds, versions, git revision, UTC time, plus ``extra``
    (``kind`` among them; the legacy ``topology-sweep`` is written as ``sweep``)."""
    meta = {"seeds": seeds, "versions": package_versions(), "git_revision": git_revision(),
            "created_utc": now_utc(), "platform": platform.platform(), **extra}
    if "kind" in meta:
        meta["kind"] = normal_kind(meta["kind"])
    return meta


def config_hash(config: dict[str, Any]) -> str:
    """The fingerprint of a resolved config: SHA-256 (16 hex digits) of its canonical JSON.
    Recorded in ``meta.json``, in every checkpoint and in every row file's header line, so a
    resume can tell this run's rows and checkpoints from another run's.

    >>> config_hash({"lr": 0.1, "seeds": 2}) == config_hash({"seeds": 2, "lr": 0.1})
    True
    >>> config_hash({"lr": 0.1}) == config_hash({"lr": 0.2})
    False
    """
    import hashlib

    def plain(o: Any) -> Any:   # what config.toml keeps: no None values, tables as dicts
        if isinstance(o, dict):
            return {str(k): plain(v) for k, v in o.items() if v is not None}
        if isinstance(o, list | tuple):
            return [plain(v) for v in o]
        return o

    text = json.dumps(plain(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
