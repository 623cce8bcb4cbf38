"""Learned weight rounding (Nagel et al., "Up or Down? Adaptive Rounding for Post-Training
Quantization", 2020), in numpy.

Round-to-nearest minimises each weight's own error, not the layer's output error: weights that
all round the same way add their errors on every input. AdaRound chooses floor or ceil per
weight to minimise the error the layer's rounding adds to its output on calibration data,
    E[(w x~ - w~ x~)^2] = (w - w~) G (w - w~)^T,   G = E[x~ x~^T]  (x~: the quantized model's input),
per output row w, so one iteration costs one (rows x D) @ (D x D) product whatever the
calibration size. The relaxation h(V) (rectified sigmoid) is pushed to 0/1 by an annealed
regulariser and then rounded.

Choices measured on EfficientNet-Lite0 (see notes/recipes.md):
  * the objective is the layer's OWN error on the quantized input. The asymmetric one,
    E[(w x - w~ x~)^2], also tries to undo upstream error; learned for all layers from one pass
    it removes that error twice (output SQNR 19 -> 8 dB);
  * rounding is learned on half the calibration feeds and each output row keeps it only if it
    beats nearest on the other half too (and on all of them): the classifier head and the
    7x7 layers overfit otherwise (held-out error up to 1.4x nearest's);
  * lr 1.0 / reg 1.0 for 300 Adam steps: the paper's lr 1e-3 needs ~10k steps; at 300 the
    layer error fell only 5-15 %, with these 60-85 % on held-out data.
Scales, zero points and the graph are untouched: only the integers change."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import onnx

from shared.errors import InvalidArgument

from ._graph import copy_model
from .layer_stats import FeedList, LayerStats, collect_layer_stats
from .qdq_layers import QuantizedLayer, quantized_layers, replace_initializer

log = logging.getLogger(__name__)

_STEP = "recipe/adaround"
_ZETA, _GAMMA = 1.1, -0.1     # stretch of the rectified sigmoid (paper's values)


@dataclass(frozen=True)
class RoundingResult:
    """Integers (groups, out, D), and the layer objective (mean squared output error per
    calibration position, summed over outputs, all calibration data) with nearest and with
    the kept rounding; `rows_changed` output rows kept a learned rounding."""

    ints: np.ndarray
    loss_nearest: float
    loss_learned: float
    rows_changed: int


@dataclass(frozen=True)
class AdaRoundReport:
    layers: dict[str, tuple[float, float]]   # node -> (nearest loss, learned loss)
    skipped: dict[str, str]                  # node -> why it kept nearest
    seconds: float


def row_losses(weight: np.ndarray, dequantized: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """Per-row mean squared output error (w - w~) G (w - w~)^T, shape (groups, out)."""
    error = weight - dequantized
    return np.maximum(np.einsum("grd,gde,gre->gr", error, gram, error), 0.0)


def learn_rounding(layer: QuantizedLayer, stats: LayerStats, *, iterations: int = 300, lr: float = 1.0,
                   reg: float = 1.0, beta: tuple[float, float] = (20.0, 2.0), warmup: float = 0.2,
                   damping: float = 0.01) -> RoundingResult:
    """Learn floor/ceil per weight of `layer` from the Gram matrices in `stats` (two folds:
    learned on the first, checked on the second). `damping` adds that fraction of the mean
    input energy times ||w - w~||^2 while learning, keeping directions the data never excites
    near nearest. The result is never worse than nearest on the layer objective over all the
    calibration data, nor on the held-out fold."""
    if len(stats.fold_grams) < 2:
        raise InvalidArgument(f"layer {layer.node!r} has no Gram matrices to learn rounding from", step=_STEP)
    _check(iterations=iterations, lr=lr, reg=reg, warmup=warmup, damping=damping)
    w, s, zp = layer.weight, layer.scale, layer.zero_point
    dim = w.shape[2]
    train, held_out = stats.fold_grams[0], stats.fold_grams[1]
    nearest = layer.nearest()
    base = np.floor(w / s) + zp
    free = (base >= layer.qmin) & (base + 1 <= layer.qmax)
    rest = np.clip(w / s + zp - base, 0.0, 1.0)
    energy = np.einsum("gdd->g", train) / dim
    g32 = (train + np.eye(dim)[None] * (damping * energy)[:, None, None]).astype(np.float32)
    near_rows = row_losses(w, layer.quantized(nearest), train)
    norm = (1.0 / np.maximum(near_rows, 1e-30))[..., None].astype(np.float32)     # each row starts at ~1
    s32, w32 = s.astype(np.float32), w.astype(np.float32)
    offset = (s * (base - zp)).astype(np.float32)                                  # w~ = offset + s h
    v = -np.log((_ZETA - _GAMMA) / (rest - _GAMMA) - 1.0)                           # h(v) == rest
    v = np.where(free, v, 0.0).astype(np.float32)
    m, u = np.zeros_like(v), np.zeros_like(v)
    start = int(warmup * iterations)
    for step in range(iterations):
        sig = 1.0 / (1.0 + np.exp(-v))
        stretched = sig * (_ZETA - _GAMMA) + _GAMMA
        h = np.clip(stretched, 0.0, 1.0)
        grad = 2.0 * ((offset + s32 * h - w32) @ g32) * norm * s32                  # d loss / d h
        if step >= start:
            b = beta[0] + (beta[1] - beta[0]) * (step - start) / max(iterations - start - 1, 1)
            d = 2.0 * h - 1.0
            grad -= (2.0 * reg * b / dim) * np.abs(d) ** (b - 1.0) * np.sign(d)
        grad *= ((stretched > 0.0) & (stretched < 1.0)) * (_ZETA - _GAMMA) * sig * (1.0 - sig)
        grad = np.where(free, grad, 0.0)
        m = 0.9 * m + 0.1 * grad                                                    # Adam
        u = 0.999 * u + 0.001 * grad * grad
        v -= lr * (m / (1 - 0.9 ** (step + 1))) / (np.sqrt(u / (1 - 0.999 ** (step + 1))) + 1e-8)
    h_final = np.clip(1.0 / (1.0 + np.exp(-v)) * (_ZETA - _GAMMA) + _GAMMA, 0.0, 1.0)
    learned = np.where(free, base + (h_final >= 0.5), nearest)
    everything = stats.gram
    better = ((row_losses(w, layer.quantized(learned), held_out) < row_losses(w, layer.quantized(nearest), held_out))
              & (row_losses(w, layer.quantized(learned), everything)
                 < row_losses(w, layer.quantized(nearest), everything)))
    ints = np.where(better[..., None], learned, nearest)
    changed = int((better & np.any(learned != nearest, axis=2)).sum())
    return RoundingResult(ints, float(row_losses(w, layer.quantized(nearest), everything).sum()),
                          float(row_losses(w, layer.quantized(ints), everything).sum()), changed)


def apply_adaround(qdq_model: onnx.ModelProto, layers: list[QuantizedLayer], stats: dict[str, LayerStats],
                   **options) -> tuple[onnx.ModelProto, AdaRoundReport]:
    """A copy of `qdq_model` with learned integers for every layer in `layers` that has enough
    data: a layer with fewer sampled positions per fold than weights per row (a classifier
    head sees one vector per image) or without Gram matrices (wider than `max_dim` when the
    statistics were collected) keeps nearest rounding."""
    started = time.process_time()
    out = copy_model(qdq_model)
    done, skipped = {}, {}
    for layer in layers:
        s = stats[layer.node]
        dim = layer.weight.shape[2]
        if not s.fold_grams:
            skipped[layer.node] = f"no Gram matrices ({dim} weights per row)"
            continue
        if min(s.fold_samples) < dim:
            skipped[layer.node] = f"{min(s.fold_samples)} calibration positions per fold < {dim} weights per row"
            continue
        result = learn_rounding(layer, s, **options)
        replace_initializer(out, layer.weight_init, layer.from_matrix(result.ints).astype(layer.weight_dtype))
        done[layer.node] = (result.loss_nearest, result.loss_learned)
    seconds = time.process_time() - started
    log.info("adaround: %d layers learned, %d kept nearest, %.1f CPU s", len(done), len(skipped), seconds)
    return out, AdaRoundReport(done, skipped, seconds)


def adaround(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, feeds: FeedList, *,
             positions: int = 256, seed: int = 0, max_dim: int = 2048, threads: int = 1,
             **options) -> tuple[onnx.ModelProto, AdaRoundReport]:
    """A copy of `qdq_model` whose integer weights are learned per layer on `feeds`."""
    layers = quantized_layers(float_model, qdq_model)
    stats = collect_layer_stats(float_model, qdq_model, layers, feeds, gram=True, positions=positions, seed=seed,
                                max_dim=max_dim, threads=threads)
    return apply_adaround(qdq_model, layers, stats, **options)


def _check(**values) -> None:
    for name, value in values.items():
        bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value)
        if bad or value < 0 or (name in ("iterations", "lr") and value <= 0) or (name == "warmup" and value > 1):
            raise InvalidArgument(f"{name}={value!r} is out of range", step=_STEP)
