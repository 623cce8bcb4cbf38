"""Evaluate one model file with a runner: accuracy against the FP32 reference, size, latency. The
agent's job worker and the in-process tuner both measure through these two functions."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from shared.metrics import accuracy_metrics, percentiles_ms, top1
from shared.results import DeviceResult, ResultStatus
from shared.runners.base import Runner


def _latency(runner: Runner, model: Path, inputs: np.ndarray, input_name: str, runs: int) -> tuple[float, float]:
    return percentiles_ms(runner.latency_seconds(model, inputs[:1], input_name, runs) if runs > 0 else [])


def evaluate_model(runner: Runner, model: Path, inputs: np.ndarray, input_name: str,
                   reference: np.ndarray, labels: np.ndarray | None, latency_runs: int) -> DeviceResult:
    start = time.perf_counter()
    logits = runner.infer(model, inputs, input_name)
    acc = accuracy_metrics(logits, reference, labels)
    p50, p90 = _latency(runner, model, inputs, input_name, latency_runs)
    return DeviceResult(
        ResultStatus.OK, top1_agreement=acc.top1_agreement, top5_agreement=acc.top5_agreement,
        top1_accuracy=acc.top1_accuracy, num_images=acc.num_images, size_bytes=model.stat().st_size,
        latency_ms_p50=p50, latency_ms_p90=p90, wall_seconds=time.perf_counter() - start, runtime=runner.info())


def reference_result(runner: Runner, model: Path, logits: np.ndarray, inputs: np.ndarray, input_name: str,
                     labels: np.ndarray | None, latency_runs: int, started: float) -> DeviceResult:
    """The FP32 model's own numbers, given its logits (just computed, or cached): it agrees with
    itself, so only its labelled top-1, size and latency are measured."""
    p50, p90 = _latency(runner, model, inputs, input_name, latency_runs)
    acc = None if labels is None else float((top1(logits) == np.asarray(labels).reshape(-1)).mean())
    return DeviceResult(
        ResultStatus.OK, top1_agreement=1.0, top5_agreement=1.0, top1_accuracy=acc, num_images=int(len(logits)),
        size_bytes=model.stat().st_size, latency_ms_p50=p50, latency_ms_p90=p90,
        wall_seconds=time.perf_counter() - started, runtime=runner.info())
