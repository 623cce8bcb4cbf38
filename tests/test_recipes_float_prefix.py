"""Float prefix: which layers it keeps float, that they stay float in onnxruntime, and why a
layer excluded in the middle of a QDQ model does not."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from coordinator.data import Preprocess, list_images, load_batch, split
from coordinator.prepare import prepare_model
from coordinator.quantize import build_candidate, spec_for
from coordinator.recipes.float_islands import has_float_weights, runtime_graph
from coordinator.recipes.float_prefix import input_prefix
from shared.errors import InvalidArgument
from shared.settings import QuantSettings
from tests.models import make_classifier

FAST = QuantSettings(reduce_range=False)


def test_prefix_counts_compute_layers_from_the_input(tmp_path):
    model = onnx.load(str(make_classifier(tmp_path / "m.onnx")))
    assert input_prefix(model, 1) == ["conv0"]
    assert input_prefix(model, 2) == ["conv0", "conv1"]
    assert input_prefix(model, 9) == ["conv0", "conv1", "conv2", "fc"]      # fewer when the model ends
    nhwc = onnx.load(str(make_classifier(tmp_path / "n.onnx", layout="NHWC")))
    assert input_prefix(nhwc, 1) == ["conv0"]                                # through the Transpose
    with pytest.raises(InvalidArgument, match="'2'"):
        input_prefix(model, "2")


@pytest.fixture()
def prepared(tmp_path, images_dir):
    prep = prepare_model(make_classifier(tmp_path / "m.onnx"), tmp_path / "prep")
    return prep, {"input": load_batch(split(list_images(images_dir), 8, 8, 0)[0], Preprocess(input_size=32))}


def test_prefix_layers_stay_float_where_onnxruntime_runs_them(prepared, tmp_path):
    prep, calibration = prepared
    settings = FAST.replace(recipe={"float_prefix": "2"})
    built = build_candidate(prep, spec_for(prep, settings, ()), tmp_path / "c", calibration, tmp_path / "k")
    assert built.id != spec_for(prep, FAST, ()).id
    graph = runtime_graph(built.path)
    assert has_float_weights(graph, "conv0") and has_float_weights(graph, "conv1")
    assert not has_float_weights(graph, "conv2")


def test_onnxruntime_requantizes_a_float_layer_between_qdq_nodes(prepared, tmp_path):
    """Why float islands are pinned (coordinator/recipes/float_islands.py): excluding conv1 alone,
    as the quantizer leaves it (float_islands=plain), gives DQ -> Conv(float) -> Q, and
    onnxruntime's WeightBiasQuantization quantizes its weights again at load time (1.32, CPU EP,
    ORT_ENABLE_BASIC and up). If this starts failing, onnxruntime changed and mid-network float
    layers may be float again without pinning: re-measure bench/float_islands.py."""
    prep, calibration = prepared
    plain = FAST.replace(recipe={"float_islands": "plain"})
    built = build_candidate(prep, spec_for(prep, plain, ("conv1",)), tmp_path / "c", calibration, tmp_path / "k")
    assert has_float_weights(onnx.load(str(built.path)), "conv1")          # float in the file
    unoptimized = runtime_graph(built.path, "disable")
    assert has_float_weights(unoptimized, "conv1")
    optimized = runtime_graph(built.path)
    assert not has_float_weights(optimized, "conv1")                       # not float where it runs
    x = calibration["input"][:2]
    outputs = []
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        session = ort.InferenceSession(str(built.path), options, providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {prep.input_name: x})[0])
    assert not np.array_equal(outputs[0], outputs[1])
