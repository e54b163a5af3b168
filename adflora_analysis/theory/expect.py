"""Violations a study declares it expects (``[[expect]]`` tables of a study's TOML).

Some runs are *meant* to break a theorem's premise: a study of strong heterogeneity at a fixed
step may show that a method stops converging where ADF-LoRA does not. The check that says so is
right to say ``violated``; the study says in advance that it expects it, and why::

    [[expect]]
    check = "stationarity"          # the check as printed in the table (name or number)
    variants = ["h=1 disjoint"]     # optional: every variant when left out
    methods = ["rolora", "lora"]    # optional: every method when left out
    why = "eta L_hull > 1 once the clients' targets are disjoint"

A matching ``violated`` result becomes a ``finding`` (expected ``fail``) whose note starts
with ``declared by the study: <why>``; it no longer counts as an unexpected violation. A
matching result that *held* keeps its status and is marked ``expectation unmet``
(:func:`expectation_unmet`): the study's claim no longer describes the run, and ``--strict``
fails on it. A declaration matches only the (check, variant, method) it names, so a planted
bug elsewhere in the same run is still ``violated``; a declaration that names a check, variant
or method the run does not have is one ``error:`` line (never a silent no-op).

>>> from adflora_analysis.theory.result import CheckResult
>>> rs = [CheckResult("stationarity", "5", "lora", "h=1", "violated", ratio=0.5),
...       CheckResult("stationarity", "5", "adf-lora", "h=1", "held", ratio=2.0)]
>>> out = apply_expectations(rs, [{"check": "5", "variants": ["h=1"], "methods": ["lora"],
...                                "why": "diverges"}])
>>> [(r.method, r.status, r.expected) for r in out], out[0].unexpected_violation
([('lora', 'finding', 'fail'), ('adf-lora', 'held', 'hold')], False)
"""

from __future__ import annotations

import difflib
from typing import Any

from adflora_analysis.errors import AdfloraError
from adflora_analysis.theory.result import CheckResult

KEYS = ("check", "variants", "methods", "why", "status")


def _err(problem: str, hint: str) -> AdfloraError:
    return AdfloraError(f"[[expect]]: {problem}", hint)


def validate_expectations(expect: Any) -> list[dict[str, Any]]:
    """The ``[[expect]]`` tables in a normal form (lists for ``variants`` / ``methods``, None
    for every one), or one :class:`AdfloraError` for the first malformed table.

    >>> validate_expectations([{"check": "5", "why": "x"}])
    [{'check': '5', 'variants': None, 'methods': None, 'why': 'x', 'status': 'violated'}]
    >>> validate_expectations([{"check": "5"}])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    adflora_analysis.errors.AdfloraError: [[expect]]: the table for check '5' has no 'why' ...
    """
    if expect is None:
        return []
    if not isinstance(expect, list):
        raise _err("expect must be a list of tables", "write [[expect]] then key = value lines")
    out = []
    for e in expect:
        if not isinstance(e, dict):
            raise _err("each [[expect]] entry must be a table",
                       "write [[expect]] then check = ..., why = ...")
        extra = sorted(set(e) - set(KEYS))
        if extra:
            close = difflib.get_close_matches(extra[0], KEYS, n=1)
            raise _err(f"unknown key {extra[0]!r}", (f"did you mean {close[0]!r}? " if close
                                                    else "") + "keys: " + ", ".join(KEYS))
        check = e.get("check")
        if not (isinstance(check, str) and check):
            raise _err("a table has no 'check'", "name the check as the table prints it, "
                       "e.g. check = \"stationarity\" or check = \"5\"")
        why = e.get("why")
        if not (isinstance(why, str) and why.strip() and why.isprintable()):
            raise _err(f"the table for check {check!r} has no 'why' (a printable sentence)",
                       "say why the study expects the violation: a declaration without a "
                       "reason would hide a bug")
        status = e.get("status", "violated")
        if status != "violated":
            raise _err(f"status = {status!r}: only \"violated\" can be declared",
                       "leave status out, or write status = \"violated\"")
        norm: dict[str, Any] = {"check": check}
        for k in ("variants", "methods"):
            v = e.get(k)
            if v is not None and not (isinstance(v, list) and v
                                      and all(isinstance(x, str) for x in v)):
                raise _err(f"{k} of check {check!r} must be a non-empty list of names",
                           f"e.g. {k} = [\"...\"], or leave it out for every one")
            norm[k] = v
        norm["why"] = why.strip()
        norm["status"] = status
        out.append(norm)
    return out


def _known(name: str, what: str, value: str, known: list[str]) -> None:
    if value not in known:
        close = difflib.get_close_matches(value, known, n=1)
        raise _err(f"the table for check {name!r} names the {what} {value!r}, which this run "
                   "does not have", (f"did you mean {close[0]!r}? " if close else "")
                   + f"the run's {what}s: " + ", ".join(sorted(known)[:12]))


def apply_expectations(results: list[CheckResult], expect: Any) -> list[CheckResult]:
    """``results`` with the study's declared violations applied (in place, and returned); an
    :class:`AdfloraError` when a declaration names something the results do not have."""
    decl = validate_expectations(expect)
    if not decl:
        return results
    checks = sorted({r.check for r in results} | {r.number for r in results})
    variants = sorted({r.variant for r in results})
    methods = sorted({r.method for r in results})
    for d in decl:
        _known(d["check"], "check", d["check"], checks)
        for v in d["variants"] or []:
            _known(d["check"], "variant", v, variants)
        for m in d["methods"] or []:
            _known(d["check"], "method", m, methods)
    for r in results:
        for d in decl:
            if (d["check"] not in (r.check, r.number)
                    or (d["variants"] is not None and r.variant not in d["variants"])
                    or (d["methods"] is not None and r.method not in d["methods"])):
                continue
            said = f"declared by the study: {d['why']}"
            if r.status == "violated" and r.expected == "hold":
                r.status, r.expected = "finding", "fail"
                r.note = f"{said}; {r.note}" if r.note else said
                r.details["declared"] = d["why"]
            elif r.status == "held":
                r.note = (f"expectation unmet: the study declared this violated ({d['why']}), "
                          f"but it held; {r.note}" if r.note else
                          f"expectation unmet: the study declared this violated ({d['why']}), "
                          "but it held")
                r.details["expectation_unmet"] = d["why"]
            break
    return results


def expectation_unmet(r: CheckResult) -> bool:
    """A result the study declared violated that held (``--strict`` fails on these)."""
    return "expectation_unmet" in r.details
