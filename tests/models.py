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


def make_dense_net(path: Path, *, channels: int = 8, opset: int = 12, seed: int = 0) -> Path:
    """A text-detector-shaped net with dynamic batch, H and W, like PP-OCR's DB detector: two stride-2
    Conv+Relu, the deeper map upsampled by Resize with scales [1, 1, 2, 2] and added to the shallower
    one (an FPN step), upsampled again to the input's size, a 1-channel Conv and Sigmoid: a
    probability map [N, 1, H, W]. onnxruntime's symbolic shape inference cannot prove
    floor(1.0 * N) == N at the Add ("Incomplete symbolic shape inference"), as on the real detector.
    Opset 12, so preparation upgrades the opset too. H and W must be multiples of 4."""
    rng = np.random.default_rng(seed)

    def conv(name: str, cin: int, cout: int, k: int) -> list:
        return [numpy_helper.from_array(rng.normal(0, np.sqrt(2.0 / (cin * k * k)), (cout, cin, k, k))
                                        .astype(np.float32), f"{name}.w"),
                numpy_helper.from_array(rng.normal(0, 0.05, cout).astype(np.float32), f"{name}.b")]

    inits = conv("c0", 3, channels, 3) + conv("c1", channels, channels, 3) + conv("head", channels, 1, 1) + [
        numpy_helper.from_array(np.array([], np.float32), "no_roi"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "x2"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half")]       # a 0-d weight, as in the detector
    nodes = [
        helper.make_node("Conv", ["x", "c0.w", "c0.b"], ["c0"], name="conv0", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "c1.w", "c1.b"], ["c1"], name="conv1", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Resize", ["r1", "no_roi", "x2"], ["up1"], name="up1", mode="nearest"),
        helper.make_node("Add", ["up1", "r0"], ["fpn"], name="fpn_add"),
        helper.make_node("Mul", ["fpn", "half"], ["fpn_half"], name="fpn_scale"),
        helper.make_node("Resize", ["fpn_half", "no_roi", "x2"], ["up0"], name="up0", mode="nearest"),
        helper.make_node("Conv", ["up0", "head.w", "head.b"], ["logit"], name="head"),
        helper.make_node("Sigmoid", ["logit"], ["prob"], name="sigmoid"),
    ]
    graph = helper.make_graph(
        nodes, "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1, "H", "W"])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_vad_net(path: Path, *, frame: int = 64, hidden: int = 16, opset: int = 15, seed: int = 0) -> Path:
    """An audio model shaped like Silero VAD: three inputs, `input` float [batch, sequence], `state`
    float [2, batch, hidden] (the batch on axis 1) and `sr` an int64 scalar (the sample rate, which
    scales the signal); a 1-D Conv "STFT" + Relu, a MatMul encoder mixed with the state, outputs
    `output` [batch, 1] (a Sigmoid speech probability) and `stateN` [2, batch, hidden]."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 1, 8)).astype(np.float32), "stft.w"),
             numpy_helper.from_array(rng.normal(0, 0.3, (8 * (frame // 4), hidden)).astype(np.float32), "enc.w"),
             numpy_helper.from_array(rng.normal(0, 0.3, (hidden, 1)).astype(np.float32), "out.w"),
             numpy_helper.from_array(np.array(16000.0, np.float32), "sr.ref"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([0, -1], np.int64), "flat")]
    nodes = [
        helper.make_node("Cast", ["sr"], ["sr.f"], name="sr_cast", to=TensorProto.FLOAT),
        helper.make_node("Div", ["sr.f", "sr.ref"], ["sr.scale"], name="sr_scale"),
        helper.make_node("Mul", ["input", "sr.scale"], ["scaled"], name="scale_input"),
        helper.make_node("Unsqueeze", ["scaled", "axis1"], ["x3"], name="to_channels"),
        helper.make_node("Conv", ["x3", "stft.w"], ["spec"], name="stft", strides=[4], pads=[2, 2]),
        helper.make_node("Relu", ["spec"], ["mag"], name="magnitude"),
        helper.make_node("Reshape", ["mag", "flat"], ["feat"], name="flatten"),
        helper.make_node("MatMul", ["feat", "enc.w"], ["enc"], name="encoder"),
        helper.make_node("Slice", ["state", "zero", "one", "zero"], ["h0"], name="state_h"),
        helper.make_node("Squeeze", ["h0", "zero"], ["h"], name="state_squeeze"),
        helper.make_node("Add", ["enc", "h"], ["mixed"], name="mix_state"),
        helper.make_node("Tanh", ["mixed"], ["hidden"], name="cell"),
        helper.make_node("MatMul", ["hidden", "out.w"], ["logit"], name="decoder"),
        helper.make_node("Sigmoid", ["logit"], ["output"], name="prob"),
        helper.make_node("Unsqueeze", ["hidden", "zero"], ["h_new"], name="state_out"),
        helper.make_node("Concat", ["h_new", "h_new"], ["stateN"], name="state_pack", axis=0),
    ]
    graph = helper.make_graph(
        nodes, "vad",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "sequence"]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", hidden]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "batch", hidden])], initializer=inits)
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


def make_calibration_bomb(path: Path, floats_per_image: int = 1 << 24, size: int = 32) -> Path:
    """A valid model of a few hundred bytes whose calibration needs gigabytes: ConstantOfShape
    expands to (N, floats_per_image) from the input's batch size (so it cannot be folded away when
    the model is prepared), and the Add over it makes both tensors ones the calibrator keeps, for
    every calibration image: 8 images x 2 x 64 MB = 1 GiB at the default size."""
    ints = lambda name, values: numpy_helper.from_array(np.array(values, np.int64), name)  # noqa: E731
    nodes = [helper.make_node("Shape", ["input"], ["dims"], name="shape"),
             helper.make_node("Slice", ["dims", "zero", "one", "zero"], ["batch"], name="batch"),
             helper.make_node("Concat", ["batch", "width"], ["big_shape"], name="big_shape", axis=0),
             helper.make_node("ConstantOfShape", ["big_shape"], ["big"], name="expand",
                              value=numpy_helper.from_array(np.array([1.0], np.float32))),
             helper.make_node("Add", ["big", "big"], ["twice"], name="twice"),
             helper.make_node("ReduceSum", ["twice", "one"], ["total"], name="total", keepdims=1),
             helper.make_node("Flatten", ["input"], ["flat"], name="flatten"),
             helper.make_node("Add", ["flat", "total"], ["logits"], name="logits")]
    graph = helper.make_graph(nodes, "bomb", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                           ["N", 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3 * size * size])],
                              initializer=[ints("zero", [0]), ints("one", [1]), ints("width", [floats_per_image])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
