"""``checks.json``: the saved verdicts, with the run state they cover, and reading them back.

Format (``"format": "adflora-checks/2"``)::

    {"format": "adflora-checks/2", "created_utc": "2025-01-01T00:00:00+00:00",
     "z": 3.0, "effect": 0.2,
     "run": {"kind": "synthetic", "status": "done", "complete": true,
             "rounds_covered": {"<job>": <last round in the metrics rows>, ...},
             "config_hash": "<meta.json's config_hash>" | null},
     "results": [<CheckResult.to_dict()>, ...]}

A job is the ``job`` column of the metrics rows (else ``<variant>/<method>``).
:func:`load_saved_checks` gives the results back only while they still describe the run: the
same status, the same config hash and the same last round of every job; older files (a bare
list of results) are given back flagged as unverified.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from adflora_analysis.errors import AdfloraError
from adflora_analysis.theory.result import CheckResult

FORMAT = "adflora-checks/2"
CHECKS_JSON = "checks.json"
CURVES = "check_curves.parquet"


def rounds_covered(metrics: pd.DataFrame | None) -> dict[str, int]:
    """The last round of every job in the metrics rows (job: the ``job`` column, else
    ``variant/method``).

    >>> rounds_covered(pd.DataFrame({"job": ["a", "a", "b"], "round": [0, 1, 0]}))
    {'a': 1, 'b': 0}
    >>> rounds_covered(pd.DataFrame({"method": ["lora"], "round": [4]}))
    {'base/lora': 4}
    """
    if metrics is None or metrics.empty or "round" not in metrics:
        return {}
    df = metrics
    key = df["job"].astype(str) if "job" in df else None
    if key is None or df["job"].isna().any():
        var = df["variant"].astype(str) if "variant" in df else pd.Series("base", df.index)
        meth = df["method"].astype(str) if "method" in df else pd.Series("?", df.index)
        alt = var + "/" + meth
        key = alt if key is None else key.where(df["job"].notna(), alt)
    last = pd.to_numeric(df["round"], errors="coerce").groupby(key.to_numpy()).max()
    return {str(k): int(v) for k, v in last.items() if math.isfinite(v)}


def run_state(run_dir: str | Path, metrics: pd.DataFrame | None = None, *,
              status: str | None = None) -> dict[str, Any]:
    """The run's state that verdicts depend on: path, kind, status, complete (status done),
    the last round of every job in ``metrics`` (read from the run when None) and the config
    hash of ``meta.json`` (None for runs written before it was recorded)."""
    from adflora_analysis.rundir import RunDir

    rd = RunDir(run_dir, writer=False)
    st = status if status is not None else rd.status
    if metrics is None:
        metrics = rd.table("metrics")
    meta = rd.meta
    h = meta.get("config_hash") if isinstance(meta, dict) else None
    return {"path": str(rd.path), "kind": rd.kind, "status": st, "complete": st == "done",
            "rounds_covered": rounds_covered(metrics),
            "config_hash": h if isinstance(h, str) else None}


def save_results(run_dir: str | Path, results: list[CheckResult], *,
                 state: dict[str, Any] | None = None, z: float | None = None,
                 effect: float | None = None) -> None:
    """Write ``checks.json`` (the summaries and the run state they cover, see the module
    docstring) and ``check_curves.parquet`` (every check's measured curve and bound, columns
    number, check, method, variant, ...) atomically, and list them in the manifest.

    ``state``: :func:`run_state` when the checks read the rows (default: now). A run still
    running is refused (its rows grow); an OS failure (read-only, full disk) is one
    :class:`AdfloraError` line. A failed save never leaves an earlier ``checks.json``
    beside new curves."""
    from adflora_analysis import fileio
    from adflora_analysis.rundir import CHECK_OUTPUTS, RunDir, os_error

    state = state if state is not None else run_state(run_dir)
    if state.get("status") == "running":
        raise AdfloraError(f"not saving {CHECKS_JSON}: run {str(run_dir)!r} is still running",
                           "check it again when it has finished")
    d = Path(run_dir)
    parts = []
    for r in results:
        if len(r.curve):
            c = r.curve.copy()
            c.insert(0, "number", r.number)
            c.insert(1, "check", r.check)
            c.insert(2, "method", r.method)
            c.insert(3, "variant", r.variant)
            parts.append(c)
    doc = {"format": FORMAT,
           "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
           "z": z, "effect": effect,
           "run": {k: state.get(k) for k in ("kind", "status", "complete", "rounds_covered",
                                             "config_hash")},
           "results": [r.to_dict() for r in results]}
    try:
        (d / CHECKS_JSON).unlink(missing_ok=True)
        if parts:
            fileio.write_parquet(d / CURVES, pd.concat(parts, ignore_index=True))
        else:
            (d / CURVES).unlink(missing_ok=True)
        fileio.write_json(d / CHECKS_JSON, doc)
        RunDir(d).record(*CHECK_OUTPUTS)
    except OSError as e:
        raise os_error(d / CHECKS_JSON, e) from None


def _results(items: Any) -> list[dict[str, Any]] | str:
    """The result dicts, or why they are not results."""
    if not isinstance(items, list):
        return f"its results are a {type(items).__name__}, not a list"
    for k, it in enumerate(items):
        try:
            CheckResult.from_dict(it)
        except (ValueError, TypeError) as e:
            return f"item {k} is not a check result ({e})"
    return items


def load_saved_checks(run_dir: str | Path) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The results saved in ``<run_dir>/checks.json`` and a one-line note.

    ``(results, None)``: they cover the run as it is now (same status, config hash and last
    round of every job). ``(results, note)``: a legacy file (a bare list): accepted, but the
    note says it is unverified. ``(None, reason)``: no file, a damaged one, or a stale one (the
    rows cover other rounds, the config hash or the run status changed, or it was written while
    the run was running). Never raises for the file's content; a run directory that cannot be
    read (damaged ``meta.json``) is its one-line :class:`AdfloraError`.
    """
    from adflora_analysis.rundir import load_run

    rd = load_run(run_dir)
    p = rd.path / CHECKS_JSON
    if not p.is_file():
        return None, (f"no {CHECKS_JSON} in {str(rd.path)!r} (run `adflora synthetic check "
                      f"{rd.path}`)")
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as e:   # JSONDecodeError, UnicodeDecodeError
        return None, f"{CHECKS_JSON} in {str(rd.path)!r} is damaged ({type(e).__name__})"
    if isinstance(doc, list):
        res = _results(doc)
        if isinstance(res, str):
            return None, f"{CHECKS_JSON} in {str(rd.path)!r} is damaged: {res}"
        return res, (f"{CHECKS_JSON} in {str(rd.path)!r} has the old format (no record of the "
                     "rounds, status and config it covered): unverified; check the run again")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        what = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        return None, f"{CHECKS_JSON} in {str(rd.path)!r} is not a checks file ({what!r})"
    res = _results(doc.get("results"))
    saved = doc.get("run")
    if isinstance(res, str) or not isinstance(saved, dict) \
            or not isinstance(saved.get("rounds_covered"), dict):
        why = res if isinstance(res, str) else "no record of the run it covered"
        return None, f"{CHECKS_JSON} in {str(rd.path)!r} is damaged: {why}"
    try:
        now = run_state(rd.path)
    except AdfloraError as e:
        return None, f"cannot compare {CHECKS_JSON} with the run: {e.problem}"
    stale = f"{CHECKS_JSON} in {str(rd.path)!r} is stale: "
    if saved.get("status") == "running":
        return None, stale + "it was written while the run was running"
    if saved.get("status") != now["status"]:
        return None, stale + (f"written when the run was {saved.get('status')}, it is now "
                              f"{now['status']}")
    if saved.get("config_hash") != now["config_hash"]:
        return None, stale + (f"the config changed (hash {saved.get('config_hash')} then, "
                              f"{now['config_hash']} now)")
    then = saved["rounds_covered"]
    if then != now["rounds_covered"]:
        jobs = sorted(set(then) | set(now["rounds_covered"]))
        j = next(j for j in jobs if then.get(j) != now["rounds_covered"].get(j))
        return None, stale + (f"job {j!r} had rows up to round {then.get(j, 'none')}, now "
                              f"{now['rounds_covered'].get(j, 'none')}")
    return res, None
