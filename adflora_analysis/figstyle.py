"""The rcParams every figure of the toolkit is drawn under, whichever floor draws it (the
reports' figures, the topology sweep's plot): embedded TrueType fonts, SVG text as paths, no top
or right spine.

>>> BASE_RC["pdf.fonttype"], BASE_RC["axes.spines.top"]
(42, False)
"""

from __future__ import annotations

BASE_RC = {"pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "path",
           "axes.spines.top": False, "axes.spines.right": False,
           "figure.max_open_warning": 0}
