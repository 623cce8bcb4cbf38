"""Phase: the search. A strategy proposes batches of exclusion sets; what is not measured yet is
built and measured, until the strategy ends, the budget is spent, or the strategy only repeats
itself on unchanged results."""
from __future__ import annotations

from coordinator.strategies import StrategyContext, make_strategy
from coordinator.tuner.run import TuneRun


def full_int8_meets_target(run: TuneRun) -> bool:
    """Measure (or look up) the candidate every target-driven strategy starts from: full INT8
    with the fixed float nodes. Excluding more nodes never makes a model smaller, so when it meets
    the target the search (and its ranking) is moot."""
    spec = run.spec(run.ws.excludes)
    if not run.state.complete(spec.id) and not run.budget_spent():
        run.evaluate([spec])
    result = run.state.result(spec.id, run.primary)
    return bool(result) and run.meets_target(result)


def search(run: TuneRun, ranking: list[str]) -> None:
    cfg, excludes = run.config, run.ws.excludes
    context = StrategyContext(ranking=tuple(r for r in ranking if r not in excludes), fixed_excludes=excludes,
                              max_candidates=cfg.max_candidates, seed=cfg.seed,
                              meets_target=run.meets_target if cfg.has_target else None,
                              parallelism=run.evaluator.parallelism)
    strategy = make_strategy(cfg.strategy, context)
    # proposals seen since the last new result: a strategy proposing one of them again, with the
    # results it sees unchanged, is going round in circles and would never end by itself
    repeats: set[frozenset] = set()
    while not run.budget_spent():
        batch = strategy.next_batch(run.state.history(run.settings))
        if not batch:
            return
        todo = list(dict.fromkeys(ex for ex in batch if not run.state.complete(run.spec(ex).id)))
        run.resumed += len(set(batch)) - len(todo)
        todo = run.budget.cap(todo, run.evaluations)
        if not todo:
            proposal = frozenset(batch)
            if proposal in repeats:
                return
            repeats.add(proposal)
        else:
            repeats.clear()
        run.evaluate([run.spec(ex) for ex in todo])
