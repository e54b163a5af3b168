"""What a theory check returns: :class:`CheckResult` (one row of the check table)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from adflora_analysis.synthetic.checks.stats import RatioTest

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
