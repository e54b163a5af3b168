"""The previous release's import path of the theory checks, kept for user check files:
``from adflora_analysis.synthetic.checks import register_check`` still works. The checks
live in :mod:`adflora_analysis.theory` (they check every testbed's runs).

>>> from adflora_analysis.synthetic.checks import register_check
>>> from adflora_analysis.theory import register_check as r
>>> register_check is r
True
"""

from __future__ import annotations

from adflora_analysis.theory import *  # noqa: F403
from adflora_analysis.theory import __all__  # noqa: F401
