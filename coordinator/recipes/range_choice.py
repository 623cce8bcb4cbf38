"""Per-tensor calibration choice: each activation tensor gets the range of whichever calibration
method (minmax, percentile, entropy) quantizes it with the highest SQNR on the calibration data.

One method for the whole model is a compromise: minmax wastes 8-bit levels on the rare outliers
of long-tailed tensors (residual sums, projections without an activation), percentile clips
tensors whose extremes matter. Scoring every tensor's candidate ranges on its own float values
picks per tensor. Only the ranges change (TensorQuantOverrides rmin/rmax), not the graph, so the
model keeps onnxruntime's fused int8 kernels.

Tensors whose quantization parameters onnxruntime derives from another tensor are left alone:
the input of a Relu/Clip it fuses into the producer (the activation's output range is used),
outputs of ops that reuse their input's parameters (Reshape, MaxPool, ...), and graph inputs
that feed nothing quantizable are harmless either way."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnxruntime.quantization.quant_utils import QuantType, compute_scale_zp, get_qmin_qmax_for_qType

from shared.errors import InvalidArgument

from ._graph import SHARED_PARAM_OPS, consumers, initializers, producers
from .layer_stats import Feeds, exposing_session, run_exposed

_STEP = "recipe/range-choice"
_FUSED_ACTIVATIONS = frozenset({"Relu", "Clip"})
_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
Ranges = Mapping[str, tuple[float, float]]


@dataclass(frozen=True)
class RangeChoice:
    """`chosen[tensor]` is the winning method, `ranges[tensor]` its (rmin, rmax), `sqnr_db[tensor]`
    every candidate's SQNR in dB on the calibration data."""

    default: str
    chosen: dict[str, str]
    ranges: dict[str, tuple[float, float]]
    sqnr_db: dict[str, dict[str, float]]

    def overrides(self) -> dict[str, list[dict[str, np.ndarray]]]:
        """TensorQuantOverrides entries (float32 scalars, as onnxruntime wants them) for the
        tensors whose range is not the default method's."""
        return {t: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}] for t, (lo, hi) in self.ranges.items()
                if self.chosen[t] != self.default}


def ranges_of(tensors_data) -> dict[str, tuple[float, float]]:
    """(rmin, rmax) per tensor from onnxruntime's TensorsData (a calibrator's result)."""
    result = {}
    for name, data in tensors_data.items():
        lo, hi = data.range_value
        result[name] = (float(np.asarray(lo).reshape(-1)[0]), float(np.asarray(hi).reshape(-1)[0]))
    return result


def choosable_tensors(model: onnx.ModelProto, names: Sequence[str]) -> list[str]:
    """The names whose range onnxruntime takes from calibration as is (see the module doc)."""
    graph = model.graph
    inits = initializers(graph)
    made_by = producers(graph)
    used_by = consumers(graph)
    result = []
    for name in names:
        if name in inits:
            continue
        producer = made_by.get(name)
        if producer is not None and producer.op_type in SHARED_PARAM_OPS:
            continue
        readers = used_by.get(name, [])
        if readers and all(r.op_type in _FUSED_ACTIVATIONS for r in readers):
            continue
        result.append(name)
    return result


def choose_ranges(float_model: onnx.ModelProto, feeds: Feeds, candidates: Mapping[str, Ranges], *,
                  default: str = "minmax", activation_type: str = "uint8", threads: int = 1) -> RangeChoice:
    """Score every candidate method's range of every choosable tensor by the SQNR of quantizing
    that tensor's float values on `feeds`; the best wins, ties go to `default`."""
    if default not in candidates:
        raise InvalidArgument(f"default method {default!r} is not among the candidates "
                              f"{', '.join(candidates)}", step=_STEP)
    if activation_type not in _TYPES:
        raise InvalidArgument(f"activation_type={activation_type!r}: range choice scores 8-bit activations "
                              f"({', '.join(_TYPES)})", step=_STEP)
    if not feeds:
        raise InvalidArgument("no calibration feeds to score ranges on", step=_STEP)
    common = [t for t in candidates[default] if all(t in ranges for ranges in candidates.values())]
    tensors = [t for t in choosable_tensors(float_model, common)
               if len({candidates[m][t] for m in candidates}) > 1]       # identical ranges: nothing to choose
    qtype = _TYPES[activation_type].tensor_type
    qmin, qmax = get_qmin_qmax_for_qType(qtype)
    params = {t: {m: _scale_zp(candidates[m][t], qmin, qmax) for m in candidates} for t in tensors}
    tensors = [t for t in tensors if all(scale > 0 for scale, _ in params[t].values())]
    signal = dict.fromkeys(tensors, 0.0)
    noise = {t: dict.fromkeys(candidates, 0.0) for t in tensors}
    session = exposing_session(float_model, tensors, threads)
    for feed in feeds:
        values = run_exposed(session, feed)
        for t in tensors:
            x = np.asarray(values[t], dtype=np.float64)
            signal[t] += float(np.sum(x * x))
            for m, (scale, zp) in params[t].items():
                q = (np.clip(np.rint(x / scale) + zp, qmin, qmax) - zp) * scale
                noise[t][m] += float(np.sum((x - q) ** 2))
    chosen, ranges, scores = {}, {}, {}
    for t in tensors:
        scores[t] = {m: _db(signal[t], noise[t][m]) for m in candidates}
        best = max(candidates, key=lambda m: (scores[t][m], m == default))
        if scores[t][best] <= scores[t][default]:
            best = default
        chosen[t], ranges[t] = best, candidates[best][t]
    return RangeChoice(default, chosen, ranges, scores)


def _scale_zp(rng: tuple[float, float], qmin, qmax) -> tuple[float, float]:
    zero, scale = compute_scale_zp(np.float32(rng[0]), np.float32(rng[1]), qmin, qmax)
    return float(scale), float(zero)


def _db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf
