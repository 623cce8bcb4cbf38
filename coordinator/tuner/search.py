"""The search: strategy batches of exclusion sets, measured until the strategy or the budget ends."""
from __future__ import annotations

#: strategies that look for the smallest candidate meeting a target (not for a whole front)
TARGET_DRIVEN = ("bisect", "greedy")
