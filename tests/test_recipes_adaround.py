"""Learned rounding on a tiny real classifier: never worse than nearest on its own objective."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from coordinator.recipes.adaround import adaround, learn_rounding, row_losses
from coordinator.recipes.layer_stats import collect_layer_stats
from coordinator.recipes.qdq_layers import quantized_layers, read_ints
from shared.errors import InvalidArgument
from tests.models import make_classifier
from tests.recipe_support import feeds, quantize_u8s8


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = make_classifier(tmp_path_factory.mktemp("m") / "m.onnx", size=16, classes=10, channels=(8, 16))
    model = onnx.load(str(path))
    data = np.random.default_rng(0).normal(0, 1, (24, 3, 16, 16)).astype(np.float32)
    return model, quantize_u8s8(model, data), data


def test_layers_sit_on_onnxruntime_grid(tiny):
    model, qdq, _ = tiny
    layers = quantized_layers(model, qdq)
    assert [layer.node for layer in layers] == ["conv0", "conv1", "fc"]
    for layer in layers:    # our nearest rounding is exactly what onnxruntime stored
        np.testing.assert_array_equal(layer.nearest(), read_ints(qdq, layer))


def test_learned_rounding_is_never_worse_than_nearest_on_its_layer_objective(tiny):
    model, qdq, data = tiny
    layers = quantized_layers(model, qdq)
    stats = collect_layer_stats(model, qdq, layers, feeds(data), positions=48)
    improved = 0
    for layer in layers:
        s = stats[layer.node]
        if min(s.fold_samples) < layer.weight.shape[2]:
            continue                                           # fc: 12 vectors per fold, 16 weights per row
        result = learn_rounding(layer, s, iterations=150)
        nearest = layer.nearest()
        assert np.all(np.abs(result.ints - nearest) <= 1)      # floor or ceil, nothing else
        assert result.ints.min() >= layer.qmin and result.ints.max() <= layer.qmax
        for gram in (s.gram, s.fold_grams[1]):                 # all calibration data, and the held-out fold
            learned = row_losses(layer.weight, layer.quantized(result.ints), gram)
            assert np.all(learned <= row_losses(layer.weight, layer.quantized(nearest), gram) + 1e-12)
        improved += result.loss_learned < 0.99 * result.loss_nearest
    assert improved >= 1


def test_adaround_changes_only_weight_integers_and_skips_layers_without_data(tiny):
    model, qdq, data = tiny
    learned, report = adaround(model, qdq, feeds(data), iterations=100, positions=48)
    assert [n.op_type for n in learned.graph.node] == [n.op_type for n in qdq.graph.node]
    assert set(report.layers) == {"conv0", "conv1"} and "fc" in report.skipped
    layers = {layer.node: layer for layer in quantized_layers(model, qdq)}
    changed = {a.name for a, b in zip(qdq.graph.initializer, learned.graph.initializer) if a != b}
    assert changed and changed <= {layers["conv0"].weight_init, layers["conv1"].weight_init}


@pytest.mark.parametrize("option", [{"iterations": 0}, {"lr": float("nan")}, {"warmup": 2.0}, {"reg": -1.0}])
def test_bad_options_are_named(tiny, option):
    model, qdq, data = tiny
    layer = quantized_layers(model, qdq)[0]
    stats = collect_layer_stats(model, qdq, [layer], feeds(data[:4]), positions=8)
    with pytest.raises(InvalidArgument, match=next(iter(option))):
        learn_rounding(layer, stats[layer.node], **option)
