"""What every phase of a tune works with, passed explicitly: the config, the workspace, the
evaluator, the report state, the budget, the candidate builder and the progress callbacks; and
the one way candidates get built, measured and recorded (`TuneRun.evaluate`)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping

from coordinator.evaluators import Evaluator
from coordinator.quantize import BuiltCandidate, CandidateSpec, spec_for
from coordinator.tuner.builder import CandidateBuilder
from coordinator.tuner.config import TuneConfig
from coordinator.tuner.state import ReportState
from coordinator.tuner.workspace import Workspace
from shared.errors import ModelError
from shared.results import CrashCause, CrashKind, DeviceResult
from shared.settings import QuantSettings


@dataclass
class TuneEvents:
    """Callbacks for progress display; all optional."""

    on_stage: Callable[[str], None] = lambda stage: None
    on_plan: Callable[[int], None] = lambda total: None
    on_result: Callable[[str, str, DeviceResult], None] = lambda cid, device, result: None


@dataclass
class Budget:
    """--budget-evals and --budget-seconds: once spent, nothing new is started."""

    evals: int | None = None
    seconds: float | None = None
    started: float = field(default_factory=time.monotonic)
    clock: Callable[[], float] = time.monotonic
    stop_reason: str | None = None

    def out_of_time(self) -> bool:
        return self.seconds is not None and self.clock() >= self.started + self.seconds

    def spent(self, evaluations: int) -> bool:
        """True (and `stop_reason` set) once either budget is used up."""
        if self.evals is not None and evaluations >= self.evals:
            self.stop_reason = f"budget of {self.evals} evaluations spent"
            return True
        if self.out_of_time():
            self.stop_reason = f"budget of {self.seconds:g} s spent"
            return True
        return False

    def cap(self, todo: list, evaluations: int) -> list:
        """The part of `todo` the evaluation budget still allows."""
        return todo if self.evals is None else todo[: max(0, self.evals - evaluations)]


@dataclass
class TuneRun:
    config: TuneConfig
    ws: Workspace
    evaluator: Evaluator
    state: ReportState
    budget: Budget
    events: TuneEvents
    settings: QuantSettings            # the probe phase may switch to a better recipe
    builder: CandidateBuilder          # builds in the build pool, ahead of the evaluator
    evaluations: int = 0               # results recorded by this run (not resumed ones)
    resumed: int = 0                   # proposed candidates already in the report

    @property
    def primary(self) -> str:
        return self.evaluator.devices[0]

    def spec(self, excluded: Iterable[str], settings: QuantSettings | None = None) -> CandidateSpec:
        return spec_for(self.ws.prepared, settings or self.settings, excluded,
                        calibration_digest=self.ws.calibration_digest)

    def budget_spent(self) -> bool:
        return self.budget.spent(self.evaluations)

    def meets_target(self, result: Mapping, device: str | None = None) -> bool:
        return self.state.meets_target(result, device)

    def evaluate(self, specs: list[CandidateSpec]) -> None:
        """Build the candidates in the build pool, ahead of need (the evaluator queues each one's
        jobs as soon as it is built, while the next ones build), measure each on every device and
        record the results; a build failure is recorded as a `build` crash."""
        self.events.on_plan(len(specs))
        for cid, device, result in self.evaluator.evaluate(self._built(specs), self.ws.eval_inputs):
            if self.state.record(cid, device, result):
                self.evaluations += 1
            self.events.on_result(cid, device, result)

    def _built(self, specs: list[CandidateSpec]) -> Iterator[BuiltCandidate]:
        builds = self.builder.build_ahead(specs)
        try:
            for spec, outcome in builds:
                if self.budget.out_of_time():
                    return
                if isinstance(outcome, ModelError):
                    failure = DeviceResult.failure(CrashCause(CrashKind.BUILD, str(outcome)))
                    self.state.record_build_failure(spec, failure)
                    for device in self.evaluator.devices:
                        self.events.on_result(spec.id, device, failure)
                    continue
                self.state.add_built(outcome, self.config.out)
                yield outcome
        finally:
            builds.close()
