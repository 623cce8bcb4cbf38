"""Precision ladder: give chosen nodes 16-bit activations while weights stay 8-bit (W8A16).

Built as onnxruntime `TensorQuantOverrides` (QDQ format only), following the rules of
onnxruntime's tensor_quant_overrides.py: a tensor has one produced type ("quant_type") and may
be re-quantized for some consumers ("convert" with "recv_nodes"). For the selected nodes S:

* an output of a node in S is produced 16-bit; consumers outside S get an 8-bit "convert";
* an input of a node in S produced outside S is also produced 16-bit (so the node really sees
  16-bit data, not 8-bit data re-encoded as 16), with an 8-bit "convert" for consumers outside
  S. Exception: when the producer shares its input's quantization parameters (Reshape, Pad,
  MaxPool, ... in onnxruntime's QDQ quantizer) its output type cannot be set on its own, so
  that edge keeps the default type and S receives a 16-bit "convert" of it, as onnxruntime's
  own MixedPrecisionTensorQuantOverridesFixer does.

Weights are initializers and get no override, so they keep the global weight type. Below opset
21 onnxruntime switches Q/DQ to the com.microsoft domain by itself when 16-bit types appear.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import onnx
from onnxruntime.quantization import QuantType
from onnxruntime.quantization.tensor_quant_overrides import TensorQuantOverridesHelper

from shared.errors import InvalidArgument, ModelError

from ._graph import consumers, float_tensor_names, initializers, nodes_by_name, producers, require_name

_STEP = "recipe/ladder"
_WIDE = {"uint8": (QuantType.QUInt8, QuantType.QUInt16), "int8": (QuantType.QInt8, QuantType.QInt16)}
# Ops whose QDQ output reuses the input's scale/zero point in onnxruntime 1.32.
_SHARED_PARAM_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "AveragePool",
                               "Slice", "TopK", "MaxPool", "Resize", "Pad", "Split", "Gather",
                               "GatherElements"})


def int16_overrides(model: onnx.ModelProto, nodes: Iterable[str], *,
                    activation_type: str = "uint8") -> dict[str, Any]:
    """extra_options for quantize_static that make the activation inputs and outputs of
    `nodes` 16-bit (QUInt16 for uint8 activations, QInt16 for int8). Unknown node ->
    InvalidArgument naming it."""
    if activation_type not in _WIDE:
        raise InvalidArgument(f"activation_type={activation_type!r} cannot be widened; "
                              f"expected one of {', '.join(_WIDE)}", step=_STEP)
    narrow, wide = _WIDE[activation_type]
    graph = model.graph
    selected = {node.name for node in nodes_by_name(graph, _names(nodes), step=_STEP)}
    inits = initializers(graph)
    made_by = producers(graph)
    users = consumers(graph)
    floats = float_tensor_names(model)

    edges: list[str] = []
    for node in graph.node:
        if node.name in selected:
            edges.extend(name for name in list(node.input) + list(node.output)
                         if name and name not in inits and name in floats)
    overrides: dict[str, list[dict[str, Any]]] = {}
    for tensor in dict.fromkeys(edges):
        readers = {require_name(user, step=_STEP) for user in users.get(tensor, [])}
        inside, outside = readers & selected, readers - selected
        producer = made_by.get(tensor)
        if producer is not None and producer.name not in selected and producer.op_type in _SHARED_PARAM_OPS:
            overrides[tensor] = [{"quant_type": narrow, "convert": {"quant_type": wide, "recv_nodes": inside}}]
            continue
        entry: dict[str, Any] = {"quant_type": wide}
        if outside:
            entry["convert"] = {"quant_type": narrow, "recv_nodes": outside}
        overrides[tensor] = [entry]

    activations = {name for node in graph.node for name in node.output if name}
    activations.update(vi.name for vi in graph.input)
    valid, reason = TensorQuantOverridesHelper(overrides).is_valid(inits, activations, narrow)
    if not valid:
        raise ModelError(f"generated 16-bit overrides are invalid: {reason}", step=_STEP)
    return {"TensorQuantOverrides": overrides}


def _names(nodes: Iterable[str]) -> list[str]:
    if isinstance(nodes, str):
        return [nodes]
    names = list(nodes)
    if not names:
        raise InvalidArgument("no node names given for 16-bit activations", step=_STEP)
    return names
