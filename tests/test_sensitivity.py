"""Sensitivity rankers on a tiny CNN built here, in which one layer (conv2) is made fragile on
purpose: one of its output channels is scaled up 64x, so per-tensor uint8 quantization of its
activation (and per-tensor int8 quantization of its weights) wipes out the other channels.
A twin model without the outlier is the control. Scoring rules are also checked on hand-made
measurements, where the expected order can be worked out by hand."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import ModelProto, TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from coordinator.sensitivity import METHODS, NodeSensitivity, rank, rank_quantune, rank_seqto
from coordinator.sensitivity.activations import Measurements, TensorError
from coordinator.sensitivity.graph import QuantizedNode
from coordinator.sensitivity.quantune import score_quantune
from coordinator.sensitivity.seqto import score_seqto
from shared.errors import InvalidArgument, ModelError, NotFound

CHANNELS = 32
OUTLIER_GAIN = 64.0
FRAGILE = "conv2"
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
SEQTO_KEYS = {"qdq_sqnr_db", "xmodel_sqnr_db", "qdq_norm", "xmodel_norm"}
QUANTUNE_KEYS = {"sqnr_db", "sqnr_delta_db", "mse", "mse_outlier", "weight_sqnr_db"}


def build_cnn(outlier_gain: float, seed: int = 0) -> ModelProto:
    """input -> Conv -> Relu -> Conv(fragile) -> Relu -> Conv -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)

    def conv_weight(out_ch: int, in_ch: int) -> np.ndarray:
        return rng.normal(0.0, math.sqrt(2.0 / (in_ch * 9)), (out_ch, in_ch, 3, 3))

    w1, b1 = conv_weight(CHANNELS, 3), rng.normal(0.0, 0.1, CHANNELS)
    w2, b2 = conv_weight(CHANNELS, CHANNELS), rng.normal(0.0, 0.1, CHANNELS)
    w2[0] *= outlier_gain
    b2[0] *= outlier_gain
    w3, b3 = conv_weight(CHANNELS, CHANNELS), rng.normal(0.0, 0.1, CHANNELS)
    wg, bg = rng.normal(0.0, 1.0 / math.sqrt(CHANNELS), (CHANNELS, 10)), rng.normal(0.0, 0.1, 10)
    arrays = {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "w3": w3, "b3": b3, "wg": wg, "bg": bg}
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c3"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wg", "bg"], ["logits"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(a.astype(np.float32), name) for name, a in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    return model


def calibration_feeds(count: int = 8, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"input": rng.normal(0.0, 1.0, (1, 3, 16, 16)).astype(np.float32)} for _ in range(count)]


class _Reader(CalibrationDataReader):
    def __init__(self, feeds):
        self._feeds = iter(feeds)

    def get_next(self):
        return next(self._feeds, None)


def make_models(directory: Path, outlier_gain: float, weight_type=QuantType.QInt8) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    float_path, qdq_path = directory / "model.onnx", directory / "model.qdq.onnx"
    onnx.save(build_cnn(outlier_gain), str(float_path))
    quantize_static(str(float_path), str(qdq_path), _Reader(calibration_feeds()), quant_format=QuantFormat.QDQ,
                    per_channel=False, activation_type=QuantType.QUInt8, weight_type=weight_type)
    for leftover in directory.glob("*-inferred.onnx"):  # quantize_static's own scratch, not ours
        leftover.unlink()
    return float_path, qdq_path


@pytest.fixture(scope="module")
def fragile(tmp_path_factory) -> tuple[Path, Path]:
    return make_models(tmp_path_factory.mktemp("fragile"), OUTLIER_GAIN)


@pytest.fixture(scope="module")
def rankings(fragile) -> dict[str, list[NodeSensitivity]]:
    return {method: rank(method, *fragile, calibration_feeds()) for method in METHODS}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_fragile_layer_ranks_first(rankings, method):
    top = rankings[method][0]
    assert top.node == FRAGILE, [(e.node, e.score) for e in rankings[method]]
    assert top.op_type == "Conv"
    assert top.tensor == "r2"  # the quantizer folded relu2 into conv2: the error lives on relu2's output


def test_control_without_outlier_does_not_single_out_conv2(tmp_path):
    control = rank_quantune(*make_models(tmp_path, 1.0), calibration_feeds())
    fragile_ranking = rank_quantune(*make_models(tmp_path / "fragile", OUTLIER_GAIN), calibration_feeds())

    def conv2_delta(ranking):
        return next(e for e in ranking if e.node == FRAGILE).details["sqnr_delta_db"]

    assert conv2_delta(fragile_ranking) > conv2_delta(control) + 8.0
    assert rank_seqto(*make_models(tmp_path / "again", 1.0), calibration_feeds())[0].node != FRAGILE


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_quantized_node_appears_once_with_its_float_name(fragile, rankings, method):
    float_model, qdq_model = (onnx.load(str(p)) for p in fragile)
    float_ops = {node.name: node.op_type for node in float_model.graph.node}
    quantized = {node.name for node in qdq_model.graph.node if node.op_type not in QDQ_OPS}
    names = [entry.node for entry in rankings[method]]
    assert sorted(names) == sorted(quantized) == ["conv1", "conv2", "conv3", "fc", "flatten", "gap"]
    assert all(float_ops[entry.node] == entry.op_type for entry in rankings[method])


@pytest.mark.parametrize("method,keys", [("seqto", SEQTO_KEYS), ("quantune", QUANTUNE_KEYS)])
def test_scores_are_finite_sorted_and_details_are_strict_json(rankings, method, keys):
    ranking = rankings[method]
    assert all(math.isfinite(entry.score) for entry in ranking)
    assert ranking == sorted(ranking, key=lambda e: (-e.score, e.node))
    for entry in ranking:
        assert set(entry.details) == keys
        json.dumps(dict(entry.details), allow_nan=False)


def test_seqto_does_not_count_a_folded_relu_as_quantization_error(rankings):
    by_node = {entry.node: entry for entry in rankings["seqto"]}
    # pre-QDQ conv1 output still holds the negatives relu1 would remove; comparing raw gives ~3 dB
    assert by_node["conv1"].details["qdq_sqnr_db"] > 30.0
    assert by_node["flatten"].details["qdq_sqnr_db"] is None  # requantized on the same grid: identical


def test_quantune_weight_sqnr_is_sane_for_uint8_weights(tmp_path):
    ranking = rank_quantune(*make_models(tmp_path, 1.0, weight_type=QuantType.QUInt8), calibration_feeds())
    weights = {e.node: e.details["weight_sqnr_db"] for e in ranking}
    assert weights["gap"] is None and weights["flatten"] is None
    # onnxruntime's create_weight_matching wraps around in uint8 here and reports about -10 dB
    assert all(weights[name] > 25.0 for name in ("conv1", "conv2", "conv3", "fc")), weights


def test_ranking_writes_nothing_next_to_the_models(fragile):
    directory = fragile[0].parent
    before = sorted(p.name for p in directory.iterdir())
    rank_seqto(*fragile, calibration_feeds(count=2))
    assert sorted(p.name for p in directory.iterdir()) == before


def _node(name: str, inputs: tuple[str, ...], weights: tuple[str, ...] = ()) -> QuantizedNode:
    return QuantizedNode(name, "Conv", (f"{name}_out",), inputs, weights)


def test_seqto_scores_inf_as_least_and_nan_as_most_damaged():
    errors = {"same": (math.inf, math.inf), "broken": (math.nan, math.nan), "mid": (20.0, 40.0), "bad": (10.0, 30.0)}
    nodes = tuple(_node(name, ("x",)) for name in errors)
    measured = Measurements(nodes, {f"{n}_out": TensorError(x, q, 0.0) for n, (x, q) in errors.items()},
                            {}, frozenset({"x"}))
    ranking = score_seqto(measured)
    assert [e.node for e in ranking] == ["bad", "broken", "mid", "same"]
    assert [e.score for e in ranking] == [1.0, 1.0, 0.0, 0.0]
    same = ranking[-1].details
    assert same["qdq_sqnr_db"] is None and same["xmodel_sqnr_db"] is None and same["qdq_norm"] == 1.0


def test_quantune_puts_mse_outliers_first_then_sqnr_loss():
    sqnr = [40.0, 38.0, 20.0, 19.0, 18.0, 17.0, 16.0, 15.0, 14.0, 13.0, 12.0, 11.0]
    mses = {3: 10.0, 7: 8.0}
    names = [f"n{i:02d}" for i in range(len(sqnr))]
    nodes = tuple(_node(name, ("x",) if i == 0 else (f"{names[i - 1]}_out",)) for i, name in enumerate(names))
    tensors = {f"{name}_out": TensorError(s, math.inf, mses.get(i, 0.01)) for i, (name, s) in
               enumerate(zip(names, sqnr))}
    ranking = score_quantune(Measurements(nodes, tensors, {}, frozenset({"x"})))
    assert [e.node for e in ranking] == ["n03", "n07", "n02", "n01", "n04", "n05", "n06", "n08", "n09",
                                         "n10", "n11", "n00"]
    assert [e.node for e in ranking if e.details["mse_outlier"]] == ["n03", "n07"]
    by_node = {e.node: e for e in ranking}
    assert by_node["n02"].details["sqnr_delta_db"] == pytest.approx(18.0)
    assert by_node["n00"].details["sqnr_delta_db"] == pytest.approx(0.0)  # model input: +inf clipped to 40


def test_quantune_blends_weight_damage_below_the_median():
    nodes = (_node("bad", ("x",), ("w_bad",)), _node("good", ("x",), ("w_good",)), _node("mid", ("x",), ("w_mid",)))
    tensors = {f"{n.name}_out": TensorError(30.0, math.inf, 1.0) for n in nodes}
    weights = {"w_bad": 10.0, "w_good": 40.0, "w_mid": 30.0}
    ranking = score_quantune(Measurements(nodes, tensors, weights, frozenset({"x"})))
    assert [(e.node, e.score) for e in ranking] == [("bad", pytest.approx(0.25 * 20.0)), ("good", 0.0), ("mid", 0.0)]
    assert ranking[0].details["weight_sqnr_db"] == 10.0


def test_empty_calibration_is_invalid(fragile):
    with pytest.raises(InvalidArgument, match="calibration is empty"):
        rank_seqto(*fragile, [])


def test_feed_with_wrong_input_name_is_invalid(fragile):
    with pytest.raises(InvalidArgument, match="'image'"):
        rank_quantune(*fragile, [{"image": np.zeros((1, 3, 16, 16), np.float32)}])


def test_model_without_qdq_nodes_is_a_model_error(fragile):
    float_model = fragile[0]
    with pytest.raises(ModelError, match=str(float_model)):
        rank_quantune(float_model, float_model, calibration_feeds(count=1))


def test_missing_model_is_not_found(fragile, tmp_path):
    with pytest.raises(NotFound, match="nowhere.onnx"):
        rank_seqto(tmp_path / "nowhere.onnx", fragile[1], calibration_feeds(count=1))


def test_unknown_method_is_named(fragile):
    with pytest.raises(InvalidArgument, match="'hawq'"):
        rank("hawq", *fragile, calibration_feeds(count=1))


def test_a_0d_float_initializer_is_ranked(tmp_path):
    """A Mul by a scalar initializer: its quantized weight dequantizes to a numpy scalar, which
    once crashed the ranking ("'numpy.float64' object is not iterable")."""
    from tests.models import make_classifier

    float_path, qdq_path = make_classifier(tmp_path / "scalar.onnx", size=16, scalar_mul=0.5), tmp_path / "q.onnx"
    feeds = [{"input": f["input"].repeat(2, axis=2).repeat(2, axis=3)[:, :, :16, :16]} for f in calibration_feeds()]
    quantize_static(str(float_path), str(qdq_path), _Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=False,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    for method in sorted(METHODS):
        ranked = rank(method, float_path, qdq_path, feeds)
        assert "scale_mul" in {r.node for r in ranked}, method
        assert all(math.isfinite(r.score) for r in ranked), method
