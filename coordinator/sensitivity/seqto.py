"""SeQTO-style ranking: a node is damaged when its own QDQ loses signal and when the error that
reached its output (through everything quantized before it) is large.

For each quantized node, on its output tensor:

* ``qdq_sqnr_db``: SQNR of the tensor after vs before its own QuantizeLinear/DequantizeLinear
  in the quantized model (the error this tensor's quantization adds);
* ``xmodel_sqnr_db``: SQNR of the quantized model's tensor vs the float model's (all error so far).

Each is min-max normalised over the ranked tensors to [0, 1] (1 = best; +inf, identical tensors,
maps to 1; -inf and nan map to 0; if all finite values are equal they map to 1), and

    score = 0.5 * (1 - xmodel_norm) + 0.5 * (1 - qdq_norm)        # in [0, 1]
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Sequence

from coordinator.sensitivity.activations import Feeds, Measurements, measure, worst_output
from coordinator.sensitivity.result import NodeSensitivity, json_number, ordered

log = logging.getLogger(__name__)


def normalise(values: Sequence[float]) -> list[float]:
    """Min-max over the finite values; +inf -> 1 (no error), -inf and nan -> 0 (worst)."""
    finite = [v for v in values if math.isfinite(v)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 0.0)

    def one(value: float) -> float:
        if math.isnan(value) or value == -math.inf:
            return 0.0
        if value == math.inf or high == low:
            return 1.0
        return (value - low) / (high - low)
    return [one(v) for v in values]


def rank_seqto(float_model: Path, qdq_model: Path, calibration: Feeds) -> list[NodeSensitivity]:
    """Rank the quantized nodes of ``float_model`` most damaged first (see module docstring)."""
    started = time.perf_counter()
    ranking = score_seqto(measure(float_model, qdq_model, calibration))
    log.info("seqto: ranked %d nodes of %s in %.1f s", len(ranking), float_model, time.perf_counter() - started)
    return ranking


def score_seqto(measured: Measurements) -> list[NodeSensitivity]:
    """The ranking from measurements alone (pure: no models are run)."""
    tensors = [worst_output(node, measured.tensors) for node in measured.nodes]
    errors = [measured.tensors[t] for t in tensors]
    xmodel = normalise([e.xmodel_sqnr_db for e in errors])
    qdq = normalise([e.qdq_sqnr_db for e in errors])
    return ordered(
        NodeSensitivity(
            node=node.name, op_type=node.op_type, tensor=tensor,
            score=0.5 * (1.0 - x_norm) + 0.5 * (1.0 - q_norm),
            details={"qdq_sqnr_db": json_number(error.qdq_sqnr_db),
                     "xmodel_sqnr_db": json_number(error.xmodel_sqnr_db),
                     "qdq_norm": q_norm, "xmodel_norm": x_norm})
        for node, tensor, error, x_norm, q_norm in zip(measured.nodes, tensors, errors, xmodel, qdq))
