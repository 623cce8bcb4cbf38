"""SeQTO's baseline: exclude the k most sensitive nodes, for k = 0..N (evenly sampled under a cap)."""
from __future__ import annotations

import numpy as np

from coordinator.strategies.base import ExclusionSet, History, StrategyContext


def sweep_ks(n_ranked: int, max_candidates: int | None) -> list[int]:
    ks = list(range(n_ranked + 1))
    if max_candidates is not None and max_candidates < len(ks):
        ks = sorted({int(round(x)) for x in np.linspace(0, n_ranked, max(max_candidates, 1))})
    return ks


class SweepStrategy:
    def __init__(self, context: StrategyContext):
        self.context = context
        self._done = False

    def next_batch(self, history: History) -> list[ExclusionSet]:
        if self._done:
            return []
        self._done = True
        out: list[ExclusionSet] = []
        for k in sweep_ks(len(self.context.ranking), self.context.max_candidates):
            ex = self.context.exclusion(self.context.ranking[:k])
            if ex not in out:
                out.append(ex)
        return out
