"""Bisect: the fewest top-ranked nodes in float that meet the target, then prune the ones that
do not matter. Accuracy is not monotonic in k, so the search keeps the best measured point and
pruning re-measures every removal instead of assuming it."""
from __future__ import annotations

import numpy as np

from coordinator.strategies.base import ExclusionSet, History, StrategyContext, is_ok


class BisectStrategy:
    def __init__(self, context: StrategyContext):
        if context.meets_target is None:
            from shared.errors import InvalidArgument

            raise InvalidArgument("--strategy bisect needs a target: --max-drop or --max-top1-drop")
        self.ctx = context
        self.n = len(context.ranking)
        self.lo: int | None = None     # largest k known to miss the target
        self.hi: int | None = None     # smallest k known to meet it
        self.phase = "ends"
        self.kept: list[str] = []      # pruning state: nodes still in float
        self.prune_queue: list[str] = []
        self.pending: str | None = None

    def _set(self, k: int) -> ExclusionSet:
        return self.ctx.exclusion(self.ctx.ranking[:k])

    def _meets(self, history: History, ex: ExclusionSet) -> bool:
        result = history.get(ex)
        return is_ok(result) and bool(self.ctx.meets_target(result))

    def next_batch(self, history: History) -> list[ExclusionSet]:
        if self.phase == "ends":
            self.phase = "search"
            return [self._set(0), self._set(self.n)]
        if self.phase == "search":
            if self.lo is None:  # first look at the ends
                if self._meets(history, self._set(0)):
                    return self._done()
                if not self._meets(history, self._set(self.n)):
                    return self._done()  # unreachable by exclusion alone: best-so-far stays in the report
                self.lo, self.hi = 0, self.n
            else:
                for k in self.probes:
                    if self._meets(history, self._set(k)):
                        self.hi = min(self.hi, k)
                    else:
                        self.lo = max(self.lo, k) if k < self.hi else self.lo
            if self.hi - self.lo > 1:
                p = max(1, self.ctx.parallelism)
                self.probes = sorted({int(x) for x in np.linspace(self.lo, self.hi, p + 2)[1:-1]} - {self.lo, self.hi})
                if self.probes:
                    return [self._set(k) for k in self.probes]
            self.phase = "prune"
            self.kept = list(self.ctx.ranking[:self.hi])
            # least sensitive first: the likeliest to be unnecessary
            self.prune_queue = list(reversed(self.kept))
            return self._next_prune(history)
        if self.phase == "prune":
            return self._next_prune(history)
        return []

    def _next_prune(self, history: History) -> list[ExclusionSet]:
        if self.pending is not None:
            trial = [n for n in self.kept if n != self.pending]
            if self._meets(history, self.ctx.exclusion(trial)):
                self.kept = trial
            self.pending = None
        if not self.prune_queue:
            return self._done()
        self.pending = self.prune_queue.pop(0)
        return [self.ctx.exclusion([n for n in self.kept if n != self.pending])]

    def _done(self) -> list[ExclusionSet]:
        self.phase = "done"
        return []
