"""Empirical bias correction (Nagel et al., "Data-Free Quantization", 2019; AIMET's empirical variant).

Rounding weights to a coarse grid (depthwise kernels have only 9 weights per channel) shifts
the MEAN of a layer's output: E[(W~ - W) x~] != 0 for the quantized model's input x~. The shift
is a per-channel constant, so the layer's bias absorbs it exactly: b' = b - (W~ - W) E[x~], with
E[x~] the mean input patch of the quantized model on the calibration data. Only the int32 bias
changes, so the graph (and onnxruntime's fused kernels) is untouched.

Each layer cancels only the shift its OWN weights cause. Cancelling the whole shift seen at its
output (W~ E[x~] - W E[x]) also cancels what upstream layers caused; once those are corrected
too, the same shift is removed twice, and over 50 layers that diverges (measured on
EfficientNet-Lite0). `passes` > 1 re-measures E[x~] after the upstream corrections."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx

from shared.errors import InvalidArgument

from ._graph import copy_model
from .layer_stats import FeedList, LayerStats, collect_layer_stats
from .qdq_layers import QuantizedLayer, quantized_layers, read_bias, read_ints, replace_initializer

log = logging.getLogger(__name__)

_STEP = "recipe/bias-correction"
_INT32 = np.iinfo(np.int32)


@dataclass(frozen=True)
class BiasCorrectionReport:
    """`mean_shift[k]`: the mean over corrected layers of |E[y~] - E[y]| (everything included)
    relative to the output's mean magnitude, measured before pass k (the last one after the
    final pass): `mean_shift[-1]` < `mean_shift[0]` means the corrections took effect."""

    corrected: tuple[str, ...]
    skipped: tuple[str, ...]     # weighted layers without a bias to absorb the shift
    mean_shift: tuple[float, ...]


def output_mean_shift(layer: QuantizedLayer, stats: LayerStats, ints: np.ndarray,
                      bias_now: np.ndarray | None = None) -> np.ndarray:
    """E[y~] - E[y] per output channel (flattened), everything included: the diagnostic."""
    expected_q = np.einsum("grd,gd->gr", layer.quantized(ints), stats.mean_quant)
    expected_f = np.einsum("grd,gd->gr", layer.weight, stats.mean_float)
    shift = layer.out_scale * (expected_q - expected_f).reshape(-1)
    if bias_now is not None and layer.bias is not None:
        shift = shift + (bias_now - layer.bias)
    return shift


def weight_shift(layer: QuantizedLayer, stats: LayerStats, ints: np.ndarray) -> np.ndarray:
    """(W~ - W) E[x~] per output channel (flattened): the shift the layer's own rounding causes."""
    error = layer.quantized(ints) - layer.weight
    return layer.out_scale * np.einsum("grd,gd->gr", error, stats.mean_quant).reshape(-1)


def corrected_bias(layer: QuantizedLayer, stats: LayerStats, ints: np.ndarray) -> np.ndarray:
    """The float bias (flattened) that cancels the mean shift of the layer's rounded weights `ints`."""
    if layer.bias is None:
        raise InvalidArgument(f"layer {layer.node!r} has no bias to correct", step=_STEP)
    bias = np.broadcast_to(layer.bias, (layer.weight.shape[0] * layer.weight.shape[1],))
    return bias - weight_shift(layer, stats, ints)


def write_bias(model: onnx.ModelProto, layer: QuantizedLayer, bias: np.ndarray) -> None:
    """Store float `bias` into `model` (in place) as the quantizer stored it: int32 on the bias
    scale, or float when the quantizer left it float."""
    if layer.bias_init is not None:
        ints = np.clip(np.rint(bias / layer.bias_scale), _INT32.min, _INT32.max).astype(np.int32)
        replace_initializer(model, layer.bias_init, ints)
    elif layer.bias_float_init is not None:
        replace_initializer(model, layer.bias_float_init, bias.astype(np.float32))


def correctable(layers: list[QuantizedLayer]) -> list[QuantizedLayer]:
    """Layers with a bias the quantized model stores (int32 or float) to absorb the shift."""
    return [layer for layer in layers
            if layer.bias is not None and (layer.bias_init is not None or layer.bias_float_init is not None)]


def apply_bias_correction(qdq_model: onnx.ModelProto, layers: list[QuantizedLayer],
                          stats: dict[str, LayerStats]) -> onnx.ModelProto:
    """A copy of `qdq_model` whose biases cancel the mean shift of the integer weights it holds
    (nearest or learned), for every correctable layer of `layers`."""
    out = copy_model(qdq_model)
    for layer in correctable(layers):
        write_bias(out, layer, corrected_bias(layer, stats[layer.node], read_ints(out, layer)))
    return out


def relative_mean_shift(model: onnx.ModelProto, layers: list[QuantizedLayer],
                        stats: dict[str, LayerStats]) -> float:
    """Mean over layers of |E[y~] - E[y]| / mean |E[y]|: how far output means have drifted."""
    values = []
    for layer in layers:
        s = stats[layer.node]
        shift = output_mean_shift(layer, s, read_ints(model, layer), read_bias(model, layer))
        scale = np.abs(layer.out_scale * np.einsum("grd,gd->gr", layer.weight, s.mean_float).reshape(-1)
                       + layer.bias).mean()
        values.append(float(np.abs(shift).mean() / max(scale, 1e-12)))
    return float(np.mean(values)) if values else 0.0


def correct_biases(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, feeds: FeedList, *,
                   passes: int = 1, threads: int = 1) -> tuple[onnx.ModelProto, BiasCorrectionReport]:
    """A copy of `qdq_model` whose biases cancel the mean output shift of every quantized
    layer's own rounding on `feeds`; `passes` re-measurements (measured on EfficientNet-Lite0: a
    second pass moves the drift from 1.840 % to 1.837 %, so one is the default). The report's
    drift has one more entry than passes: the last is measured after the final correction."""
    if not isinstance(passes, int) or isinstance(passes, bool) or passes < 1:
        raise InvalidArgument(f"passes={passes!r} must be a positive integer", step=_STEP)
    layers = quantized_layers(float_model, qdq_model)
    fixable = correctable(layers)
    out, drift = qdq_model, []
    for index in range(passes + 1):
        stats = collect_layer_stats(float_model, out, fixable, feeds, gram=False, threads=threads)
        drift.append(relative_mean_shift(out, fixable, stats))
        if index < passes:
            out = apply_bias_correction(out, fixable, stats)
    log.info("bias correction: %d layers, mean drift per pass %s", len(fixable), drift)
    return out, BiasCorrectionReport(tuple(layer.node for layer in fixable),
                                     tuple(layer.node for layer in layers if layer not in fixable), tuple(drift))
