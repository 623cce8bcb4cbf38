"""Bias correction on a model built so that round-to-nearest biases the conv output."""
from __future__ import annotations

import numpy as np

from coordinator.recipes.bias_correction import correct_biases
from coordinator.recipes.qdq_layers import quantized_layers, read_bias
from tests.recipe_support import biased_depthwise, feeds, quantize_u8s8, run, with_outputs


def _data(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.2, 1.0, (16, 8, 8, 8)).astype(np.float32)


def _errors(reference, candidate, data, tensor):
    ref = run(with_outputs(reference, [tensor]), data, [tensor])[0]
    got = run(with_outputs(candidate, [tensor]), data, [tensor])[0]
    error = got - ref
    return np.abs(error.mean(axis=(0, 2, 3))).mean(), float(np.mean(error ** 2))


def test_bias_correction_cancels_the_mean_error_of_rounding_on_unseen_data():
    model = biased_depthwise()
    calibration, unseen = _data(1), _data(2)
    plain = quantize_u8s8(model, calibration)
    corrected, report = correct_biases(model, plain, feeds(calibration))

    for tensor in ("dw", "out"):      # the depthwise conv's own output (before its Q) and the model output
        mean_plain, mse_plain = _errors(model, plain, unseen, tensor)
        mean_fixed, mse_fixed = _errors(model, corrected, unseen, tensor)
        assert mean_plain > 1e-3                     # the model really is biased by rounding
        assert mean_fixed < 0.2 * mean_plain
        assert mse_fixed < mse_plain
    assert report.corrected == ("dw", "pw") and report.skipped == ()
    assert report.mean_shift[-1] < 0.2 * report.mean_shift[0]


def test_bias_correction_changes_only_int32_biases():
    model = biased_depthwise()
    calibration = _data(1)
    plain = quantize_u8s8(model, calibration)
    corrected, _ = correct_biases(model, plain, feeds(calibration))
    assert [n.op_type for n in corrected.graph.node] == [n.op_type for n in plain.graph.node]
    changed = {a.name for a, b in zip(plain.graph.initializer, corrected.graph.initializer) if a != b}
    layers = quantized_layers(model, plain)
    assert changed and changed <= {layer.bias_init for layer in layers}
    dw = next(layer for layer in layers if layer.node == "dw")
    assert np.all(read_bias(corrected, dw) > read_bias(plain, dw))   # the output was biased low
