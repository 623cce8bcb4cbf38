"""NSGA-II (pymoo) over exclusion bitsets of the top-M ranked nodes, objectives = accuracy loss
and size, driven by ask/tell so every generation is one parallel batch; the first population
is seeded from what is already measured (e.g. a previous sweep or bisect) plus random sets."""
from __future__ import annotations

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.population import Population
from pymoo.core.problem import Problem
from pymoo.operators.crossover.pntx import TwoPointCrossover
from pymoo.operators.mutation.bitflip import BitflipMutation

from coordinator.strategies.base import ExclusionSet, History, StrategyContext, is_ok

FAILED = (2.0, 1e18)  # a crashed candidate: worse than anything measured


class NSGA2Strategy:
    def __init__(self, context: StrategyContext):
        self.ctx = context
        self.nodes = list(context.ranking[:max(1, context.top_m)])
        self.problem = Problem(n_var=len(self.nodes), n_obj=2, xl=0, xu=1, vtype=bool)
        self.algorithm: NSGA2 | None = None
        self.pending: Population | None = None
        self.generation = 0

    def _to_set(self, x) -> ExclusionSet:
        return self.ctx.exclusion([n for n, bit in zip(self.nodes, x) if bit])

    def _objectives(self, history: History, x) -> tuple[float, float]:
        result = history.get(self._to_set(x))
        if not is_ok(result):
            return FAILED
        return 1.0 - float(result["top1_agreement"]), float(result["size_bytes"])

    def _seed(self, history: History) -> np.ndarray:
        known = set(self.nodes)
        rows = []
        for ex in history:
            extra = set(ex) - set(self.ctx.fixed_excludes)
            if extra <= known:
                rows.append([n in extra for n in self.nodes])
        rng = np.random.default_rng(self.ctx.seed)
        k = list(range(len(self.nodes) + 1))
        while len(rows) < self.ctx.population:  # top-k prefixes and random sets fill the rest
            if len(rows) % 2 == 0:
                cut = int(rng.choice(k))
                rows.append([i < cut for i in range(len(self.nodes))])
            else:
                rows.append(list(rng.random(len(self.nodes)) < 0.25))
        return np.array(rows[: max(self.ctx.population, len(rows))], dtype=bool)

    def next_batch(self, history: History) -> list[ExclusionSet]:
        if self.algorithm is None:
            self.algorithm = NSGA2(pop_size=self.ctx.population, sampling=self._seed(history),
                                   crossover=TwoPointCrossover(), mutation=BitflipMutation(),
                                   eliminate_duplicates=True)
            self.algorithm.setup(self.problem, termination=("n_gen", self.ctx.generations), seed=self.ctx.seed,
                                 verbose=False)
        elif self.pending is not None:
            F = np.array([self._objectives(history, x) for x in self.pending.get("X")], dtype=float)
            self.pending.set("F", F)
            self.algorithm.tell(infills=self.pending)
            self.pending = None
            self.generation += 1
        if not self.algorithm.has_next() or self.generation >= self.ctx.generations:
            return []
        self.pending = self.algorithm.ask()
        return list(dict.fromkeys(self._to_set(x) for x in self.pending.get("X")))



