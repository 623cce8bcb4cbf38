"""Where candidates are measured. The tuner talks to an Evaluator; `LocalEvaluator` runs the
agent's runner in this process (device key "local"), the farm evaluator sends jobs to agents."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Protocol

import numpy as np

from shared.evaluate import evaluate_model
from shared.runners.base import Runner, UnsupportedModel
from coordinator.quantize import BuiltCandidate
from shared.errors import EvaluationError
from shared.metrics import percentiles_ms


@dataclass(frozen=True)
class EvalInputs:
    inputs: np.ndarray
    labels: np.ndarray | None
    input_name: str
    latency_runs: int = 20

    def digest(self) -> str:
        h = hashlib.sha256(np.ascontiguousarray(self.inputs).tobytes())
        if self.labels is not None:
            h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()


class Evaluator(Protocol):
    devices: tuple[str, ...]

    def reference(self, model: Path, model_sha256: str, data: EvalInputs) -> dict[str, dict]:
        """FP32 metrics per device (top1_accuracy, latency, size); devices keep their own logits."""

    def evaluate(self, candidates: Iterable[BuiltCandidate], data: EvalInputs) -> Iterator[tuple[str, str, dict]]:
        """Yield (candidate id, device, result dict) as results arrive, one per candidate and device."""


def metrics_to_result(m) -> dict:
    return {
        "status": "ok", "top1_agreement": m.top1_agreement, "top5_agreement": m.top5_agreement,
        "top1_accuracy": m.top1_accuracy, "size_bytes": m.size_bytes, "latency_ms_p50": m.latency_ms_p50,
        "latency_ms_p90": m.latency_ms_p90, "num_images": m.num_images, "wall_seconds": round(m.wall_seconds, 3),
        "runtime": {"runtime": m.runtime.runtime, "version": m.runtime.version,
                    "providers": list(m.runtime.providers), "options": m.runtime.options},
    }


def failure_result(exc: Exception, size_bytes: int) -> dict:
    status = "unsupported" if isinstance(exc, UnsupportedModel) else "crash"
    return {"status": status, "crash_cause": f"error:{exc}", "size_bytes": size_bytes}


class LocalEvaluator:
    """Evaluates in this process with one runner; FP32 logits cached on disk per model + data."""

    def __init__(self, runner: Runner, cache_dir: Path, device: str = "local"):
        self.runner = runner
        self.cache_dir = cache_dir
        self.devices = (device,)
        self._reference: np.ndarray | None = None

    def reference(self, model: Path, model_sha256: str, data: EvalInputs) -> dict[str, dict]:
        info = self.runner.info()
        key = hashlib.sha256(f"{model_sha256}|{data.digest()}|{info.runtime}|{info.version}|{info.options}"
                             .encode()).hexdigest()[:20]
        path = self.cache_dir / f"fp32-{key}.npy"
        if path.exists():
            logits = np.load(path)
        else:
            logits = self.runner.infer(model, data.inputs, data.input_name)
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp.npy")
            np.save(tmp, logits)
            tmp.replace(path)
        self._reference = logits
        times = self.runner.latency_seconds(model, data.inputs[:1], data.input_name, data.latency_runs)
        p50, p90 = percentiles_ms(times)
        acc = None if data.labels is None else float((logits.argmax(axis=1) == data.labels).mean())
        return {self.devices[0]: {"status": "ok", "top1_accuracy": acc, "size_bytes": model.stat().st_size,
                                  "latency_ms_p50": p50, "latency_ms_p90": p90, "num_images": len(logits)}}

    def evaluate(self, candidates: Iterable[BuiltCandidate], data: EvalInputs) -> Iterator[tuple[str, str, dict]]:
        if self._reference is None:
            raise EvaluationError("reference() must run before evaluate()")
        for cand in candidates:
            try:
                metrics = evaluate_model(self.runner, cand.path, data.inputs, data.input_name, self._reference,
                                         data.labels, data.latency_runs)
                result = metrics_to_result(metrics)
            except EvaluationError as exc:
                result = failure_result(exc, cand.size_bytes)
            yield cand.id, self.devices[0], result
