"""The weighted layers of a QDQ model, paired with their float originals.

Weight-refining recipes (bias correction, learned rounding) edit a model onnxruntime already
quantized: they keep every scale and zero point and only change the integers, so the graph,
and with it onnxruntime's fused int8 kernels (and their speed), stays exactly as built. This
module finds, for each Conv / Gemm / MatMul of the float model, the integer weight and int32
bias initializers the quantizer wrote and the grid they live on, in one (out, in) layout."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from shared.errors import ModelError

from ._graph import attr, initializers, producers

_STEP = "recipe/qdq-layers"
WEIGHTED_OPS = frozenset({"Conv", "Gemm", "MatMul"})


@dataclass(frozen=True)
class ConvGeometry:
    """What im2col needs: 2-D kernels only (the recipes skip other ranks)."""

    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads: tuple[int, int, int, int]    # top, left, bottom, right
    group: int
    auto_pad: str = "NOTSET"


@dataclass(frozen=True)
class QuantizedLayer:
    """One weighted node: float weights and the integer grid onnxruntime put them on.

    `weight` is the float weight as an (out, in) matrix per group: shape (groups, out/groups, D),
    D = in/groups * kh * kw for a Conv, D = in for Gemm/MatMul. `scale`/`zero_point` broadcast
    to it. `input_float` / `input_quant` are the tensors feeding the node in each model."""

    node: str
    op_type: str
    input_float: str
    input_quant: str
    weight: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    qmin: int
    qmax: int
    weight_init: str            # the integer initializer in the QDQ model
    weight_dtype: np.dtype
    bias: np.ndarray | None      # float bias, (out,) or None
    bias_init: str | None        # int32 initializer in the QDQ model (None: bias left float or absent)
    bias_scale: np.ndarray | None
    bias_float_init: str | None  # float bias initializer in the QDQ model when the quantizer left it float
    out_scale: float             # y = out_scale * W x + bias (Gemm alpha)
    geometry: ConvGeometry | None
    weight_shape: tuple[int, ...]  # the initializer's own shape
    transposed: bool               # stored (in, out): MatMul, Gemm without transB

    def as_matrix(self, array: np.ndarray) -> np.ndarray:
        """An array of the initializer's shape in the (groups, out, D) layout."""
        return _as_matrix(np.asarray(array), self.op_type, self.weight.shape[0], self.transposed)

    def from_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """Back from the (groups, out, D) layout to the initializer's own shape."""
        if self.op_type == "Conv":
            return matrix.reshape(self.weight_shape)
        return matrix[0].T if self.transposed else matrix[0]

    def quantized(self, ints: np.ndarray) -> np.ndarray:
        """Dequantized weights for integers `ints` (same layout as `weight`)."""
        return (ints.astype(np.float64) - self.zero_point) * self.scale

    def nearest(self) -> np.ndarray:
        """The integers onnxruntime's round-to-nearest gives (what the model holds as built)."""
        return np.clip(np.rint(self.weight / self.scale) + self.zero_point, self.qmin, self.qmax)


def quantized_layers(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto) -> list[QuantizedLayer]:
    """Every weighted node of `float_model` whose weight `qdq_model` stores as integers through a
    DequantizeLinear, in graph order. Nodes left in float, weights computed at run time and
    non-2-D convolutions are skipped (nothing to refine)."""
    f_inits = initializers(float_model.graph)
    q_inits = initializers(qdq_model.graph)
    q_made_by = producers(qdq_model.graph)
    q_nodes = {node.name: node for node in qdq_model.graph.node if node.name}
    layers = []
    for fnode in float_model.graph.node:
        if fnode.op_type not in WEIGHTED_OPS or fnode.name not in q_nodes or len(fnode.input) < 2:
            continue
        qnode = q_nodes[fnode.name]
        if qnode.op_type != fnode.op_type or fnode.input[1] not in f_inits:
            continue
        dq = q_made_by.get(qnode.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in q_inits:
            continue
        layer = _layer(fnode, qnode, dq, f_inits, q_inits, q_made_by)
        if layer is not None:
            layers.append(layer)
    return layers


def _layer(fnode, qnode, dq, f_inits, q_inits, q_made_by) -> QuantizedLayer | None:
    w = numpy_helper.to_array(f_inits[fnode.input[1]]).astype(np.float64)
    ints = numpy_helper.to_array(q_inits[dq.input[0]])
    scale = numpy_helper.to_array(q_inits[dq.input[1]]).astype(np.float64)
    zp = (numpy_helper.to_array(q_inits[dq.input[2]]).astype(np.float64)
          if len(dq.input) > 2 and dq.input[2] in q_inits else np.zeros_like(scale))
    if ints.shape != w.shape or ints.dtype.kind not in "iu":
        return None
    info = np.iinfo(ints.dtype)
    axis = int(attr(dq, "axis", 1)) % w.ndim
    if scale.size > 1:  # per channel: make scale/zp broadcast against w
        shape = [1] * w.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    scale_full = np.broadcast_to(scale, w.shape)
    zp_full = np.broadcast_to(zp, w.shape)
    out_scale, beta, geometry, groups, transposed = 1.0, 1.0, None, 1, False
    if fnode.op_type == "Conv":
        if w.ndim != 4:
            return None
        geometry = _geometry(fnode, w)
        groups = geometry.group
    elif fnode.op_type == "Gemm":
        if int(attr(fnode, "transA", 0)) or w.ndim != 2:
            return None
        out_scale, beta = float(attr(fnode, "alpha", 1.0)), float(attr(fnode, "beta", 1.0))
        transposed = not int(attr(fnode, "transB", 0))
    else:  # MatMul x @ W, W (in, out)
        if w.ndim != 2:
            return None
        transposed = True

    def to_matrix(a: np.ndarray) -> np.ndarray:
        return _as_matrix(a, fnode.op_type, groups, transposed)
    bias, bias_init, bias_scale, bias_float = None, None, None, None
    if fnode.op_type in ("Conv", "Gemm") and len(fnode.input) > 2 and fnode.input[2] in f_inits \
            and beta == 1.0:  # a scaled Gemm bias is left alone (never seen in exported classifiers)
        bias = numpy_helper.to_array(f_inits[fnode.input[2]]).astype(np.float64).reshape(-1)
        bdq = q_made_by.get(qnode.input[2])
        if bdq is not None and bdq.op_type == "DequantizeLinear" and bdq.input[0] in q_inits:
            bias_init = bdq.input[0]
            bias_scale = numpy_helper.to_array(q_inits[bdq.input[1]]).astype(np.float64).reshape(-1)
        elif qnode.input[2] in q_inits:
            bias_float = qnode.input[2]
    matrix = to_matrix(w)
    if bias is not None and bias.size not in (1, matrix.shape[0] * matrix.shape[1]):
        return None
    return QuantizedLayer(
        node=fnode.name, op_type=fnode.op_type, input_float=fnode.input[0], input_quant=qnode.input[0],
        weight=matrix, scale=to_matrix(scale_full).copy(), zero_point=to_matrix(zp_full).copy(),
        qmin=int(info.min), qmax=int(info.max), weight_init=dq.input[0], weight_dtype=ints.dtype,
        bias=bias, bias_init=bias_init, bias_scale=bias_scale, bias_float_init=bias_float,
        out_scale=out_scale, geometry=geometry, weight_shape=tuple(w.shape), transposed=transposed)


def _as_matrix(a: np.ndarray, op_type: str, groups: int, transposed: bool) -> np.ndarray:
    if op_type == "Conv":
        return a.reshape(groups, a.shape[0] // groups, -1)
    return a.T[None] if transposed else a[None]


def read_ints(model: onnx.ModelProto, layer: QuantizedLayer) -> np.ndarray:
    """The integer weights `model` holds for `layer`, as float64 in the (groups, out, D) layout."""
    return layer.as_matrix(numpy_helper.to_array(_init(model, layer.weight_init)).astype(np.float64))


def read_bias(model: onnx.ModelProto, layer: QuantizedLayer) -> np.ndarray | None:
    """The bias `model` holds for `layer`, dequantized to float64 (None when it has none)."""
    if layer.bias_init is not None:
        return numpy_helper.to_array(_init(model, layer.bias_init)).astype(np.float64) * layer.bias_scale
    if layer.bias_float_init is not None:
        return numpy_helper.to_array(_init(model, layer.bias_float_init)).astype(np.float64)
    return None


def _init(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    for init in model.graph.initializer:
        if init.name == name:
            return init
    raise ModelError(f"no initializer named {name!r}", step=_STEP)


def _geometry(node, w: np.ndarray) -> ConvGeometry:
    kernel = tuple(int(k) for k in (attr(node, "kernel_shape") or w.shape[2:]))
    strides = tuple(int(s) for s in (attr(node, "strides") or (1, 1)))
    dilations = tuple(int(d) for d in (attr(node, "dilations") or (1, 1)))
    pads = tuple(int(p) for p in (attr(node, "pads") or (0, 0, 0, 0)))
    auto_pad = attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if len(kernel) != 2 or len(strides) != 2 or len(dilations) != 2 or len(pads) != 4:
        raise ModelError(f"Conv {node.name!r} is not 2-D", step=_STEP)
    return ConvGeometry(kernel, strides, dilations, pads, int(attr(node, "group", 1)), auto_pad)


def replace_initializer(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    """Overwrite initializer `name` of `model` in place with `value` (same name, value's dtype)."""
    _init(model, name).CopyFrom(numpy_helper.from_array(value, name))
