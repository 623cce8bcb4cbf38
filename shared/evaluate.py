"""Evaluate one model file with a runner: fidelity against the FP32 reference outputs (every
output; agreement for classifiers), size, and batch-1 latency timed interleaved with the FP32
model. The agent's job worker and the in-process tuner both measure through these functions, in
this order: accuracy inference first (no lock), then the timing phase under the host-wide lock."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from shared.errors import InvalidArgument
from shared.feeds import BATCHED, Feeds, check_layout, num_samples
from shared.latency import LatencyStats, interleaved_latency
from shared.metrics import TASKS, Fidelity, check_metric_path, fidelity, load_metric, user_metrics
from shared.results import DeviceResult, ResultStatus
from shared.runners.base import Runner, run_outputs


@dataclass(frozen=True)
class EvalSpec:
    """What every job of a tune measures (and where the host's timing lock is)."""

    latency_runs: int = 20                 # interleaved (FP32, candidate) batch-1 pairs; 0: no latency
    task: str = "auto"                     # which fidelity metrics apply (shared.metrics)
    metric: str | None = None              # user metric module:function, run where the outputs are
    latency_lock: Path | None = None       # host-wide timing lock file (None: no lock)
    layout: str = BATCHED                  # what one sample of the feeds is (shared/feeds.py)

    def __post_init__(self) -> None:
        check_layout(self.layout)
        if not isinstance(self.latency_runs, int) or self.latency_runs < 0:
            raise InvalidArgument(f"latency runs {self.latency_runs!r} must be an integer >= 0")
        if self.task not in TASKS:
            raise InvalidArgument(f"--task {self.task!r} is not one of {', '.join(TASKS)}")
        if self.metric is not None:
            check_metric_path(self.metric)
        if self.latency_lock is not None:
            object.__setattr__(self, "latency_lock", Path(self.latency_lock))

    def to_dict(self) -> dict[str, Any]:
        return {"latency_runs": self.latency_runs, "task": self.task, "metric": self.metric,
                "latency_lock": None if self.latency_lock is None else str(self.latency_lock), "layout": self.layout}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EvalSpec":
        return cls(latency_runs=int(data["latency_runs"]), task=data.get("task") or "auto",
                   metric=data.get("metric") or None, latency_lock=data.get("latency_lock") or None,
                   layout=data.get("layout") or BATCHED)


def evaluate_model(runner: Runner, model: Path, fp32_model: Path, feeds: Feeds,
                   reference: Mapping[str, np.ndarray], labels: np.ndarray | None, spec: EvalSpec) -> DeviceResult:
    """A candidate against FP32's `reference` outputs; `fp32_model` is timed alongside it."""
    start = time.perf_counter()
    outputs = run_outputs(runner, model, feeds, spec.layout)
    fid = fidelity(reference, outputs, spec.task, labels)
    users = _user_metrics(spec, reference, outputs)
    latency = interleaved_latency(runner, fp32_model, model, feeds, spec.latency_runs, lock=spec.latency_lock,
                                  layout=spec.layout)
    return _result(runner, model, feeds, fid, users, latency, start)


def reference_result(runner: Runner, model: Path, outputs: Mapping[str, np.ndarray], feeds: Feeds,
                     labels: np.ndarray | None, spec: EvalSpec, started: float) -> DeviceResult:
    """The FP32 model's own numbers, given its outputs (just computed, or cached): the task is
    resolved on them, a user metric is tried on them (so a broken one fails before any
    candidate), and the model is timed against itself: a latency ratio of ~1 whose spread is the
    noise this device measures with."""
    fid = fidelity(outputs, outputs, spec.task, labels)
    users = _user_metrics(spec, outputs, outputs)
    latency = interleaved_latency(runner, model, model, feeds, spec.latency_runs, lock=spec.latency_lock,
                                  layout=spec.layout)
    return _result(runner, model, feeds, fid, users, latency, started)


def _user_metrics(spec: EvalSpec, reference: Mapping[str, np.ndarray],
                  outputs: Mapping[str, np.ndarray]) -> dict[str, float] | None:
    if spec.metric is None:
        return None
    return user_metrics(spec.metric, load_metric(spec.metric), reference, outputs)


def _result(runner: Runner, model: Path, feeds: Feeds, fid: Fidelity, users: dict[str, float] | None,
            latency: LatencyStats | None, started: float) -> DeviceResult:
    acc = fid.accuracy
    return DeviceResult(
        ResultStatus.OK, top1_agreement=acc and acc.top1_agreement, top5_agreement=acc and acc.top5_agreement,
        top1_accuracy=acc and acc.top1_accuracy, num_images=num_samples(feeds), size_bytes=Path(model).stat().st_size,
        latency_ms_p50=latency and latency.ms_p50, latency_ms_p90=latency and latency.ms_p90,
        fp32_latency_ms_p50=latency and latency.fp32_ms_p50, latency_ratio_vs_fp32=latency and latency.ratio_p50,
        latency_ratio_p10=latency and latency.ratio_p10, latency_ratio_p90=latency and latency.ratio_p90,
        task=fid.task, output_sqnr_db=fid.output_sqnr_db, cosine=fid.cosine, kl_divergence=fid.kl_divergence,
        iou=fid.iou, outputs=fid.outputs, user_metrics=users, wall_seconds=time.perf_counter() - started,
        runtime=runner.info())
