"""QuantuneV2-style ranking: a node is damaged when its activations blow up in MSE, or when the
signal-to-noise ratio drops across it (its own quantization loses what its inputs still had).

Per quantized node, with its output tensor compared between the float and the fully quantized
model over all calibration feeds (SQNR in dB, higher = better):

* ``sqnr_db``        = SQNR of the node's output;
* ``input_sqnr``     = min SQNR over the node's activation inputs; a model input counts as +inf;
* ``sqnr_delta_db``  = input_sqnr - sqnr_db, the SQNR this node loses;
* ``mse``            = mean squared error of the node's output;
* ``weight_sqnr_db`` = min SQNR over the node's quantized weights (None when it has none);
* ``mse_outlier``    = mse > 5 * mean(mse over all ranked nodes), or mse not finite.

Non-finite SQNRs are clipped before the arithmetic: +inf to the largest finite activation SQNR
measured, -inf and nan to the smallest (likewise for weights, within the weight SQNRs).
Then, with ``wd = max(0, median(weight_sqnr_db over nodes with weights) - weight_sqnr_db)``
(0 for nodes without weights) and ``top`` = the largest non-outlier score (0 if none):

    non-outlier:  score = sqnr_delta_db + 0.25 * wd
    outlier:      score = top + 1 + log10(mse / mean_mse)        (top + 2 + log10(max ratio) if mse is not finite)

so outliers come first ordered by MSE, then the rest by SQNR lost, nudged by weight damage.
"""
from __future__ import annotations

import logging
import math
import statistics
import time
from pathlib import Path
from typing import Mapping

from coordinator.sensitivity.activations import Feeds, Measurements, measure, worst_output
from coordinator.sensitivity.graph import QuantizedNode
from coordinator.sensitivity.result import NodeSensitivity, json_number, ordered

log = logging.getLogger(__name__)
MSE_OUTLIER_FACTOR = 5.0
WEIGHT_BLEND = 0.25


def _clipper(values: list[float]):
    """Map +inf to the largest finite value, -inf/nan to the smallest (0 when none is finite)."""
    finite = [v for v in values if math.isfinite(v)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 0.0)
    return lambda v: v if math.isfinite(v) else (high if v == math.inf else low)


def _input_sqnr(node: QuantizedNode, measured: Measurements, clip, best: float) -> float:
    values = [best if name in measured.graph_inputs else clip(measured.tensors[name].xmodel_sqnr_db)
              for name in node.inputs if name in measured.graph_inputs or name in measured.tensors]
    return min(values, default=best)


def _weight_sqnr(node: QuantizedNode, weights: Mapping[str, float]) -> float | None:
    values = [weights[name] for name in node.weights if name in weights]
    if not values:
        return None
    return min(values, key=lambda v: -math.inf if math.isnan(v) else v)


def rank_quantune(float_model: Path, qdq_model: Path, calibration: Feeds) -> list[NodeSensitivity]:
    """Rank the quantized nodes of ``float_model`` most damaged first (see module docstring)."""
    started = time.perf_counter()
    ranking = score_quantune(measure(float_model, qdq_model, calibration))
    log.info("quantune: ranked %d nodes of %s in %.1f s", len(ranking), float_model, time.perf_counter() - started)
    return ranking


def score_quantune(measured: Measurements) -> list[NodeSensitivity]:
    """The ranking from measurements alone (pure: no models are run)."""
    tensors = [worst_output(node, measured.tensors) for node in measured.nodes]
    errors = [measured.tensors[t] for t in tensors]

    clip = _clipper([e.xmodel_sqnr_db for e in measured.tensors.values()])
    best = clip(math.inf)
    sqnr = [clip(e.xmodel_sqnr_db) for e in errors]
    delta = [_input_sqnr(node, measured, clip, best) - s for node, s in zip(measured.nodes, sqnr)]

    weight = [_weight_sqnr(node, measured.weight_sqnr_db) for node in measured.nodes]
    clip_w = _clipper([w for w in weight if w is not None])
    clipped_w = [None if w is None else clip_w(w) for w in weight]
    present = [w for w in clipped_w if w is not None]
    median_w = statistics.median(present) if present else 0.0
    base = [d + WEIGHT_BLEND * (0.0 if w is None else max(0.0, median_w - w)) for d, w in zip(delta, clipped_w)]

    finite_mse = [e.mse for e in errors if math.isfinite(e.mse)]
    mean_mse = statistics.fmean(finite_mse) if finite_mse else 0.0
    outlier = [not math.isfinite(e.mse) or (mean_mse > 0 and e.mse > MSE_OUTLIER_FACTOR * mean_mse)
               for e in errors]
    top = max((b for b, o in zip(base, outlier) if not o), default=0.0)
    max_ratio = max(finite_mse, default=0.0) / mean_mse if mean_mse > 0 else 1.0

    def score(index: int) -> float:
        if not outlier[index]:
            return base[index]
        if math.isfinite(errors[index].mse):
            return top + 1.0 + math.log10(errors[index].mse / mean_mse)
        return top + 2.0 + math.log10(max(max_ratio, 1.0))

    return ordered(
        NodeSensitivity(
            node=node.name, op_type=node.op_type, tensor=tensor, score=float(score(i)),
            details={"sqnr_db": json_number(errors[i].xmodel_sqnr_db),
                     "sqnr_delta_db": json_number(delta[i]),
                     "mse": json_number(errors[i].mse),
                     "mse_outlier": outlier[i],
                     "weight_sqnr_db": None if weight[i] is None else json_number(weight[i])})
        for i, (node, tensor) in enumerate(zip(measured.nodes, tensors)))
