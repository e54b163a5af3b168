"""Synthetic testbed: a quadratic LoRA problem with known constants
(docs/architecture.md §5, §6).

- :class:`SyntheticConfig` (``config.py``): the ``synthetic/*.toml`` schema.
- :class:`QuadraticProblem` (``problem.py``): every seed, client and layer in one batched
  computation; the :class:`~adflora_analysis.core.loop.Problem` of the round loop.
- :func:`run_study` (into a run directory), :func:`study_rows` (in memory),
  :func:`expand_variants`, :func:`build_jobs` (``runner.py``).
- :func:`run_checks`, :class:`CheckResult`, :func:`format_results`, :func:`save_results`:
  the theory checks of a run directory, which live in :mod:`adflora_analysis.theory` (they
  check every testbed's runs) and are re-exported here for the previous release's imports.

Names load on first use (PEP 562), so importing the package loads no torch:

>>> import adflora_analysis.synthetic as syn
>>> syn.SyntheticConfig(n_clients=4, seeds=2).seed_list
[0, 1]
"""

from __future__ import annotations

import importlib

_WHERE = {
    "SyntheticConfig": ".config",
    "QuadraticProblem": ".problem",
    "run_study": ".runner", "study_rows": ".runner", "expand_variants": ".runner",
    "build_jobs": ".runner",
    "run_checks": "..theory", "CheckResult": "..theory", "format_results": "..theory",
    "save_results": "..theory",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module 'adflora_analysis.synthetic' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
