"""Helpers for the weight-recipe tests: tiny float models built in the test, quantized for real
with onnxruntime.quantization (QDQ, per-channel u8s8, the fast recipe), and run for real."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

ort.set_default_logger_severity(3)


class Reader(CalibrationDataReader):
    def __init__(self, feeds):
        self._feeds = iter(feeds)

    def get_next(self):
        return next(self._feeds, None)


def feeds(data: np.ndarray, name: str = "input") -> list[dict[str, np.ndarray]]:
    return [{name: data[i:i + 1]} for i in range(len(data))]


def quantize_u8s8(model: onnx.ModelProto, calibration: np.ndarray, name: str = "input") -> onnx.ModelProto:
    """QDQ, per-channel int8 weights, uint8 activations, reduce_range off."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        onnx.save(model, str(src))
        quantize_static(str(src), str(dst), Reader(feeds(calibration, name)), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=False, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, extra_options={"ActivationSymmetric": False})
        return onnx.load(str(dst))


def run(model: onnx.ModelProto, data: np.ndarray, outputs=None, name: str = "input",
        level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_DISABLE_ALL) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(outputs, {name: data})


def with_outputs(model: onnx.ModelProto, names) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    return out


def biased_depthwise(channels: int = 8, seed: int = 0) -> onnx.ModelProto:
    """Relu -> depthwise 3x3 conv -> 1x1 conv. Each depthwise kernel is one weight of 1.0 (it sets
    the per-channel scale to 1/127) and eight weights of 0.4/127, which round to 0: every kernel
    loses the same 3.2/127 of input mass, so on positive inputs the quantized output is biased
    low by a per-channel constant, the error bias correction exists for."""
    rng = np.random.default_rng(seed)
    dw = np.full((channels, 1, 3, 3), 0.4 / 127, np.float32)
    dw[:, 0, 1, 1] = 1.0
    pw = rng.normal(0, 0.5, (channels, channels, 1, 1)).astype(np.float32)
    inits = [numpy_helper.from_array(dw, "dw.w"), numpy_helper.from_array(np.zeros(channels, np.float32), "dw.b"),
             numpy_helper.from_array(pw, "pw.w"), numpy_helper.from_array(np.zeros(channels, np.float32), "pw.b")]
    nodes = [helper.make_node("Relu", ["input"], ["pos"], name="relu"),
             helper.make_node("Conv", ["pos", "dw.w", "dw.b"], ["dw"], name="dw", group=channels, pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["dw", "pw.w", "pw.b"], ["out"], name="pw")]
    graph = helper.make_graph(nodes, "biased", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                 ["N", channels, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", channels, 8, 8])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
