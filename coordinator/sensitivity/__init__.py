"""Rank the quantized layers of a model by how much full INT8 quantization damages them, so the
tuner knows which nodes to keep in float first. Two methods share one measurement pass:
``seqto`` (SQNR of each tensor's own QDQ and across models) and ``quantune`` (MSE outliers,
then SQNR lost per layer)."""
from __future__ import annotations

from pathlib import Path

from coordinator.sensitivity.activations import Feeds, measure
from coordinator.sensitivity.quantune import rank_quantune, score_quantune
from coordinator.sensitivity.result import NodeSensitivity
from coordinator.sensitivity.seqto import rank_seqto, score_seqto
from shared.errors import InvalidArgument

METHODS = {"seqto": rank_seqto, "quantune": rank_quantune}

__all__ = ["METHODS", "NodeSensitivity", "rank", "rank_quantune", "rank_seqto", "score_all"]


def score_all(float_model: Path, qdq_model: Path, calibration: Feeds) -> dict[str, list[NodeSensitivity]]:
    """Every method's ranking from ONE measurement pass (the expensive part)."""
    measured = measure(Path(float_model), Path(qdq_model), calibration)
    return {"seqto": score_seqto(measured), "quantune": score_quantune(measured)}


def rank(method: str, float_model: Path, qdq_model: Path, calibration: Feeds) -> list[NodeSensitivity]:
    """Rank with the named method (``seqto`` or ``quantune``); most damaged node first."""
    if method not in METHODS:
        raise InvalidArgument(f"sensitivity method {method!r} is not one of {', '.join(sorted(METHODS))}",
                              step="sensitivity")
    return METHODS[method](Path(float_model), Path(qdq_model), calibration)
