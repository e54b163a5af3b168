"""What a theory check returns: :class:`CheckResult` (one row of the check table)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from adflora_analysis.theory.stats import RatioTest

STATUSES = ("held", "violated", "finding", "underpowered", "n/a", "error")


@dataclass
class CheckResult:
    """Outcome of one check for one method (and variant).

    ``status``: ``held`` (the bound held and the test could have failed: see ``mde``),
    ``violated``, ``finding`` (a bound the method is not claimed to meet, failing as expected),
    ``underpowered`` (too few seeds for the test to detect a ``mde``-sized violation), ``n/a``
    (the premise does not apply) or ``error`` (a user check that failed; ``note`` says why).
    ``measured`` and ``bound`` are the pooled seed means; ``ratio`` = bound ÷ measured (>= 1
    when an upper bound holds; ~1 for an identity); ``ratio_ci`` = ratio ± threshold × stderr;
    ``z`` = (1 - ratio) / stderr with its critical value ``threshold``. ``curve`` has at least
    ``round`` (or another index), ``measured`` and ``bound``: the check's overlay.
    """

    check: str
    number: str
    method: str
    variant: str
    status: str
    measured: float = math.nan
    bound: float = math.nan
    ratio: float = math.nan
    ratio_ci: tuple[float, float] = (math.nan, math.nan)
    threshold: float = math.nan
    z: float = math.nan
    mde: float = math.nan
    seeds: int = 0
    test: str = ""
    expected: str = "hold"
    source: str = ""
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    curve: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)

    @classmethod
    def from_test(cls, check: str, number: str, method: str, variant: str, t: RatioTest,
                  **kw: Any) -> CheckResult:
        """A result whose verdict is the pooled test ``t``."""
        return cls(check, number, method, variant, t.status, t.measured, t.bound, t.ratio,
                   t.ratio_ci, t.threshold, t.z, t.mde, t.seeds,
                   test="two-sided identity" if t.kind == "equal" else "one-sided bound", **kw)

    @property
    def unexpected_violation(self) -> bool:
        """A check that should hold and did not (``--strict`` fails on these)."""
        return self.status in ("violated", "error") and self.expected == "hold"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the curve)."""
        base = {"check": self.check, "number": self.number, "method": self.method,
                "variant": self.variant, "status": self.status, "measured": self.measured,
                "bound": self.bound, "ratio": self.ratio, "ratio_ci": list(self.ratio_ci),
                "threshold": self.threshold, "z": self.z, "mde": self.mde,
                "seeds": self.seeds, "test": self.test, "expected": self.expected,
                "source": self.source, "note": self.note}
        return clean({**base, **{(f"detail_{k}" if k in base else k): v
                                 for k, v in self.details.items()}})

    @classmethod
    def from_dict(cls, d: dict[str, Any], curve: pd.DataFrame | None = None) -> CheckResult:
        """The result of a :meth:`to_dict` summary (None back to NaN, other keys to
        ``details``); a summary that is not one is a ``ValueError``.

        >>> r = CheckResult("c", "u1", "lora", "base", "held", ratio=1.5, details={"k": 2})
        >>> back = CheckResult.from_dict(r.to_dict())
        >>> back.ratio, back.details, math.isnan(back.measured)
        (1.5, {'k': 2}, True)
        """
        if not isinstance(d, dict):
            raise ValueError(f"a result is a dict, not a {type(d).__name__}")
        for k in ("check", "number", "method", "variant", "status"):
            if not isinstance(d.get(k), str):
                raise ValueError(f"a result's {k!r} is not a string")
        if d["status"] not in STATUSES:
            raise ValueError(f"unknown status {d['status']!r}")

        def num(k: str) -> float:
            v = d.get(k)
            if v is None:
                return math.nan
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ValueError(f"a result's {k!r} is not a number")
            return float(v)

        ci = d.get("ratio_ci") or [None, None]
        if not isinstance(ci, list | tuple) or len(ci) != 2:
            raise ValueError("a result's 'ratio_ci' is not a pair")
        lo, hi = (math.nan if v is None else float(v) for v in ci)
        seeds = d.get("seeds", 0)
        known = {"check", "number", "method", "variant", "status", "measured", "bound", "ratio",
                 "ratio_ci", "threshold", "z", "mde", "seeds", "test", "expected", "source",
                 "note"}
        details = {(k[7:] if k.startswith("detail_") and k[7:] in known else k): v
                   for k, v in d.items() if k not in known}
        return cls(d["check"], d["number"], d["method"], d["variant"], d["status"],
                   num("measured"), num("bound"), num("ratio"), (lo, hi), num("threshold"),
                   num("z"), num("mde"), int(seeds) if isinstance(seeds, int) else 0,
                   str(d.get("test", "")), str(d.get("expected", "hold")),
                   str(d.get("source", "")), str(d.get("note", "")), details,
                   curve if curve is not None else pd.DataFrame())


def curve_to_records(df: pd.DataFrame) -> dict[str, Any]:
    """A curve as plain JSON data: ``{"columns": [...], "rows": [[...], ...]}``.

    >>> curve_to_records(pd.DataFrame({"round": [0, 1], "measured": [1.0, float("nan")]}))
    {'columns': ['round', 'measured'], 'rows': [[0, 1.0], [1, None]]}
    """
    return {"columns": [str(c) for c in df.columns],
            "rows": [clean(list(row)) for row in df.itertuples(index=False, name=None)]}


def curve_from_records(rec: Any) -> pd.DataFrame:
    """The curve of :func:`curve_to_records` (an empty frame for anything else)."""
    if not (isinstance(rec, dict) and isinstance(rec.get("columns"), list)
            and isinstance(rec.get("rows"), list)):
        return pd.DataFrame()
    cols = [str(c) for c in rec["columns"]]
    rows = [r for r in rec["rows"] if isinstance(r, list) and len(r) == len(cols)]
    return pd.DataFrame(rows, columns=cols) if rows else pd.DataFrame(columns=cols)


def clean(o: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, non-finite floats to None."""
    if isinstance(o, dict):
        return {k: clean(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [clean(v) for v in o]
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o
