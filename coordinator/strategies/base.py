from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol

ExclusionSet = tuple[str, ...]
#: measured results so far: exclusion set -> {device: result dict}
History = Mapping[ExclusionSet, Mapping[str, Mapping]]


@dataclass(frozen=True)
class StrategyContext:
    ranking: tuple[str, ...]            # quantizable nodes, most damaged first
    fixed_excludes: tuple[str, ...]     # the user's --exclude, always in float
    max_candidates: int | None = None
    seed: int = 0


class Strategy(Protocol):
    def next_batch(self, history: History) -> list[ExclusionSet]:
        """Exclusion sets to evaluate next; [] when the strategy is done."""
