"""The tuning pipeline: prepare -> data -> reference -> probe recipes -> per device class: rank and
search (strategy batches, built and measured) -> blame crashes -> policy and Pareto -> report. One
code path for local and farm runs: only the Evaluator differs. The phases live in
coordinator/tuner/, each a function of the run's explicit state (`TuneRun`); `Tuner` runs them in
order. Preparing, calibrating, ranking and building run in a build pool (coordinator/buildpool.py:
processes with a memory limit and a timeout), never in the tuner's own process."""
from __future__ import annotations

import time

from coordinator.buildpool import BuildPool, default_pool
from coordinator.evaluators import Evaluator
from coordinator.tuner.blame import blame_phase
from coordinator.tuner.builder import CandidateBuilder
from coordinator.tuner.catalog import RANKING_METHODS, RECIPE_PROBES
from coordinator.tuner.config import TuneConfig
from coordinator.tuner.probe import probe_recipes
from coordinator.tuner.run import Budget, TuneEvents, TuneRun
from coordinator.tuner.search import search_devices, stopped_by
from coordinator.tuner.state import ReportPolicy, ReportState
from coordinator.tuner.workspace import Workspace, load_workspace, open_workspace

__all__ = ["RANKING_METHODS", "RECIPE_PROBES", "ReportPolicy", "TuneConfig", "TuneEvents", "Tuner", "Workspace",
           "load_workspace"]


class Tuner:
    """Runs one tune; its report (coordinator/tuner/state.py) is journaled per result and written
    whole on a throttle, at each phase and at the end. `pool`: where builds run (default: a
    process-wide pool with the default limits)."""

    def __init__(self, config: TuneConfig, evaluator: Evaluator, events: TuneEvents | None = None,
                 clock=time.monotonic, pool: BuildPool | None = None, report_policy: ReportPolicy = ReportPolicy()):
        self.config = config
        self.evaluator = evaluator
        self.events = events or TuneEvents()
        self.clock = clock
        self.pool = pool
        self.report_policy = report_policy
        self.state: ReportState | None = None

    def materialise(self) -> bool:
        """Write the running tune's report.json now (a report requested mid-run); False before the
        tune has a report."""
        if self.state is None:
            return False
        self.state.materialise(if_changed=True)
        return True

    def run(self) -> dict:
        cfg, events = self.config, self.events
        start = self.clock()
        pool = self.pool or default_pool()
        events.on_stage("preparing model and data")
        ws = open_workspace(cfg, pool)
        state = self.state = ReportState.open(cfg, ws, self.evaluator.devices, self.report_policy)
        try:
            events.on_stage("measuring the FP32 reference")
            state.set_fp32(self.evaluator.reference(ws.prepared.path, ws.prepared.sha256, ws.eval_inputs))
            run = TuneRun(cfg, ws, self.evaluator, state,
                          Budget(cfg.budget_evals, cfg.budget_seconds, start, self.clock), events, cfg.settings,
                          CandidateBuilder(pool, ws, cfg.out))
            recipes = {}
            if cfg.probe_recipes:
                events.on_stage("probing recipes")
                recipes = probe_recipes(run)
            ranking, searches = search_devices(run, recipes)
            run.settings = recipes.get(run.primary, cfg.settings)
            blame_phase(run, ranking)
            state.finish(run.evaluations, run.resumed, self.clock() - start, stopped_by(searches))
            return state.report
        finally:
            state.close()
