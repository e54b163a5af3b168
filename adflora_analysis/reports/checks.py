"""Theory checks for reports: the synthetic layer's checks, as a table and bound curves."""

from __future__ import annotations

import math

import pandas as pd

from adflora_analysis.reports.collect import Run


def report_checks(run: Run) -> tuple[pd.DataFrame, pd.DataFrame | None] | None:
    """``(table, bounds)`` for a synthetic run, None for other kinds.

    ``table``: one row per check, method and variant with its status (held / VIOLATED /
    finding (fails as expected) / n/a), worst slack and source. ``bounds``: the unrolled
    geometric consensus bound of check 4 per round (columns method, variant, block, round,
    bound), for the dashed lines of the consensus figure.
    """
    if run.kind != "synthetic":
        return None
    from adflora_analysis.errors import AdfloraError
    from adflora_analysis.synthetic.checks import run_checks

    try:
        results = run_checks(run.path)
    except (AdfloraError, KeyError) as e:  # a run without what the checks read
        return pd.DataFrame([{"check": "not evaluated", "method": "", "variant": "",
                              "status": "n/a", "slack": float("nan"), "worst z": float("nan"),
                              "held": None, "source": "", "note": str(e)}]), None
    table = pd.DataFrame([{
        "check": f"{r.number} {r.check}", "method": r.method, "variant": r.variant,
        "status": r.status, "slack": r.slack if math.isfinite(r.slack) else float("nan"),
        "worst z": r.worst_z if math.isfinite(r.worst_z) else float("nan"),
        "held": bool(r.held) if r.held is not None else None, "source": r.source,
        "note": r.note} for r in results])
    curves = []
    for r in results:
        c = r.curve
        if r.number == 4 and not c.empty and "kind" in c:
            u = c[c["kind"] == "unrolled"]
            if not u.empty:
                curves.append(u[["block", "round", "bound"]].assign(method=r.method,
                                                                    variant=r.variant))
    bounds = pd.concat(curves, ignore_index=True) if curves else None
    return table, bounds
