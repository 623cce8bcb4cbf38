"""Where candidates are measured. The tuner talks to an Evaluator; `LocalEvaluator` runs the
agent's runner in this process (device key "local"), the farm evaluator sends jobs to agents."""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Protocol

import numpy as np

from coordinator.quantize import BuiltCandidate
from shared.atomic import atomic_output
from shared.errors import EvaluationError
from shared.evaluate import evaluate_model, reference_result
from shared.results import CrashCause, CrashKind, DeviceResult
from shared.runners.base import Runner, UnsupportedModel


@dataclass(frozen=True)
class EvalInputs:
    inputs: np.ndarray
    labels: np.ndarray | None
    input_name: str
    latency_runs: int

    def digest(self) -> str:
        h = hashlib.sha256(np.ascontiguousarray(self.inputs).tobytes())
        if self.labels is not None:
            h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()


class Evaluator(Protocol):
    devices: tuple[str, ...]
    parallelism: int            # evaluations that can run at once (agents); strategies batch to it

    def reference(self, model: Path, model_sha256: str, data: EvalInputs) -> dict[str, DeviceResult]:
        """FP32 results per device (top1_accuracy, latency, size); devices keep their own logits."""

    def evaluate(self, candidates: Iterable[BuiltCandidate],
                 data: EvalInputs) -> Iterator[tuple[str, str, DeviceResult]]:
        """Yield (candidate id, device, result) as results arrive, one per candidate and device."""


class LocalEvaluator:
    """Evaluates in this process with one runner; FP32 logits cached on disk per model + data."""

    parallelism = 1

    def __init__(self, runner: Runner, cache_dir: Path, device: str = "local"):
        self.runner = runner
        self.cache_dir = cache_dir
        self.devices = (device,)
        self._reference: np.ndarray | None = None

    def reference(self, model: Path, model_sha256: str, data: EvalInputs) -> dict[str, DeviceResult]:
        started = time.perf_counter()
        info = self.runner.info()
        key = hashlib.sha256(f"{model_sha256}|{data.digest()}|{info.runtime}|{info.version}|{info.options}"
                             .encode()).hexdigest()[:20]
        path = self.cache_dir / f"fp32-{key}.npy"
        if path.exists():
            logits = np.load(path)
        else:
            logits = self.runner.infer(model, data.inputs, data.input_name)
            with atomic_output(path) as tmp:
                np.save(tmp, logits)
        self._reference = logits
        result = reference_result(self.runner, model, logits, data.inputs, data.input_name, data.labels,
                                  data.latency_runs, started)
        return {self.devices[0]: result}

    def evaluate(self, candidates: Iterable[BuiltCandidate],
                 data: EvalInputs) -> Iterator[tuple[str, str, DeviceResult]]:
        if self._reference is None:
            raise EvaluationError("reference() must run before evaluate()")
        for cand in candidates:
            try:
                result = evaluate_model(self.runner, cand.path, data.inputs, data.input_name, self._reference,
                                        data.labels, data.latency_runs)
            except EvaluationError as exc:
                result = DeviceResult.failure(CrashCause(CrashKind.ERROR, str(exc)), cand.size_bytes,
                                              unsupported=isinstance(exc, UnsupportedModel))
            yield cand.id, self.devices[0], result
