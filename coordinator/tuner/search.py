"""Phase: the search, one per device class, each with the recipe that class chose (probe.py) and
judged on that class's own results. A strategy proposes batches of exclusion sets; what is not
measured yet is built and measured (on every class, so the comparison has data), until one of
these rules ends the search, which `stopped_by` names:

* the strategy ends by itself (target met, or nothing left to try);
* the budget: --budget-evals (shared fairly by the device classes still to search) or
  --budget-seconds; a target-driven strategy (bisect, greedy) with a target and neither budget
  gets a default one, `default_budget(n)` = 3 x ceil(log2(n + 1)) evaluations for n quantizable
  nodes, clipped to 8..40 (EfficientNet-Lite0, 61 nodes: 18), so a search always ends;
* the plateau: a target-driven search (or any with --plateau) stops after `plateau` evaluations
  without progress (`progress`): no better candidate meeting the target and not slower than FP32
  (by the preference), or, while none does, no more faithful one not slower than FP32. Default
  max(6, 2 x the agents that measure in parallel);
* the strategy proposing again what it proposed, with unchanged results (it would loop forever).

Before ranking, a target-driven search looks at full INT8 of its recipe on its device: when it meets
the target (excluding nodes never makes a model smaller) or is slower than FP32 (float layers do not
make INT8 faster), the search is skipped and says why."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from coordinator.measures import SLOWER, describe_ratio, fidelity_key, is_ok, speed
from coordinator.policy import device_results
from coordinator.strategies import StrategyContext, make_strategy
from coordinator.tuner.catalog import TARGET_DRIVEN
from coordinator.tuner.rank import rank
from coordinator.tuner.run import TuneRun
from shared.settings import QuantSettings

DEFAULT_BUDGET_RANGE = (8, 40)
DEFAULT_PLATEAU = 6


def default_budget(quantizable: int) -> int:
    low, high = DEFAULT_BUDGET_RANGE
    return max(low, min(high, 3 * math.ceil(math.log2(quantizable + 1))))


@dataclass
class SearchLimits:
    evals: int | None = None        # candidates this device's search may start (None: no limit of its own)
    evals_rule: str = ""            # what stopped_by says when `evals` is spent
    plateau: int | None = None      # evaluations without progress before it stops


def search_limits(run: TuneRun, quantizable: int, devices_left: int) -> SearchLimits:
    cfg = run.config
    limits = SearchLimits()
    target_driven = cfg.has_target and cfg.strategy in TARGET_DRIVEN
    if cfg.plateau_evals is not None or target_driven:
        limits.plateau = cfg.plateau_evals or max(DEFAULT_PLATEAU, 2 * run.evaluator.parallelism)
    devices = len(run.evaluator.devices)
    if cfg.budget_evals is not None:
        remaining = max(0, cfg.budget_evals - run.evaluations) // devices    # candidates still allowed
        limits.evals = max(1, remaining // max(1, devices_left)) if remaining else 0
        limits.evals_rule = f"budget of {cfg.budget_evals} evaluations spent" + \
            (f" ({limits.evals} for this device class's search)" if devices > 1 else "")
    elif target_driven and cfg.budget_seconds is None:
        limits.evals = default_budget(quantizable)
        low, high = DEFAULT_BUDGET_RANGE
        limits.evals_rule = (f"default budget of {limits.evals} evaluations spent (3 x ceil(log2({quantizable} "
                             f"quantizable nodes + 1)), clipped to {low}..{high}; --budget-evals sets another)")
    return limits


def progress(run: TuneRun, device: str, pool: set[str]) -> tuple:
    """How far the search on `device` has come, among `pool` (what this search has seen: its
    starting points and its proposals, so a resumed search replays the same progress); higher is
    better, and only a strictly higher value resets the plateau. A candidate meeting the target and
    not slower than FP32 ranks above every other, by the preference; before one exists, the most
    faithful candidate not slower than FP32 measures progress: the closest to the targets in their own
    metrics (tuner/targets.py `closeness`), then agreement, then SQNR."""
    state = run.state
    view = [r for cid, r in device_results(state.report, device).items() if cid in pool and state.policy.eligible(r)]
    if not view:
        return (-1,)
    feasible = [r for r in view if state.targets.any and state.meets_target(r, device)]
    if feasible:
        size = float(state.report["fp32"].get(device, {}).get("size_bytes") or 0)
        return (1, *max(tuple(-x for x in state.policy.key(r, size)) for r in feasible))
    fp32_top1 = state.fp32_top1(device)
    return (0, *max((*state.targets.closeness(r, fp32_top1), *fidelity_key(r)) for r in view))


def full_int8(run: TuneRun, device: str) -> dict | None:
    """Measure (or look up) the candidate every target-driven strategy starts from: full INT8 of
    the current recipe with the fixed float nodes; its result on `device`."""
    spec = run.spec(run.ws.excludes)
    if not run.state.complete(spec.id) and not run.budget_spent():
        run.evaluate([spec])
    return device_results(run.state.report, device).get(spec.id)


def skip_reason(run: TuneRun, device: str) -> str | None:
    """Why a target-driven search on `device` is moot, or None."""
    cfg = run.config
    if not (cfg.has_target and cfg.strategy in TARGET_DRIVEN):
        return None
    result = full_int8(run, device)
    if not is_ok(result):
        return None
    if speed(result) == SLOWER and not run.state.policy.allow_slower:
        return (f"full INT8 is slower than FP32 on {device} ({describe_ratio(result)}): "
                "float layers will not make it pay")
    if run.meets_target(result, device):
        return f"full INT8 with the fixed excludes already meets the target on {device}"
    return None


def search(run: TuneRun, ranking: list[str], device: str, limits: SearchLimits) -> dict[str, Any]:
    """Run the strategy for `device` with the current recipe (run.settings); returns the report's
    `search.per_device[<device>]` entry: evaluations started and the rule that stopped it."""
    cfg, excludes = run.config, run.ws.excludes
    context = StrategyContext(ranking=tuple(r for r in ranking if r not in excludes), fixed_excludes=excludes,
                              max_candidates=cfg.max_candidates, seed=cfg.seed,
                              meets_target=(lambda r: run.meets_target(r, device)) if cfg.has_target else None,
                              parallelism=run.evaluator.parallelism)
    strategy = make_strategy(cfg.strategy, context)
    fixed = sorted(excludes)
    seen = {c["id"] for c in run.state.report["candidates"]               # starting points: full INT8 recipes
            if sorted(c["excluded_nodes"]) == fixed and not c.get("int16_nodes")}
    started, since_better, best = 0, 0, progress(run, device, seen)
    # proposals seen since the last new result: a strategy proposing one of them again, with the
    # results it sees unchanged, is going round in circles and would never end by itself
    repeats: set[frozenset] = set()

    def done(rule: str) -> dict[str, Any]:
        return {"evaluations": started, "stopped_by": rule}

    while True:
        if run.budget_spent():
            return done(run.budget.stop_reason or "budget spent")
        if limits.evals is not None and started >= limits.evals:
            return done(limits.evals_rule)
        if limits.plateau is not None and since_better >= limits.plateau:
            return done(f"plateau: no better candidate on {device} in {limits.plateau} evaluations")
        batch = strategy.next_batch(run.state.history(run.settings, device))
        if not batch:
            return done(_finished(run, device))
        seen.update(run.spec(ex).id for ex in batch)
        todo = list(dict.fromkeys(ex for ex in batch if not run.state.complete(run.spec(ex).id)))
        # proposals already in the report (a resumed tune replaying its search) count like new ones,
        # so a rerun stops where the first run stopped instead of searching as far again
        replayed = len(set(batch)) - len(todo)
        run.resumed += replayed
        todo = run.budget.cap(todo, run.evaluations)
        if limits.evals is not None:
            todo = todo[: max(0, limits.evals - started - replayed)]
        started += replayed + len(todo)
        if todo:
            repeats.clear()
            run.evaluate([run.spec(ex) for ex in todo])
        else:
            proposal = frozenset(batch)
            if proposal in repeats:
                return done("the strategy proposed again what it had already measured (it would loop)")
            repeats.add(proposal)
        now = progress(run, device, seen)
        since_better = 0 if now > best else since_better + replayed + len(todo)
        best = max(best, now)


def _finished(run: TuneRun, device: str) -> str:
    if not run.config.has_target:
        return "strategy finished"
    met = any(run.state.policy.eligible(r) and run.meets_target(r, device)
              for r in device_results(run.state.report, device).values())
    return "target met" if met else "strategy finished without meeting the target"


def search_devices(run: TuneRun, recipes: dict[str, QuantSettings]) -> tuple[list[str], dict[str, dict]]:
    """One search per device class, each with its recipe (`recipes`, default the configured
    settings); the report's `search` section is written. Returns the primary device's ranking
    (what blame bisects in) and each device's search entry."""
    searches: dict[str, dict] = {}
    ranking: list[str] = []
    devices = run.evaluator.devices
    for i, device in enumerate(devices):
        run.settings = recipes.get(device, run.config.settings)
        suffix = f" ({device})" if len(devices) > 1 else ""
        skipped = skip_reason(run, device)
        if skipped:
            searches[device] = {"evaluations": 0, "stopped_by": f"search skipped: {skipped}", "skipped": skipped}
            continue
        run.events.on_stage("ranking layer sensitivity" + suffix)
        order = rank(run, record=(i == 0))
        if i == 0:
            ranking = order
        run.events.on_stage("evaluating candidates" + suffix)
        searches[device] = search(run, order, device, search_limits(run, len(order), len(devices) - i))
    run.state.set_section("search", search_section(searches, run.primary))
    return ranking, searches


def search_section(searches: dict[str, dict], primary: str) -> dict[str, Any]:
    """The report's `search`: per device class, evaluations and the rule that ended it; `skipped`
    (the primary device's) kept at the top level as before."""
    section: dict[str, Any] = {"per_device": searches}
    if searches[primary].get("skipped"):
        section["skipped"] = searches[primary]["skipped"]
    return section


def stopped_by(searches: dict[str, dict]) -> str:
    """`status.stopped_by`: the rule that ended the search (per device class when several)."""
    if len(searches) == 1:
        return next(iter(searches.values()))["stopped_by"]
    return "; ".join(f"{device}: {entry['stopped_by']}" for device, entry in searches.items())
