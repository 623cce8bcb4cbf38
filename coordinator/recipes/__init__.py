"""Quantization recipes: pure transforms and queries over ONNX ModelProtos that the tuner applies
around onnxruntime.quantization. None of them mutates its input model."""
from .bias_guard import (
    BiasOverflow,
    bias_overflow_nodes,
    bias_scale_floor_overrides,
    find_bias_overflows,
    predict_bias_overflows,
)
from .cle import PairSpread, equalize, range_spreads
from .ladder import int16_overrides
from .presets import PRESETS, depthwise_convs, first_and_last, first_nodes, last_nodes, preset_nodes

__all__ = [
    "PRESETS",
    "BiasOverflow",
    "PairSpread",
    "bias_overflow_nodes",
    "bias_scale_floor_overrides",
    "depthwise_convs",
    "equalize",
    "find_bias_overflows",
    "first_and_last",
    "first_nodes",
    "int16_overrides",
    "last_nodes",
    "predict_bias_overflows",
    "preset_nodes",
    "range_spreads",
]
