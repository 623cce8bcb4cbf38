"""Tiny real ONNX image classifiers built in tests (seeded weights), so tests run in seconds."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make_classifier(path: Path, *, size: int = 32, classes: int = 1000, layout: str = "NCHW",
                    dynamic_batch: bool = True, weights_in_constants: bool = False, opset: int = 17,
                    channels: tuple[int, ...] = (8, 16, 16), outlier_layer: int | None = None,
                    seed: int = 0) -> Path:
    """Conv(+Relu) stack -> GlobalAveragePool -> Flatten -> Gemm. `outlier_layer` scales one output
    channel of that conv by 1000, making its activation very sensitive to per-tensor quantization."""
    rng = np.random.default_rng(seed)
    batch = "N" if dynamic_batch else 1
    shape = [batch, 3, size, size] if layout == "NCHW" else [batch, size, size, 3]
    nodes, inits = [], []
    x = "input"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["input"], ["input_nchw"], name="to_nchw", perm=[0, 3, 1, 2]))
        x = "input_nchw"
    cin = 3
    for i, cout in enumerate(channels):
        w = rng.normal(0, np.sqrt(2.0 / (cin * 9)), (cout, cin, 3, 3)).astype(np.float32)
        b = rng.normal(0, 0.05, cout).astype(np.float32)
        if outlier_layer == i:
            w[0] *= 1000.0
            b[0] *= 1000.0
        inits += [numpy_helper.from_array(w, f"conv{i}.w"), numpy_helper.from_array(b, f"conv{i}.b")]
        nodes.append(helper.make_node("Conv", [x, f"conv{i}.w", f"conv{i}.b"], [f"conv{i}"], name=f"conv{i}",
                                      pads=[1, 1, 1, 1], strides=[2 if i == 0 else 1] * 2))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"], name=f"relu{i}"))
        x, cin = f"relu{i}", cout
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"))
    fc_w = rng.normal(0, 0.5, (classes, cin)).astype(np.float32)
    fc_b = rng.normal(0, 0.01, classes).astype(np.float32)
    inits += [numpy_helper.from_array(fc_w, "fc.w"), numpy_helper.from_array(fc_b, "fc.b")]
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1))
    if weights_in_constants:
        const_nodes = [helper.make_node("Constant", [], [t.name], name=f"const_{t.name}", value=t) for t in inits]
        nodes, inits = const_nodes + nodes, []
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
