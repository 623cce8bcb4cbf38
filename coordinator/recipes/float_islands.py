"""Float islands that stay float where onnxruntime runs them.

A layer kept in float in the middle of a QDQ model reads a DequantizeLinear and feeds a
QuantizeLinear: DQ -> Conv(float weights) -> Q. onnxruntime's CPU EP, from ORT_ENABLE_BASIC up,
rewrites exactly that pattern at load time: its `WeightBiasQuantization` optimizer quantizes the
float weights again (per tensor, whatever the quantizer chose) when a Conv, ConvTranspose or Gemm
has float initializer weights, an input 0 made by a DequantizeLinear with a *per-tensor* (scalar)
scale, and an output that reaches a QuantizeLinear through Relu/Clip only. The layer then runs as
an int8 kernel: "keep it in float" did nothing, or worse (a depthwise conv per tensor).

Pinning gives each such island's input its own DequantizeLinear along the channel axis, with the
activation's one scale (and zero point) repeated per channel: the same values (every channel has
the same scale), a standard ONNX DequantizeLinear (opset 13+, `axis`), so the model runs anywhere
a QDQ model runs and computes the layer in float with its float weights; and the optimizer, which
wants a scalar scale there, leaves it alone. Measured: the pinned model's outputs at
ORT_ENABLE_ALL equal those of the same model at ORT_DISABLE_ALL (where nothing is rewritten), and
equal those of the plain model with `disabled_optimizers=["WeightBiasQuantization"]`.

What is not pinned: an island whose input has a single channel (a one-element scale counts as
per tensor) or whose DequantizeLinear has no initializer scale; they are returned with the
reason. MatMul is not an optimizer target, and a layer fed by the graph input (a float prefix)
has no DequantizeLinear before it: both stay float as they are.
If onnxruntime ever treats per-channel activation scales the same way, the pin stops working:
tests/test_float_islands.py checks the optimized graph each onnxruntime version builds."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ._graph import attr, consumers, copy_model, initializers, opset_version, producers

#: what the optimizer rewrites (onnxruntime/core/optimizer/qdq_transformer/weight_bias_quantization.cc)
TARGET_OPS = ("Conv", "ConvTranspose", "Gemm")
#: DequantizeLinear has `axis` from this opset on
MIN_OPSET = 13
#: enters the id of every candidate with float islands, so pinned and plain builds never share one
PIN_MARK = "pinned-1"


@dataclass
class PinReport:
    pinned: list[str] = field(default_factory=list)                 # float nodes given their own DQ
    unpinned: list[tuple[str, str]] = field(default_factory=list)   # (node, why not)


def pin_float_islands(model: onnx.ModelProto, float_nodes: Iterable[str]) -> tuple[onnx.ModelProto, PinReport]:
    """A copy of the quantized `model` where each of `float_nodes` that onnxruntime would quantize
    again reads its input through a per-channel DequantizeLinear (see the module doc)."""
    out = copy_model(model)
    report = PinReport()
    wanted = set(float_nodes)
    if not wanted:
        return out, report
    graph = out.graph
    if opset_version(out) < MIN_OPSET:
        report.unpinned = [(n, f"opset {opset_version(out)} < {MIN_OPSET}") for n in sorted(wanted)]
        return out, report
    inits = initializers(graph)
    made_by = producers(graph)
    taken = {n.name for n in graph.node} | set(inits) | {o for n in graph.node for o in n.output}
    replaced: set[str] = set()                # DequantizeLinear nodes that lost a consumer
    new_nodes: dict[int, onnx.NodeProto] = {}  # position in graph.node -> the DQ to insert before it
    for position, node in enumerate(graph.node):
        if node.name not in wanted or node.op_type not in TARGET_OPS or node.domain not in ("", "ai.onnx"):
            continue
        dq = made_by.get(node.input[0]) if node.input else None
        weight = inits.get(node.input[1]) if len(node.input) > 1 else None
        if dq is None or dq.op_type != "DequantizeLinear" or weight is None:
            continue                           # not the rewritten pattern: it stays float as it is
        why = _why_not(node, dq, weight, inits)
        if isinstance(why, str):
            report.unpinned.append((node.name, why))
            continue
        axis, channels = why
        scale = numpy_helper.to_array(inits[dq.input[1]]).reshape(-1)
        stem = _unique(f"{node.name}_float_input", taken)
        scale_init = numpy_helper.from_array(np.full(channels, scale[0], scale.dtype), f"{stem}_scale")
        inputs = [dq.input[0], scale_init.name]
        graph.initializer.append(scale_init)
        if len(dq.input) > 2 and dq.input[2]:
            zero = numpy_helper.to_array(inits[dq.input[2]]).reshape(-1)
            zero_init = numpy_helper.from_array(np.full(channels, zero[0], zero.dtype), f"{stem}_zero_point")
            graph.initializer.append(zero_init)
            inputs.append(zero_init.name)
        new_nodes[position] = helper.make_node("DequantizeLinear", inputs, [stem], name=f"{stem}_DequantizeLinear",
                                               domain=dq.domain, axis=axis)
        node.input[0] = stem
        replaced.add(dq.name)
        report.pinned.append(node.name)
    if not new_nodes:
        return out, report
    ordered = []
    for position, node in enumerate(graph.node):
        if position in new_nodes:
            ordered.append(new_nodes[position])
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    _drop_unused(graph, replaced)
    return out, report


def _why_not(node: onnx.NodeProto, dq: onnx.NodeProto, weight: onnx.TensorProto,
             inits: dict[str, onnx.TensorProto]) -> tuple[int, int] | str:
    """(axis, channels) of the node's input 0 to dequantize along, or why it cannot be pinned."""
    if len(dq.input) < 2 or dq.input[1] not in inits:
        return "its input's DequantizeLinear has no initializer scale"
    if numpy_helper.to_array(inits[dq.input[1]]).size != 1:
        return "its input is already dequantized per channel"
    dims = list(weight.dims)
    axis, channels = 1, 0
    if node.op_type == "Conv" and len(dims) > 1:          # W [M, C/group, ...]
        channels = dims[1] * int(attr(node, "group", 1))
    elif node.op_type == "ConvTranspose" and dims:        # W [C, M/group, ...]
        channels = dims[0]
    elif node.op_type == "Gemm" and len(dims) == 2:       # A [M, K] (or [K, M] with transA), B [K, N] or [N, K]
        axis = 0 if int(attr(node, "transA", 0)) else 1
        channels = dims[1] if int(attr(node, "transB", 0)) else dims[0]
    if channels < 2:
        return f"its input has {channels} channel(s): a one-element scale counts as per tensor"
    return axis, channels


def _unique(name: str, taken: set[str]) -> str:
    candidate, i = name, 1
    while candidate in taken:
        candidate, i = f"{name}_{i}", i + 1
    taken.add(candidate)
    return candidate


def _drop_unused(graph: onnx.GraphProto, names: set[str]) -> None:
    """Remove the DequantizeLinear nodes in `names` that nothing reads any more."""
    used = consumers(graph)
    outputs = {o.name for o in graph.output}
    keep = [n for n in graph.node
            if n.name not in names or any(o in used or o in outputs for o in n.output)]
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)


def runtime_graph(path: Path, level: str = "basic", disabled_optimizers: Iterable[str] = ()) -> onnx.ModelProto:
    """The graph onnxruntime's CPU EP builds from the model at `path` at optimization `level`
    (disable|basic|extended|all; basic is where WeightBiasQuantization runs and nodes keep their
    names): what a device really runs."""
    import onnxruntime as ort

    from shared.runners.ort import OPT_LEVELS

    with tempfile.TemporaryDirectory(prefix="qfarm-ort-graph-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = OPT_LEVELS[level]
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                             disabled_optimizers=list(disabled_optimizers))
        return onnx.load(options.optimized_model_filepath)


def has_float_weights(model: onnx.ModelProto, node_name: str) -> bool:
    """Whether node `node_name` reads its weights (input 1) as they are, not from a DequantizeLinear."""
    made_by = producers(model.graph)
    node = next(n for n in model.graph.node if n.name == node_name)
    producer = made_by.get(node.input[1]) if len(node.input) > 1 else None
    return producer is None or producer.op_type != "DequantizeLinear"
