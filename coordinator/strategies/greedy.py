"""Greedy (NNCF accuracy-aware style): from full INT8, revert to float the node whose revert
helps most, measured, not assumed. Each round measures reverting each of the next `width`
ranked nodes in parallel (agents), keeps the best; when none helps, the window slides down the
ranking (re-rank by measurement), until the target is met or the ranking is exhausted."""
from __future__ import annotations

from coordinator.measures import fidelity_key
from coordinator.strategies.base import ExclusionSet, History, StrategyContext, agreement, is_ok


class GreedyStrategy:
    def __init__(self, context: StrategyContext):
        self.ctx = context
        self.width = max(2, context.parallelism)
        self.current: list[str] = []
        self.offset = 0
        self.trials: list[ExclusionSet] = []
        self.started = False
        self.finished = False

    def _meets(self, result) -> bool:
        if self.ctx.meets_target is None:
            return agreement(result) >= 1.0
        return is_ok(result) and bool(self.ctx.meets_target(result))

    def next_batch(self, history: History) -> list[ExclusionSet]:
        if self.finished:
            return []
        base = self.ctx.exclusion(self.current)
        if not self.started:
            self.started = True
            return [base]
        if self.trials:
            # agreement first, SQNR breaking its ties (it saturates on few-class models)
            best = max(self.trials, key=lambda ex: (fidelity_key(history.get(ex)), -len(ex)))
            self.trials = []
            if fidelity_key(history.get(best)) > fidelity_key(history.get(base)):
                self.current = [n for n in self.ctx.ranking if n in set(best)]
                self.offset = 0
                base = best
            else:
                self.offset += self.width  # stuck: look further down the ranking
        if self._meets(history.get(base)):
            self.finished = True
            return []
        window = [n for n in self.ctx.ranking if n not in self.current][self.offset:self.offset + self.width]
        if not window:
            self.finished = True
            return []
        self.trials = [self.ctx.exclusion(self.current + [n]) for n in window]
        return list(self.trials)
