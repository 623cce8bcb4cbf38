"""Building a tune's candidates ahead of need, in the build pool (coordinator/buildpool.py).

`build_ahead(specs)` first makes sure the calibration ranges those specs need are computed and
cached (one calibration task per quantization settings, alone: a failure there concerns every
candidate of those settings; settings sharing a calibration method share the cached ranges), then keeps up to `lookahead` builds running or queued in the pool and
hands back each candidate, in the order asked, as soon as it is built: the tuner submits its jobs
while the next ones build. Builds are deterministic (same candidate id, same bytes, whichever
worker builds it: every build reads the same cached ranges), so nothing depends on which worker
was first."""
from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future
from pathlib import Path
from typing import Iterable, Iterator

from coordinator.buildpool import BuildCrashed, BuildPool
from coordinator.quantize import BuiltCandidate, CandidateSpec
from coordinator.tuner.workspace import Workspace
from shared.errors import ModelError

log = logging.getLogger(__name__)

Outcome = BuiltCandidate | ModelError       # a build failure is that candidate's result, not the tune's


class CandidateBuilder:
    def __init__(self, pool: BuildPool, ws: Workspace, out: Path, lookahead: int | None = None):
        self.pool = pool
        self.ws = ws
        self.out_dir = Path(out) / "candidates"
        self.cache_dir = Path(out) / "cache"
        self.lookahead = lookahead or max(2, 2 * pool.limits.workers)
        self._calibration: dict[str, ModelError | None] = {}   # settings -> their calibration's failure, if any
        self.built = 0                    # candidates handed back built (benchmarks)

    def calibrate(self, spec: CandidateSpec) -> ModelError | None:
        """Compute the ranges `spec` needs (once); a crash of the worker (out of memory, timeout)
        is raised, since no candidate of these settings could be built; a quantizer error is
        returned as every such candidate's build failure."""
        if not spec.settings.is_static or self.ws.calibration_file is None:
            return None
        key = spec.settings.canonical()
        if key not in self._calibration:
            try:
                self.pool.call("coordinator.quantize:calibrate_task", self.ws.prepared, spec, self.ws.calibration_file,
                               self.cache_dir, self.ws.layout, what=f"calibration of {self.ws.prepared.source.name} "
                                                    f"({spec.settings.calibrate})")
                self._calibration[key] = None
            except BuildCrashed:
                raise
            except ModelError as exc:
                self._calibration[key] = exc
        return self._calibration[key]

    def build(self, spec: CandidateSpec) -> BuiltCandidate:
        """One candidate, now (raises its build failure)."""
        outcome = next(self.build_ahead([spec]))[1]
        if isinstance(outcome, ModelError):
            raise outcome
        return outcome

    def build_ahead(self, specs: Iterable[CandidateSpec]) -> Iterator[tuple[CandidateSpec, Outcome]]:
        specs = list(specs)
        failed = {spec.id: self.calibrate(spec) for spec in specs}
        source = iter(specs)
        running: deque[tuple[CandidateSpec, Future | ModelError]] = deque()

        def fill() -> None:
            while len(running) < self.lookahead:
                spec = next(source, None)
                if spec is None:
                    return
                failure = failed[spec.id]
                running.append((spec, failure if failure is not None else self.pool.submit(
                    "coordinator.quantize:build_task", self.ws.prepared, spec, self.out_dir, self.ws.calibration_file,
                    self.cache_dir, self.ws.layout, what=f"building candidate {spec.id}")))

        fill()
        try:
            while running:
                spec, pending = running.popleft()
                outcome = pending if isinstance(pending, ModelError) else self._outcome(spec, pending)
                fill()                  # keep the pool busy while the caller submits this one
                yield spec, outcome
        finally:                        # the caller stopped early (budget): drop what has not started
            for _, pending in running:
                if isinstance(pending, Future):
                    pending.cancel()

    def _outcome(self, spec: CandidateSpec, future: Future) -> Outcome:
        try:
            fields = future.result()
        except ModelError as exc:
            return exc
        self.built += 1
        return BuiltCandidate(spec=spec, path=Path(fields["path"]), sha256=fields["sha256"],
                              size_bytes=int(fields["size_bytes"]))
