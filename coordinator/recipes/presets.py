"""Node-selection presets: named groups of nodes that are commonly kept in float (or given
more bits) because they are known to be quantization-sensitive in image classifiers:
depthwise convolutions (few weights per channel, wide per-channel ranges) and the first and
last compute layers (raw pixels in, logits out)."""
from __future__ import annotations

from collections.abc import Iterable

import onnx

from shared.errors import InvalidArgument

from ._graph import COMPUTE_OPS, attr, graph_inputs, initializers, producers, require_name

_STEP = "recipe/presets"
PRESETS = ("depthwise", "first", "last", "first-last")


def depthwise_convs(model: onnx.ModelProto) -> list[str]:
    """Conv nodes with one input channel per group (group > 1), channel multiplier allowed."""
    graph = model.graph
    inits = initializers(graph)
    made_by = producers(graph)
    found = []
    for node in graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        group = int(attr(node, "group", 1))
        dims = _weight_dims(node.input[1], inits, made_by)
        if group > 1 and dims is not None and len(dims) >= 3 and dims[1] == 1:
            found.append(require_name(node, step=_STEP))
    return found


def first_nodes(model: onnx.ModelProto) -> list[str]:
    """Compute nodes (Conv, ConvTranspose, Gemm, MatMul) fed by a graph input with no other
    compute node in between; for a classifier, the stem convolution."""
    nodes = list(model.graph.node)
    edges = _Edges(nodes)
    from_input = edges.reachable(graph_inputs(model.graph), forward=True)
    return [require_name(nodes[i], step=_STEP) for i in sorted(from_input)
            if nodes[i].op_type in COMPUTE_OPS and not edges.compute_beyond(i, from_input, forward=False)]


def last_nodes(model: onnx.ModelProto) -> list[str]:
    """Compute nodes that reach a graph output with no other compute node in between; for a
    classifier, the final Gemm/MatMul (or 1x1 Conv) producing the logits."""
    nodes = list(model.graph.node)
    edges = _Edges(nodes)
    live = edges.reachable(graph_inputs(model.graph), forward=True) & \
        edges.reachable([vi.name for vi in model.graph.output], forward=False)
    return [require_name(nodes[i], step=_STEP) for i in sorted(live)
            if nodes[i].op_type in COMPUTE_OPS and not edges.compute_beyond(i, live, forward=True)]


def first_and_last(model: onnx.ModelProto) -> list[str]:
    """The first and the last compute nodes, first ones first, without duplicates."""
    return _unique(first_nodes(model) + last_nodes(model))


def preset_nodes(model: onnx.ModelProto, names: Iterable[str]) -> list[str]:
    """Union of the named presets ("depthwise", "first", "last", "first-last") in graph order."""
    if isinstance(names, str):
        names = [names]
    selectors = {"depthwise": depthwise_convs, "first": first_nodes, "last": last_nodes,
                 "first-last": first_and_last}
    chosen: set[str] = set()
    for name in names:
        if name not in selectors:
            raise InvalidArgument(f"unknown node preset {name!r}; expected one of {', '.join(PRESETS)}",
                                  step=_STEP)
        chosen.update(selectors[name](model))
    return [node.name for node in model.graph.node if node.name in chosen]


# --- helpers -------------------------------------------------------------------------------

class _Edges:
    """Producer/consumer index maps over a fixed node list (nodes are named by position)."""

    def __init__(self, nodes: list[onnx.NodeProto]) -> None:
        self.nodes = nodes
        self.made_by: dict[str, int] = {}
        self.used_by: dict[str, list[int]] = {}
        for index, node in enumerate(nodes):
            for name in node.output:
                if name:
                    self.made_by[name] = index
            for name in node.input:
                if name:
                    self.used_by.setdefault(name, []).append(index)

    def _next(self, index: int, forward: bool) -> list[int]:
        node = self.nodes[index]
        if forward:
            return [c for name in node.output if name for c in self.used_by.get(name, [])]
        return [self.made_by[name] for name in node.input if name in self.made_by]

    def reachable(self, tensors: list[str], *, forward: bool) -> set[int]:
        """Indices of nodes reachable from `tensors`, along (forward) or against the edges."""
        if forward:
            stack = [c for name in tensors for c in self.used_by.get(name, [])]
        else:
            stack = [self.made_by[name] for name in tensors if name in self.made_by]
        seen: set[int] = set()
        while stack:
            index = stack.pop()
            if index not in seen:
                seen.add(index)
                stack.extend(self._next(index, forward))
        return seen

    def compute_beyond(self, index: int, within: set[int], *, forward: bool) -> bool:
        """Whether another compute node inside `within` lies downstream (or upstream) of it."""
        stack, seen = self._next(index, forward), set()
        while stack:
            current = stack.pop()
            if current in seen or current not in within:
                continue
            seen.add(current)
            if self.nodes[current].op_type in COMPUTE_OPS:
                return True
            stack.extend(self._next(current, forward))
        return False


def _weight_dims(name, inits, made_by):
    if name in inits:
        return list(inits[name].dims)
    node = made_by.get(name)
    if node is not None and node.op_type == "Constant":
        for a in node.attribute:
            if a.name == "value":
                return list(a.t.dims)
    return None


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
