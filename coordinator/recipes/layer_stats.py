"""Input statistics of each weighted layer, from the float model and its QDQ model side by side.

Bias correction needs the mean input patch of every layer in both models (exact, over every
output position); learned rounding needs second moments (Gram matrices) of the patches the
layer multiplies. Both come from one pass over the calibration feeds: the two models run
image by image with each layer's input exposed as an output, so memory stays one image's
activations whatever the calibration size. Gram matrices use a seeded sample of output
positions per image (`positions`), so the same seed gives the same numbers, and are kept per
fold (even and odd feeds), so a learned rounding can be checked on data it did not see."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from shared.errors import InvalidArgument, ModelError

from ._graph import copy_model, graph_inputs
from .qdq_layers import ConvGeometry, QuantizedLayer

_STEP = "recipe/layer-stats"
FeedList = Sequence[Mapping[str, np.ndarray]]   # one {input: (1, ...)} feed per calibration sample
FOLDS = 2


@dataclass(frozen=True)
class LayerStats:
    """Means (groups, D) are over every output position. `fold_grams[k]` (groups, D, D) is
    E[x~ x~^T] of the quantized model's input over the sampled positions of fold k (feeds
    k, k + FOLDS, ...); empty when Gram matrices were not asked for or D exceeded `max_dim`."""

    mean_float: np.ndarray
    mean_quant: np.ndarray
    fold_samples: tuple[int, ...] = ()
    fold_grams: tuple[np.ndarray, ...] = ()

    @property
    def samples(self) -> int:
        return sum(self.fold_samples)

    @property
    def gram(self) -> np.ndarray | None:
        """E[x~ x~^T] over every sampled position (None without Gram matrices)."""
        if not self.fold_grams:
            return None
        total = sum(g * n for g, n in zip(self.fold_grams, self.fold_samples))
        return total / max(self.samples, 1)


def collect_layer_stats(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto,
                        layers: Sequence[QuantizedLayer], feeds: FeedList, *, gram: bool = True,
                        positions: int = 256, seed: int = 0, max_dim: int = 2048,
                        threads: int = 1) -> dict[str, LayerStats]:
    """Statistics of each layer's input over `feeds`, keyed by node name."""
    if not feeds:
        raise InvalidArgument("no calibration feeds to collect layer statistics from", step=_STEP)
    if not isinstance(positions, int) or positions < 1:
        raise InvalidArgument(f"positions={positions!r} must be a positive integer", step=_STEP)
    float_sess = exposing_session(float_model, [layer.input_float for layer in layers], threads)
    quant_sess = exposing_session(qdq_model, [layer.input_quant for layer in layers], threads)
    accs = [_Accumulator(layer, gram and _dim(layer) <= max_dim, positions, np.random.default_rng([seed, i]))
            for i, layer in enumerate(layers)]
    for index, feed in enumerate(feeds):
        f_vals = run_exposed(float_sess, feed)
        q_vals = run_exposed(quant_sess, feed)
        for acc in accs:
            acc.add(f_vals[acc.layer.input_float], q_vals[acc.layer.input_quant], index % FOLDS)
    return {acc.layer.node: acc.result() for acc in accs}


def _dim(layer: QuantizedLayer) -> int:
    return layer.weight.shape[2]


def exposing_session(model: onnx.ModelProto, tensors: Iterable[str], threads: int = 1) -> ort.InferenceSession:
    """A session that also returns `tensors` (graph inputs are read from the feed instead)."""
    exposed = copy_model(model)
    present = {o.name for o in exposed.graph.output} | set(graph_inputs(exposed.graph))
    for name in dict.fromkeys(tensors):
        if name not in present:
            exposed.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # exact DQ values
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(exposed.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises plain RuntimeError subclasses
        raise ModelError(f"cannot run the model to collect layer statistics: {exc}", step=_STEP) from exc


def run_exposed(session: ort.InferenceSession, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of `session` by name, plus the feed itself."""
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(names, dict(feed))))
    values.update(feed)
    return values


class _Accumulator:
    def __init__(self, layer: QuantizedLayer, gram: bool, positions: int, rng: np.random.Generator):
        self.layer, self.gram, self.positions, self.rng = layer, gram, positions, rng
        groups, _, dim = layer.weight.shape
        self.sum_f = np.zeros((groups, dim))
        self.sum_q = np.zeros((groups, dim))
        self.count = 0
        self.samples = [0] * FOLDS
        self.grams = [np.zeros((groups, dim, dim)) for _ in range(FOLDS)] if gram else []

    def add(self, x_f: np.ndarray, x_q: np.ndarray, fold: int) -> None:
        layer = self.layer
        if x_f.shape != x_q.shape:
            raise ModelError(f"input of {layer.node} has shape {x_f.shape} in the float model but "
                             f"{x_q.shape} in the quantized one", step=_STEP)
        if layer.geometry is None:
            self._add_rows(x_f.reshape(-1, x_f.shape[-1])[:, None, :], x_q.reshape(-1, x_q.shape[-1])[:, None, :],
                           fold)
            return
        geo = layer.geometry
        groups, _, dim = layer.weight.shape
        for image_f, image_q in zip(x_f, x_q):   # one image at a time bounds the patch memory
            pf, pq = _padded(image_f, geo), _padded(image_q, geo)
            out_h, out_w = _out_size(pf.shape[1:], geo)
            total = out_h * out_w
            self.sum_f += _patch_sums(pf, geo, out_h, out_w).reshape(groups, dim)
            self.sum_q += _patch_sums(pq, geo, out_h, out_w).reshape(groups, dim)
            self.count += total
            if self.gram:
                take = np.arange(total) if total <= self.positions else \
                    np.sort(self.rng.choice(total, self.positions, replace=False))
                rows, cols = np.divmod(take, out_w)
                self._add_gram(_patches(pq, geo, rows, cols).reshape(len(take), groups, dim), fold)

    def _add_rows(self, rows_f: np.ndarray, rows_q: np.ndarray, fold: int) -> None:
        self.sum_f += rows_f.sum(axis=0)
        self.sum_q += rows_q.sum(axis=0)
        self.count += len(rows_f)
        if self.gram:
            self._add_gram(rows_q, fold)

    def _add_gram(self, patches: np.ndarray, fold: int) -> None:
        """patches: (samples, groups, D) of the quantized model's input."""
        q = np.ascontiguousarray(patches.transpose(1, 0, 2), dtype=np.float32)   # (groups, P, D)
        self.grams[fold] += q.transpose(0, 2, 1) @ q
        self.samples[fold] += patches.shape[0]

    def result(self) -> LayerStats:
        if self.count == 0:
            raise ModelError(f"no positions seen for {self.layer.node}", step=_STEP)
        if not self.gram:
            return LayerStats(self.sum_f / self.count, self.sum_q / self.count)
        grams = tuple(g / max(n, 1) for g, n in zip(self.grams, self.samples))
        return LayerStats(self.sum_f / self.count, self.sum_q / self.count, tuple(self.samples), grams)


def _padded(image: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """(C, H, W) zero-padded as the Conv pads it."""
    top, left, bottom, right = geo.pads
    if geo.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        extra = []
        for size, k, s, d in zip(image.shape[1:], geo.kernel, geo.strides, geo.dilations):
            out = -(-size // s)
            extra.append(max(0, (out - 1) * s + (k - 1) * d + 1 - size))
        small = [e // 2 for e in extra]
        big = [e - e // 2 for e in extra]
        (top, left), (bottom, right) = (big, small) if geo.auto_pad == "SAME_LOWER" else (small, big)
    elif geo.auto_pad == "VALID":
        top = left = bottom = right = 0
    return np.pad(image, ((0, 0), (top, bottom), (left, right)))


def _out_size(padded_hw, geo: ConvGeometry) -> tuple[int, int]:
    return tuple((size - d * (k - 1) - 1) // s + 1
                 for size, k, s, d in zip(padded_hw, geo.kernel, geo.strides, geo.dilations))


def _patch_sums(padded: np.ndarray, geo: ConvGeometry, out_h: int, out_w: int) -> np.ndarray:
    """Sum over every output position of each patch element: (C, kh, kw)."""
    (kh, kw), (sh, sw), (dh, dw) = geo.kernel, geo.strides, geo.dilations
    sums = np.empty((padded.shape[0], kh, kw))
    for i in range(kh):
        for j in range(kw):
            window = padded[:, i * dh: i * dh + sh * (out_h - 1) + 1: sh, j * dw: j * dw + sw * (out_w - 1) + 1: sw]
            sums[:, i, j] = window.sum(axis=(1, 2), dtype=np.float64)
    return sums


def _patches(padded: np.ndarray, geo: ConvGeometry, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Patches at output positions (rows, cols): (P, C, kh, kw)."""
    (kh, kw), (sh, sw), (dh, dw) = geo.kernel, geo.strides, geo.dilations
    r = rows[:, None] * sh + np.arange(kh)[None, :] * dh     # (P, kh)
    c = cols[:, None] * sw + np.arange(kw)[None, :] * dw     # (P, kw)
    patches = padded[:, r[:, :, None], c[:, None, :]]         # (C, P, kh, kw)
    return patches.transpose(1, 0, 2, 3)
