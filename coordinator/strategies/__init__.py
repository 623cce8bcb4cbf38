"""Search strategies: which exclusion sets to evaluate next, given what has been measured.

A strategy is asked for batches until it returns an empty one; every batch may be evaluated in
parallel (on agents). It never sees a candidate twice: the tuner drops already-measured sets,
and the tuner (not the strategy) enforces --budget-evals and --budget-seconds."""
from __future__ import annotations

from coordinator.strategies.base import History, Strategy, StrategyContext
from coordinator.strategies.bisect import BisectStrategy
from coordinator.strategies.greedy import GreedyStrategy
from coordinator.strategies.nsga2 import NSGA2Strategy
from coordinator.strategies.sweep import SweepStrategy
from shared.errors import InvalidArgument

STRATEGIES = {"sweep": SweepStrategy, "bisect": BisectStrategy, "greedy": GreedyStrategy, "nsga2": NSGA2Strategy}


def make_strategy(name: str, context: StrategyContext) -> Strategy:
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise InvalidArgument(f"--strategy {name!r} is not one of {', '.join(sorted(STRATEGIES))}") from None
    return cls(context)


__all__ = ["History", "Strategy", "StrategyContext", "make_strategy", "STRATEGIES"]
