from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Protocol

ExclusionSet = tuple[str, ...]
#: measured results so far on the primary device: exclusion set -> result dict (with size_bytes)
History = Mapping[ExclusionSet, Mapping]


@dataclass(frozen=True)
class StrategyContext:
    ranking: tuple[str, ...]            # quantizable nodes, most damaged first (fixed excludes removed)
    fixed_excludes: tuple[str, ...]     # the user's --exclude, always in float
    max_candidates: int | None = None
    seed: int = 0
    meets_target: Callable[[Mapping], bool] | None = None   # None: no target, explore the trade-off
    parallelism: int = 1                # how many evaluations can run at once (agents)
    top_m: int = 16                     # nsga2: search space = top-M ranked nodes
    generations: int = 10               # nsga2
    population: int = 8                 # nsga2

    def exclusion(self, nodes) -> ExclusionSet:
        return tuple(sorted(set(self.fixed_excludes) | set(nodes)))


def is_ok(result: Mapping | None) -> bool:
    return result is not None and result.get("status") == "ok"


def agreement(result: Mapping | None) -> float:
    return float(result["top1_agreement"]) if is_ok(result) else -1.0


class Strategy(Protocol):
    def next_batch(self, history: History) -> list[ExclusionSet]:
        """Exclusion sets to evaluate next; [] when the strategy is done. Sets already in `history`
        are skipped by the tuner, so a strategy may re-propose them harmlessly."""
