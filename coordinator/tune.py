"""The tuning pipeline: prepare -> data -> reference -> probe recipes -> per device class: rank and
search (strategy batches, built and measured) -> blame crashes -> policy and Pareto -> report. One
code path for local and farm runs: only the Evaluator differs. The phases live in
coordinator/tuner/, each a function of the run's explicit state (`TuneRun`); `Tuner` runs them in
order."""
from __future__ import annotations

import time

from coordinator.evaluators import Evaluator
from coordinator.tuner.blame import blame_phase
from coordinator.tuner.catalog import RANKING_METHODS, RECIPE_PROBES
from coordinator.tuner.config import TuneConfig
from coordinator.tuner.probe import probe_recipes
from coordinator.tuner.run import Budget, TuneEvents, TuneRun
from coordinator.tuner.search import search_devices, stopped_by
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
        recipes = {}
        if cfg.probe_recipes:
            events.on_stage("probing recipes")
            recipes = probe_recipes(run)
        ranking, searches = search_devices(run, recipes)
        run.settings = recipes.get(run.primary, cfg.settings)
        blame_phase(run, ranking)
        state.finish(run.evaluations, run.resumed, self.clock() - start, stopped_by(searches))
        return state.report
