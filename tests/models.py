"""Tiny real ONNX models built in tests (seeded weights), so tests run in seconds: image classifiers,
a two-input int64 token classifier and a dense (probability map) model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make_classifier(path: Path, *, size: int = 32, classes: int = 1000, layout: str = "NCHW",
                    dynamic_batch: bool = True, weights_in_constants: bool = False, opset: int = 17,
                    channels: tuple[int, ...] = (8, 16, 16), outlier_layer: int | None = None,
                    scalar_mul: float | None = None, seed: int = 0) -> Path:
    """Conv(+Relu) stack -> GlobalAveragePool -> Flatten -> Gemm. `outlier_layer` scales one output
    channel of that conv by 1000, making its activation very sensitive to per-tensor quantization.
    `scalar_mul` multiplies the last activation by a 0-d float initializer (a Mul by a scalar)."""
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
    if scalar_mul is not None:
        inits.append(numpy_helper.from_array(np.array(scalar_mul, np.float32), "scale"))
        nodes.append(helper.make_node("Mul", [x, "scale"], ["scaled"], name="scale_mul"))
        x = "scaled"
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


def make_token_classifier(path: Path, *, vocab: int = 50, seq: int = 6, hidden: int = 16, classes: int = 4,
                          seed: int = 0, dynamic_batch: bool = True) -> Path:
    """A tiny text-style model with two inputs of other dtypes than images: `input_ids` (int64 token
    ids, [N, seq]) and `attention_mask` (int64 0/1, [N, seq]). Embedding lookup, masked sum, two
    Gemms; outputs `logits` [N, classes] and `pooled` [N, hidden]."""
    rng = np.random.default_rng(seed)
    batch = "N" if dynamic_batch else 1
    inits = [
        numpy_helper.from_array(rng.normal(0, 1, (vocab, hidden)).astype(np.float32), "embedding"),
        numpy_helper.from_array(np.array([2], np.int64), "seq_axis"),
        numpy_helper.from_array(np.array([1], np.int64), "sum_axis"),
        numpy_helper.from_array(rng.normal(0, 0.3, (hidden, hidden)).astype(np.float32), "fc1.w"),
        numpy_helper.from_array(rng.normal(0, 0.05, hidden).astype(np.float32), "fc1.b"),
        numpy_helper.from_array(rng.normal(0, 0.5, (classes, hidden)).astype(np.float32), "fc2.w"),
        numpy_helper.from_array(rng.normal(0, 0.05, classes).astype(np.float32), "fc2.b"),
    ]
    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["emb"], name="embed"),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], name="mask_cast", to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "seq_axis"], ["mask_3d"], name="mask_unsqueeze"),
        helper.make_node("Mul", ["emb", "mask_3d"], ["masked"], name="mask_mul"),
        helper.make_node("ReduceSum", ["masked", "sum_axis"], ["pooled"], name="pool", keepdims=0),
        helper.make_node("Gemm", ["pooled", "fc1.w", "fc1.b"], ["h1"], name="fc1", transB=1),
        helper.make_node("Relu", ["h1"], ["h1r"], name="relu1"),
        helper.make_node("Gemm", ["h1r", "fc2.w", "fc2.b"], ["logits"], name="fc2", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tokens",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch, seq]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [batch, seq])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes]),
         helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [batch, hidden])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def token_samples(n: int, *, vocab: int = 50, seq: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """Feeds for make_token_classifier: random ids, masks with 2..seq ones per row."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, seq + 1, n)
    return {"input_ids": rng.integers(0, vocab, (n, seq)).astype(np.int64),
            "attention_mask": (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)}


def make_segmenter(path: Path, *, size: int = 16, seed: int = 0) -> Path:
    """A tiny dense model: Conv+Relu, then a 1-channel Sigmoid probability map [N, 1, size, size]."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "c0.w"),
             numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "c0.b"),
             numpy_helper.from_array(rng.normal(0, 0.5, (1, 8, 3, 3)).astype(np.float32), "c1.w"),
             numpy_helper.from_array(np.zeros(1, np.float32), "c1.b")]
    nodes = [helper.make_node("Conv", ["input", "c0.w", "c0.b"], ["c0"], name="c0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"], name="r0"),
             helper.make_node("Conv", ["r0", "c1.w", "c1.b"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c1"], ["prob"], name="prob")]
    graph = helper.make_graph(
        nodes, "seg", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1, size, size])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
