"""Load run directories for a report: config, meta and the tidy tables each run wrote.

A run directory may come from someone else: every file read here is checked, and a damaged
one (garbage Parquet, an empty or unparsable CSV, a ``meta.json`` of the wrong shape, a
symbolic link) is one :class:`~adflora_analysis.errors.AdfloraError` line naming it. A run that
did not finish (``stopped``, ``running``, ``diverged``, ``failed``) is loaded as far as it got:
:attr:`Run.status` and :meth:`Run.rounds` say what the report covers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from adflora_analysis.errors import AdfloraError

KINDS = ("synthetic", "glue", "lm", "topology-sweep")

#: tables a report (or the theory checks it runs) reads besides metrics, eval and sweep:
#: read once here so that a damaged one is one line naming it, not a traceback later
_EXTRA_TABLES = ("constants", "mixing", "check_curves")

#: ``meta.json`` keys the report reads, with the JSON type each must have when present
_META_TYPES: dict[str, tuple[type, ...]] = {
    "status": (str,), "error": (str,), "git_revision": (str,), "topology": (dict,),
    "variants": (dict,), "versions": (dict,), "p": (int, float)}


@dataclass
class Run:
    """One run directory. ``kind`` is ``synthetic``, ``glue`` or ``topology-sweep``;
    ``status`` the run directory's own (``done``, ``stopped``, ...; ``unknown`` if unsaid;
    default: ``meta["status"]``)."""

    path: Path
    kind: str
    config: dict
    meta: dict
    metrics: pd.DataFrame | None = None
    eval: pd.DataFrame | None = None
    sweep: pd.DataFrame | None = None
    labels: pd.DataFrame | None = None
    status: str = ""
    #: every theory check's curve, set by :func:`~adflora_analysis.reports.checks.report_checks`
    check_curves: pd.DataFrame | None = None

    def __post_init__(self) -> None:   # a Run built by hand: meta.json's word
        if not self.status:
            self.status = str(self.meta.get("status") or "unknown")

    @property
    def name(self) -> str:
        return self.path.name

    def rounds(self) -> tuple[int, int] | None:
        """``(last round written, rounds configured)`` from the metrics (rounds numbered from
        0; the configured count is -1 when the config does not say), None without rounds."""
        m = self.metrics
        if m is None or m.empty or "round" not in m:
            return None
        last = pd.to_numeric(m["round"], errors="coerce").max()
        if pd.isna(last):
            return None
        want = self.config.get("rounds")
        return int(last), int(want) if isinstance(want, int) else -1


def check_meta(meta: object, path: Path) -> dict:
    """``meta`` if it is a JSON object whose keys the report reads have the right types;
    otherwise one :class:`AdfloraError` naming ``path`` (a crafted or damaged meta.json).

    >>> check_meta({"status": "done", "topology": {"p": 0.3}}, Path("r/meta.json"))["status"]
    'done'
    >>> check_meta({"topology": [1]}, Path("r/meta.json"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    adflora_analysis.errors.AdfloraError: meta.json 'r/meta.json' is corrupt (topology is a ...
    """
    hint = "it was not written by adflora, or was altered: run the study again"
    if not isinstance(meta, dict):
        raise AdfloraError(f"meta.json {str(path)!r} is corrupt (a JSON "
                           f"{type(meta).__name__}, not an object)", hint)
    for key, types in _META_TYPES.items():
        v = meta.get(key)
        bad = v is not None and (not isinstance(v, types) or isinstance(v, bool))
        if key == "variants" and not bad and v is not None:
            bad = not all(isinstance(x, dict) and isinstance(x.get("topology") or {}, dict)
                          for x in v.values())
        if bad:
            raise AdfloraError(f"meta.json {str(path)!r} is corrupt ({key} is a "
                               f"{type(v).__name__} of the wrong shape)", hint)
    return meta


def read_labels(path: Path) -> pd.DataFrame:
    """A per-client label-count CSV (``label_counts.csv``/``partition.csv``); an empty,
    unparsable or linked file, or a non-numeric ``count`` column, is one line naming it."""
    hint = "delete it (the report then leaves out the label distribution), or run again"
    if path.is_symlink():
        raise AdfloraError(f"{str(path)!r} is a symbolic link",
                           "a run directory holds only its own files: delete the link")
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise AdfloraError(f"{str(path)!r} is empty", hint) from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise AdfloraError(f"{str(path)!r} is damaged ({type(e).__name__})", hint) from None
    except OSError as e:
        raise AdfloraError(f"cannot read {str(path)!r} ({e.strerror})",
                           "check the file's permissions") from None
    if "count" in df and not pd.api.types.is_numeric_dtype(df["count"]):
        raise AdfloraError(f"{str(path)!r} is damaged (its count column is not numeric)", hint)
    return df


def collect_run(path: str | Path) -> Run:
    """A run directory's tables for a report, read through the one run-directory owner
    (:func:`adflora_analysis.rundir.load_run`): a synthetic, GLUE or ``topology sweep`` run;
    anything else, or a damaged file in it, is an :class:`AdfloraError` naming the path."""
    from adflora_analysis.rundir import load_run

    p = Path(path)
    run = load_run(p)
    meta = check_meta(run.meta, p / "meta.json")
    if not isinstance(run.manifest(), dict):   # read by run.kind and run.status
        raise AdfloraError(f"manifest.json {str(p / 'manifest.json')!r} is corrupt (not a JSON "
                           "object)", "it was not written by adflora: run the study again")
    config = run.config
    if not config and (p / "config.toml").exists():
        raise AdfloraError(f"config.toml {str(p / 'config.toml')!r} is empty",
                           "it was damaged or not written by adflora: run the study again")
    sweep, metrics = run.table("sweep"), run.table("metrics")
    ev = run.table("eval")
    for stem in _EXTRA_TABLES:
        run.table(stem)
    # the run directory says its kind (recorded, else shown by its tables: rundir.kinds)
    kind = {"sweep": "topology-sweep"}.get(run.kind or "", run.kind)
    if kind not in KINDS:
        what = "no metrics or sweep table" if kind is None else f"a {kind} directory"
        raise AdfloraError(f"{str(p)!r} holds {what}, not a run a report reads",
                           "pass a run directory that a run has written to")
    labels = None
    for name in ("label_counts.csv", "partition.csv"):
        if (p / name).exists() or (p / name).is_symlink():
            labels = read_labels(p / name)
    return Run(p, kind, config, meta, metrics, ev, sweep, labels, status=str(run.status))
