"""Evaluate one model file with a runner: accuracy against the FP32 reference, size, latency."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from shared.runners.base import EvalMetrics, Runner
from shared.metrics import accuracy_metrics, percentiles_ms


def evaluate_model(runner: Runner, model: Path, inputs: np.ndarray, input_name: str,
                   reference: np.ndarray, labels: np.ndarray | None, latency_runs: int) -> EvalMetrics:
    start = time.perf_counter()
    logits = runner.infer(model, inputs, input_name)
    acc = accuracy_metrics(logits, reference, labels)
    times = runner.latency_seconds(model, inputs[:1], input_name, latency_runs) if latency_runs > 0 else []
    p50, p90 = percentiles_ms(times)
    return EvalMetrics(
        top1_agreement=acc.top1_agreement, top5_agreement=acc.top5_agreement, top1_accuracy=acc.top1_accuracy,
        num_images=acc.num_images, size_bytes=model.stat().st_size, latency_ms_p50=p50, latency_ms_p90=p90,
        wall_seconds=time.perf_counter() - start, runtime=runner.info())
