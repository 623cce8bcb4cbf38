"""Where candidates are measured. The tuner talks to an Evaluator; `LocalEvaluator` runs the
agent's runner in this process (device key "local"), the farm evaluator sends jobs to agents."""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Protocol

import numpy as np

from coordinator.quantize import BuiltCandidate
from shared.atomic import atomic_output
from shared.errors import EvaluationError
from shared.evaluate import EvalSpec, evaluate_model, reference_result
from shared.feeds import BATCHED, check_layout, load_npz, npz_bytes, num_samples
from shared.feeds import digest as feeds_digest
from shared.latency import DEFAULT_LATENCY_LOCK
from shared.metrics import MetricError
from shared.results import CrashCause, CrashKind, DeviceResult
from shared.runners.base import Runner, UnsupportedModel, run_outputs


@dataclass(frozen=True)
class EvalInputs:
    """The evaluation set and what every job measures on it."""

    feeds: Mapping[str, np.ndarray]        # every model input -> (N, ...) samples
    labels: np.ndarray | None
    latency_runs: int
    task: str = "auto"
    metric: str | None = None
    source: Path | None = None             # the feeds' npz_bytes on disk, when a build worker wrote them
    layout: str = BATCHED                  # batched rows or whole feeds (shared/feeds.py)

    def __post_init__(self) -> None:
        object.__setattr__(self, "feeds", {name: np.asarray(a) for name, a in self.feeds.items()})
        num_samples(self.feeds, "evaluation inputs")
        check_layout(self.layout)

    @property
    def num_samples(self) -> int:
        return num_samples(self.feeds)

    def spec(self, latency_lock: Path | None = None) -> EvalSpec:
        return EvalSpec(self.latency_runs, self.task, self.metric, latency_lock, self.layout)

    def digest(self) -> str:
        """The samples (as laid out) and labels (not what is measured on them)."""
        h = hashlib.sha256(feeds_digest(self.feeds, self.layout).encode())
        if self.labels is not None:
            h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()


class Evaluator(Protocol):
    devices: tuple[str, ...]
    parallelism: int            # evaluations that can run at once (agents); strategies batch to it

    def reference(self, model: Path, model_sha256: str, data: EvalInputs) -> dict[str, DeviceResult]:
        """FP32 results per device (top1_accuracy, latency vs itself, size); devices keep their own outputs."""

    def evaluate(self, candidates: Iterable[BuiltCandidate],
                 data: EvalInputs) -> Iterator[tuple[str, str, DeviceResult]]:
        """Yield (candidate id, device, result) as results arrive, one per candidate and device."""


class LocalEvaluator:
    """Evaluates in this process with one runner; FP32 outputs cached on disk per model + data.
    Timing phases hold the host-wide latency lock (shared with agents on this host)."""

    parallelism = 1

    def __init__(self, runner: Runner, cache_dir: Path, device: str = "local",
                 latency_lock: Path | None = DEFAULT_LATENCY_LOCK):
        self.runner = runner
        self.cache_dir = cache_dir
        self.devices = (device,)
        self.latency_lock = latency_lock
        self._reference: dict[str, np.ndarray] | None = None
        self._fp32_model: Path | None = None

    def reference(self, model: Path, model_sha256: str, data: EvalInputs) -> dict[str, DeviceResult]:
        started = time.perf_counter()
        info = self.runner.info()
        key = hashlib.sha256(f"{model_sha256}|{data.digest()}|{info.runtime}|{info.version}|{info.options}"
                             .encode()).hexdigest()[:20]
        path = self.cache_dir / f"fp32-{key}.npz"
        if path.exists():
            outputs = load_npz(path)
        else:
            outputs = run_outputs(self.runner, model, data.feeds, data.layout)
            with atomic_output(path) as tmp:
                tmp.write_bytes(npz_bytes(outputs))
        self._reference, self._fp32_model = outputs, Path(model)
        result = reference_result(self.runner, model, outputs, data.feeds, data.labels,
                                  data.spec(self.latency_lock), started)
        return {self.devices[0]: result}

    def evaluate(self, candidates: Iterable[BuiltCandidate],
                 data: EvalInputs) -> Iterator[tuple[str, str, DeviceResult]]:
        if self._reference is None or self._fp32_model is None:
            raise EvaluationError("reference() must run before evaluate()")
        spec = data.spec(self.latency_lock)
        for cand in candidates:
            try:
                result = evaluate_model(self.runner, cand.path, self._fp32_model, data.feeds, self._reference,
                                        data.labels, spec)
            except MetricError as exc:
                result = DeviceResult.failure(CrashCause(CrashKind.METRIC, exc.args[0]), cand.size_bytes)
            except EvaluationError as exc:
                result = DeviceResult.failure(CrashCause(CrashKind.ERROR, str(exc)), cand.size_bytes,
                                              unsupported=isinstance(exc, UnsupportedModel))
            yield cand.id, self.devices[0], result
