"""The tuning pipeline: prepare -> data -> reference -> probe recipes -> rank -> search (strategy
batches, built and measured) -> blame crashes -> Pareto -> report. One code path for local and farm
runs: only the Evaluator differs. The phases live in coordinator/tuner/, each a function of the
run's explicit state (`TuneRun`); `Tuner` runs them in order."""
from __future__ import annotations

import time

from coordinator.evaluators import Evaluator
from coordinator.tuner.blame import blame_phase
from coordinator.tuner.catalog import RANKING_METHODS, RECIPE_PROBES, TARGET_DRIVEN
from coordinator.tuner.config import TuneConfig
from coordinator.tuner.probe import probe_recipes
from coordinator.tuner.rank import rank
from coordinator.tuner.run import Budget, TuneEvents, TuneRun
from coordinator.tuner.search import full_int8_meets_target, search
from coordinator.tuner.state import ReportState
from coordinator.tuner.workspace import Workspace, load_workspace

__all__ = ["RANKING_METHODS", "RECIPE_PROBES", "TuneConfig", "TuneEvents", "Tuner", "Workspace", "load_workspace"]


class Tuner:
    """Runs one tune; its report (coordinator/tuner/state.py) is written after every result."""

    def __init__(self, config: TuneConfig, evaluator: Evaluator, events: TuneEvents | None = None,
                 clock=time.monotonic):
        self.config = config
        self.evaluator = evaluator
        self.events = events or TuneEvents()
        self.clock = clock

    def run(self) -> dict:
        cfg, events = self.config, self.events
        start = self.clock()
        events.on_stage("preparing model and data")
        ws = load_workspace(cfg)
        state = ReportState.open(cfg, ws, self.evaluator.devices)
        events.on_stage("measuring the FP32 reference")
        state.set_fp32(self.evaluator.reference(ws.prepared.path, ws.prepared.sha256, ws.eval_inputs))
        run = TuneRun(cfg, ws, self.evaluator, state, Budget(cfg.budget_evals, cfg.budget_seconds, start, self.clock),
                      events, cfg.settings)
        if cfg.probe_recipes:
            events.on_stage("probing recipes")
            run.settings = probe_recipes(run)
        if cfg.has_target and cfg.strategy in TARGET_DRIVEN and full_int8_meets_target(run):
            state.set_section("search", {"skipped": "full INT8 with the fixed excludes already meets the target"})
            ranking: list[str] = []
        else:
            events.on_stage("ranking layer sensitivity")
            ranking = rank(run)
            events.on_stage("evaluating candidates")
            search(run, ranking)
        blame_phase(run, ranking)
        state.finish(run.evaluations, run.resumed, self.clock() - start, run.budget.stop_reason)
        return state.report
