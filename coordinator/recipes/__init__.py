"""Quantization recipes: pure transforms and queries over ONNX ModelProtos that the tuner applies
around onnxruntime.quantization. None of them mutates its input model."""
from .adaround import adaround, learn_rounding
from .bias_correction import correct_biases
from .bias_guard import (
    BiasOverflow,
    bias_overflow_nodes,
    bias_scale_floor_overrides,
    find_bias_overflows,
    predict_bias_overflows,
)
from .cle import PairSpread, equalize, range_spreads
from .float_prefix import input_prefix
from .ladder import int16_overrides
from .presets import PRESETS, depthwise_convs, first_and_last, first_nodes, last_nodes, preset_nodes
from .refine import refine_quantized

__all__ = [
    "PRESETS",
    "BiasOverflow",
    "PairSpread",
    "adaround",
    "bias_overflow_nodes",
    "bias_scale_floor_overrides",
    "correct_biases",
    "depthwise_convs",
    "equalize",
    "find_bias_overflows",
    "first_and_last",
    "first_nodes",
    "input_prefix",
    "int16_overrides",
    "learn_rounding",
    "last_nodes",
    "predict_bias_overflows",
    "preset_nodes",
    "range_spreads",
    "refine_quantized",
]
