"""Small read-only graph helpers shared by the recipes: name lookups, edge maps and constant
values. Kept in one place so every recipe sees the graph the same way (and none mutates it)."""
from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from shared.errors import InvalidArgument, ModelError

log = logging.getLogger(__name__)

COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE})


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A deep copy, so recipes can edit freely without touching the caller's proto."""
    if not isinstance(model, onnx.ModelProto):
        raise InvalidArgument(f"expected an onnx.ModelProto, got {type(model).__name__}", step="recipe")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output if out}


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    result: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            if name:
                result.setdefault(name, []).append(node)
    return result


def initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {init.name: init for init in graph.initializer}


def opset_version(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise ModelError("model imports no default ONNX opset", step="recipe")


def graph_inputs(graph: onnx.GraphProto) -> list[str]:
    """Real inputs: graph inputs that are not also initializers (old exports list weights as inputs)."""
    inits = {init.name for init in graph.initializer}
    return [vi.name for vi in graph.input if vi.name not in inits]


def nodes_by_name(graph: onnx.GraphProto, names: Iterable[str], *, step: str) -> list[onnx.NodeProto]:
    """Look the names up; an unknown one raises InvalidArgument naming it."""
    index = {node.name: node for node in graph.node if node.name}
    result = []
    for name in names:
        if not isinstance(name, str):
            raise InvalidArgument(f"node name {name!r} is not text", step=step)
        if name not in index:
            raise InvalidArgument(f"no node named {name!r} in the model", step=step)
        result.append(index[name])
    return result


def require_name(node: onnx.NodeProto, *, step: str) -> str:
    if not node.name:
        raise ModelError(f"{node.op_type} node producing {list(node.output)} has no name; "
                         "name every node before selecting nodes", step=step)
    return node.name


def constant_value(model: onnx.ModelProto, name: str, *, _depth: int = 0) -> np.ndarray | None:
    """The value of a tensor that does not depend on any graph input: an initializer, a Constant
    output, or the output of a small constant subgraph (raw exports compute Pad pads that way).
    None when the tensor depends on an input or cannot be evaluated."""
    graph = model.graph
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    if _depth > 32:
        return None
    node = producers(graph).get(name)
    if node is None:
        return None
    if node.op_type == "Constant":
        return _constant_node_value(node)
    if not node.input or node.domain not in ("", "ai.onnx") or node.op_type.startswith("Random"):
        return None
    inputs = []
    for inp in node.input:
        if not inp:
            inputs.append(None)
            continue
        value = constant_value(model, inp, _depth=_depth + 1)
        if value is None:
            return None
        inputs.append(value)
    return _evaluate(node, inputs, opset_version(model))[list(node.output).index(name)]


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name in ("value_float", "value_int"):
            return np.array(onnx.helper.get_attribute_value(a))
        if a.name in ("value_floats", "value_ints"):
            return np.array(list(onnx.helper.get_attribute_value(a)))
    return None


def _evaluate(node: onnx.NodeProto, inputs: list, opset: int) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    names = [f"in{i}" if value is not None else "" for i, value in enumerate(inputs)]
    clone = onnx.NodeProto()
    clone.CopyFrom(node)
    del clone.input[:]
    clone.input.extend(names)
    graph = onnx.helper.make_graph(
        [clone], "fold",
        [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for n, v in zip(names, inputs) if v is not None],
        [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in clone.output])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    feeds = {n: v for n, v in zip(names, inputs) if v is not None}
    return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, feeds)]


def float_tensor_names(model: onnx.ModelProto) -> set[str]:
    """Names of activations whose (inferred) element type is floating point."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # onnx raises several unrelated types here
        raise ModelError(f"shape inference failed: {exc}", step="recipe") from exc
    graph = inferred.graph
    infos = list(graph.value_info) + list(graph.input) + list(graph.output)
    return {vi.name for vi in infos
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type in FLOAT_TYPES}
