"""Ranking layers by quantization sensitivity, cached by content across tunes and device classes."""
from __future__ import annotations

RANKING_METHODS = ("seqto", "quantune")
RANKING_CACHE_VERSION = "1"   # bump when the ranking's measurement changes
