"""Which nodes of a float model the quantizer actually quantized, read off its QDQ model.

A ranking is only useful if it names nodes that ``nodes_to_exclude`` accepts and that were
really quantized, so the list is derived from the QDQ graph (a node counts when a
DequantizeLinear feeds it or a QuantizeLinear reads its output) and named as in the float
model (the quantizer keeps node names). When the quantizer folded a Relu/Clip into the node
before it (it deletes the activation and lets the producer write the activation's output
tensor), the entry names the surviving producer (e.g. the Conv) and its tensor is the
activation's output, because that is the tensor that carries the quantization error.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, TensorProto, numpy_helper

QUANTIZE = "QuantizeLinear"
DEQUANTIZE = "DequantizeLinear"
QDQ_OPS = frozenset((QUANTIZE, DEQUANTIZE))
QUANT_INPUT_SUFFIX = "_QuantizeLinear_Input"  # onnxruntime's name for a graph output's pre-QDQ value
QUANTIZED_WEIGHT_SUFFIX = "_quantized"  # onnxruntime's name for a quantized initializer


@dataclass(frozen=True)
class QuantizedNode:
    """One node of the float model that the QDQ model quantized; tensors use float-model names."""

    name: str
    op_type: str
    outputs: tuple[str, ...]  # activation tensors it produces in the QDQ model
    inputs: tuple[str, ...]  # activation tensors it consumes (weights and constants left out)
    weights: tuple[str, ...]  # float initializers it consumes through a DequantizeLinear (no int32 biases)


def count_qdq_nodes(model: ModelProto) -> int:
    return sum(1 for node in model.graph.node if node.op_type in QDQ_OPS)


def graph_inputs(model: ModelProto) -> frozenset[str]:
    """The inputs a caller must feed (initializers listed as inputs are not fed)."""
    initializers = {init.name for init in model.graph.initializer}
    return frozenset(i.name for i in model.graph.input if i.name not in initializers)


def _activation_name(tensor: str) -> str:
    return tensor[: -len(QUANT_INPUT_SUFFIX)] if tensor.endswith(QUANT_INPUT_SUFFIX) else tensor


def find_quantized_nodes(float_model: ModelProto, qdq_model: ModelProto) -> tuple[QuantizedNode, ...]:
    """Quantized nodes in graph order; a node whose outputs do not exist in the float model is skipped."""
    float_nodes = {node.name: node for node in float_model.graph.node if node.name}
    float_tensors = {out for node in float_model.graph.node for out in node.output} | graph_inputs(float_model)
    producer = {out: node for node in qdq_model.graph.node for out in node.output}
    consumers: dict[str, list] = defaultdict(list)
    for node in qdq_model.graph.node:
        for name in node.input:
            consumers[name].append(node)
    initializers = {init.name: init for init in qdq_model.graph.initializer}

    def source(tensor: str) -> str:
        """Walk back through QuantizeLinear/DequantizeLinear to the tensor that was quantized."""
        seen = set()
        while tensor in producer and producer[tensor].op_type in QDQ_OPS and tensor not in seen:
            seen.add(tensor)
            tensor = producer[tensor].input[0]
        return tensor

    found: dict[str, QuantizedNode] = {}
    for node in qdq_model.graph.node:
        if node.op_type in QDQ_OPS or node.name not in float_nodes or node.name in found:
            continue
        dq_fed = any(name in producer and producer[name].op_type == DEQUANTIZE for name in node.input)
        q_read = any(c.op_type == QUANTIZE for out in node.output for c in consumers[out])
        if not (dq_fed or q_read):
            continue
        inputs, weights = [], []
        for name in node.input:
            if not name:
                continue
            base = source(name)
            if base in initializers:
                if base != name and initializers[base].data_type != TensorProto.INT32:
                    weights.append(base.removesuffix(QUANTIZED_WEIGHT_SUFFIX))
                continue
            if _activation_name(base) in float_tensors:
                inputs.append(_activation_name(base))
        outputs = tuple(_activation_name(out) for out in node.output if _activation_name(out) in float_tensors)
        if outputs:
            found[node.name] = QuantizedNode(node.name, float_nodes[node.name].op_type, outputs,
                                             tuple(dict.fromkeys(inputs)), tuple(dict.fromkeys(weights)))
    return tuple(found.values())


def folded_tensors(float_model: ModelProto, qdq_model: ModelProto) -> frozenset[str]:
    """Float-model tensors whose producer the quantizer deleted (folded Relu/Clip).

    In the QDQ model such a tensor is written by the node before the activation, so its
    pre-QDQ value is the value *before* the activation; only the QDQ clamp applies it.
    """
    qdq_names = {node.name for node in qdq_model.graph.node}
    qdq_outputs = {out for node in qdq_model.graph.node for out in node.output}
    return frozenset(out for node in float_model.graph.node if node.name not in qdq_names
                     for out in node.output if out in qdq_outputs)


def representable_range(qdq_model: ModelProto, tensor: str) -> tuple[float, float] | None:
    """The real interval a per-tensor quantized activation can hold, or None if not per-tensor."""
    initializers = {init.name: init for init in qdq_model.graph.initializer}
    for node in qdq_model.graph.node:
        if node.op_type != QUANTIZE or node.input[0] not in (tensor, tensor + QUANT_INPUT_SUFFIX):
            continue
        if node.input[1] not in initializers:
            return None
        scale = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float64)
        if len(node.input) > 2 and node.input[2] in initializers:
            zero_point = numpy_helper.to_array(initializers[node.input[2]])
        else:
            zero_point = np.zeros((), dtype=np.uint8)  # ONNX default: uint8 with zero point 0
        if scale.size != 1 or zero_point.size != 1 or not np.issubdtype(zero_point.dtype, np.integer):
            return None
        info = np.iinfo(zero_point.dtype)
        zp = int(zero_point.reshape(()))
        return float((info.min - zp) * scale.reshape(())), float((info.max - zp) * scale.reshape(()))
    return None
