"""Recipes on tiny synthetic models built here, checked with real onnxruntime sessions and real
onnxruntime.quantization runs."""
from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from coordinator.recipes import (
    bias_overflow_nodes,
    bias_scale_floor_overrides,
    depthwise_convs,
    equalize,
    find_bias_overflows,
    first_and_last,
    int16_overrides,
    predict_bias_overflows,
    preset_nodes,
    range_spreads,
)
from shared.errors import InvalidArgument
from shared.settings import QuantSettings

ort.set_default_logger_severity(3)


# --- helpers -------------------------------------------------------------------------------

def _model(nodes, inits, inputs, outputs, opset=13):
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _run(model, feeds, outputs=None):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(outputs, feeds)


def _with_outputs(model, names):
    """A copy that also exposes intermediate tensors, to look at them."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    return out


class _Reader(CalibrationDataReader):
    def __init__(self, name, data):
        self._items = iter([{name: data[i:i + 1]} for i in range(len(data))])

    def get_next(self):
        return next(self._items, None)


def _quantize(model, data, **kwargs):
    kwargs.setdefault("activation_type", QuantType.QUInt8)
    private = onnx.ModelProto()  # quantize_static rewrites large initializers of the proto it gets
    private.CopyFrom(model)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "q.onnx")
        quantize_static(private, path, _Reader("x", data), **kwargs)
        return onnx.load(path)


# --- cross-layer equalisation --------------------------------------------------------------

def _cle_model(opset):
    """conv_a -> Relu -> conv_b -> dw conv_c -> Clip(0,6) -> Pad(0) -> conv_d (group 2), with
    badly uneven channel ranges in conv_a and conv_c."""
    rng = np.random.default_rng(1)
    wa = rng.normal(0, 0.5, (8, 3, 3, 3)) * np.logspace(-2, 1, 8)[:, None, None, None]
    wb = rng.normal(0, 0.5, (8, 8, 1, 1))
    wc = rng.normal(0, 0.5, (8, 1, 3, 3)) * np.logspace(1, -1.5, 8)[:, None, None, None]
    wd = rng.normal(0, 0.5, (6, 4, 3, 3))
    inits = {"wa": wa, "ba": rng.normal(0, 0.5, 8), "wb": wb, "bb": rng.normal(0, 0.5, 8),
             "wc": wc, "bc": rng.normal(0, 0.5, 8), "wd": wd, "bd": rng.normal(0, 0.5, 6)}
    inits = {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in inits.items()}
    nodes = [
        helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ra"], name="relu_a"),
        helper.make_node("Conv", ["ra", "wb", "bb"], ["b"], name="conv_b"),
        helper.make_node("Conv", ["b", "wc", "bc"], ["c"], name="conv_c", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Constant", [], ["lo"], name="lo", value=numpy_helper.from_array(np.float32(0))),
        helper.make_node("Constant", [], ["hi"], name="hi", value=numpy_helper.from_array(np.float32(6))),
        helper.make_node("Clip", ["c", "lo", "hi"], ["rc"], name="clip_c"),
        # pads computed by a small constant subgraph, as raw PyTorch exports do
        helper.make_node("Constant", [], ["pads32"], name="pads32",
                         value=numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int32))),
        helper.make_node("Cast", ["pads32"], ["pads"], name="pads_cast", to=TensorProto.INT64),
        helper.make_node("Pad", ["rc", "pads"], ["pc"], name="pad_c", mode="constant"),
        helper.make_node("Conv", ["pc", "wd", "bd"], ["y"], name="conv_d", group=2),
    ]
    return _model(nodes, inits, [_vi("x", [None, 3, 12, 12])], [_vi("y", [None, 6, 12, 12])], opset)


@pytest.mark.parametrize("opset", [11, 18])
def test_cle_keeps_fp32_outputs_and_evens_ranges(opset):
    model = _cle_model(opset)
    before = model.SerializeToString()
    x = np.random.default_rng(2).normal(0, 1, (4, 3, 12, 12)).astype(np.float32)
    reference, pre_clip = _run(_with_outputs(model, ["c"]), {"x": x})
    assert (pre_clip > 6).any(), "the test needs the ReLU6 clip to bite"

    plain, pairs = equalize(model)
    assert pairs == [("conv_a", "conv_b"), ("conv_b", "conv_c")]  # Clip(0,6) pair skipped
    np.testing.assert_allclose(_run(plain, {"x": x})[0], reference, rtol=1e-4, atol=1e-4)

    through, all_pairs = equalize(model, through_relu6=True)
    assert all_pairs == pairs + [("conv_c", "conv_d")]
    np.testing.assert_allclose(_run(through, {"x": x})[0], reference, rtol=1e-4, atol=1e-4)
    assert "Clip" not in {n.op_type for n in through.graph.node}  # became Relu -> per-channel Min

    assert model.SerializeToString() == before  # input untouched
    spread_before = range_spreads(model, all_pairs)
    spread_after = range_spreads(through, all_pairs)
    for old, new in zip(spread_before, spread_after):  # the worse side of every pair improves
        assert max(new.conv1_spread, new.conv2_spread) < max(old.conv1_spread, old.conv2_spread) / 4, (old, new)


def test_cle_naive_scaling_through_relu6_would_break_outputs():
    """Why Clip pairs need the rewrite: the same scales with the Clip left alone change outputs."""
    model = _cle_model(13)
    x = np.random.default_rng(3).normal(0, 1, (2, 3, 12, 12)).astype(np.float32)
    reference = _run(model, {"x": x})[0]
    through, _ = equalize(model, through_relu6=True)
    naive = onnx.ModelProto()
    naive.CopyFrom(model)
    naive_inits = {i.name: i for i in naive.graph.initializer}
    for name in ("wc", "bc", "wd"):
        naive_inits[name].CopyFrom(next(i for i in through.graph.initializer if i.name == name))
    assert np.abs(_run(naive, {"x": x})[0] - reference).max() > 1e-2


def test_cle_skips_shared_tensors_and_nonzero_pad():
    rng = np.random.default_rng(4)
    inits = {"w1": rng.normal(0, 1, (4, 3, 1, 1)).astype(np.float32),
             "w2": rng.normal(0, 1, (4, 4, 1, 1)).astype(np.float32),
             "w3": rng.normal(0, 1, (4, 4, 1, 1)).astype(np.float32),
             "w4": rng.normal(0, 1, (4, 4, 1, 1)).astype(np.float32),
             "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "one": np.array(1.0, np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"),
        helper.make_node("Conv", ["a", "w2"], ["b"], name="c2"),  # "a" also feeds the Add
        helper.make_node("Add", ["a", "a"], ["s"], name="add"),
        helper.make_node("Pad", ["b", "pads", "one"], ["p"], name="pad1", mode="constant"),
        helper.make_node("Conv", ["p", "w3"], ["c"], name="c3"),  # pad value 1 does not commute
        helper.make_node("Conv", ["c", "w4"], ["y"], name="c4"),
    ]
    model = _model(nodes, inits, [_vi("x", [1, 3, 4, 4])], [_vi("y", [1, 4, 6, 6]), _vi("s", [1, 4, 4, 4])])
    _, pairs = equalize(model)
    assert pairs == [("c3", "c4")]
    with pytest.raises(InvalidArgument, match="iterations=0"):
        equalize(model, iterations=0)


# --- int32 bias overflow guard -------------------------------------------------------------

def _bias_model():
    """conv1 -> Relu -> conv2, where conv2's channel 2 has ~1e-8 weights and bias 1.0."""
    rng = np.random.default_rng(5)
    w2 = rng.normal(0, 0.3, (4, 4, 3, 3))
    w2[2] = rng.normal(0, 1e-8, (4, 3, 3))
    b2 = rng.normal(0, 0.1, 4)
    b2[2] = 1.0
    inits = {"w1": rng.normal(0, 0.3, (4, 3, 3, 3)), "b1": rng.normal(0, 0.1, 4), "w2": w2, "b2": b2}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    model = _model(nodes, {k: v.astype(np.float32) for k, v in inits.items()},
                   [_vi("x", [None, 3, 8, 8])], [_vi("y", [None, 4, 8, 8])])
    data = np.random.default_rng(6).normal(0, 1, (8, 3, 8, 8)).astype(np.float32)
    reference, r1 = _run(_with_outputs(model, ["r1"]), {"x": data})
    ranges = {"x": (float(data.min()), float(data.max())), "r1": (float(r1.min()), float(r1.max()))}
    return model, data, ranges, reference


def test_bias_guard_finds_and_fixes_uint8_per_channel_overflow():
    model, data, ranges, reference = _bias_model()
    settings = dict(quant_format=QuantFormat.QDQ, weight_type=QuantType.QUInt8, per_channel=True)
    unguarded = _quantize(model, data, **settings)
    error = np.abs(_run(unguarded, {"x": data})[0] - reference).max(axis=(0, 2, 3))
    assert error[2] > 0.5  # bias 1.0 clipped to ~0

    found = find_bias_overflows(unguarded, model)
    assert [(f.node, f.bias, f.channels) for f in found] == [("conv2", "b2", (2,))]
    assert found[0].needed > 2**31

    excluded = bias_overflow_nodes(model, ranges, QuantSettings(reduce_range=False, weight_type="uint8"))
    assert excluded == ["conv2"]
    guarded = _quantize(model, data, nodes_to_exclude=excluded, **settings)
    assert find_bias_overflows(guarded, model) == []
    assert np.abs(_run(guarded, {"x": data})[0] - reference).max() < 0.2


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_bias_scale_floor_keeps_node_quantized_without_overflow(fmt):
    model, data, ranges, reference = _bias_model()
    extra = bias_scale_floor_overrides(model, ranges, QuantSettings(per_channel=True, reduce_range=False,
                                                                    weight_type="uint8", format=fmt))
    [(weight, channels)] = extra["TensorQuantOverrides"].items()
    assert weight == "w2" and len(channels) == 4 and channels[0]["axis"] == 0
    w2 = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w2"))
    for c in (0, 1, 3):  # healthy channels keep onnxruntime's own range
        assert (channels[c]["rmin"], channels[c]["rmax"]) == pytest.approx((w2[c].min(), w2[c].max()))
    assert channels[2]["rmax"] > 10 * np.abs(w2[2]).max()  # the dead channel is widened
    quantized = _quantize(model, data, per_channel=True, weight_type=QuantType.QUInt8, extra_options=extra,
                          quant_format={"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}[fmt])
    assert find_bias_overflows(quantized, model) == []
    assert "conv2" in {n.name.removesuffix("_quant") for n in quantized.graph.node
                       if n.op_type in ("QLinearConv", "Conv")}
    error = np.abs(_run(quantized, {"x": data})[0] - reference).max(axis=(0, 2, 3))
    assert error[2] < 0.05  # the bias of the dead channel survives


@pytest.mark.parametrize("fmt,weight,per_channel,adjust,expect", [
    ("qdq", "int8", True, False, ["conv2"]),  # QDQDisableWeightAdjustForInt32Bias
    ("qdq", "uint8", True, True, ["conv2"]),
    ("qoperator", "uint8", True, True, ["conv2"]),  # QLinearConv weights are int8 but not adjusted
    ("qdq", "int8", True, True, []),  # onnxruntime enlarges the weight scale itself
    ("qoperator", "int8", True, True, []),
    ("qdq", "uint8", False, True, []),  # per-tensor scale is set by the large channels
])
def test_bias_guard_prediction_matches_onnxruntime(fmt, weight, per_channel, adjust, expect):
    model, data, ranges, _ = _bias_model()
    predicted = bias_overflow_nodes(model, ranges, QuantSettings(per_channel=per_channel, reduce_range=False,
                                                                 weight_type=weight, format=fmt), weight_adjust=adjust)
    quantized = _quantize(model, data, per_channel=per_channel,
                          extra_options={"QDQDisableWeightAdjustForInt32Bias": not adjust},
                          quant_format={"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}[fmt],
                          weight_type={"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[weight])
    observed = [f.node for f in find_bias_overflows(quantized, model)]
    assert predicted == observed == expect
    if weight == "int8" and adjust:  # would overflow, but onnxruntime repairs it
        [item] = predict_bias_overflows(model, ranges, QuantSettings(reduce_range=False, weight_type=weight,
                                                                     format=fmt))
        assert item.fixed_by_ort and item.channels == (2,)


def test_bias_guard_dynamic_and_bad_arguments():
    model, _, ranges, _ = _bias_model()
    uint8 = QuantSettings(reduce_range=False, weight_type="uint8")
    assert bias_overflow_nodes(model, ranges, uint8.replace(mode="dynamic")) == []
    with pytest.raises(InvalidArgument, match="'r1'"):
        bias_overflow_nodes(model, {"x": ranges["x"]}, uint8)
    with pytest.raises(InvalidArgument, match="'fp8'"):
        bias_overflow_nodes(model, ranges, uint8.replace(weight_type="fp8"))


# --- presets -------------------------------------------------------------------------------

def _classifier(final="gemm", softmax=True):
    """stem -> Relu -> dw -> pw -> GAP -> Flatten -> Gemm/MatMul -> Softmax (or Identity)."""
    rng = np.random.default_rng(7)
    inits = {"ws": rng.normal(0, 1, (8, 3, 3, 3)), "wd": rng.normal(0, 1, (8, 1, 3, 3)),
             "wp": rng.normal(0, 1, (16, 8, 1, 1)), "wf": rng.normal(0, 1, (5, 16)),
             "wm": rng.normal(0, 1, (16, 5)), "bf": rng.normal(0, 1, 5)}
    nodes = [helper.make_node("Conv", ["x", "ws"], ["s"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["s"], ["rs"], name="relu"),
             helper.make_node("Conv", ["rs", "wd"], ["d"], name="dw", group=8, pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["d", "wp"], ["p"], name="pw"),
             helper.make_node("GlobalAveragePool", ["p"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat")]
    if final == "gemm":
        nodes.append(helper.make_node("Gemm", ["f", "wf", "bf"], ["l"], name="fc", transB=1))
    else:
        nodes += [helper.make_node("MatMul", ["f", "wm"], ["mm"], name="fc"),
                  helper.make_node("Add", ["mm", "bf"], ["l"], name="bias")]
    nodes.append(helper.make_node("Softmax" if softmax else "Identity", ["l"], ["y"], name="head"))
    return _model(nodes, {k: v.astype(np.float32) for k, v in inits.items()},
                  [_vi("x", [None, 3, 8, 8])], [_vi("y", [None, 5])])


@pytest.mark.parametrize("final", ["gemm", "matmul"])
def test_presets_select_depthwise_first_and_last(final):
    model = _classifier(final)
    assert depthwise_convs(model) == ["dw"]
    assert first_and_last(model) == ["stem", "fc"]
    assert preset_nodes(model, ["last", "depthwise"]) == ["dw", "fc"]
    assert preset_nodes(model, ["first"]) == ["stem"]
    assert preset_nodes(model, ["first-last", "first"]) == ["stem", "fc"]
    with pytest.raises(InvalidArgument, match="'middle'"):
        preset_nodes(model, ["first", "middle"])


# --- precision ladder ----------------------------------------------------------------------

def _zero_point_type(model, tensor_name):
    inits = {i.name: i for i in model.graph.initializer}
    return inits[tensor_name].data_type


def test_ladder_makes_node_activations_16_bit_and_lowers_error():
    model = _classifier("gemm", softmax=False)  # compare logits, not saturated probabilities
    data = np.random.default_rng(8).normal(0, 1, (8, 3, 8, 8)).astype(np.float32)
    data[:, :, 0, 0] = 40.0  # rare spikes stretch activation ranges: 8 bits get coarse
    reference = _run(model, {"x": data})[0]
    # reduce_range: 7-bit weights avoid the u8s8 int16 saturation of AVX2 kernels without VNNI,
    # which would otherwise swamp the activation error this test is about.
    settings = dict(quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True)
    plain = _quantize(model, data, **settings)
    wide = _quantize(model, data, extra_options=int16_overrides(model, ["pw"]), **settings)

    made_by = {o: n for n in wide.graph.node for o in n.output}
    users = {}
    for n in wide.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    pw = next(n for n in wide.graph.node if n.name == "pw")
    dq_in, dq_w = made_by[pw.input[0]], made_by[pw.input[1]]
    assert dq_in.op_type == "DequantizeLinear"
    assert _zero_point_type(wide, dq_in.input[2]) == TensorProto.UINT16
    assert _zero_point_type(wide, dq_w.input[2]) == TensorProto.INT8  # weights stay 8-bit
    # The 16-bit input is produced 16-bit by dw's output Q, not re-encoded from 8 bits.
    assert _zero_point_type(wide, made_by[dq_in.input[0]].input[2]) == TensorProto.UINT16
    [q_out] = users[pw.output[0]]
    assert q_out.op_type == "QuantizeLinear" and _zero_point_type(wide, q_out.input[2]) == TensorProto.UINT16

    default_options = ort.InferenceSession(wide.SerializeToString(), providers=["CPUExecutionProvider"])
    wide_out = _run(wide, {"x": data})[0]
    np.testing.assert_allclose(default_options.run(None, {"x": data})[0], wide_out, rtol=1e-4, atol=1e-3)
    plain_error = np.abs(_run(plain, {"x": data})[0] - reference).max()
    wide_error = np.abs(wide_out - reference).max()
    assert wide_error < 0.8 * plain_error, (wide_error, plain_error)


def test_ladder_override_structure_and_errors():
    model = _classifier("gemm")
    overrides = int16_overrides(model, ["dw"])["TensorQuantOverrides"]
    assert overrides["rs"] == [{"quant_type": QuantType.QUInt16}]  # Relu output read by dw alone
    assert overrides["d"] == [{"quant_type": QuantType.QUInt16,
                               "convert": {"quant_type": QuantType.QUInt8, "recv_nodes": {"pw"}}}]
    assert "wd" not in overrides
    # Flatten shares its input's parameters, so fc receives a 16-bit conversion of it.
    fc = int16_overrides(model, ["fc"], activation_type="int8")["TensorQuantOverrides"]
    assert fc["f"] == [{"quant_type": QuantType.QInt8,
                        "convert": {"quant_type": QuantType.QInt16, "recv_nodes": {"fc"}}}]
    with pytest.raises(InvalidArgument, match="'nope'"):
        int16_overrides(model, ["dw", "nope"])
    with pytest.raises(InvalidArgument, match="'uint16'"):
        int16_overrides(model, ["dw"], activation_type="uint16")
