"""Accuracy metrics of a candidate against the FP32 reference, computed the same way by every runner."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.errors import EvaluationError


@dataclass(frozen=True)
class AccuracyMetrics:
    top1_agreement: float          # candidate top-1 == FP32 top-1
    top5_agreement: float          # FP32 top-1 within candidate top-5
    top1_accuracy: float | None    # candidate top-1 == label, when labels exist
    num_images: int


def top1(logits: np.ndarray) -> np.ndarray:
    return np.asarray(logits).reshape(len(logits), -1).argmax(axis=1)


def accuracy_metrics(candidate: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> AccuracyMetrics:
    """Compare (N, classes) logits; agreement is measured against the FP32 model's own predictions."""
    cand = np.asarray(candidate).reshape(len(candidate), -1)
    ref = np.asarray(reference).reshape(len(reference), -1)
    if cand.shape != ref.shape:
        raise EvaluationError(f"candidate output shape {cand.shape} differs from the FP32 reference {ref.shape}")
    if len(cand) == 0:
        raise EvaluationError("no images to evaluate")
    ref_top1 = ref.argmax(axis=1)
    cand_top1 = cand.argmax(axis=1)
    k = min(5, cand.shape[1])
    cand_top5 = np.argpartition(-cand, k - 1, axis=1)[:, :k]
    acc = None
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(cand):
            raise EvaluationError(f"{len(labels)} labels for {len(cand)} images")
        acc = float((cand_top1 == labels).mean())
    return AccuracyMetrics(
        top1_agreement=float((cand_top1 == ref_top1).mean()),
        top5_agreement=float((cand_top5 == ref_top1[:, None]).any(axis=1).mean()),
        top1_accuracy=acc,
        num_images=len(cand),
    )


def percentiles_ms(seconds: list[float]) -> tuple[float, float]:
    """p50 and p90 in milliseconds of per-inference wall times."""
    if not seconds:
        return 0.0, 0.0
    arr = np.asarray(seconds) * 1000.0
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 90))
