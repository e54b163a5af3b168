"""Every error the toolkit raises for bad input carries a hint: the one line says the problem
and the fix (``error: ... (hint: ...)``). Checked on the source, so a new ``raise`` without a
hint fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import adflora_analysis

ROOT = Path(adflora_analysis.__file__).parent
ERRORS = {"AdfloraError", "DivergenceError", "StoppedError"}


def hintless(source: str) -> list[int]:
    """Line numbers of ``AdfloraError(...)``-style calls with no hint argument."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", getattr(node.func, "attr", None))
            if name in ERRORS and len(node.args) + sum(k.arg == "hint"
                                                       for k in node.keywords) < 2:
                out.append(node.lineno)
    return out


def test_a_planted_hintless_error_is_found():
    assert hintless('raise AdfloraError("bad")\nraise AdfloraError("bad", "fix")\n') == [1]


def test_every_error_in_the_package_has_a_hint():
    missing = [f"{p.relative_to(ROOT)}:{ln}" for p in sorted(ROOT.rglob("*.py"))
               for ln in hintless(p.read_text())]
    assert not missing, missing
