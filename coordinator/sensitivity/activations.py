"""Measure, per activation tensor, how far the fully quantized model drifts from the float one.

Both rankers need the same numbers, so they come from one pass: copy both models into a
temporary directory (onnxruntime's helpers write ``<model>-inferred.onnx`` next to the model
they load), add every float tensor as an output with
``qdq_loss_debug.modify_model_output_intermediate_tensors``, run the calibration feeds with
``collect_activations``, pair tensors with ``create_activation_matching`` and score the pairs
with ``compute_activation_error`` / ``compute_weight_error``.

Two corrections to onnxruntime's helpers, both because they give wrong numbers otherwise:

* When the quantizer folded a Relu/Clip, the recorded pre-QDQ tensor is the value before the
  activation, so the raw qdq comparison would count the activation itself as quantization
  error (about 3 dB for any Conv+Relu). The pre-QDQ value is clamped to the interval the
  quantized tensor can represent, which is exactly what the folded activation did.
* ``create_weight_matching`` subtracts the zero point in the weight's own integer type, which
  wraps for uint8 weights; the weights are dequantized here in int64/float64 instead.

SQNR is ``20*log10(|x| / |x - y|)`` in dB over all feeds together: +inf when the tensors are
identical, -inf when the reference is zero but the other is not, nan when either holds a
non-finite value.
"""
from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, numpy_helper
from onnxruntime.quantization import CalibrationDataReader
from onnxruntime.quantization.qdq_loss_debug import (
    collect_activations,
    compute_activation_error,
    compute_weight_error,
    create_activation_matching,
    modify_model_output_intermediate_tensors,
)

from coordinator.sensitivity.graph import (
    DEQUANTIZE,
    QUANTIZED_WEIGHT_SUFFIX,
    QuantizedNode,
    count_qdq_nodes,
    find_quantized_nodes,
    folded_tensors,
    graph_inputs,
    representable_range,
)
from shared.errors import DataError, InvalidArgument, ModelError, NotFound

log = logging.getLogger(__name__)
STEP = "sensitivity"
Feeds = Sequence[Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class TensorError:
    """Errors of one activation tensor over all calibration feeds."""

    xmodel_sqnr_db: float  # float model vs quantized model (after its QDQ), the error that reached here
    qdq_sqnr_db: float  # before vs after this tensor's own QDQ; +inf when the tensor is not quantized
    mse: float  # mean squared error, float model vs quantized model


@dataclass(frozen=True)
class Measurements:
    nodes: tuple[QuantizedNode, ...]
    tensors: Mapping[str, TensorError]  # by float-model tensor name
    weight_sqnr_db: Mapping[str, float]  # by float initializer name
    graph_inputs: frozenset[str]


def _flat(arrays: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    if isinstance(arrays, (np.ndarray, np.generic, float, int)):   # one tensor; a 0-d one may be a numpy scalar
        arrays = [arrays]
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def sqnr_db(reference: Sequence[np.ndarray] | np.ndarray, other: Sequence[np.ndarray] | np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of ``other`` against ``reference``, in dB (higher = closer)."""
    ref, oth = _flat(reference), _flat(other)
    if ref.shape != oth.shape:
        raise ModelError(f"cannot compare tensors of {ref.size} and {oth.size} values", step=STEP)
    signal, noise = float(np.linalg.norm(ref)), float(np.linalg.norm(ref - oth))
    if not (math.isfinite(signal) and math.isfinite(noise)):
        return math.nan
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 20.0 * math.log10(signal / noise)


def mse(reference: Sequence[np.ndarray] | np.ndarray, other: Sequence[np.ndarray] | np.ndarray) -> float:
    ref, oth = _flat(reference), _flat(other)
    if ref.shape != oth.shape:
        raise ModelError(f"cannot compare tensors of {ref.size} and {oth.size} values", step=STEP)
    return float(np.mean(np.square(ref - oth))) if ref.size else 0.0


class _FeedReader(CalibrationDataReader):
    def __init__(self, feeds: Feeds):
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed = next(self._feeds, None)
        return None if feed is None else dict(feed)


def _load(path: Path, role: str) -> ModelProto:
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"{role} model {path} does not exist", step=STEP)
    try:
        return onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, OSError, ValueError...: all mean "not a model"
        raise ModelError(f"{role} model {path} cannot be loaded: {exc}", step=STEP) from exc


def _check_feeds(calibration: Feeds, expected: frozenset[str]) -> None:
    if isinstance(calibration, Mapping) or not isinstance(calibration, Sequence):
        raise InvalidArgument(f"calibration must be a list of feeds, got {type(calibration).__name__}", step=STEP)
    if not calibration:
        raise InvalidArgument("calibration is empty: give at least one input feed", step=STEP)
    for index, feed in enumerate(calibration):
        if not isinstance(feed, Mapping):
            raise InvalidArgument(f"calibration feed {index} is a {type(feed).__name__}, not a mapping", step=STEP)
        if set(feed) != expected:
            raise InvalidArgument(
                f"calibration feed {index} has inputs {sorted(feed)} but the model takes {sorted(expected)}",
                step=STEP)
        for name, value in feed.items():
            if not isinstance(value, np.ndarray):
                raise InvalidArgument(f"calibration feed {index} input {name!r} is a {type(value).__name__}, "
                                      "not a numpy array", step=STEP)


def _collect(model: ModelProto, workdir: Path, stem: str, calibration: Feeds) -> dict[str, list[np.ndarray]]:
    source, augmented = workdir / f"{stem}.onnx", workdir / f"{stem}.augmented.onnx"
    onnx.save(model, str(source))
    modify_model_output_intermediate_tensors(source, augmented)
    try:
        return collect_activations(str(augmented), _FeedReader(calibration))
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidArgument types for bad feeds
        raise DataError(f"running the {stem} model on the calibration feeds failed: {exc}", step=STEP) from exc


def _clamp_folded(matching: dict, folded: frozenset[str], qdq_model: ModelProto) -> None:
    """Apply the folded Relu/Clip to the recorded pre-QDQ values (see module docstring)."""
    for name in folded & matching.keys():
        bounds = representable_range(qdq_model, name)
        if bounds is None:
            log.warning("tensor %s: folded activation without per-tensor range; qdq error includes it", name)
            continue
        matching[name]["pre_qdq"] = [np.clip(a, *bounds) for a in matching[name]["pre_qdq"]]


def weight_matching(float_model: ModelProto, qdq_model: ModelProto) -> dict[str, dict[str, np.ndarray]]:
    """``create_weight_matching``'s pairs (float vs dequantized weight), dequantized without wrap-around."""
    float_inits = {init.name: init for init in float_model.graph.initializer}
    qdq_inits = {init.name: init for init in qdq_model.graph.initializer}
    matched: dict[str, dict[str, np.ndarray]] = {}
    for node in qdq_model.graph.node:
        if node.op_type != DEQUANTIZE or node.input[0] not in qdq_inits:
            continue
        quantized = qdq_inits[node.input[0]]
        name = node.input[0].removesuffix(QUANTIZED_WEIGHT_SUFFIX)
        if quantized.data_type == TensorProto.INT32 or name not in float_inits or node.input[1] not in qdq_inits:
            continue  # int32 = bias, quantized with the input's scale; its error is the input's
        values = numpy_helper.to_array(quantized).astype(np.int64)
        scale = numpy_helper.to_array(qdq_inits[node.input[1]]).astype(np.float64)
        has_zp = len(node.input) > 2 and node.input[2] in qdq_inits
        zero_point = numpy_helper.to_array(qdq_inits[node.input[2]]).astype(np.int64) if has_zp \
            else np.zeros(scale.shape, dtype=np.int64)
        if scale.ndim > 1 or zero_point.shape != scale.shape:
            log.warning("weight %s: blocked quantization is not compared", name)
            continue
        if scale.size > 1:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [1] * values.ndim
            shape[axis] = scale.size
            scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
        matched[name] = {"float": numpy_helper.to_array(float_inits[name]),
                         "dequantized": np.asarray((values - zero_point) * scale)}   # 0-d weights stay arrays
    return matched


def measure(float_model: Path, qdq_model: Path, calibration: Feeds) -> Measurements:
    """Run both models on ``calibration`` and return the errors of every tensor the rankers need."""
    float_proto, qdq_proto = _load(float_model, "float"), _load(qdq_model, "QDQ")
    if count_qdq_nodes(qdq_proto) == 0:
        raise ModelError(f"{qdq_model} has no QuantizeLinear/DequantizeLinear nodes; "
                         "pass the QDQ model quantize_static wrote", step=STEP)
    inputs = graph_inputs(float_proto)
    _check_feeds(calibration, inputs)
    nodes = find_quantized_nodes(float_proto, qdq_proto)
    if not nodes:
        raise ModelError(f"no node of {qdq_model} is a quantized node of {float_model} "
                         "(node names must match)", step=STEP)
    with tempfile.TemporaryDirectory(prefix="qfarm-sensitivity-") as tmp:
        float_acts = _collect(float_proto, Path(tmp), "float", calibration)
        qdq_acts = _collect(qdq_proto, Path(tmp), "qdq", calibration)
    matching = {name: pair for name, pair in create_activation_matching(qdq_acts, float_acts).items()
                if "float" in pair}
    _clamp_folded(matching, folded_tensors(float_proto, qdq_proto), qdq_proto)
    sqnr, error = compute_activation_error(matching, sqnr_db), compute_activation_error(matching, mse)
    tensors = {name: TensorError(sqnr[name]["xmodel_err"], sqnr[name]["qdq_err"], error[name]["xmodel_err"])
               for name in matching}
    needed = {t for node in nodes for t in node.outputs + node.inputs}
    for name in sorted(needed - tensors.keys()):
        if name in float_acts and name in qdq_acts:  # consumed or produced without a QDQ pair of its own
            tensors[name] = TensorError(sqnr_db(float_acts[name], qdq_acts[name]), math.inf,
                                        mse(float_acts[name], qdq_acts[name]))
    measured = []
    for node in nodes:
        outputs = tuple(t for t in node.outputs if t in tensors)
        if outputs:
            measured.append(QuantizedNode(node.name, node.op_type, outputs, node.inputs, node.weights))
        else:
            log.warning("node %s: none of its outputs %s could be measured; left out", node.name, node.outputs)
    if not measured:
        raise ModelError(f"no quantized node of {qdq_model} has an output that could be measured", step=STEP)
    weights = compute_weight_error(weight_matching(float_proto, qdq_proto), sqnr_db)
    return Measurements(tuple(measured), MappingProxyType({t: tensors[t] for t in needed if t in tensors}),
                        MappingProxyType(weights), inputs)


def worst_output(node: QuantizedNode, tensors: Mapping[str, TensorError]) -> str:
    """The output with the lowest cross-model SQNR (nan counts as lowest); the node's only output usually."""
    def key(name: str) -> tuple[float, str]:
        value = tensors[name].xmodel_sqnr_db
        return (-math.inf if math.isnan(value) else value, name)
    return min(node.outputs, key=key)
