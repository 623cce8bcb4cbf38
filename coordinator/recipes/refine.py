"""Post-quantization refinement: the recipes that change only the integers of a QDQ model
onnxruntime already built (learned rounding, then bias correction), sharing one statistics pass.

Because scales, zero points and the graph stay as built, the refined model runs on exactly the
same fused int8 kernels as the plain one: on a device where the plain recipe is fast, the
refined one is as fast (measured, notes/recipes.md), which is why these are tried before
keeping layers in float or widening activations."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import onnx

from shared.errors import InvalidArgument, ModelError
from shared.feeds import BATCHED, Feeds, sample_feeds

from .adaround import apply_adaround
from .bias_correction import apply_bias_correction, correctable
from .layer_stats import FeedList, collect_layer_stats
from .qdq_layers import quantized_layers

_STEP = "recipe/refine"
_NOT_QDQ = ("ConvInteger", "MatMulInteger", "DynamicQuantizeLinear")     # QOperator / dynamic models


@dataclass(frozen=True)
class RefineReport:
    layers: int
    learned: dict[str, tuple[float, float]] = field(default_factory=dict)   # node -> (nearest, learned) loss
    skipped: dict[str, str] = field(default_factory=dict)
    bias_corrected: int = 0
    cpu_seconds: float = 0.0


def refine_quantized(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, feeds: FeedList, *,
                     adaround: bool = False, bias_correction: bool = False, seed: int = 0,
                     threads: int = 1, **adaround_options) -> tuple[onnx.ModelProto, RefineReport]:
    """A copy of `qdq_model` with learned rounding and/or corrected biases. Bias correction
    runs after learned rounding, on the integers it chose, from the same statistics."""
    if not adaround and not bias_correction:
        raise InvalidArgument("refine_quantized needs adaround and/or bias_correction", step=_STEP)
    started = time.process_time()
    layers = quantized_layers(float_model, qdq_model)
    if not layers and any(n.op_type.startswith("QLinear") or n.op_type in _NOT_QDQ for n in qdq_model.graph.node):
        raise ModelError("the quantized model has no integer Conv/Gemm/MatMul weights to refine "
                         "(QDQ format with static quantization is needed)", step=_STEP)
    if not layers:          # a QDQ model whose every weight layer is kept in float: nothing to refine
        return qdq_model, RefineReport(0, cpu_seconds=time.process_time() - started)
    stats = collect_layer_stats(float_model, qdq_model, layers, feeds, gram=adaround, seed=seed, threads=threads)
    out, learned, skipped = qdq_model, {}, {}
    if adaround:
        out, report = apply_adaround(out, layers, stats, **adaround_options)
        learned, skipped = report.layers, report.skipped
    corrected = 0
    if bias_correction:
        out = apply_bias_correction(out, layers, stats)
        corrected = len(correctable(layers))
    return out, RefineReport(len(layers), learned, skipped, corrected, time.process_time() - started)


def calibration_feeds(calibration: Feeds, layout: str = BATCHED) -> list[dict[str, np.ndarray]]:
    """One feed per calibration sample ({input: (1, ...)} for every input, or one whole feed), as
    the statistics pass consumes them."""
    return sample_feeds(calibration, layout, what="calibration data")
