"""int32 bias overflow guard.

onnxruntime stores a Conv/Gemm bias as int32 with scale = input_scale * weight_scale (per
channel when weights are per channel). A channel whose weights are ~0 gets a tiny weight scale,
bias / scale exceeds the int32 range and onnxruntime silently clips it: that channel's bias is
lost. onnxruntime 1.32 repairs this itself by enlarging the weight scale
(`_adjust_weight_scale_for_int32_bias`), but only when the weight is quantized symmetrically
to a signed type with zero point 0:
  * QDQ: weight type int8/int16 (per-channel weights are always symmetric), and the extra
    option QDQDisableWeightAdjustForInt32Bias is not set;
  * QOperator: the *global* weight type is int8. Per-channel QLinearConv weights are always
    int8 there, so with weight_type=uint8 they overflow unrepaired.
Dynamic quantization keeps biases in float (ConvInteger/MatMulInteger + Add), so nothing
overflows. In practice the unrepaired case is weight_type=uint8, mostly per-channel (per-tensor
scales are set by the largest channel, so a single dead channel rarely matters).

`predict_bias_overflows` / `bias_overflow_nodes` predict from the float model and calibrated
ranges which nodes will overflow, so the tuner can keep them in float; `bias_scale_floor_overrides`
instead widens the weight range of just the offending channels (what onnxruntime does for int8)
so the nodes can stay quantized; `find_bias_overflows` checks a quantized model after the fact.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization.quant_utils import (
    compute_data_quant_params,
    compute_scale_zp,
    get_qmin_qmax_for_qType,
)

from shared.errors import InvalidArgument, ModelError
from shared.settings import QuantSettings

from ._graph import attr, initializers, producers

log = logging.getLogger(__name__)

_STEP = "recipe/bias-guard"
INT32_MAX = int(np.iinfo(np.int32).max)
INT32_MIN = int(np.iinfo(np.int32).min)
_QTYPES = {"uint8": onnx.TensorProto.UINT8, "int8": onnx.TensorProto.INT8,
           "uint16": onnx.TensorProto.UINT16, "int16": onnx.TensorProto.INT16}
_SIGNED = (onnx.TensorProto.INT8, onnx.TensorProto.INT16)
_QUANT_SUFFIX = "_quantized"  # onnxruntime's TENSOR_NAME_QUANT_SUFFIX
_QOP_NODE_SUFFIX = "_quant"  # onnxruntime names QLinearConv/QGemm "<float node>_quant"
_FLOOR_MARGIN = 1.01  # headroom over the smallest valid bias scale, for calibration drift


@dataclass(frozen=True)
class BiasOverflow:
    """One node whose int32 bias does not fit: `channels` are the bias elements that clip,
    `needed` the largest |bias / bias_scale| among them (None when the float bias is unknown),
    `fixed_by_ort` (predictions only) whether onnxruntime will enlarge the weight scale itself."""

    node: str
    bias: str
    channels: tuple[int, ...]
    needed: float | None
    fixed_by_ort: bool = False


# --- after the fact: inspect a quantized model ----------------------------------------------

def find_bias_overflows(quantized_model: onnx.ModelProto,
                        float_model: onnx.ModelProto | None = None) -> list[BiasOverflow]:
    """Bias elements that onnxruntime clipped to the int32 limits in a QDQ or QOperator model.
    Node names are the float model's (the "_quant" suffix of QLinearConv/QGemm is dropped).
    With `float_model`, `needed` says how far past the limit each bias was."""
    graph = quantized_model.graph
    inits = initializers(graph)
    made_by = producers(graph)
    float_biases = initializers(float_model.graph) if float_model is not None else {}
    found = []
    for node in graph.node:
        located = _int32_bias(node, inits, made_by)
        if located is None:
            continue
        node_name, bias_name, quantized, scale = located
        q = numpy_helper.to_array(inits[quantized]).astype(np.int64).reshape(-1)
        clipped = np.flatnonzero((q >= INT32_MAX) | (q <= INT32_MIN))
        if clipped.size == 0:
            continue
        needed = None
        if bias_name in float_biases and scale is not None:
            real = numpy_helper.to_array(float_biases[bias_name]).astype(np.float64).reshape(-1)
            ratio = np.abs(real) / np.broadcast_to(scale, real.shape)
            needed = float(ratio[clipped].max())
        found.append(BiasOverflow(node_name, bias_name, tuple(int(c) for c in clipped), needed))
    return found


def _int32_bias(node, inits, made_by):
    """(float node name, float bias name, int32 initializer, bias scale or None), or None."""
    if node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.input) > 2 and node.input[2]:
        dq = made_by.get(node.input[2])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            return None
        if inits[dq.input[0]].data_type != onnx.TensorProto.INT32:
            return None
        scale = _array(inits, dq.input[1])
        return node.name, node.input[2], dq.input[0], scale
    positions = {"QLinearConv": (8, 1, 4), "QGemm": (6, 1, 4)}.get(node.op_type)
    if positions is None:
        return None
    bias_index, x_scale, w_scale = positions
    if len(node.input) <= bias_index or node.input[bias_index] not in inits:
        return None
    quantized = node.input[bias_index]
    if inits[quantized].data_type != onnx.TensorProto.INT32:
        return None
    scales = [_array(inits, node.input[x_scale]), _array(inits, node.input[w_scale])]
    scale = None if any(s is None for s in scales) else scales[0] * scales[1]
    node_name = node.name.removesuffix(_QOP_NODE_SUFFIX)
    bias_name = quantized.removesuffix(_QUANT_SUFFIX)
    return node_name, bias_name, quantized, scale


def _array(inits, name) -> np.ndarray | None:
    return numpy_helper.to_array(inits[name]).astype(np.float64).reshape(-1) if name in inits else None


# --- before the fact: predict from the float model -----------------------------------------

def predict_bias_overflows(float_model: onnx.ModelProto,
                           activation_ranges: Mapping[str, Any],
                           settings: QuantSettings,
                           *,
                           weight_adjust: bool = True) -> list[BiasOverflow]:
    """Every Conv/ConvTranspose/Gemm whose int32 bias would overflow under these settings,
    computed with onnxruntime's own scale functions. `activation_ranges` maps a tensor name to
    its calibrated (rmin, rmax) (or an onnxruntime TensorData). `weight_adjust=False` models
    the QDQDisableWeightAdjustForInt32Bias extra option."""
    if not settings.is_static:
        return []  # dynamic quantization adds the bias in float
    per_channel, reduce_range = settings.per_channel, settings.reduce_range
    weight_type, quant_format = settings.weight_type, settings.format
    graph = float_model.graph
    inits = initializers(graph)
    act_qtype = _QTYPES[settings.activation_type]
    qmin, qmax = get_qmin_qmax_for_qType(act_qtype)
    found = []
    for node in graph.node:
        plan = _bias_plan(node, inits, quant_format)
        if plan is None:
            continue
        weight, bias, axis, beta = plan
        in_scale = _input_scale(activation_ranges, node, qmin, qmax)
        w_qtype, symmetric = _weight_quantization(node, weight_type, per_channel, quant_format)
        zero_points, w_scales = _weight_scales(weight, w_qtype, symmetric, reduce_range,
                                               axis if per_channel else None)
        bias_scale = in_scale * w_scales * beta
        needed = np.abs(bias.reshape(-1)) / np.broadcast_to(bias_scale, bias.reshape(-1).shape)
        over = np.flatnonzero(np.round(needed) > INT32_MAX)
        if over.size == 0:
            continue
        fixed = weight_adjust and not np.any(zero_points) and (
            w_qtype in _SIGNED if quant_format == "qdq" else weight_type == "int8")
        found.append(BiasOverflow(node.name, node.input[2], tuple(int(c) for c in over),
                                  float(needed[over].max()), fixed_by_ort=bool(fixed)))
    return found


def bias_scale_floor_overrides(float_model: onnx.ModelProto,
                               activation_ranges: Mapping[str, Any],
                               settings: QuantSettings,
                               *,
                               weight_adjust: bool = True) -> dict[str, Any]:
    """extra_options {"TensorQuantOverrides": ...} that give every weight of an unrepaired
    overflow node an rmin/rmax override wide enough that bias / (input_scale * weight_scale)
    fits int32 -- the same repair onnxruntime applies to int8 weights, for the cases it skips.
    Only the overflowing channels change (they are near-zero channels in practice, whose
    weights then round to 0); the others get their own min/max, i.e. what onnxruntime would
    have used. Works for QDQ and QOperator; merge with other overrides by tensor name."""
    predicted = predict_bias_overflows(float_model, activation_ranges, settings, weight_adjust=weight_adjust)
    inits = initializers(float_model.graph)
    nodes = {node.name: node for node in float_model.graph.node}
    qmin, qmax = get_qmin_qmax_for_qType(_QTYPES[settings.activation_type])
    per_channel, reduce_range, quant_format = settings.per_channel, settings.reduce_range, settings.format
    overrides: dict[str, list[dict[str, Any]]] = {}
    for item in predicted:
        if item.fixed_by_ort:
            continue
        node = nodes[item.node]
        weight, bias, axis, beta = _bias_plan(node, inits, quant_format)
        in_scale = _input_scale(activation_ranges, node, qmin, qmax)
        w_qtype, symmetric = _weight_quantization(node, settings.weight_type, per_channel, quant_format)
        bias = np.broadcast_to(np.abs(bias.reshape(-1)), (weight.shape[axis] if per_channel else bias.size,))
        required = _FLOOR_MARGIN * bias / (INT32_MAX * in_scale * beta)
        if per_channel:
            channels = [_widened(weight.take(c, axis).ravel(), required[c], w_qtype, symmetric, reduce_range)
                        for c in range(weight.shape[axis])]
            channels[0]["axis"] = axis
        else:
            channels = [_widened(weight.ravel(), float(required.max()), w_qtype, symmetric, reduce_range)]
        overrides[node.input[1]] = channels
    return {"TensorQuantOverrides": overrides}


def _widened(data: np.ndarray, required: float, qtype, symmetric: bool, reduce_range: bool) -> dict:
    """rmin/rmax for `data` whose onnxruntime scale is at least `required`."""
    rmin, rmax = min(float(data.min()), 0.0), max(float(data.max()), 0.0)
    for _ in range(64):
        _, scale = compute_data_quant_params(data, qtype, symmetric, reduce_range,
                                             rmin_override=rmin, rmax_override=rmax)
        if float(scale) >= required:
            return {"rmin": float(rmin), "rmax": float(rmax)}
        if rmin == 0.0 and rmax == 0.0:
            rmin, rmax = -required, required
        else:
            factor = max(required / max(float(scale), np.finfo(np.float32).tiny), 1.0) * 1.0001
            rmin, rmax = rmin * factor, rmax * factor
    raise ModelError(f"could not widen a weight range to reach scale {required:g}", step=_STEP)


def bias_overflow_nodes(float_model: onnx.ModelProto,
                        activation_ranges: Mapping[str, Any],
                        settings: QuantSettings,
                        *,
                        weight_adjust: bool = True) -> list[str]:
    """Names of the nodes whose int32 bias would overflow and that onnxruntime will not repair:
    keep them in float (nodes_to_exclude)."""
    predicted = predict_bias_overflows(float_model, activation_ranges, settings, weight_adjust=weight_adjust)
    names = [item.node for item in predicted if not item.fixed_by_ort]
    if names:
        log.info("int32 bias would overflow in %d node(s): %s", len(names), ", ".join(names))
    return names


def _bias_plan(node, inits, quant_format):
    """(weights, bias, per-channel axis, beta) for a node that gets an int32 bias, else None."""
    if len(node.input) < 3 or not node.input[2]:
        return None
    if node.op_type == "Conv" or (node.op_type == "ConvTranspose" and quant_format == "qdq"
                                  and int(attr(node, "group", 1)) == 1):
        axis, beta = (0 if node.op_type == "Conv" else 1), 1.0
    elif node.op_type == "Gemm":
        axis, beta = (0 if attr(node, "transB", 0) else 1), float(attr(node, "beta", 1.0))
    else:
        return None
    if node.input[1] not in inits or node.input[2] not in inits or beta == 0.0:
        return None
    weight = numpy_helper.to_array(inits[node.input[1]])
    bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
    if weight.dtype.kind != "f" or bias.size not in (1, weight.shape[axis]):
        return None
    return weight, bias, axis, beta


def _input_scale(activation_ranges, node, qmin, qmax) -> float:
    rmin, rmax = _range_of(activation_ranges, node)
    _, scale = compute_scale_zp(np.array(rmin, np.float32), np.array(rmax, np.float32), qmin, qmax)
    return float(scale)


def _range_of(activation_ranges, node) -> tuple[float, float]:
    name = node.input[0]
    if name not in activation_ranges:
        raise InvalidArgument(f"no calibrated range for tensor {name!r} (input of node {node.name!r})",
                              step=_STEP)
    value = activation_ranges[name]
    value = getattr(value, "range_value", value)
    rmin, rmax = (float(np.asarray(v).reshape(-1)[0]) for v in value)
    return rmin, rmax


def _weight_quantization(node, weight_type: str, per_channel: bool, quant_format: str):
    """(weight quant type, symmetric) exactly as onnxruntime 1.32 picks them by default."""
    qtype = _QTYPES[weight_type]
    if per_channel and quant_format == "qoperator" and node.op_type == "Conv":
        return onnx.TensorProto.INT8, True  # QLinearConv per-channel weights are always int8
    if per_channel and quant_format == "qdq":
        return qtype, True  # QDQ per-channel initializers are always symmetric
    return qtype, qtype in _SIGNED  # default WeightSymmetric: signed types only


def _weight_scales(weight, qtype, symmetric, reduce_range, axis):
    if axis is None:
        zero_point, scale = compute_data_quant_params(weight.ravel(), qtype, symmetric, reduce_range)
        return np.asarray(zero_point).reshape(1), np.asarray(scale, np.float64).reshape(1)
    zero_points, scales = [], []
    for index in range(weight.shape[axis]):
        zero_point, scale = compute_data_quant_params(weight.take(index, axis).ravel(), qtype,
                                                      symmetric, reduce_range)
        zero_points.append(zero_point)
        scales.append(scale)
    return np.asarray(zero_points).reshape(-1), np.asarray(scales, np.float64).reshape(-1)
