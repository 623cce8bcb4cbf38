"""Cross-layer equalisation (Nagel et al., "Data-Free Quantization", 2019).

For two convolutions joined by ops that commute with a positive per-channel scale,
conv2(f(conv1(x))) is unchanged when output channel i of conv1 is divided by s_i and the
weights conv2 applies to input channel i are multiplied by s_i. Choosing
s_i = sqrt(r1_i / r2_i) (r = per-channel max |w|) gives both convs the same range for channel i,
which shrinks the spread of per-channel ranges that per-tensor weight quantization suffers from.

Ops allowed between the convs (each intermediate tensor must have exactly one consumer):
Relu, LeakyRelu, PRelu, Identity, Max/Average/Global pools, Pad that does not touch the batch
or channel axis (constant 0, reflect, edge, wrap: all copy or zero values within a channel),
and Clip whose bounds are 0 or infinite (Clip(0, inf) is a ReLU).

ReLU6 (Clip(0, 6)) is not scale-equivariant: Clip(x / s_i, 0, 6) != Clip(x, 0, 6) / s_i, and a
Clip bound is a single scalar, so no rescaled Clip can reproduce it per channel. Such pairs are
skipped by default (the model stays exactly equivalent). With ``through_relu6=True`` the Clip is
rewritten as Relu -> Min(bound_c) (or Max/Min for other bounds) with a per-channel bound tensor
6 / s_c, which is exactly equivalent in FP32 but replaces a fusable Clip by a Min that
onnxruntime leaves in float; use it only when the weight-range gain is worth that.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from shared.errors import InvalidArgument

from ._graph import attr, consumers, constant_value, copy_model, initializers, opset_version

log = logging.getLogger(__name__)

_STEP = "recipe/cle"
_SCALE_FREE_OPS = frozenset({"Relu", "LeakyRelu", "PRelu", "Identity", "MaxPool", "AveragePool",
                             "GlobalAveragePool", "GlobalMaxPool"})
_CHANNEL_SAFE_PAD_MODES = frozenset({"constant", "reflect", "edge", "wrap"})
_MAX_CHAIN = 8


@dataclass(frozen=True)
class PairSpread:
    """How uneven the per-channel weight ranges (max |w|) of one pair are: conv1 over its output
    channels, conv2 over the input channels it reads. `*_spread` is max/min over non-zero
    channels (dominated by near-dead channels); `*_over_median` is max/median, what a typical
    channel loses to a per-tensor scale. 1.0 means perfectly even."""

    conv1: str
    conv2: str
    conv1_spread: float
    conv2_spread: float
    conv1_over_median: float
    conv2_over_median: float


@dataclass
class _ClipBounds:
    """A Clip inside a chain whose scalar bounds must become per-channel tensors."""

    node: onnx.NodeProto
    lower: np.ndarray | None  # None: no lower bound to keep
    upper: np.ndarray | None
    lower_is_relu: bool


@dataclass
class _Pair:
    conv1: onnx.NodeProto
    conv2: onnx.NodeProto
    clips: list[_ClipBounds]

    @property
    def names(self) -> tuple[str, str]:
        return _label(self.conv1), _label(self.conv2)


def equalize(model: onnx.ModelProto, iterations: int = 4, *, through_relu6: bool = False
             ) -> tuple[onnx.ModelProto, list[tuple[str, str]]]:
    """Return an FP32-equivalent copy of `model` with equalised conv pairs, and those pairs
    as (conv1, conv2) node names (the output tensor name stands in for an unnamed node).
    `iterations` sweeps let chains of convs (A->B->C) converge."""
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
        raise InvalidArgument(f"iterations={iterations!r} must be a positive integer", step=_STEP)
    out = copy_model(model)
    pairs = _find_pairs(out, through_relu6)
    if not pairs:
        return out, []
    inits = initializers(out.graph)
    arrays = {name: numpy_helper.to_array(inits[name]).astype(np.float64)
              for pair in pairs for name in _weight_names(pair)}
    for _ in range(iterations):
        for pair in pairs:
            _equalize_pair(pair, arrays)
    for name, value in arrays.items():
        init = inits[name]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
        init.CopyFrom(numpy_helper.from_array(value.astype(dtype), name))
    _rewrite_clips(out, [(clip, inits[pair.conv1.input[1]]) for pair in pairs for clip in pair.clips])
    log.info("cross-layer equalisation: %d pair(s) over %d iteration(s)", len(pairs), iterations)
    return out, [pair.names for pair in pairs]


def range_spreads(model: onnx.ModelProto, pairs: list[tuple[str, str]]) -> list[PairSpread]:
    """Per-channel weight-range spread of each (conv1, conv2) pair in `model`; call it on the
    model before and after `equalize` to see what equalisation bought."""
    index = {_label(node): node for node in model.graph.node}
    inits = initializers(model.graph)
    result = []
    for name1, name2 in pairs:
        for name in (name1, name2):
            if name not in index:
                raise InvalidArgument(f"no node named {name!r} in the model", step=_STEP)
        conv1, conv2 = index[name1], index[name2]
        w1 = numpy_helper.to_array(inits[conv1.input[1]]).astype(np.float64)
        w2 = numpy_helper.to_array(inits[conv2.input[1]]).astype(np.float64)
        r1 = _out_channel_ranges(w1)
        r2 = _in_channel_ranges(w2, int(attr(conv2, "group", 1)), w1.shape[0])
        result.append(PairSpread(name1, name2, _spread(r1), _spread(r2),
                                 _over_median(r1), _over_median(r2)))
    return result


def _label(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


def _spread(ranges: np.ndarray) -> float:
    positive = ranges[ranges > 0]
    return float(positive.max() / positive.min()) if positive.size else 1.0


def _over_median(ranges: np.ndarray) -> float:
    median = float(np.median(ranges))
    return float(ranges.max() / median) if median > 0 else math.inf


def _weight_names(pair: _Pair) -> list[str]:
    names = [pair.conv1.input[1], pair.conv2.input[1]]
    if len(pair.conv1.input) > 2 and pair.conv1.input[2]:
        names.append(pair.conv1.input[2])
    return names


# --- finding pairs -------------------------------------------------------------------------

def _find_pairs(model: onnx.ModelProto, through_relu6: bool) -> list[_Pair]:
    graph = model.graph
    inits = initializers(graph)
    users = consumers(graph)
    outputs = {vi.name for vi in graph.output}
    use_count: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            use_count[name] = use_count.get(name, 0) + 1
    pairs = []
    for conv1 in graph.node:
        if conv1.op_type != "Conv" or not _has_own_weights(conv1, inits, use_count, outputs):
            continue
        pair = _follow_chain(model, conv1, users, outputs, inits, through_relu6)
        if pair is None:
            continue
        conv2 = pair.conv2
        if not _has_own_weights(conv2, inits, use_count, outputs, need_bias=False):
            log.debug("cle: %s -> %s skipped: conv2 weights are shared or not initializers", *pair.names)
            continue
        if not _conv2_fits(conv2, inits, inits[conv1.input[1]].dims[0]):
            log.debug("cle: %s -> %s skipped: conv2 input channels do not match", *pair.names)
            continue
        pairs.append(pair)
    return pairs


def _has_own_weights(conv, inits, use_count, outputs, need_bias: bool = True) -> bool:
    """Weights (and bias, for conv1) are float initializers used by this node alone."""
    names = [conv.input[1]] if len(conv.input) > 1 else []
    if need_bias and len(conv.input) > 2 and conv.input[2]:
        names.append(conv.input[2])
    if not names:
        return False
    for name in names:
        init = inits.get(name)
        if init is None or init.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                                  onnx.TensorProto.DOUBLE):
            return False
        if use_count.get(name, 0) != 1 or name in outputs:
            return False
    return len(inits[conv.input[1]].dims) >= 3


def _conv2_fits(conv2, inits, channels: int) -> bool:
    group = int(attr(conv2, "group", 1))
    dims = inits[conv2.input[1]].dims
    return group >= 1 and channels % group == 0 and dims[0] % group == 0 and dims[1] == channels // group


def _follow_chain(model, conv1, users, outputs, inits, through_relu6) -> _Pair | None:
    tensor = conv1.output[0]
    channels = inits[conv1.input[1]].dims[0]
    rank = len(inits[conv1.input[1]].dims)
    clips: list[_ClipBounds] = []
    for _ in range(_MAX_CHAIN):
        nexts = users.get(tensor, [])
        if tensor in outputs or len(nexts) != 1:
            return None
        node = nexts[0]
        if node.input[0] != tensor or list(node.input).count(tensor) != 1:
            return None
        if node.op_type == "Conv":
            return _Pair(conv1, node, clips)
        if len([o for o in node.output if o]) != 1:
            return None
        if node.op_type == "Clip":
            bounds = _clip_bounds(model, node, channels)
            if bounds is None:
                return None
            if bounds is not _SCALE_FREE:
                if not through_relu6:
                    log.debug("cle: %s skipped: %s is a bounded Clip (ReLU6)", _label(conv1), _label(node))
                    return None
                clips.append(bounds)
        elif node.op_type == "Pad":
            if not _pad_keeps_channels(model, node, rank):
                return None
        elif node.op_type not in _SCALE_FREE_OPS:
            return None
        tensor = node.output[0]
    return None


_SCALE_FREE = object()  # sentinel: this Clip commutes with positive scaling as it is


def _clip_bounds(model, node, channels):
    """_SCALE_FREE, a _ClipBounds to rewrite, or None when the bounds are not constants."""
    if opset_version(model) < 11:
        lo, hi = attr(node, "min", -math.inf), attr(node, "max", math.inf)
    else:
        values = []
        for index, default in ((1, -math.inf), (2, math.inf)):
            if len(node.input) > index and node.input[index]:
                value = constant_value(model, node.input[index])
                if value is None or value.size != 1:
                    return None
                values.append(float(value.reshape(())))
            else:
                values.append(default)
        lo, hi = values
    if lo in (0.0, -math.inf) and hi in (0.0, math.inf):
        return _SCALE_FREE
    lower = None if lo == -math.inf else np.full(channels, lo, dtype=np.float64)
    upper = None if hi == math.inf else np.full(channels, hi, dtype=np.float64)
    return _ClipBounds(node, lower, upper, lower_is_relu=(lo == 0.0))


def _pad_keeps_channels(model, node, rank: int) -> bool:
    mode = attr(node, "mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode not in _CHANNEL_SAFE_PAD_MODES:
        return False
    if opset_version(model) < 11:
        pads, fill = attr(node, "pads"), attr(node, "value", 0.0)
    else:
        pads = constant_value(model, node.input[1]) if len(node.input) > 1 and node.input[1] else None
        fill = 0.0
        if len(node.input) > 2 and node.input[2]:
            value = constant_value(model, node.input[2])
            if value is None:
                return False
            fill = float(value.reshape(-1)[0]) if value.size else 0.0
    if pads is None:
        return False
    if mode == "constant" and fill != 0.0:
        return False
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    axes = list(range(len(pads) // 2))
    if len(node.input) > 3 and node.input[3]:
        value = constant_value(model, node.input[3])
        if value is None:
            return False
        axes = [int(a) % rank for a in value.reshape(-1)]
    if len(pads) != 2 * len(axes):
        return False
    half = len(axes)
    return all(pads[i] == 0 and pads[i + half] == 0 for i, axis in enumerate(axes) if axis in (0, 1))


# --- the maths -----------------------------------------------------------------------------

def _out_channel_ranges(w1: np.ndarray) -> np.ndarray:
    return np.abs(w1).reshape(w1.shape[0], -1).max(axis=1)


def _grouped(w2: np.ndarray, group: int, channels: int) -> np.ndarray:
    """View conv2's weights as [group, out_per_group, in_per_group, ...] so that input channel
    i = k * in_per_group + j is w[k, :, j]."""
    return w2.reshape(group, w2.shape[0] // group, channels // group, *w2.shape[2:])


def _in_channel_ranges(w2: np.ndarray, group: int, channels: int) -> np.ndarray:
    grouped = np.abs(_grouped(w2, group, channels))
    axes = (1,) + tuple(range(3, grouped.ndim))
    return grouped.max(axis=axes).reshape(channels)


def _equalize_pair(pair: _Pair, arrays: dict[str, np.ndarray]) -> None:
    conv1, conv2 = pair.conv1, pair.conv2
    w1, w2 = arrays[conv1.input[1]], arrays[conv2.input[1]]
    channels, group = w1.shape[0], int(attr(conv2, "group", 1))
    r1, r2 = _out_channel_ranges(w1), _in_channel_ranges(w2, group, channels)
    scale = np.ones(channels)
    ok = (r1 > 0) & (r2 > 0)
    scale[ok] = np.sqrt(r1[ok] / r2[ok])
    arrays[conv1.input[1]] = w1 / scale.reshape(-1, *([1] * (w1.ndim - 1)))
    if len(conv1.input) > 2 and conv1.input[2]:
        arrays[conv1.input[2]] = arrays[conv1.input[2]] / scale
    grouped = _grouped(w2, group, channels)
    factor = scale.reshape(group, 1, channels // group, *([1] * (grouped.ndim - 3)))
    arrays[conv2.input[1]] = (grouped * factor).reshape(w2.shape)
    for clip in pair.clips:
        if clip.lower is not None:
            clip.lower = clip.lower / scale
        if clip.upper is not None:
            clip.upper = clip.upper / scale


# --- rewriting bounded Clips ---------------------------------------------------------------

def _rewrite_clips(model: onnx.ModelProto, clips: list[tuple[_ClipBounds, onnx.TensorProto]]) -> None:
    """Replace each bounded Clip (keyed by its unique output name) by Relu/Max -> Min with
    per-channel bounds shaped [C, 1, ...] to broadcast over NC... activations."""
    if not clips:
        return
    replacements = {}
    for clip, weight in clips:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(weight.data_type)
        shape = (-1,) + (1,) * (len(weight.dims) - 2)
        base = clip.node.name or clip.node.output[0]
        current, nodes = clip.node.input[0], []
        final = clip.node.output[0]
        steps = []
        if clip.lower is not None:
            steps.append(("Relu", None) if clip.lower_is_relu else ("Max", clip.lower))
        if clip.upper is not None:
            steps.append(("Min", clip.upper))
        for index, (op, bound) in enumerate(steps):
            out = final if index == len(steps) - 1 else f"{final}_cle_{op.lower()}"
            inputs = [current]
            if bound is not None:
                bound_name = f"{base}_cle_{op.lower()}_bound"
                model.graph.initializer.append(
                    numpy_helper.from_array(bound.reshape(shape).astype(dtype), bound_name))
                inputs.append(bound_name)
            nodes.append(onnx.helper.make_node(op, inputs, [out], name=f"{base}_cle_{op.lower()}"))
            current = out
        replacements[final] = nodes
    new_nodes = []
    for node in model.graph.node:
        if node.output and node.output[0] in replacements:
            new_nodes.extend(replacements[node.output[0]])
        else:
            kept = onnx.NodeProto()
            kept.CopyFrom(node)
            new_nodes.append(kept)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
